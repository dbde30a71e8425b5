"""The memory benchmark runs end to end (tiny preset) and reports what the README table shows."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_memory_vs_patches_tiny(tmp_path, capsys):
    bench = _load("memory_vs_patches")
    out = tmp_path / "table.json"
    assert bench.main(["--preset", "tiny", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["phase"], r["patches"], r["patch_mode"]) for r in rows][:5] == [
        ("sample", 1, "batched"), ("sample", 2, "batched"), ("sample", 2, "sequential"), ("sample", 4, "batched"),
        ("sample", 4, "sequential")]
    assert len(rows) == 10
    for r in rows:
        if r["phase"] == "sample":  # measured: estimate equals measurement
            assert abs(r["estimate_vs_measure"] - 1) < 0.02 and r["measure"]["step_seconds"] > 0
        else:  # estimated only without --measure-train
            assert r["measure"] is None and r["time_ratio"] is None
    seq4 = rows[4]
    assert seq4["estimate_ratio"] < 0.5
    assert {t["target"] for t in data["targets"]} >= {"sample peak N=2 sequential / N=1",
                                                      "train peak N=4 sequential / N=1"}
    assert "x N=1" in capsys.readouterr().out


def test_ddp_scaling_estimates_from_the_committed_gpu_check():
    bench = _load("ddp_scaling")
    step = bench.h100_step_seconds()
    assert 0.05 < step < 1.0  # the N = 1 batched training step measured on the H100
    one, four, eight = bench.paper_time(step)
    assert one["allreduce_ms"] == 0 and 20 < one["total_h"] < 35  # the README's "about 28 hours on one H100"
    assert one["total_h"] / 4.5 < four["total_h"] < one["total_h"] / 3 and eight["total_h"] < four["total_h"]
    assert eight["allreduce_ms"] > four["allreduce_ms"] > 0


@pytest.mark.slow
def test_ddp_check_on_the_cpu(tmp_path, capsys):
    """The device check of the data-parallel path, run here on the CPU (gloo): a torchrun world of one
    trains what a plain process does."""
    bench = _load("ddp_check")
    assert bench.main(["--device", "cpu", "--processes", "1", "--steps", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ddp_check_cpu.json").read_text())
    assert result["loss_max_rel_diff"] < 1e-6 and len(result["loss_ddp"]) == 3
    assert "-> ok" in capsys.readouterr().out


@pytest.mark.slow
def test_speed_rows_ratios_and_targets(monkeypatch, capsys):
    """benchmarks/speed.py on a tiny model: plain and fast rows side by side, ratios to batched, targets."""
    import patchlab
    import patchlab.accel

    speed = _load("speed")
    monkeypatch.setattr(patchlab.accel, "COMPILE_BACKEND", "aot_eager")  # inductor's C++ build takes minutes
    cfg = patchlab.config.from_params(image_size=16, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
                                      device="cpu")
    rows = speed.measure(cfg, device="cpu", patches=(2,), batches={"train": 2, "sample": 2}, bf16=True, repeats=1,
                         progress=None)
    assert len(rows) == 16  # 2 phases x 2 precisions x plain/fast x batched/sequential
    assert {r["fast"] for r in rows} == {None, "compile"}
    assert {r["precision"] for r in rows} == {"fp32", "bf16", "bf16-weights"}
    for r in rows:
        assert r["x_batched"] == 1.0 if r["patch_mode"] == "batched" else r["x_batched"] > 0
        assert (r["compile_seconds"] is None) == (r["fast"] is None)
    targets = speed.check_targets(rows, "cpu")
    assert [t["target"] for t in targets] == ["train N=2 sequential / batched, fast path",
                                             "sample N=2 sequential / batched, fast path"]
    assert all(t["ok"] == (t["value"] <= t["bound"]) for t in targets)
    assert "x batched" in speed.format_rows(rows)


@pytest.mark.slow
def test_levers_benchmark_tiny(tmp_path, capsys):
    """benchmarks/levers.py: the fair rows timed side by side, and the equal-memory ratios."""
    bench = _load("levers")
    out = tmp_path / "levers.json"
    assert bench.main(["--image-size", "16", "--dim", "8", "--dim-mults", "1", "--batch", "4", "--repeats", "1",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    assert len(rows) == 8 and all(r["step_seconds"] > 0 and r["method"] == "measure" for r in rows.values())
    assert rows["N=1 checkpointed"]["peak_bytes"] < rows["N=1 one pass"]["peak_bytes"]
    assert set(data["ratios"]) == {"N=2", "N=4"} and "takes" in capsys.readouterr().out
