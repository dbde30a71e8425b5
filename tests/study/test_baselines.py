"""The fair memory study's report pieces that the smoke profile does not reach: the frontier's table and
figure (the smoke profile has paper_estimate off)."""

from types import SimpleNamespace

import pandas as pd

from patchlab.memory import frontier as F
from patchlab.study import baselines


def _rows():
    out = []
    for phase in ("train", "sample"):
        for lever in F.LEVERS:
            if phase in lever.phases:
                for precision in ("fp32", F.LOW_PRECISION[phase]):
                    a, b = 2.0 * F.GiB, 4096.0 * lever.patches ** -2
                    curve = F.Curve(phase, lever, precision, (a, b, 0.0))
                    out.append({"phase": phase, "lever": lever.name, "patches": lever.patches,
                                "changes_model": lever.changes_model(), "checkpointing": lever.execution.checkpointing,
                                "precision": precision, "floor_bytes": a, "coefficients": [a, b, 0.0],
                                "fit_error": 0.01,
                                "sizes": {str(g): curve.largest(g * F.GiB) for g in F.BUDGETS_GIB}})
    return out


def test_the_frontier_report_writes_its_table_and_figure(tmp_path, monkeypatch):
    rows = _rows()
    checks = [{"phase": "train", "lever": "N=1 plain", "precision": "fp32", "size": 512, "estimate_bytes": 100,
               "predicted_bytes": 103.0, "error": 0.03}]
    monkeypatch.setattr(F, "frontier", lambda **kwargs: (rows, checks))
    setup = SimpleNamespace(reports_dir=tmp_path, figure=lambda name: tmp_path / "figures" / name)
    table = baselines.frontier_report(setup, progress=False)
    assert len(table) == len(rows) and (tmp_path / "figures" / "frontier.png").stat().st_size > 1000
    written = pd.read_csv(tmp_path / "tables" / "frontier.csv")
    assert list(written["24 GiB"]) == [r["sizes"]["24"] for r in rows]
    note = (tmp_path / "tables" / "frontier.md").read_text()
    assert "largest 3.0%" in note and f"from {F.crossover(rows)} px for N=1" in note
