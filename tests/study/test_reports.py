"""patchlab.study.reports: Markdown tables, the memory/quality table built from files, slim notebooks, README."""

import json
import re

import nbformat
import pandas as pd

from patchlab.study import reports as R
from patchlab.study.variants import slug


def test_markdown_table():
    df = pd.DataFrame({"model": ["N=1", "a|b"], "peak": [1.23456, float("nan")], "ok": [True, False],
                       "KID": [None, 0.000123456]})
    lines = R.markdown_table(df).splitlines()
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in lines]
    assert cells[0] == ["model", "peak", "ok", "KID"]
    assert cells[1][1].endswith(":") and not cells[1][0].endswith(":")  # numbers right-aligned, text left
    assert cells[2] == ["N=1", "1.235", "yes", "-"] and cells[3] == ["a\\|b", "-", "no", "0.0001235"]


def _memory_rows(label, n, peak):
    return [{"label": label, "scale": "profile", "phase": phase, "patches": n, "position": n > 1, "gcc": n > 1,
             "batch": 2, "patch_mode": "sequential", "passes": n * n, "parameters": 10, "peak_bytes": peak * f,
             "weights_bytes": 1, "activations_bytes": 1, "temporaries_bytes": 1, "allocator_step_peak_bytes": None,
             "step_seconds": 0.5, "device": "cpu"} for phase, f in (("train", 2), ("sample", 1))]


def test_memory_quality_table_is_built_from_the_files(tmp_path):
    rows = _memory_rows("N=2", 2, R.MIB) + _memory_rows("N=1", 1, 4 * R.MIB)
    (tmp_path / "tables").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / R.MEMORY_STEPS, index=False)
    metrics = {"fid": 3.0, "kid": 0.1, "kid_stderr": 0.01, "swd": 20.0, "seam_fake": 1.2, "seam_real": 1.0,
               "coherence_fake": 0.5, "n_fake": 8, "features": "offline: test", "dataset": "shapes"}
    folder = tmp_path / R.EVALUATIONS / slug("N=2")
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    df = R.memory_quality_table(tmp_path)
    assert list(df["model"]) == ["N=1", "N=2"]  # the paper's order
    n2 = df.iloc[1]
    assert n2["train peak MiB"] == 2 and n2["train x N=1"] == 0.25 and n2["sample x N=1"] == 0.25
    assert n2["KID"] == 0.1 and pd.isna(df.iloc[0]["KID"])
    assert n2["coherence"] == 0.5 and "coherence real" not in df.columns  # shapes: the content score's column
    md = (tmp_path / "tables" / "memory_vs_quality.md").read_text()
    assert [c.strip() for c in md.split("|")[1:3]] == ["model", "N"] and "offline: test" in md and "wall-clock" in md
    assert pd.read_csv(tmp_path / "tables" / "memory_vs_quality.csv").shape == df.shape


def test_slim_notebook_drops_widget_state_and_big_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="small\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": "A" * 5000})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": "big"}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    R.slim_notebook(path, max_output_bytes=1000)
    out = nbformat.read(path, as_version=4)
    assert "widgets" not in out.metadata
    assert out.cells[0].outputs[0].text == "small\n" and "removed" in out.cells[0].outputs[1].text


def test_readme_shows_tables_and_figures(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "figures").mkdir()
    (tmp_path / "tables" / "training.md").write_text("| model |\n|---|\n| N=1 |\n")
    (tmp_path / "figures" / "trajectory.png").write_bytes(b"png")
    path = R.write_readme(tmp_path, profile="p", params={"description": "what it is", "steps": 3},
                          timings={"01_train": 1.0}, command="python -m patchlab reproduce --profile p")
    text = path.read_text()
    assert "# Reproduction: profile `p`" in text and "what it is" in text and '"steps": 3' in text
    assert "| N=1 |" in text and "![trajectory](figures/trajectory.png)" in text and "| total | 1.0 |" in text
