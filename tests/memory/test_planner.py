"""patchlab.memory.planner: the patch mode, micro-batches, checkpointing, precision and fast path that fit a budget,
the fastest first; its time models and its cache of estimates."""

import pytest

from tiny import tiny_params
from patchlab import memory as MP
from patchlab.config import from_params
from patchlab.execution import Execution


def test_candidate_modes_fastest_first():
    assert MP.candidate_modes(1) == ["batched"]
    assert MP.candidate_modes(4) == ["batched", 2, "sequential"]
    assert MP.candidate_modes(16) == ["batched", 8, 6, 4, 3, 2, "sequential"]


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
    assert len(estimated) > count  # a custom unet is not part of the key: not kept for the process
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


def test_time_model_solves_pass_and_row_costs():
    model = MP.planner.TimeModel.from_steps(0.5, 2.0, 4, 2)  # batched: c0 + 8 r; sequential: 4 c0 + 8 r
    assert model.pass_seconds == pytest.approx(0.5) and model.row_seconds == pytest.approx(0.0)
    model = MP.planner.TimeModel.from_steps(1.3, 1.6, 4, 2)
    assert model.pass_seconds == pytest.approx(0.1) and model.row_seconds == pytest.approx(0.15)
    assert model.seconds(4, 8) == pytest.approx(1.6) and model.seconds(1, 8) == pytest.approx(1.3)


def _timings(phase, pass_seconds, row_seconds):
    return [MP.planner.TimeModel(ex, pass_seconds, row_seconds, 1) for ex in MP.planner.speed_candidates(phase, "cpu")]


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
