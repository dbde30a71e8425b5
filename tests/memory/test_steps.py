"""Diffusion steps under the profiler: estimate = measurement, mode ordering, sweeps, the planner."""

import pytest
import torch

from tiny import tiny_params
from patchlab import memory as MP
from patchlab.config import from_params
from patchlab.execution import Execution


@pytest.fixture(scope="module")
def cfg():
    return from_params(**tiny_params(patches=4, image_size=16, dim_mults=(1, 2)))


@pytest.fixture(scope="module")
def cfg2():
    return from_params(**tiny_params(patches=2, image_size=16, dim_mults=(1, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("phase", MP.PHASES)
@pytest.mark.parametrize("mode", ["batched", "sequential", 4])
def test_estimate_matches_measurement(cfg, phase, mode):
    real = MP.profile_step(cfg, phase, batch=3, device="cpu", repeats=0, execution=Execution(patch_mode=mode))
    fake = MP.profile_step(cfg, phase, batch=3, estimate=True, execution=Execution(patch_mode=mode))
    assert fake.report.method == "estimate" and real.report.method == "measure"
    assert fake.report.peak_bytes == pytest.approx(real.report.peak_bytes, rel=0.02)
    assert fake.step_seconds is None and real.step_seconds is None
    assert real.passes == {"batched": 1, "sequential": 16, 4: 4}[mode]


@pytest.mark.slow
def test_train_step_breakdown_and_adam(cfg):
    prof = MP.profile_step(cfg, "train", batch=2, estimate=True, optimizer="adam",
                           execution=Execution(patch_mode="sequential"))
    rep = prof.report
    params = prof.parameters * 4
    assert rep.weights_bytes == pytest.approx(params, rel=0.01)  # + a few buffers
    assert rep.optimizer_state_bytes >= 2 * params
    assert rep.activations_bytes > 0
    assert sum(rep.breakdown.values()) == rep.peak_bytes


@pytest.mark.slow
def test_sequential_saves_memory_and_more_patches_save_more():
    base = from_params(**tiny_params(image_size=32, dim_mults=(1, 2), patches=1))
    peaks = {}
    for n in (1, 2, 4):
        peaks[n] = MP.profile_step(base.replace(patches=n), "train", batch=4,
                                   estimate=True, execution=Execution(patch_mode="sequential")).report.peak_bytes
    assert peaks[4] < peaks[2] < peaks[1]
    batched = MP.profile_step(base.replace(patches=4), "train", batch=4, estimate=True,
                              execution=Execution(patch_mode="batched"))
    assert batched.report.peak_bytes > 2 * peaks[4]


def test_measured_step_has_time(cfg):
    prof = MP.profile_step(cfg, "sample", batch=2, device="cpu", repeats=2, execution=Execution(patch_mode=4))
    assert prof.step_seconds > 0
    row = prof.to_dict()
    for key in ("peak_bytes", "weights_bytes", "activations_bytes", "step_seconds", "device", "method", "config"):
        assert key in row
    assert row["config"]["patches"] == 4


def test_bad_phase_batch_and_optimizer(cfg):
    with pytest.raises(ValueError, match="phase"):
        MP.profile_step(cfg, "infer", estimate=True)
    with pytest.raises(ValueError, match="batch"):
        MP.profile_step(cfg, "sample", batch=0, estimate=True)
    with pytest.raises(ValueError, match="optimizer"):
        MP.profile_step(cfg, "sample", optimizer="adam", estimate=True)
    with pytest.raises(ValueError, match="patch_mode"):
        MP.profile_step(cfg, "sample", estimate=True, execution=Execution(patch_mode=17))


def test_candidate_modes_fastest_first():
    assert MP.candidate_modes(1) == ["batched"]
    assert MP.candidate_modes(4) == ["batched", 2, "sequential"]
    assert MP.candidate_modes(16) == ["batched", 8, 6, 4, 3, 2, "sequential"]


@pytest.mark.slow
def test_sweep_dedupes_equivalent_modes_and_ratios(cfg):
    rows = MP.sweep(cfg, phases=("sample",), patches=(1, 2), modes=("batched", "sequential", 4), batch=2,
                    estimate=True)
    assert [(r.patches, r.patch_mode) for r in rows] == [(1, "batched"), (2, "batched"), (2, "sequential")]
    table = MP.with_ratios([r.to_dict() for r in rows])
    assert table[0]["peak_ratio"] == 1.0 and table[0]["baseline_patches"] == 1
    assert table[2]["peak_ratio"] < 1.0
    assert table[2]["time_ratio"] is None


def _peak(cfg, mode, batch=4, phase="train"):
    return MP.profile_step(cfg, phase, batch=batch, estimate=True,
                           execution=Execution(patch_mode=mode)).report.peak_bytes


@pytest.mark.slow
def test_plan_picks_fastest_mode_that_fits(cfg2):
    peaks = {m: _peak(cfg2, m) for m in MP.candidate_modes(4)}
    assert MP.plan(cfg2, int(peaks["batched"] * 2), batch=4).patch_mode == "batched"
    budget = int(peaks[2] * 1.1 * 1.01)  # room for k=2 with 10 % headroom, not for all 4 patches
    assert peaks["batched"] * 1.1 > budget
    result = MP.plan(cfg2, budget, batch=4, checkpointing=("none",))
    assert result.fits and result.patch_mode == 2 and result.peak_bytes == peaks[2]
    assert "fits: patch_mode=2 (2 UNet passes per step; exact" in result.message()
    assert result.to_dict()["message"] == result.message()


def test_plans_of_one_model_share_their_estimates_but_a_custom_unet_is_estimated_anew(cfg2, monkeypatch):
    """The planner keeps the process's estimates: a second plan of the same model (another budget) estimates
    nothing it has seen, and gives what the first estimates said; another batch or a custom unet does."""
    import patchlab.memory.planner as PL

    estimated = []
    real = PL.profile_step
    monkeypatch.setattr(PL, "profile_step", lambda *a, **k: estimated.append(k["batch"]) or real(*a, **k))
    first = MP.plan(cfg2, 1 << 30, phase="sample", batch=2)
    count = len(estimated)
    assert count > 0 and first.fits
    again = MP.plan(cfg2, first.peak_bytes * 2, phase="sample", batch=2)
    assert len(estimated) == count and again.peak_bytes == first.peak_bytes
    MP.plan(cfg2, 1 << 30, phase="sample", batch=1)  # another batch: estimated
    assert len(estimated) > count
    count = len(estimated)
    MP.plan(cfg2, 1 << 30, phase="sample", batch=2, execution=Execution(unet=lambda x, t, pos: x))
    assert len(estimated) > count  # a custom unet is not part of the key: never cached
    PL.forget_estimates()
    count = len(estimated)
    MP.plan(cfg2, 1 << 30, phase="sample", batch=2)
    assert len(estimated) > count


@pytest.mark.slow
def test_plan_weighs_micro_batches_and_checkpointing(cfg2):
    """Between one image per pass and the whole batch, micro-batches fit (the batch's gradient, no smaller
    batch needed); checkpointing is taken when it saves passes; N=1 is compared (are the patches needed?)."""
    seq1, seq16 = _peak(cfg2, "sequential", batch=1), _peak(cfg2, "sequential", batch=16)
    budget = int((seq1 * 1.1 + seq16 * 1.1) / 2)
    result = MP.plan(cfg2, budget, batch=16, checkpointing=("none",))
    assert result.fits and 1 <= result.execution.images_per_pass < 16
    assert f"micro-batches of {result.execution.images_per_pass} images" in result.message()
    assert result.peak_bytes * 1.1 <= budget
    k = result.execution.images_per_pass
    more = MP.profile_step(cfg2, "train", batch=16, estimate=True, execution=result.execution.replace(
        images_per_pass=MP.planner.images_per_pass_choices(16)[MP.planner.images_per_pass_choices(16).index(k) - 1]))
    assert more.report.peak_bytes * 1.1 > budget or result.execution.patch_mode != "sequential"
    assert "without patches (N=1)" in result.message()
    both = MP.plan(cfg2, budget, batch=16)
    assert both.fits and both._passes() <= result._passes() * MP.planner.CHECKPOINT_COST
    assert MP.planner.images_per_pass_choices(16) == [16, 8, 4, 2, 1]
    assert MP.planner.images_per_pass_choices(5) == [5, 3, 2, 1]


@pytest.mark.slow
def test_plan_suggests_larger_n():
    cfg = from_params(**tiny_params(image_size=32, patches=1, dim_mults=(1, 2)))
    lean = Execution(patch_mode="sequential", images_per_pass=1, checkpointing="blocks")
    one = MP.profile_step(cfg.replace(patches=2), "train", batch=4, estimate=True, execution=lean)
    result = MP.plan(cfg, int(one.report.peak_bytes * 1.1) + 1, batch=4, headroom=0.1)
    assert not result.fits
    assert any("patches=2 fits" in s and "a different model" in s for s in result.suggestions)


@pytest.mark.slow
def test_plan_weights_alone_too_big(cfg2):
    result = MP.plan(cfg2, 1000, batch=4)
    assert not result.fits
    assert "alone take" in result.suggestions[0]


@pytest.mark.parametrize("budget", [0, -5, 1.5, True])
def test_plan_rejects_bad_budget(cfg2, budget):
    with pytest.raises(ValueError, match="budget"):
        MP.plan(cfg2, budget)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_reports_allocator_and_estimate_is_close(cfg):
    real = MP.profile_step(cfg, "train", batch=4, device="cuda", repeats=1,
                           execution=Execution(patch_mode="sequential"))
    fake = MP.profile_step(cfg, "train", batch=4, estimate=True, execution=Execution(patch_mode="sequential"))
    assert real.report.allocator_peak_bytes is not None
    assert fake.report.peak_bytes == pytest.approx(real.report.peak_bytes, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("windows", ["shifted", "overlap", "global"])
def test_remedy_sampling_steps_estimate_and_cost_one_patch(windows):
    """"global": the larger of its two steps, from the global view (one pass of one patch's size) and with
    overlapping windows."""
    cfg = from_params(**tiny_params(patches=2, coords=True, dim_mults=(1, 2), global_view=0.5))
    real = MP.profile_step(cfg, "sample", batch=4, device="cpu", repeats=0, tiling=windows,
                           execution=Execution(patch_mode="sequential"))
    fake = MP.profile_step(cfg, "sample", batch=4, estimate=True, tiling=windows,
                           execution=Execution(patch_mode="sequential"))
    grid = MP.profile_step(cfg, "sample", batch=4, estimate=True, execution=Execution(patch_mode="sequential"))
    assert fake.report.peak_bytes == pytest.approx(real.report.peak_bytes, rel=0.02)
    assert real.passes in {"shifted": {4}, "overlap": {9}, "global": {1, 9}}[windows]  # global: its larger step
    assert fake.report.peak_bytes <= 1.1 * grid.report.peak_bytes  # the memory of one patch pass
    with pytest.raises(ValueError, match="sample phase"):
        MP.profile_step(cfg, "train", batch=2, estimate=True, tiling=windows)


@pytest.mark.slow
def test_bf16_weights_estimate_halves_the_weights_and_is_for_sampling(cfg):
    fp32, bf16 = (MP.profile_step(cfg, "sample", batch=2, estimate=True,
                                  execution=Execution(patch_mode="sequential", precision=p))
                  for p in ("fp32", "bf16-weights"))
    assert bf16.report.breakdown["weights"] < 0.51 * fp32.report.breakdown["weights"]  # (buffers stay fp32)
    assert bf16.report.peak_bytes < fp32.report.peak_bytes and bf16.precision == "bf16-weights"
    measured = MP.profile_step(cfg, "sample", batch=2,
                               device="cpu", repeats=0,
                               execution=Execution(patch_mode="sequential", precision="bf16-weights"))
    assert measured.report.breakdown["weights"] == bf16.report.breakdown["weights"]
    with pytest.raises(ValueError, match="train precision"):
        MP.profile_step(cfg, "train", batch=2, estimate=True, execution=Execution(precision="bf16-weights"))


def test_time_model_solves_pass_and_row_costs():
    model = MP.planner.TimeModel.from_steps(0.5, 2.0, 4, 2)  # batched: c0 + 8 r; sequential: 4 c0 + 8 r
    assert model.pass_seconds == pytest.approx(0.5) and model.row_seconds == pytest.approx(0.0)
    model = MP.planner.TimeModel.from_steps(1.3, 1.6, 4, 2)
    assert model.pass_seconds == pytest.approx(0.1) and model.row_seconds == pytest.approx(0.15)
    assert model.seconds(4, 8) == pytest.approx(1.6) and model.seconds(1, 8) == pytest.approx(1.3)


def _timings(phase, pass_seconds, row_seconds):
    return [MP.planner.TimeModel(ex, pass_seconds, row_seconds, 1) for ex in MP.planner.speed_candidates(phase, "cpu")]


@pytest.mark.slow
def test_coarse_to_fine_sampling_is_profiled_at_both_of_its_steps():
    """Its row is the larger peak of its two kinds of step and the mean time over the sampler's steps."""
    cfg = from_params(**tiny_params(patches=2, coords=True, dim_mults=(1, 2), global_view=0.5, timesteps=1000))
    row = MP.profile_step(cfg, "sample", batch=2, tiling="global", steps=25, device="cpu", repeats=1)
    view, windows = (MP.steps._profile_one(cfg, "sample", batch=2, execution=Execution(), device=torch.device("cpu"),
                                           estimate=False, repeats=1, tiling="global", plan=i, steps=25)
                     for i in (0, 1))
    assert view[0].passes == 1 and windows[0].passes == 9
    assert row.report.peak_bytes == max(view[1].peak_bytes, windows[1].peak_bytes)
    assert row.step_seconds > 0 and row.passes == max((view, windows), key=lambda k: k[1].peak_bytes)[0].passes


@pytest.mark.slow
def test_speed_plan_picks_the_fastest_fitting_path_precision_and_mode(cfg):
    tight = MP.plan(cfg, 10 << 30, phase="sample", batch=4).candidates[0].peak_bytes  # batched's peak
    budget = int(tight * 1.1 * 0.8)  # batched fp32 does not fit; fewer passes fit with bf16 weights
    slow_pass = _timings("sample", 1.0, 0.01)
    plain = MP.plan(cfg, budget, phase="sample", batch=4)
    result = MP.plan(cfg, budget, phase="sample", batch=4, speed=True, timings=slow_pass, device="cpu")
    assert result.fits and result.precision == "bf16-weights"  # fewer passes: the per-pass cost wins
    assert result._passes() < plain._passes() and result.seconds == min(c.seconds for c in result.candidates)
    quick = MP.planner.TimeModel(Execution(fast_path="compile"), 0.0, 0.001, 1)
    compiled = [t for t in slow_pass if not quick.times(t.execution)] + [quick]
    result = MP.plan(cfg, budget, phase="sample", batch=4, speed=True, timings=compiled, device="cpu")
    assert (result.fast, result.precision, result.patch_mode) == ("compile", "fp32", plain.patch_mode)
    assert "fast path compile" in result.message() and result.choice()["fast_path"] == "compile"
    assert result.to_dict()["execution"] == result.execution.describe()
    with pytest.raises(ValueError, match="timings cover none"):
        MP.plan(cfg, budget, phase="sample", batch=4, speed=True, device="cpu",
                timings=[MP.planner.TimeModel(Execution(fast_path="graphs"), 0.0, 0.001, 1)])


@pytest.mark.slow
def test_speed_plan_calibrates_from_measured_steps(cfg, monkeypatch):
    import patchlab.accel
    monkeypatch.setattr(patchlab.accel, "COMPILE_BACKEND", "aot_eager")
    executions = [Execution(), Execution(fast_path="compile")]
    timings = MP.calibrate(cfg, "train", executions, device="cpu", repeats=1)
    assert [t.execution for t in timings] == executions
    assert all(t.pass_seconds >= 0 and t.row_seconds >= 0 and t.pass_seconds + t.row_seconds > 0 for t in timings)
    calls = []
    monkeypatch.setattr(MP.planner, "calibrate", lambda *a, **k: calls.append(a[2]) or timings)
    result = MP.plan(cfg, 1 << 30, phase="train", batch=2, speed=True, device="cpu")
    assert calls == [MP.planner.speed_candidates("train", "cpu")]  # measured when no timings are given
    assert result.fits and result.seconds > 0 and any(t.times(result.execution) for t in timings)


@pytest.mark.slow
def test_speed_plan_falls_back_to_bf16_weights_when_fp32_does_not_fit(cfg):
    lean = {p: MP.profile_step(cfg, "sample", batch=4, estimate=True,
                               execution=Execution(patch_mode="sequential", precision=p))
            for p in ("fp32", "bf16-weights")}
    budget = int(lean["bf16-weights"].report.peak_bytes * 1.1 * 1.01)
    assert lean["fp32"].report.peak_bytes * 1.1 > budget
    timings = _timings("sample", 0.1, 0.01)
    assert not MP.plan(cfg, budget, phase="sample", batch=4).fits
    result = MP.plan(cfg, budget, phase="sample", batch=4, speed=True, timings=timings, device="cpu")
    assert result.fits and result.precision == "bf16-weights" and result.patch_mode == "sequential"
    assert {c.precision for c in result.candidates} == {"bf16-weights"}
    hopeless = MP.plan(cfg, 1000, phase="sample", batch=4, speed=True, timings=timings, device="cpu")
    assert not hopeless.fits and hopeless.suggestions


@pytest.mark.slow
@pytest.mark.parametrize("phase", MP.PHASES)
@pytest.mark.parametrize("params", [dict(patches=2), dict(patches=4, dim_mults=(1,)),
                                    dict(patches=2, coords=True, global_view=0.5, dim_mults=(1,))],
                         ids=["N=2", "N=4", "global view"])
def test_estimates_of_the_levers_run_two_passes_per_loop_and_equal_the_measurement(phase, params, monkeypatch):
    """An estimate runs the first two passes of each loop (Execution.first_passes): its peak is the whole step's,
    measured on real tensors, for micro-batches and checkpointing too; a 4-image, N*N-pass step estimates in
    4 passes (issue 19 item 7: a 4096 px plan no longer estimates N*N identical passes)."""
    import patchlab.model

    cfg = from_params(**tiny_params(**params))
    calls = []
    forward = patchlab.model.PatchUNet.forward
    monkeypatch.setattr(patchlab.model.PatchUNet, "forward",
                        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    optimizer = "adam" if phase == "train" else "none"
    for lever in (dict(patch_mode="sequential", images_per_pass=1), dict(patch_mode="batched", images_per_pass=2),
                  dict(patch_mode="sequential", images_per_pass=3, checkpointing="blocks")):
        if phase == "sample":
            lever.pop("checkpointing", None)
        ex = Execution(**lever)
        calls.clear()
        fake = MP.profile_step(cfg, phase, batch=5, estimate=True, execution=ex, optimizer=optimizer)
        estimated_calls = len(calls)
        real = MP.profile_step(cfg, phase, batch=5, device="cpu", repeats=0, execution=ex, optimizer=optimizer)
        assert fake.report.peak_bytes == pytest.approx(real.report.peak_bytes, rel=0.02), lever
        assert fake.passes == real.passes == ex.passes(5, cfg.model.num_patches) or "global_view" in params
        if "global_view" not in params and lever["patch_mode"] == "sequential":
            assert estimated_calls <= 2 * 2 < real.passes, lever
