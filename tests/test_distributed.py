"""Data-parallel training under torchrun on the CPU (gloo, two processes, tiny configurations).

Each launch is a real ``python -m torch.distributed.run`` job; the single-process references run the
same command without it. Adam amplifies round-off in near-zero gradients, so parameters are compared to
a small fraction of one update (lr = 2e-4) while losses and gradient norms, which show that every rank
saw the right images, timesteps and noise, are compared to float precision.
"""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

import support
from patchlab.runs import read_metrics
from tiny import tiny_flags

pytestmark = pytest.mark.slow  # every test here launches processes

ROOT = support.ROOT
TINY = [*tiny_flags(), "--no-progress"]  # the steps are given per test
LR = 2e-4  # the tiny configuration's learning rate (patchlab's default)
PARAM_ATOL = 5e-5  # a quarter of one Adam update at lr 2e-4; a wrong batch, noise or scaling moves ~1e-4 a step


def train(run_dir, *args, world=1, check=True, timeout=120):
    """``patchlab train`` in ``world`` processes (plain python for 1)."""
    return support.run("train", "--run-dir", str(run_dir), *TINY, *args, check=check, timeout=timeout,
                       torchrun=support.standalone(world) if world > 1 else None)


def assert_same_run(a: Path, b: Path, atol=PARAM_ATOL):
    ra, rb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    sa = torch.load(a / "checkpoint.pt", weights_only=True)
    sb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        for name, value in sa[part].items():
            # Adam divides by sqrt(v): an element whose gradient is all round-off may move by up to one update
            # (lr) per step either way; allow that in at most 1 element in 1000, every other within atol
            diff = (value - sb[part][name]).abs()
            assert diff.max() <= 2 * sa["step"] * LR and (diff > atol).float().mean() <= 1e-3, (part, name, diff.max())
    for key, state in sa["optimizer"]["state"].items():
        torch.testing.assert_close(state["exp_avg"], sb["optimizer"]["state"][key]["exp_avg"], atol=1e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-process references (the command's own function, in this process), 4 steps."""
    from patchlab import cli

    root = tmp_path_factory.mktemp("single")
    runs = {}
    for name, extra in MODES.items():
        assert cli.main(["train", "--run-dir", str(root / name), *TINY, "--steps", "4", *extra]) == 0
        runs[name] = root / name
    return runs


MODES = {"batched": ["--patch-mode", "batched"], "sequential": ["--patch-mode", "sequential"],
         "coords": ["--patch-mode", "sequential", "--coords"]}
SHARDED = {"coords": ["--shard-optimizer"]}  # the remedies' model trained with Adam's state sharded


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_train_what_one_does(tmp_path, single, mode):
    """k steps on 2 processes give the parameters, EMA, losses and files of k steps on one (a sharded
    Adam too); rank 0 alone writes and reports."""
    proc = train(tmp_path / "run", "--steps", "4", *MODES[mode], *SHARDED.get(mode, []), world=2)
    assert_same_run(single[mode], tmp_path / "run")
    assert proc.stdout.count("run ") == 1 and proc.stdout.count("checkpoint  ") == 1
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 4  # no row twice
    files = sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*"))
    assert files == sorted(p.relative_to(single[mode]).as_posix() for p in single[mode].rglob("*"))


def test_resume_across_world_sizes(tmp_path, single):
    """A checkpoint written by 2 processes resumes on 1 and the other way round: 2 -> 1 -> 2 processes
    end where an uninterrupted single-process run does."""
    run = tmp_path / "run"
    train(run, "--steps", "2", "--patch-mode", "sequential", world=2)
    train(run, "--steps", "3", "--patch-mode", "sequential", "--checkpoint-every", "1")
    proc = train(run, "--steps", "4", "--patch-mode", "sequential", world=2)
    assert "4/4 steps" in proc.stdout
    assert_same_run(single["sequential"], run)


def test_batch_must_divide_over_the_processes(tmp_path):
    proc = train(tmp_path / "run", "--steps", "2", "--batch-size", "3", world=2, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr  # rank 0 reports; rank 1 says nothing more
    assert "batch_size=3 does not divide over 2 processes" in errors[0] and "multiple of 2" in errors[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_divergence_is_reported_once(tmp_path):
    """Every rank sees the same all-reduced loss, so all stop at the same step; rank 0 alone says why."""
    proc = train(tmp_path / "run", "--steps", "6", "--lr", "1e6", "--grad-clip", "0", world=2, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged" in errors[0], proc.stderr


def test_two_machines_as_two_torchrun_agents(tmp_path, single):
    """The README's two-node launch, for real on one machine: two torchrun agents meet at a c10d
    rendezvous on localhost, one process each (world size 2)."""
    port = support.free_port()
    procs = [support.start("train", "--run-dir", str(tmp_path / "run"), *TINY, "--steps", "4", "--patch-mode",
                           "batched", torchrun=("--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
                                                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                                "--rdzv-id=patchlab-test"))
             for rank in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_same_run(single["batched"], tmp_path / "run")


def _workers(launcher) -> dict[int, int]:
    """rank -> pid of the torchrun agent's worker processes."""
    found = {}
    for child in Path("/proc").glob("[0-9]*"):
        try:
            env = (child / "environ").read_bytes().split(b"\0")
            stat = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == launcher.pid:
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = int(child.name)
    return found


def _wait_for_steps(run: Path, steps: int, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended early: {proc.communicate()}")
        if len(read_metrics(run / "metrics.csv")) >= steps:
            return
        time.sleep(0.2)
    raise AssertionError("the job made no progress")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
def test_a_killed_rank_ends_the_job_and_a_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), *TINY, "--steps", "2000", "--checkpoint-every", "5"]
    job = support.start(*args, torchrun=support.standalone(2))
    _wait_for_steps(run, 12, job)
    os.kill(_workers(job)[1], signal.SIGKILL)
    start = time.monotonic()
    out, err = job.communicate(timeout=90)
    assert job.returncode != 0 and time.monotonic() - start < 60
    assert "[rank 0] error: rank 0 of 2: another process of this job stopped" in err, err
    assert "run the same command again to resume" in err
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]  # intact
    assert saved >= 10
    proc = train(run, "--steps", str(saved + 2))
    assert f"{saved + 2}/{saved + 2} steps" in proc.stdout


def test_ctrl_c_stops_every_rank_with_a_checkpoint(tmp_path):
    """SIGINT to the launcher (as Ctrl-C, or SIGTERM from a scheduler) reaches every rank: they finish
    the same step, rank 0 writes the checkpoint, and a rerun resumes from it."""
    run = tmp_path / "run"
    job = support.start("train", "--run-dir", str(run), *TINY, "--steps", "2000", "--checkpoint-every", "1000",
                        torchrun=support.standalone(2))
    _wait_for_steps(run, 6, job)
    for pid in _workers(job).values():  # a terminal's Ctrl-C signals the whole process group
        os.kill(pid, signal.SIGINT)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=90)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 6 <= saved < 1000, err
    assert len(read_metrics(run / "metrics.csv")) == saved
    assert f"checkpoint written at step {saved}" in out
    proc = train(run, "--steps", str(saved + 1))
    assert f"{saved + 1}/{saved + 1} steps" in proc.stdout


def test_sharded_optimizer_memory_estimate_matches_each_rank(tmp_path):
    """What the estimator says one process holds of Adam's state equals what ZeroRedundancyOptimizer
    gives the largest rank, measured in a 3-process job (an uneven split); the profile row names the share."""
    import json

    from patchlab.config import from_params
    from patchlab.distributed import zero_shards
    from patchlab.execution import Execution
    from patchlab.memory import profile_step
    from patchlab.model import build
    from tiny import tiny_params

    cfg = from_params(**tiny_params(dim=16, dim_mults=(1, 2, 4), shard_optimizer=True))
    numels = [p.numel() for p in build(cfg)[0].parameters()]
    world = 3
    out = tmp_path / "ranks"
    out.mkdir()
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *support.standalone(world),
                           str(ROOT / "tests" / "distributed_probe.py"), str(out)],
                          capture_output=True, text=True, env=support.env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in range(world)]
    assert [r["params"] for r in ranks] == [sorted(s) for s in zero_shards(numels, world)]
    estimate = profile_step(cfg, "train", batch=6, execution=Execution(patch_mode="sequential"), optimizer="adam",
                            estimate=True, world_size=world)
    assert estimate.report.optimizer_state_bytes == max(r["state_bytes"] for r in ranks)
    assert estimate.batch == 6 // world and estimate.row()["optimizer"] == f"adam 1/{world}"
    # Adam: two fp32 moments per element and a step counter per parameter
    assert estimate.report.optimizer_state_bytes == max(sum(8 * numels[i] + 4 for i in share)
                                                        for share in zero_shards(numels, world))
    whole = profile_step(cfg, "train", batch=6, execution=Execution(patch_mode="sequential"), optimizer="adam",
                         estimate=True)
    assert whole.report.optimizer_state_bytes == sum(8 * n + 4 for n in numels)


def test_distributed_evaluation_equals_one_process(tmp_path, single):
    """``torchrun ... evaluate``: the ranks share the sampling batches, rank 0 gathers them and reports;
    every metric equals the single-process evaluation's."""
    import json

    args = ["evaluate", str(single["batched"]), "--samples", "12", "--batch-size", "4", "--steps", "3",
            "--features", "offline", "--device", "cpu", "--no-progress"]
    one = support.run(*args, "--out", str(tmp_path / "one"), check=False, timeout=120)
    two = support.run(*args, "--out", str(tmp_path / "two"), torchrun=support.standalone(2), check=False, timeout=120)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    for key in set(a) - {"seconds"}:
        assert a[key] == b[key], key


def test_an_inconsistent_torchrun_environment_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """WORLD_SIZE=2 with RANK=1 (or RANK=0 without MASTER_ADDR) would train alone, silently: refused before any
    work, with what is missing."""
    from patchlab import cli, distributed

    for env, words in [({"WORLD_SIZE": "2", "RANK": "1"}, "lacks MASTER_ADDR, MASTER_PORT"),
                       ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1234"}, "lacks MASTER_ADDR"),
                       ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "not a rank"),
                       ({"WORLD_SIZE": "two"}, "must be integers")]:
        with pytest.raises(ValueError, match=words):
            distributed.check_environment(env)
    distributed.check_environment({})  # started any other way
    distributed.check_environment({"WORLD_SIZE": "1"})  # a world of one says nothing wrong
    for key in distributed.LAUNCH_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), *tiny_flags(steps=1)]) == 2
    err = capsys.readouterr().err
    assert "lacks MASTER_ADDR" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_rank_whose_peers_never_start_stops_after_the_join_timeout(tmp_path, monkeypatch, capsys):
    """A torchrun environment whose other process never starts: the rank says at once what it waits for,
    and stops after PATCHLAB_JOIN_TIMEOUT (not the collectives' 600 s) with one line and nothing written."""
    from patchlab import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(support.free_port()))
    monkeypatch.setenv("PATCHLAB_JOIN_TIMEOUT", "2")
    monkeypatch.setenv("PATCHLAB_DIST_TIMEOUT", "600")
    begin = time.monotonic()
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), *tiny_flags(steps=1)]) == 2
    assert time.monotonic() - begin < 60
    lines = capsys.readouterr().err.strip().splitlines()
    assert "waiting for its other processes (at most 2 s, PATCHLAB_JOIN_TIMEOUT)" in lines[0]
    assert len(lines) == 2 and "did not join" in lines[1] and "torchrun --nproc-per-node 2" in lines[1]
    assert not (tmp_path / "r").exists()
