"""patchlab.study.experiments: the runs of a profile, their directories, reuse, sampling and measurements."""

import torch

from tiny import tiny_params
from patchlab.study import experiments as E
from patchlab import patches as P
from patchlab.config import from_params


def test_hash_ignores_where_and_how_often_but_not_what():
    cfg = from_params(**tiny_params())
    assert E.config_hash(cfg) == E.config_hash(cfg.replace(device="auto", log_every=7, checkpoint_every=3))
    for change in ({"steps": 5}, {"gcc": False}, {"seed": 1}, {"lr": 1e-3}, {"patch_mode": "batched"}):
        assert E.config_hash(cfg.replace(**change)) != E.config_hash(cfg), change
    assert len(E.config_hash(cfg)) == 12


def test_variant_runs_cover_the_papers_comparisons_and_the_remedies(tmp_path):
    runs = E.variant_runs(from_params(**tiny_params(patches=4)), tmp_path)
    assert [r.label for r in runs] == [v.label for v in E.VARIANTS]
    assert len({r.path for r in runs}) == 10 and all(r.path.parent == tmp_path for r in runs)  # remedies share
    assert len(E.unique(runs)) == 10
    coarse = E.find(runs, "N=2 global")  # a model of its own (trained on the global view too)
    assert coarse.windows == "global" and coarse.config.model.global_view == E.GLOBAL_SHARE
    assert coarse.config.model.window_until == E.GLOBAL_WINDOW_UNTIL > P.GLOBAL_UNTIL  # windows for the fine steps
    assert coarse.path.name.startswith("n2-global-") and coarse.path != E.find(runs, "N=2 coords").path
    assert E.variant_of(coarse.config) == "N=2 global" and E.variant_of(E.find(runs, "N=2 coords").config) == "N=2 coords"
    shifted, coords = E.find(runs, "N=2 shifted"), E.find(runs, "N=2 coords")
    assert shifted.path == coords.path and shifted.windows == "shifted" and coords.windows == "grid"
    assert shifted.config.model.coords and shifted.path.name.startswith("n2-coords-")
    # the runs of the paper's comparisons keep the directories they had before the remedies existed
    assert E.find(runs, "N=2").path.name.split("-")[-1] == E.config_hash(from_params(**tiny_params(patches=2)))
    n1 = E.find(runs, "N=1").config.model
    assert (n1.patches, n1.position, n1.gcc) == (1, False, False)
    assert E.find(runs, "N=2 no GCC").path.name.startswith("n2-no-gcc-")
    assert [r.label for r in E.variant_runs(runs[0].config, tmp_path, E.ABLATIONS)] == list(E.ABLATIONS)


def test_training_runs_put_the_configured_run_first_without_duplicates(tmp_path):
    cfg = from_params(**tiny_params(patches=2))
    runs = E.training_runs(cfg, tmp_path, comparison_runs=True)
    assert runs[0].label == "N=2" and len(runs) == 10 and len({r.path for r in runs}) == 10
    odd = E.training_runs(cfg.replace(patches=4, gcc=False), tmp_path, comparison_runs=True)
    assert odd[0].label == "N=4 no GCC" and len(odd) == 11
    assert E.training_runs(cfg, tmp_path) == runs[:1]


def test_ensure_trains_once_then_reuses(tmp_path):
    runs = E.variant_runs(from_params(**tiny_params(steps=2)), tmp_path, ["N=1", "N=2"])
    logged = []
    E.ensure(runs, progress=False, on_log=lambda label, row: logged.append((label, row["step"])))
    assert logged == [("N=1", 1), ("N=1", 2), ("N=2", 1), ("N=2", 2)]
    assert all(E.is_trained(r) for r in runs)
    stamp = runs[0].paths.checkpoint.stat().st_mtime_ns
    E.ensure(runs, progress=False, on_log=lambda label, row: logged.append(label))
    assert len(logged) == 4 and runs[0].paths.checkpoint.stat().st_mtime_ns == stamp

    samples = E.sample_all(runs, 3, steps=2, device="cpu")
    assert set(samples) == {"N=1", "N=2"} and samples["N=2"].shape == (3, 3, 16, 16)
    again = E.sample_all(runs, 3, steps=2, device="cpu")
    assert torch.equal(samples["N=2"], again["N=2"])  # seeded: the same images every time
    traj = E.trajectory(runs[1], 2, steps=3, device="cpu")
    assert traj.x_t.shape == (4, 2, 3, 16, 16) and traj.timesteps[-1] == -1
    assert torch.equal(traj.images, traj.x0[-1])
    picked = traj.pick(3)
    assert len(picked) == 3 and picked[0] == 0 and picked[-1] == 3


def test_profile_memory_writes_one_row_per_run_phase_and_scale(tmp_path):
    import pandas as pd

    runs = E.variant_runs(from_params(**tiny_params()), tmp_path, ["N=1", "N=2"])
    path = E.profile_memory(runs, tmp_path / "m.csv", batch=2, device="cpu", repeats=1, paper_estimate=False,
                            progress=False)
    df = pd.read_csv(path)
    assert list(df["phase"]) == ["train", "sample"] * 2 and set(df["scale"]) == {"profile"}
    n1, n2 = df[df["label"] == "N=1"], df[df["label"] == "N=2"]
    assert list(n2["patch_mode"]) == ["sequential"] * 2 and list(n1["patch_mode"]) == ["batched"] * 2
    assert (n2["peak_bytes"].to_numpy() < n1["peak_bytes"].to_numpy()).all()
    assert (df["step_seconds"] > 0).all()


def test_parallel_training_gives_the_runs_one_after_the_other_would(tmp_path):
    from patchlab import checkpoint

    cfg = from_params(**tiny_params(steps=2))
    parallel = E.variant_runs(cfg, tmp_path / "par", ["N=1", "N=2"])
    logged = []
    E.ensure(parallel, progress=False, workers=2, threads=1, poll=0.2,
             on_log=lambda label, row: logged.append((label, row["step"])))
    assert sorted(logged) == [("N=1", 1), ("N=1", 2), ("N=2", 1), ("N=2", 2)]
    serial = E.variant_runs(cfg, tmp_path / "ser", ["N=2"])
    E.ensure(serial, progress=False, threads=1)  # float sums depend on the thread count: compare like with like
    a, b = checkpoint.load(parallel[1].paths.checkpoint), checkpoint.load(serial[0].paths.checkpoint)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_gpus_train_each_run_through_torchrun_with_progress(tmp_path, capsys):
    """``gpus = 2`` (here gloo processes on the CPU): the run trains data-parallel in a torchrun
    subprocess; its rows reach on_log and the progress lines as rank 0 writes them; the weights are those
    of one process (to a fraction of an Adam update)."""
    from patchlab import checkpoint

    cfg = from_params(**tiny_params(steps=3))
    runs = E.variant_runs(cfg, tmp_path / "ddp", ["N=2"])
    logged = []
    E.ensure(runs, workers=2, threads=1, poll=0.2, gpus=2, on_log=lambda label, row: logged.append((label, row["step"])))
    assert logged == [("N=2", 1), ("N=2", 2), ("N=2", 3)]
    assert "[training] N=2: step 3/3" in capsys.readouterr().out
    assert E.is_trained(runs[0]) and (runs[0].path / "torchrun.log").is_file()
    single = E.variant_runs(cfg, tmp_path / "one", ["N=2"])
    E.ensure(single, progress=False, threads=1)
    a, b = checkpoint.load(runs[0].paths.checkpoint), checkpoint.load(single[0].paths.checkpoint)
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=5e-5, rtol=0) for k in a["model"])


def test_a_failing_torchrun_job_says_why(tmp_path):
    import pytest

    runs = E.variant_runs(from_params(**tiny_params(steps=2, batch_size=3)), tmp_path, ["N=2"])
    with pytest.raises(RuntimeError, match=r"torchrun \(2 processes\) failed.*does not divide over 2"):
        E.ensure(runs, progress=False, threads=1, poll=0.2, gpus=2)


def test_global_steps_count_the_steps_from_the_global_view():
    cfg = from_params(**tiny_params(timesteps=1000))
    assert E.global_steps(cfg, 25) == 23  # DDIM 25 of T = 1000: t = 42 and 0 are left to the windows
    assert E.global_steps(cfg, 25, 0.0) == 25 and E.global_steps(cfg, 25, 1.0) == 0
    assert E.global_steps(cfg.replace(timesteps=20), 20) == 19  # the same fraction of any T


def test_the_global_sweep_is_of_the_global_remedy(tmp_path):
    import pytest

    runs = E.variant_runs(from_params(**tiny_params()), tmp_path, ["N=2 overlap"])
    with pytest.raises(ValueError, match="global remedy"):
        E.global_sweep(runs[0], n=4, steps=2)


def test_the_global_sweep_stops_at_the_models_window_until(tmp_path):
    from patchlab.training import train

    run = E.variant_runs(from_params(**tiny_params(timesteps=100, steps=1, checkpoint_every=1, dim_mults=(1,))),
                         tmp_path, ["N=2 global"])[0]
    train(run.config, run.path, progress=False)
    rows = E.global_sweep(run, n=4, steps=4, values=(0.0, 0.05, 0.1, 0.5, 1.0), device="cpu", features="offline",
                          progress=False)
    assert [r["global until"] for r in rows] == [0.0, 0.05, 0.1]  # its windows never learnt t >= 0.1 T
    assert [r["global steps"] + r["window steps"] for r in rows] == [4, 4, 4] and rows[0]["window steps"] == 0
