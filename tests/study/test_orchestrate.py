"""patchlab.study.orchestrate: training a profile's runs once, in parallel processes, or under torchrun."""

import pytest
import torch

from tiny import tiny_params
from patchlab.config import from_params
from patchlab.study import measure as M
from patchlab.study import orchestrate as O
from patchlab.study import variants as V


def test_ensure_trains_once_then_reuses(tmp_path):
    runs = V.variant_runs(from_params(**tiny_params(steps=2)), tmp_path, ["N=1", "N=2"])
    logged = []
    O.ensure(runs, progress=False, on_log=lambda label, row: logged.append((label, row["step"])))
    assert logged == [("N=1", 1), ("N=1", 2), ("N=2", 1), ("N=2", 2)]
    assert all(V.is_trained(r) for r in runs)
    stamp = runs[0].paths.checkpoint.stat().st_mtime_ns
    O.ensure(runs, progress=False, on_log=lambda label, row: logged.append(label))
    assert len(logged) == 4 and runs[0].paths.checkpoint.stat().st_mtime_ns == stamp

    samples = M.sample_all(runs, 3, steps=2, device="cpu")
    assert set(samples) == {"N=1", "N=2"} and samples["N=2"].shape == (3, 3, 16, 16)
    again = M.sample_all(runs, 3, steps=2, device="cpu")
    assert torch.equal(samples["N=2"], again["N=2"])  # seeded: the same images every time
    traj = M.trajectory(runs[1], 2, steps=3, device="cpu")
    assert traj.x_t.shape == (4, 2, 3, 16, 16) and traj.timesteps[-1] == -1
    assert torch.equal(traj.images, traj.x0[-1])
    picked = traj.pick(3)
    assert len(picked) == 3 and picked[0] == 0 and picked[-1] == 3


@pytest.mark.slow
def test_parallel_training_gives_the_runs_one_after_the_other_would(tmp_path):
    from patchlab import checkpoint

    cfg = from_params(**tiny_params(steps=2))
    parallel = V.variant_runs(cfg, tmp_path / "par", ["N=1", "N=2"])
    logged = []
    O.ensure(parallel, progress=False, workers=2, threads=1, poll=0.2,
             on_log=lambda label, row: logged.append((label, row["step"])))
    assert sorted(logged) == [("N=1", 1), ("N=1", 2), ("N=2", 1), ("N=2", 2)]
    serial = V.variant_runs(cfg, tmp_path / "ser", ["N=2"])
    O.ensure(serial, progress=False, threads=1)  # float sums depend on the thread count: compare like with like
    a, b = checkpoint.load(parallel[1].paths.checkpoint), checkpoint.load(serial[0].paths.checkpoint)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


@pytest.mark.slow
def test_gpus_train_each_run_through_torchrun_with_progress(tmp_path, capsys):
    """``gpus = 2`` (here gloo processes on the CPU): the run trains data-parallel in a torchrun
    subprocess; its rows reach on_log and the progress lines as rank 0 writes them; the weights are those
    of one process (to a fraction of an Adam update)."""
    from patchlab import checkpoint

    cfg = from_params(**tiny_params(steps=3))
    runs = V.variant_runs(cfg, tmp_path / "ddp", ["N=2"])
    logged = []
    O.ensure(runs, workers=2, threads=1, poll=0.2, gpus=2,
             on_log=lambda label, row: logged.append((label, row["step"])))
    assert logged == [("N=2", 1), ("N=2", 2), ("N=2", 3)]
    assert "[training] N=2: step 3/3" in capsys.readouterr().out
    assert V.is_trained(runs[0]) and (runs[0].path / "torchrun.log").is_file()
    single = V.variant_runs(cfg, tmp_path / "one", ["N=2"])
    O.ensure(single, progress=False, threads=1)
    a, b = checkpoint.load(runs[0].paths.checkpoint), checkpoint.load(single[0].paths.checkpoint)
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=5e-5, rtol=0) for k in a["model"])


@pytest.mark.slow
def test_a_failing_torchrun_job_says_why(tmp_path):
    import pytest

    runs = V.variant_runs(from_params(**tiny_params(steps=2, batch_size=3)), tmp_path, ["N=2"])
    with pytest.raises(RuntimeError, match=r"torchrun \(2 processes\) failed.*does not divide over 2"):
        O.ensure(runs, progress=False, threads=1, poll=0.2, gpus=2)
