"""patchlab.study.findings: the sentences and the README table come from the reports' own tables."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from patchlab.study import findings as F
from patchlab.study import reports as R
from patchlab.study import reproduce

ROOT = Path(__file__).resolve().parents[2]


def _copy(report: str, tmp_path) -> Path:
    """The tables of a committed report, copied (so a test may change them)."""
    out = tmp_path / report
    shutil.copytree(ROOT / "reports" / report / "tables", out / "tables")
    return out


def _row(report_dir, stem, label):
    with (Path(report_dir) / "tables" / f"{stem}.csv").open(newline="") as f:
        return next(r for r in csv.DictReader(f) if r["model"] == label)


def test_summary_quotes_the_reports_own_numbers(tmp_path):
    report = _copy("default", tmp_path)
    said = " ".join(F.summary(report))
    n2 = _row(report, "memory_vs_quality", "N=2")
    assert f"{float(n2['train x N=1']):.2g}x" in said and f"{float(n2['SWD']):.3g}" in said
    remedy = F.best_remedy(report)
    assert f"`{remedy['windows']}`" in said and f"{float(remedy['seam']):.3g}" in said
    assert 3 <= len(F.summary(report)) <= 5
    # change a number in the table: the sentence follows it
    path = report / "tables" / "memory_vs_quality.csv"
    path.write_text(path.read_text().replace(n2["SWD"], "12.345"))
    assert "12.3" in " ".join(F.summary(report))


def test_best_remedy_prefers_targets_met_then_the_lowest_seam(tmp_path):
    report = _copy("default", tmp_path)
    path = report / "tables" / "seam_remedies.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    for r in rows:
        r["targets met"] = ""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    at2 = [r for r in rows if r["N"] == "2" and r["windows"] != "grid"]
    assert F.best_remedy(report)["model"] == min(at2, key=lambda r: float(r["seam"]))["model"]
    assert F.best_remedy(tmp_path / "nowhere") is None and F.summary(tmp_path / "nowhere") == []


def test_the_readme_findings_table_is_current():
    """README.md's findings table is what the committed reports say (python -m patchlab findings rewrites it)."""
    assert F.update_readme(ROOT / "README.md", ROOT / "reports", check=True), \
        "README.md's findings table is out of date: run python -m patchlab findings"


def test_findings_command_rewrites_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{F.BEGIN}\nold table\n{F.END}\nafter\n")
    assert not F.update_readme(readme, ROOT / "reports", check=True)
    assert readme.read_text().count("old table") == 1  # --check writes nothing
    assert not F.update_readme(readme, ROOT / "reports")
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{F.END}\nafter\n") and "old table" not in text
    assert "[`long`](reports/long/README.md)" in text and F.update_readme(readme, ROOT / "reports", check=True)
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no findings markers"):
        F.update_readme(tmp_path / "bare.md", ROOT / "reports")


def test_report_readme_opens_with_what_the_run_shows(tmp_path):
    report = _copy("long", tmp_path)
    (report / "figures").mkdir()
    for stem in ("samples_scaling", "learning_curves"):
        (report / "figures" / f"{stem}.png").write_bytes(b"png")
    text = R.write_readme(report, profile="long", params={"steps": 4000}, timings={"01_train": 2.0},
                          command="python -m patchlab reproduce --profile long").read_text()
    order = [text.index(s) for s in ("figures/samples_scaling.png", "## What this run shows", "## Memory of one step",
                                     "## Quality of the samples", "## Figures", "figures/learning_curves.png")]
    assert order == sorted(order)
    memory = text[text.index("## Memory of one step"):text.index("## Quality of the samples")]
    quality = text[text.index("## Quality of the samples"):text.index("## Seam remedies")]
    assert "train x N=1" in memory and "SWD" not in memory.split("(All columns")[0]
    assert "SWD" in quality and "peak" not in quality.split("(All columns")[0]


def test_reproduction_record_keeps_the_last_run_from_scratch(tmp_path):
    nb = tmp_path / "notebooks"
    nb.mkdir()
    common = {"command": "c", "notebooks": {"01_train": 60.0}}
    reproduce.record_duration(nb, seconds=1800, runs_trained=10, runs_reused=0, complete=True, **common)
    assert reproduce.measured_minutes(tmp_path) == 30.0
    reproduce.record_duration(nb, seconds=120, runs_trained=0, runs_reused=10, complete=True, **common)
    record = json.loads((nb / reproduce.DURATION).read_text())
    assert record["last"]["minutes"] == 2.0 and record["last"]["runs_reused"] == 10
    assert reproduce.measured_minutes(tmp_path) == 30.0  # reusing runs does not measure the profile
    assert "From scratch this profile took 30 minutes" in F.duration_note(tmp_path)
    assert "reusing 10 trained runs" in F.duration_note(tmp_path)
    reproduce.record_duration(nb, seconds=600, runs_trained=3, runs_reused=0, complete=False, **common)
    assert reproduce.measured_minutes(tmp_path) == 30.0  # some notebooks only
    assert reproduce.measured_minutes(tmp_path / "nowhere") is None


def test_readme_only_rewrites_a_reports_readme_and_runs_nothing(tmp_path):
    report = _copy("default", tmp_path / "reports")
    out = reproduce.reproduce("default", root=str(tmp_path), publish=True, readme_only=True, progress=False)
    assert out == report and "## What this run shows" in (report / "README.md").read_text()
    assert not (tmp_path / "runs").exists() and not (report / "notebooks" / reproduce.DURATION).exists()


def _baselines(report_dir, patch2: float, split2: float, patch4: float, split4: float) -> None:
    rows = [("profile", "N=1 one pass", "", 0.1), ("profile", "N=2 sequential", "", patch2),
            ("profile", "N=1 micro-batched to N=2", 4, split2), ("profile", "N=4 sequential", "", patch4),
            ("profile", "N=1 micro-batched to N=4", 1, split4), ("paper", "N=2 sequential", "", "")]
    with (Path(report_dir) / "tables" / "baselines.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scale", "row", "images per pass", "step s"])
        w.writerows([(s, r, k if k != "" else 16, t) for s, r, k, t in rows])


def test_the_summary_says_which_step_is_faster_at_equal_memory(tmp_path):
    """Issue 20: at the memory of N = 2 and N = 4 one patch at a time, is the patch step or N = 1 micro-batched
    faster? The sentence and the README's cells follow the timed rows of tables/baselines.csv."""
    report = _copy("default", tmp_path)
    _baselines(report, 0.15, 0.18, 0.45, 0.3)
    said = " ".join(F.summary(report))
    assert "at N = 2's peak the patch step is 1.2x faster (0.15 s against 0.18 s)" in said
    assert "at N = 4's peak N = 1 in micro-batches of 1 is 1.5x faster (0.45 s against 0.3 s)" in said
    cells = F._cells(report)
    assert cells["step time at N = 4's peak: patches / N = 1 micro-batched"] == "0.45 s / 0.3 s"
    (report / "tables" / "baselines.csv").unlink()
    assert "micro-batches" not in " ".join(F.summary(report))
    assert not any("step time" in k for k in F._cells(report))


def test_findings_of_a_digits_report(tmp_path):
    """A digits report's tables hold recognizability where shapes hold coherence: the sentences and the README's
    cells say so, and a finding a report has nothing for is left out of its column."""
    report = _copy("default", tmp_path)
    path = report / "tables" / "memory_vs_quality.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    for i, r in enumerate(rows):
        r.pop("coherence")
        r.update({"confident": f"{0.6 - 0.1 * i:.2f}", "confident real": "0.94", "digit_fid": f"{10 + i}",
                  "digit_fid real": "3.5"})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    said = " ".join(F.summary(report))
    assert "Digits recognised with confidence >= 0.9: 0.6 / 0.5 / 0.4 for N = 1 / 2 / 4 (real held-out digits 0.94); " \
           "at N = 2 0.3 without position, 0.2 without GCC, 0.1 without either; digit FID 10 / 11 / 12 (two real " \
           "sets: 3.5)" in said
    cells = F._cells(report)
    assert cells["recognisable digits, N = 1 / 2 / 4 (real)"] == "0.6 / 0.5 / 0.4 (0.94)"
    assert "one consistent object, N = 1 / 2 / 4 (shapes)" not in cells


def test_when_n1_digits_become_recognizable_read_or_projected_from_its_curve(tmp_path):
    """Issue 21: does N = 1 reach half the real digits' confident share, and if not, where does its learning
    curve point? The sentence and the cell follow learning_curves.csv."""
    report = tmp_path / "digits"
    (report / "tables").mkdir(parents=True)
    (report / "tables" / "memory_vs_quality.csv").write_text(
        "model,N,confident,confident real,digit_fid,digit_fid real\nN=1,1,0.3,0.96,20,5\nN=2,2,0.2,0.96,30,5\n"
        "N=4,4,0.1,0.96,40,5\n")
    (report / "tables" / "training.csv").write_text("model,steps\nN=1,1500\n")  # the final evaluation's step
    curve = report / "tables" / "learning_curves.csv"
    curve.write_text("model,N,step,confident\nN=1,1,500,0.1\nN=1,1,1000,0.2\nN=1,1,1500,0.45\nN=2,2,1500,0.6\n")
    found = F.recognizable_at(report)  # the curve's last point (0.45, 64 samples) gives way to the evaluation's 0.3
    assert found["target"] == pytest.approx(0.48) and found["step"] is None and found["projected"] == 2400
    assert found["points"] == [(500, 0.1), (1000, 0.2), (1500, 0.3)]
    assert F._cells(report)["N = 1 recognisable (half the real share) at step"] == "not in 1500 (projected: about 2400)"
    assert "(0.1 / 0.2 / 0.3 at 500 / 1000 / 1500 steps; the last from the final evaluation); a straight line " \
           "through its last two points reaches it at about 2400 steps" in " ".join(F.summary(report))
    curve.write_text("model,N,step,confident\nN=1,1,500,0.1\nN=1,1,1000,0.5\nN=1,1,1500,0.4\n")
    assert F.recognizable_at(report)["step"] == 1000 and "at step 1000" in " ".join(F.summary(report))
    curve.write_text("model,N,step,confident\nN=1,1,500,0.3\nN=1,1,1000,0.2\n")
    assert F.recognizable_at(report)["projected"] is None and "do not rise" in " ".join(F.summary(report))
    assert F.recognizable_at(_copy("default", tmp_path)) is None  # shapes: no recognizability


def test_n1_trained_longer_alone_is_read_beside_the_profiles_curve(tmp_path):
    """Issue 21: when the profile's budget does not reach the target, the report's N = 1 trained alone for
    longer (<report>/n1_longer/curve.csv) says at which step it does, or that it does not; and the report's
    README shows that curve."""
    report = tmp_path / "digits"
    (report / "tables").mkdir(parents=True)
    (report / "tables" / "memory_vs_quality.csv").write_text(
        "model,N,confident,confident real\nN=1,1,0.3,0.96\nN=2,2,0.2,0.96\nN=4,4,0.1,0.96\n")
    (report / "tables" / "training.csv").write_text("model,steps\nN=1,1500\n")
    (report / "tables" / "learning_curves.csv").write_text("model,N,step,confident\nN=1,1,500,0.3\nN=1,1,1500,0.2\n")
    cell = "N = 1 recognisable (half the real share) at step"
    assert F.recognizable_at(report)["longer"] is None and F._cells(report)[cell] == "not in 1500"
    longer = report / F.LONGER
    longer.mkdir()
    (longer / "curve.csv").write_text("step,seam,confident,class_entropy,digit_fid\n750,1,0.3,2,300\n"
                                      "1500,1,0.4,2,250\n2250,1,0.5,2,200\n3000,1,0.45,2,190\n")
    found = F.recognizable_at(report)["longer"]
    assert found["step"] == 2250 and found["last_step"] == 3000 and F.longer_curve(report)[0] == (750, 0.3)
    assert F._cells(report)[cell] == "not in 1500; trained alone: 2250"
    said = " ".join(F.summary(report))
    assert "trained alone for 3000 steps ([n1_longer](n1_longer/)), it reaches it at step 2250 " \
           "(0.3 / 0.4 / 0.5 / 0.45 at 750 / 1500 / 2250 / 3000 steps)" in said
    (longer / "curve.csv").write_text("step,confident\n750,0.3\n1500,0.35\n")
    assert F._cells(report)[cell] == "not in 1500; trained alone: not in 1500 (0.35)"
    assert "it does not reach it either (0.3 / 0.35 at 750 / 1500 steps)" in " ".join(F.summary(report))
    (longer / "config.json").write_text(json.dumps({"train": {"steps": 1500}}))
    section = "\n".join(R._longer_section(report))
    assert "## N = 1 trained longer, alone" in section and "but for 1500 steps" in section
    assert re.search(r"\|\s*1500\s*\|\s*0\.35\s*\|", section)  # the curve's rows: step, confident


def test_the_committed_longer_run_is_the_digits_profiles_n1_but_for_its_steps():
    """reports/digits/n1_longer/config.json: the digits profile's N = 1 configuration, only more steps (and the
    device it ran on), so its curve continues the profile's."""
    from patchlab import config as C
    from patchlab.study import params as P

    folder = ROOT / "reports" / "digits" / F.LONGER
    committed = C.load_json(folder / "config.json")
    _, runs = P.run_values("digits")
    profile = C.from_params(**P.run_config(runs, patches=1, position=False, gcc=False))
    assert committed.train.steps > profile.train.steps
    same = committed.replace(steps=profile.train.steps, device=profile.train.device)
    assert same.to_dict() == profile.to_dict()
    steps = [s for s, _ in F.longer_curve(ROOT / "reports" / "digits")]
    assert steps and steps[-1] == committed.train.steps and steps == sorted(set(steps))


def test_findings_quote_the_intervals_of_tables_that_have_them(tmp_path):
    """Issue 30: where the tables hold 95% intervals (X_lo, X_hi), the sentences and cells quote them and say
    whether N = 2 ties with N = 1; the committed reports, written before intervals, read as before (the README
    test above)."""
    report = _copy("default", tmp_path)
    before = F._cells(report)
    path = report / "tables" / "memory_vs_quality.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    for r in rows:
        swd, coherent = float(r["SWD"]), float(r["coherence"])
        r.update({"SWD_lo": swd - 1, "SWD_hi": swd + 1, "coherence_lo": max(0, coherent - 0.1),
                  "coherence_hi": min(1, coherent + 0.1)})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    mq = {r["model"]: r for r in rows}
    cells = F._cells(report)
    n1 = mq["N=1"]
    swd = float(n1["SWD"])
    assert cells["SWD N = 1 / 2 / 4 (lower is better)"].startswith(
        f"{F._g(swd)} [{F._g(swd - 1)}, {F._g(swd + 1)}] / ")
    assert cells["seam score N = 1 / 2 / 4 (1: no seam)"] == before["seam score N = 1 / 2 / 4 (1: no seam)"]
    said = " ".join(F.summary(report))
    assert "for N = 1 / 2 / 4; N = 2 and N = 1 tie within the 95% intervals." in said or \
        "beyond the 95% intervals." in said

    def coherence(n1, n2):  # (value, low, high) of N = 1 and N = 2
        for r, (value, low, high) in ((mq["N=1"], n1), (mq["N=2"], n2)):
            r.update({"coherence": value, "coherence_lo": low, "coherence_hi": high})
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return " ".join(F.summary(report))

    said = coherence((0.5, 0.4, 0.6), (0.45, 0.35, 0.55))
    assert "Samples that are one consistent object: 0.5 [0.4, 0.6] / 0.45 [0.35, 0.55] / " in said
    assert "N = 2 and N = 1 tie within the 95% intervals." in said
    assert "N = 1 scores higher than N = 2 beyond the 95% intervals." in coherence((0.5, 0.4, 0.6), (0.2, 0.1, 0.3))
