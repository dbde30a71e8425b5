"""Diffusion steps under the profiler: estimate = measurement, mode ordering, sweeps (the planner: test_planner.py)."""

import pytest
import torch

from tiny import tiny_params
from patchlab import memory as MP
from patchlab.config import from_params
from patchlab.execution import Execution


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


@pytest.mark.slow
def test_sweep_dedupes_equivalent_modes_and_ratios(cfg):
    rows = MP.sweep(cfg, phases=("sample",), patches=(1, 2), modes=("batched", "sequential", 4), batch=2,
                    estimate=True)
    assert [(r.patches, r.patch_mode) for r in rows] == [(1, "batched"), (2, "batched"), (2, "sequential")]
    table = MP.with_ratios([r.to_dict() for r in rows])
    assert table[0]["peak_ratio"] == 1.0 and table[0]["baseline_patches"] == 1
    assert table[2]["peak_ratio"] < 1.0
    assert table[2]["time_ratio"] is None


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
