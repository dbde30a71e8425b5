"""``python -m patchlab profile`` / ``plan``: table, JSON schema, sweeps, refusals, bad input."""

import argparse
import json

import pytest

from patchlab.cli import main
from patchlab.options import parse_bytes

TINY = ["--image-size", "16", "--dim", "16", "--dim-mults", "1,2", "--attn-heads", "2", "--attn-dim-head", "8",
        "--device", "cpu"]


def run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_profile_json_single_row_schema(capsys):
    rc, out, _ = run(capsys, "profile", *TINY, "--phase", "train", "--estimate", "--json", "--batch", "2")
    assert rc == 0
    row = json.loads(out)
    for key in ("peak_bytes", "weights_bytes", "gradients_bytes", "optimizer_state_bytes", "activations_bytes",
                "temporaries_bytes", "step_seconds", "device", "method", "config", "phase", "patches",
                "patch_mode", "batch", "peak_ratio"):
        assert key in row, key
    assert row["step_seconds"] is None and row["method"] == "estimate" and row["device"] == "cpu"
    assert row["config"]["image_size"] == 16 and row["batch"] == 2 and row["phase"] == "train"
    assert row["peak_bytes"] == sum(row[f"{c}_bytes"] for c in ("weights", "gradients", "optimizer_state",
                                                                  "activations", "temporaries"))


def test_profile_measured_has_time(capsys):
    rc, out, _ = run(capsys, "profile", *TINY, "--phase", "sample", "--json", "--batch", "2", "--repeats", "1")
    row = json.loads(out)
    assert rc == 0 and row["method"] == "measure" and row["step_seconds"] > 0


@pytest.mark.slow
def test_profile_sweep_table_and_json(capsys):
    args = ["profile", *TINY, "--phase", "sample", "--estimate", "--sweep-patches", "1", "2", "--modes",
            "batched", "sequential", "--batch", "2"]
    rc, out, _ = run(capsys, *args)
    assert rc == 0
    lines = out.strip().splitlines()
    assert "peak" in lines[1] and "x N=min" in lines[1]
    assert len(lines) == 2 + 3  # N=1 once, N=2 batched and sequential
    rc, out, _ = run(capsys, *args, "--json")
    rows = json.loads(out)["rows"]
    assert [(r["patches"], r["patch_mode"]) for r in rows] == [(1, "batched"), (2, "batched"), (2, "sequential")]
    assert rows[2]["peak_ratio"] < 1


def test_a_sweep_replaces_the_configured_n(capsys):
    """The configured N (2 by default) need not build at the size of a sweep that leaves it out: 18 px has
    9 px patches at N = 2, which the UNet's halving cannot divide; N = 1 and 3 build. Both at once: refused."""
    args = ["profile", *TINY, "--image-size", "18", "--phase", "train", "--estimate", "--json", "--batch", "2"]
    rc, out, err = run(capsys, *args, "--sweep-patches", "1", "3")
    assert rc == 0, err
    assert [r["patches"] for r in json.loads(out)["rows"]] == [1, 3]
    rc, out, err = run(capsys, *args, "--patches", "2")
    assert rc == 2 and "divisible" in err
    rc, out, err = run(capsys, *args, "--patches", "3", "--sweep-patches", "1", "3")
    assert rc == 2 and "not both" in err


@pytest.mark.slow
def test_profile_paper_preset_estimate(capsys):
    rc, out, _ = run(capsys, "profile", "--preset", "paper", "--phase", "sample", "--estimate", "--json",
                     "--batch", "1", "--modes", "sequential", "--image-size", "64")
    row = json.loads(out)
    assert rc == 0
    assert row["config"]["dim"] == 128 and row["config"]["dim_mults"] == [1, 2, 4, 8]
    assert row["config"]["image_size"] == 64  # options override the preset
    assert row["parameters"] > 120e6


@pytest.mark.slow
def test_plan_fits_and_refuses(capsys):
    rc, out, _ = run(capsys, "plan", *TINY, "--budget", "1GiB", "--batch", "2", "--json")
    plan = json.loads(out)
    assert rc == 0 and plan["fits"] and plan["patch_mode"] == "batched"
    rc, out, _ = run(capsys, "plan", *TINY, "--budget", "2KB", "--batch", "2")
    assert rc == 1
    assert "nothing fits" in out and "alone take" in out


def test_bad_input_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plan", *TINY, "--budget", "lots"])
    assert exc.value.code == 2
    assert "not a memory size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["profile", *TINY, "--patchez", "2"])
    rc, _, err = run(capsys, "profile", *TINY, "--image-size", "18", "--estimate")
    assert rc == 2 and "divisible" in err


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 * 2 ** 30
    assert parse_bytes("500MB") == 500 * 10 ** 6
    assert parse_bytes("1.5 kib") == 1536
    assert parse_bytes("1024") == 1024
    for bad in ("", "GB", "-1GB", "0", "3 parsecs"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bytes(bad)


@pytest.mark.slow
def test_plan_per_process_of_a_data_parallel_job(capsys):
    """``--world-size W`` plans one process: its part of the batch, and with --shard-optimizer (which
    implies Adam) its share of Adam's state; a batch that does not divide is refused."""
    peaks = {}
    for extra in ([], ["--world-size", "4"], ["--world-size", "4", "--shard-optimizer"]):
        rc, out, _ = run(capsys, "plan", *TINY, "--budget", "1GiB", "--batch", "8", "--optimizer", "adam",
                         "--json", *extra)
        plan = json.loads(out)
        assert rc == 0 and plan["world_size"] == (4 if extra else 1)
        peaks[" ".join(extra)] = plan["peak_bytes"]
    assert peaks[""] > peaks["--world-size 4"] > peaks["--world-size 4 --shard-optimizer"]
    assert "per process of 4 (2 images of the batch of 8 each, Adam's state sharded)" in plan["message"]
    rc, _, err = run(capsys, "plan", *TINY, "--budget", "1GiB", "--batch", "6", "--world-size", "4")
    assert rc == 2 and "batch_size=6 does not divide over 4 processes" in err
    rc, out, _ = run(capsys, "profile", *TINY, "--phase", "train", "--estimate", "--json", "--batch", "8",
                     "--world-size", "2", "--shard-optimizer", "--modes", "sequential")
    row = json.loads(out)
    assert rc == 0 and row["batch"] == 4 and row["optimizer"] == "adam 1/2" and row["optimizer_state_bytes"] > 0


@pytest.mark.slow
def test_profile_fast_times_the_compiled_step_and_reports_compilation_apart(capsys, monkeypatch):
    import patchlab.accel
    monkeypatch.setattr(patchlab.accel, "COMPILE_BACKEND", "aot_eager")  # inductor's C++ build takes minutes
    rc, out, _ = run(capsys, "profile", *TINY, "--phase", "train", "sample", "--modes", "batched", "sequential",
                     "--batch", "2", "--repeats", "1", "--fast", "--bf16-weights", "--json")
    rows = json.loads(out)["rows"]
    assert rc == 0 and len(rows) == 4
    for row in rows:
        assert row["fast"] == "compile" and row["compile_seconds"] >= 0 and row["step_seconds"] > 0
        assert row["precision"] == ("bf16-weights" if row["phase"] == "sample" else "fp32")
    rc, out, _ = run(capsys, "profile", *TINY, "--phase", "sample", "--batch", "2", "--repeats", "1", "--fast")
    assert rc == 0 and "compile s" in out and "compile" in out.splitlines()[-1]


def test_profile_refuses_graphs_off_cuda(capsys):
    rc, _, err = run(capsys, "profile", *TINY, "--phase", "sample", "--batch", "2", "--repeats", "1", "--cuda-graphs")
    assert rc == 2 and "CUDA device" in err


def test_plan_refuses_jobs_that_train_or_sample_would_refuse(capsys, tmp_path, monkeypatch):
    """Issue 19 items 5, 6, 10: a sampling step has no world size; a global-view model does not train
    data-parallel (``train`` refuses it, so ``plan`` must not say "fits"); a size from a config file that no
    model can have ends in one line, not an OverflowError traceback. All before any step is estimated."""
    import patchlab.memory.steps as S

    def no_work(*args, **kwargs):
        raise AssertionError("a step was estimated before the arguments were checked")

    monkeypatch.setattr(S, "profile_step", no_work)
    huge = tmp_path / "huge.json"
    huge.write_text('{"dim": 8e23}')
    huger = tmp_path / "huger.json"
    huger.write_text('{"dim": 8000000}')
    cases = [
        (["plan", *TINY, "--phase", "sample", "--world-size", "2", "--budget", "1GiB"],
         "world_size applies to the train phase"),
        (["plan", *TINY, "--coords", "--global-view", "0.5", "--world-size", "2", "--budget", "1GiB"],
         "cannot train data-parallel"),
        (["profile", "--config", str(huge), "--estimate"], "'dim' must be an integer"),
        (["profile", "--config", str(huger), "--estimate"], "dim must be at most"),
    ]
    for argv, words in cases:
        rc, _, err = run(capsys, *argv)
        assert rc == 2, argv
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
