import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import support
from tiny import tiny_flags, tiny_params
from patchlab import cli
from patchlab.config import from_dict
from patchlab.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, check=True, **kwargs):
    return support.run(*args, check=check, **kwargs)


@pytest.mark.parametrize("command", ["train", "sample", "config"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--run-dir" in out or command == "config"
    if command != "sample":
        assert "--patches" in out and "--no-gcc" in out and "N x N patches" in out


def test_unknown_or_abbreviated_options_are_refused(capsys):
    for argv in (["config", "--patchez", "2"], ["config", "--patch", "2"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_config_prints_resolved_json(capsys):
    assert cli.main(["config", "--patches", "4", "--dim-mults", "1,2", "--no-position", "--patch-mode", "2"]) == 0
    cfg = from_dict(json.loads(capsys.readouterr().out))
    assert cfg.model.patches == 4 and cfg.model.dim_mults == (1, 2) and not cfg.model.position
    assert cfg.train.patch_mode == 2


def test_bad_values_exit_2_with_one_clear_line(capsys, tmp_path):
    assert cli.main(["config", "--image-size", "30", "--patches", "4"]) == 2
    assert "not divisible by N=4" in capsys.readouterr().err
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"patchez": 2}))
    assert cli.main(["config", "--config", str(bad)]) == 2
    assert "did you mean 'patches'" in capsys.readouterr().err
    bad.write_text("{not json")
    assert cli.main(["config", "--config", str(bad)]) == 2
    assert "--config: cannot read" in capsys.readouterr().err


def test_sample_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["sample", "--run-dir", str(tmp_path / "none")]) == 2
    assert "no run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["sample", "--run-dir", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_sample_end_to_end(tmp_path):
    run = tmp_path / "run"
    out = _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=2))
    assert "2/2 steps" in out.stdout
    assert {p.name for p in run.iterdir()} >= {"config.json", "checkpoint.pt", "metrics.csv", "samples"}
    out = _run("sample", "--run-dir", str(run), "--n", "3", "--steps", "2", "--borders", "--no-progress",
               "--out", str(tmp_path / "s.png"), "--tensor-out", str(tmp_path / "s.pt"))
    assert (tmp_path / "s.png").is_file()
    images = torch.load(tmp_path / "s.pt", weights_only=True)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1
    _run("sample", "--run-dir", str(run), "--n", "3", "--steps", "2", "--no-progress", "--precision", "bf16-weights",
         "--out", str(tmp_path / "b.png"), "--tensor-out", str(tmp_path / "b.pt"))
    bf16 = torch.load(tmp_path / "b.pt", weights_only=True)
    assert bf16.shape == images.shape and (bf16 - images).abs().mean() < 0.1


@pytest.mark.slow
def test_config_file_and_options_combine(tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in tiny_params(steps=1).items()}))
    _run("train", "--run-dir", str(tmp_path / "r"), "--config", str(params), "--no-gcc", "--no-progress")
    cfg = from_dict(json.loads((tmp_path / "r" / "config.json").read_text()))
    assert cfg.model.gcc is False and cfg.train.steps == 1 and cfg.model.image_size == 16


def _losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.csv")}


def _wait_for_checkpoint(proc, run, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "checkpoint.pt").exists() and len(_losses(run)) >= 4:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _start(run, steps):
    return support.start("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=steps, checkpoint_every=2))


STEPS = 60


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted reference run the resume tests compare with (trained once for all of them)."""
    run = tmp_path_factory.mktemp("reference") / "whole"
    _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=STEPS, checkpoint_every=2))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "interrupt", "terminate"])
def test_killed_or_interrupted_run_resumes_exactly(tmp_path, whole, how):
    """SIGKILL mid-run (or Ctrl-C, or SIGTERM), then the same command again: the same losses as one
    uninterrupted run. While the first process runs, a second one on the same directory is refused."""
    run = tmp_path / "run"
    proc = _start(run, STEPS)
    _wait_for_checkpoint(proc, run)
    if how == "kill":
        second = _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=STEPS, checkpoint_every=2),
                      check=False)
        assert second.returncode == 2 and "is in use" in second.stderr and "pid" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    proc.send_signal({"kill": signal.SIGKILL, "interrupt": signal.SIGINT, "terminate": signal.SIGTERM}[how])
    proc.wait(timeout=60)
    if how != "kill":
        assert proc.returncode == {"interrupt": 130, "terminate": 143}[how]
        assert "interrupted" in proc.stdout.read()
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        assert state["step"] == max(_losses(run))  # the checkpoint holds every step that was logged
    stopped_at = max(_losses(run))
    assert stopped_at < STEPS
    stale = run / ".checkpoint.pt.x1y2.tmp"  # what a write interrupted by a crash leaves behind
    stale.write_bytes(b"partial")
    _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=STEPS, checkpoint_every=2))
    assert not stale.exists()  # cleaned up by the next start (a stale lock did not block it either)
    assert _losses(run) == _losses(whole)  # identical strings: bit-identical losses
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


@pytest.mark.slow
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "r"
    proc = _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=5, lr=1e6, checkpoint_every=1),
                check=False)
    assert proc.returncode == 2 and "training diverged at step 2" in proc.stderr and "lr=" in proc.stderr
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.slow
def test_a_failed_start_does_not_lock_the_run_to_its_config(tmp_path):
    run = tmp_path / "r"
    bad = _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=1, channels=4), check=False)
    assert bad.returncode == 2 and "channels" in bad.stderr
    _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=1, dataset="folder",
                                                                    data_root=str(tmp_path / "none")), check=False)
    _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=1))  # the corrected command runs
    assert from_dict(json.loads((run / "config.json").read_text())).model.channels == 3


@pytest.mark.slow
def test_resume_refusals_say_what_to_do(tmp_path, capsys):
    run = tmp_path / "r"
    _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=2))
    assert cli.main(["train", "--run-dir", str(run), "--no-progress", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "configuration differs" in err and f"--config {run / 'config.json'}" in err
    assert cli.main(["train", "--run-dir", str(run), "--config", str(run / "config.json"), "--steps", "1",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has completed 2 steps, more than steps=1" in err and "5/3" not in err
    assert cli.main(["train", "--run-dir", str(run), "--config", str(run / "config.json"), "--no-progress"]) == 0


@pytest.mark.slow
def test_run_files_share_one_mode(tmp_path):
    run = tmp_path / "r"
    _run("train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=1))
    modes = {p.name: p.stat().st_mode & 0o777
             for p in (run / "checkpoint.pt", run / "config.json", run / "metrics.csv")}
    assert len(set(modes.values())) == 1, modes


def test_unwritable_or_wrong_run_dirs_give_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["train", "--run-dir", str(afile), "--no-progress", *tiny_flags(steps=1)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(afile) in err and "is a file" in err and len(err.splitlines()) == 1
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o555)
        assert cli.main(["train", "--run-dir", str(locked / "r"), "--no-progress", *tiny_flags(steps=1)]) == 2
        assert "Permission denied" in capsys.readouterr().err


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import errno

    run = tmp_path / "r"
    assert cli.main(["train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=2, checkpoint_every=2)]) == 0
    before = (run / "checkpoint.pt").read_bytes()

    def full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert cli.main(["train", "--run-dir", str(run), "--no-progress", *tiny_flags(steps=4, checkpoint_every=2)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and str(run / "checkpoint.pt") in err
    assert "No space left on device" in err and len(err.splitlines()) == 1
    assert (run / "checkpoint.pt").read_bytes() == before and not list(run.glob(".checkpoint.pt.*"))


def test_option_messages_name_the_option(capsys, tmp_path):
    def refused(*argv):
        with pytest.raises(SystemExit) as exit_:
            cli.main(list(argv))
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err  # one line, not a usage dump
        return err

    assert "--patchez: did you mean --patches" in refused("config", "--patchez", "2")
    assert "argument --steps: invalid int value" in refused("train", "--run-dir", "x", "--steps", "ten")
    assert "argument --modes: 'foo' is not a patch mode" in refused("profile", "--modes", "foo")
    assert "argument --budget: a memory size must be at least one byte" in refused("plan", "--budget", "-5GiB")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert cli.main(["config", "--config", str(listed)]) == 2
    err = capsys.readouterr().err
    assert "--config: " in err and "not a list" in err and str(listed) in err


def test_output_paths_and_option_combinations_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """Bad --out / --tensor-out / evaluate --out and profile options that would be ignored are refused before
    a model is loaded or a step profiled (loading or sampling would raise instead)."""
    import patchlab.cli
    import patchlab.memory.steps as S
    import patchlab.metrics.evaluate as E
    from patchlab.config import from_params
    from patchlab.training import train

    run_dir = tmp_path / "run"
    train(from_params(**tiny_params(steps=1)), run_dir, progress=False)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(patchlab.cli, "load_run", no_work)
    monkeypatch.setattr(E, "evaluate_run", no_work)
    monkeypatch.setattr(S, "profile_step", no_work)
    (tmp_path / "file").write_text("x")
    cases = [
        (["sample", "--run-dir", str(run_dir), "--out", str(tmp_path / "x.pt")], "must end in .png"),
        (["sample", "--run-dir", str(run_dir), "--out", str(tmp_path)], "is a folder"),
        (["sample", "--run-dir", str(run_dir), "--tensor-out", str(tmp_path / "t.png")], "must end in .pt"),
        (["sample", "--run-dir", str(run_dir), "--out", str(tmp_path / "file" / "a.png")], "is a file, not a folder"),
        (["evaluate", str(run_dir), "--out", str(tmp_path / "file")], "is a file"),
        (["profile", "--phase", "train", "sample", "--optimizer", "adam"], "optimizer only takes part"),
        (["profile", "--phase", "train", "--bf16-weights"], "--bf16-weights"),
        (["profile", "--fast", "compile", "--estimate"], "--estimate does not run them"),
        (["profile", "--phase", "sample", "--checkpointing", "blocks"], "applies to training steps"),
    ]
    for argv, words in cases:
        assert cli.main(argv) == 2, argv
        assert words in capsys.readouterr().err, argv


def test_metrics_json_is_written_last_and_atomically(tmp_path, monkeypatch):
    """A failure while metrics.json is written leaves no half file (kill -9 mid-write: the rename never
    happened), and metrics.csv / samples.png come before it."""
    import patchlab.metrics.evaluate as E

    order = []
    real_grid = E.save_grid
    monkeypatch.setattr(E, "save_grid", lambda *a, **k: (order.append("png"), real_grid(*a, **k))[1])
    E.write_results({"a": 1.0, "b": None}, torch.zeros(2, 3, 8, 8), 2, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1.0, "b": None} and order == ["png"]
    before = (tmp_path / "metrics.json").read_text()

    def broken(self, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(Exception, match="metrics.json"):
        E.write_results({"a": 2.0}, torch.zeros(2, 3, 8, 8), 2, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "metrics.json").read_text() == before
    assert not list(tmp_path.glob(".metrics.json.tmp"))
