import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny import tiny_params
from patchlab import cli
from patchlab.config import from_dict

ROOT = Path(__file__).resolve().parents[1]


def _flags(**overrides):
    out = []
    for key, value in tiny_params(**overrides).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out


def _run(*args, check=True, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "patchlab", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


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


def test_train_then_sample_end_to_end(tmp_path):
    run = tmp_path / "run"
    out = _run("train", "--run-dir", str(run), "--no-progress", *_flags(steps=2))
    assert "2/2 steps" in out.stdout
    assert {p.name for p in run.iterdir()} >= {"config.json", "checkpoint.pt", "metrics.csv", "samples"}
    out = _run("sample", "--run-dir", str(run), "--n", "3", "--steps", "2", "--borders", "--no-progress",
               "--out", str(tmp_path / "s.png"), "--tensor-out", str(tmp_path / "s.pt"))
    assert (tmp_path / "s.png").is_file()
    images = torch.load(tmp_path / "s.pt", weights_only=True)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1


def test_config_file_and_options_combine(tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in tiny_params(steps=1).items()}))
    _run("train", "--run-dir", str(tmp_path / "r"), "--config", str(params), "--no-gcc", "--no-progress")
    cfg = from_dict(json.loads((tmp_path / "r" / "config.json").read_text()))
    assert cfg.model.gcc is False and cfg.train.steps == 1 and cfg.model.image_size == 16


def _losses(run):
    with open(run / "metrics.csv", newline="") as fh:
        return {int(r["step"]): r["loss"] for r in csv.DictReader(fh)}


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "patchlab", "train", "--run-dir", str(run), "--no-progress",
                             *_flags(steps=steps, checkpoint_every=2)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_killed_or_interrupted_run_resumes_exactly(tmp_path, how):
    """SIGKILL mid-run (or Ctrl-C), then the same command again: the same losses as one uninterrupted run."""
    steps = 120
    whole = tmp_path / "whole"
    _run("train", "--run-dir", str(whole), "--no-progress", *_flags(steps=steps, checkpoint_every=2))
    run = tmp_path / "run"
    proc = _start(run, steps)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    proc.wait(timeout=60)
    if how == "interrupt":
        assert proc.returncode == 130 and "interrupted" in proc.stdout.read()
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        assert state["step"] == max(_losses(run))  # the checkpoint holds every step that was logged
    stopped_at = max(_losses(run))
    assert stopped_at < steps
    _run("train", "--run-dir", str(run), "--no-progress", *_flags(steps=steps, checkpoint_every=2))
    assert _losses(run) == _losses(whole)  # identical strings: bit-identical losses
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
