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


def test_intervals_fold_into_one_markdown_cell_and_tables_without_them_render_as_before():
    df = pd.DataFrame({"model": ["N=1", "N=2"], "SWD": [95.966, 53.0], "SWD_lo": [90.1234, None],
                       "SWD_hi": [101.5, None], "KID": [0.1, 0.2]})
    folded = R.fold_intervals(df)
    assert list(folded.columns) == ["model", "SWD", "KID"]
    assert list(folded["SWD"]) == ["95.97 [90.12, 101.5]", "53"]  # a row without its interval: the value alone
    md = R.markdown_table(df)
    assert "95.97 [90.12, 101.5]" in md and "SWD_lo" not in md
    plain = df.drop(columns=["SWD_lo", "SWD_hi"])
    assert R.markdown_table(plain) == plain.to_markdown(index=False, floatfmt=".4g", missingval="-") + "\n"
    assert R.with_intervals(["SWD", "seam"]) == ["SWD", "SWD_lo", "SWD_hi", "seam", "seam_lo", "seam_hi"]


def _evaluation(tmp_path, label, **metrics):
    folder = tmp_path / R.EVALUATIONS / slug(label)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"fid": 3.0, "kid": 0.1, "kid_stderr": 0.01, "swd": 20.0,
                                                     "seam_fake": 1.2, "seam_real": 1.0, "n_fake": 8, "steps": 4,
                                                     "features": "offline: test", "dataset": "digits", **metrics}))


def test_quality_tables_carry_the_intervals_of_evaluations_that_have_them(tmp_path):
    (tmp_path / "tables").mkdir()
    pd.DataFrame(_memory_rows("N=1", 1, 4 * R.MIB) + _memory_rows("N=2", 2, R.MIB)).to_csv(
        tmp_path / R.MEMORY_STEPS, index=False)
    _evaluation(tmp_path, "N=1", swd_lo=18.0, swd_hi=22.0, confident_fake=0.5, confident_fake_lo=0.4,
                confident_fake_hi=0.6, confident_real=0.9)
    _evaluation(tmp_path, "N=2", confident_fake=0.3)  # written before intervals
    df = R.memory_quality_table(tmp_path)
    assert list(df["SWD_lo"])[0] == 18.0 and pd.isna(df["SWD_lo"].iloc[1]) and "FID_lo" not in df.columns
    assert df["confident_lo"].iloc[0] == 0.4
    md = (tmp_path / "tables" / "memory_vs_quality.md").read_text()
    assert "20 [18, 22]" in md and "0.5 [0.4, 0.6]" in md and "95% interval" in md


def test_ranking_calls_overlapping_intervals_a_tie(tmp_path):
    from patchlab.study import findings as F

    (tmp_path / "tables").mkdir()
    floor = {"swd": 0.5, "kid": 0.0001, "kid_stderr": 0.0, "n": 8}
    _evaluation(tmp_path, "N=1", swd=20.0, swd_lo=18.0, swd_hi=22.0, kid=0.1, kid_lo=0.09, kid_hi=0.11)
    _evaluation(tmp_path, "N=2", swd=21.0, swd_lo=19.0, swd_hi=23.0, kid=0.3, kid_lo=0.25, kid_hi=0.35)
    _evaluation(tmp_path, "N=4", swd=30.0, swd_lo=27.0, swd_hi=33.0, kid=0.2, kid_lo=0.15, kid_hi=0.25)
    df = R.ranking_table(tmp_path, floor).set_index("model")
    # SWD: N=1 first by 1.0, more than the noise floor, yet N=2's interval overlaps: a tie; N=4's does not
    assert df.loc["N=1", "SWD lead > floor"] is True
    assert df["SWD tied with first"].tolist() == [None, True, False]
    assert df["KID tied with first"].tolist() == [None, False, False]
    assert F._ranked(tmp_path, "SWD") == "N=1, a tie with N=2 within the 95% intervals"
    assert F._ranked(tmp_path, "KID") == "N=1"  # ahead beyond the intervals
    assert "tied with first" in (tmp_path / "tables" / "ranking.md").read_text()


def test_curve_gaps_say_whether_the_last_points_tie(tmp_path):
    rows = []
    for model, base in (("N=1", 10.0), ("N=2", 14.0)):
        for step, shift in ((100, 5.0), (200, 1.0)):
            value = base + shift
            rows.append({"model": model, "N": int(model[-1]), "step": step, "swd": value, "swd_lo": value - 1.5,
                         "swd_hi": value + 1.5, "seam": 1.0})
    df = R.curve_gaps(pd.DataFrame(rows), tmp_path / "gaps", against=("N=2",)).set_index("metric")
    assert df.loc["swd", "tie last"] is False and df.loc["seam", "tie last"] is None
    assert df.loc["swd", "gap first"] == 4.0
    old = R.curve_gaps(pd.DataFrame(rows).drop(columns=["swd_lo", "swd_hi"]), tmp_path / "old", against=("N=2",))
    assert "tie last" not in old.columns  # curves recorded before intervals: the table as before


def test_a_remedy_that_ties_with_n1_on_content_is_as_good():
    from patchlab.metrics import content

    column = content.for_dataset("digits").primary
    n1 = {"confident_fake": 0.5, "confident_fake_lo": 0.45, "confident_fake_hi": 0.55}
    assert R._as_good({"confident_fake": 0.6}, n1, column)  # higher
    assert R._as_good({"confident_fake": 0.48, "confident_fake_lo": 0.43, "confident_fake_hi": 0.53}, n1, column)
    assert not R._as_good({"confident_fake": 0.3, "confident_fake_lo": 0.25, "confident_fake_hi": 0.35}, n1, column)
    assert not R._as_good({"confident_fake": 0.48}, {"confident_fake": 0.5}, column)  # no intervals: lower
    assert R._as_good({"confident_fake": 0.1}, None, column) and R._as_good({}, n1, None)
