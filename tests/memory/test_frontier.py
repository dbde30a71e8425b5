"""The frontier: fitted peak curves against direct estimates, largest sizes per budget, the CLI."""

import json

import pytest

from patchlab.execution import Execution
from patchlab.memory import frontier as F

SMALL = {"dim": 16, "dim_mults": (1, 2), "attn_heads": 2, "attn_dim_head": 8}  # a UNet the tests can afford


def test_a_curve_gives_the_largest_multiple_of_64_that_fits():
    curve = F.Curve("train", F.LEVERS[0], "fp32", (1.0 * F.GiB, 4096.0, 0.0))  # 1 GiB + 4 KiB per pixel
    # 8 GiB / 1.1 - 1 GiB = 6.27 GiB = 4096 * s^2  ->  s = 1282 px: 1280 is the largest multiple of 64
    assert curve.largest(8 * F.GiB) == 1280
    assert curve.largest(F.GiB) == 0  # the floor alone exceeds the usable budget
    assert curve.largest(8 * F.GiB, headroom=0.0) == 1344


@pytest.mark.slow
def test_small_frontier_fits_its_checks_and_orders_the_levers():
    levers = [F.LEVERS[0], F.LEVERS[1], F.LEVERS[3]]  # N=1 plain, N=1 checkpointed, N=4 sequential
    rows, checks = F.frontier(budgets_gib=(0.02, 0.05, 0.2), levers=levers, phases=("train",), base=SMALL,
                              fit_sizes=(64, 192, 320), check_sizes=(128, 256))
    assert len(rows) == 6 and len(checks) == 12
    assert max(abs(c["error"]) for c in checks) < 0.1, checks
    by = {(r["lever"], r["precision"]): r["sizes"] for r in rows}
    for precision in ("fp32", "bf16"):
        plain, ckpt, patches = (by[(lever.name, precision)] for lever in levers)
        sizes = list(plain)
        assert [plain[b] for b in sizes] == sorted(plain[b] for b in sizes)  # more budget, larger images
        assert all(ckpt[b] >= plain[b] and patches[b] >= plain[b] for b in sizes), (plain, ckpt, patches)
        assert patches[sizes[-1]] > plain[sizes[-1]]
    assert all(r["floor_bytes"] > 0 and r["changes_model"] == (r["patches"] > 1) for r in rows)
    text = F.format_frontier(rows, checks)
    assert "N=4 sequential" in text and "largest error is" in text
    assert F.crossover(rows) % F.STEP == 0


def test_the_fit_leaves_adams_update_out_and_adds_its_state():
    lever = F.Lever("N=2", 2, Execution(patch_mode="sequential"))
    full = F.estimate(lever, "train", "fp32", 64, SMALL).report.peak_bytes
    fitted = F.fitted_peak(lever, "train", "fp32", 64, SMALL)
    assert fitted == pytest.approx(full, rel=0.02)


@pytest.mark.slow
def test_at_24_gib_n4_sequential_trains_a_larger_image_than_n1_plain():
    """The issue's check, at the paper's UNet (fake tensors, about a minute)."""
    rows, _ = F.frontier(budgets_gib=(24,), levers=[F.LEVERS[0], F.LEVERS[3]], phases=("train",),
                         check_sizes=(512,))
    sizes = {(r["lever"], r["precision"]): r["sizes"]["24"] for r in rows}
    assert sizes[("N=4 sequential", "fp32")] > sizes[("N=1 plain", "fp32")] >= 512


def test_plan_frontier_refuses_the_options_of_one_plan(capsys):
    from patchlab.cli import main

    for extra in (["--budget", "8GiB"], ["--patches", "2"], ["--speed"], ["--phase", "sample"]):
        assert main(["plan", "--frontier", *extra]) != 0, extra
        assert "plan --frontier" in capsys.readouterr().err, extra
    assert main(["plan"]) != 0 and "needs --budget" in capsys.readouterr().err


def test_plan_frontier_json_shape(monkeypatch, capsys):
    """The JSON of ``plan --frontier`` (the frontier itself replaced by a small one)."""
    from patchlab.cli import main

    row = {"phase": "sample", "lever": "N=1 plain", "patches": 1, "changes_model": False, "checkpointing": "none",
           "precision": "fp32", "floor_bytes": 10, "coefficients": [10.0, 1.0, 0.0], "sizes": {"8": 64}}
    small = ([row], [{"phase": "sample", "lever": "N=1 plain", "precision": "fp32", "size": 128,
                      "estimate_bytes": 100, "predicted_bytes": 101.0, "error": 0.01}])
    monkeypatch.setattr(F, "frontier", lambda **kwargs: small)
    monkeypatch.setattr(F, "crossover", lambda rows: 64)
    assert main(["plan", "--frontier", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budgets_gib"] == list(F.BUDGETS_GIB) and out["rows"] == small[0] and out["crossover_px"] == 64
