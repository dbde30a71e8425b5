"""What a report shows, in a few generated sentences and one short table: read from the report's own
tables, never typed by hand.

- :func:`summary` -> the three to five sentences that open a report's README.md
  (:func:`patchlab.study.reports.write_readme`).
- :func:`findings_table` -> the findings table of the top-level README, one column per committed report;
  ``python -m patchlab findings`` rewrites it between the README's ``findings`` markers, and
  ``--check`` fails when it is out of date (the tests run the check).

Where a table holds 95% intervals (``X_lo``, ``X_hi`` beside ``X``: :mod:`patchlab.metrics.uncertainty`) the
sentences and cells quote them, ``0.27 [0.22, 0.33]``, and a ranking within them is a tie; reports written before
intervals read as they always did (a ranking is a tie within the real-vs-real noise floor).

Only the standard library and :mod:`patchlab.metrics.uncertainty`: the command works without the notebook extras.
"""

import argparse
import csv
import json
from pathlib import Path

from ..metrics import uncertainty as U

BEGIN, END = "<!-- findings:begin (python -m patchlab findings) -->", "<!-- findings:end -->"
REPORTS = ("default", "long", "digits")  # the committed reports the README's table shows (those that exist), in order
CONTENT = ("coherence", "confident")  # the primary content columns (patchlab.metrics.content; not imported: stdlib only)


def _rows(report_dir, stem: str) -> dict[str, dict]:
    """{model label: row} of ``tables/<stem>.csv``; {} when the table is missing."""
    path = Path(report_dir) / "tables" / f"{stem}.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def _num(row: dict | None, key: str) -> float | None:
    value = (row or {}).get(key, "")
    return float(value) if value not in ("", None) else None


def _g(value: float | None, digits: int = 3) -> str:
    """A number to ``digits`` significant digits (no exponent for the ranges the tables hold)."""
    if value is None:
        return "-"
    text = f"{value:.{digits}g}"
    return f"{float(text):f}".rstrip("0").rstrip(".") if "e" in text else text


def _valued(row: dict | None, key: str, digits: int = 3) -> str:
    """A table's value (:func:`_g`) with its 95% interval when the table holds one: ``0.27 [0.22, 0.33]``."""
    interval, text = U.read(row, key), _g(_num(row, key), digits)
    if interval is None or text == "-":
        return text
    return f"{text} [{_g(interval.low, digits)}, {_g(interval.high, digits)}]"


def _values(rows: dict, key: str, labels, digits: int = 3) -> str:
    """``a / b / c``: the ``key`` of the rows ``labels`` (:func:`_valued`)."""
    return " / ".join(_valued(rows.get(label), key, digits) for label in labels)


def _ratios(rows: dict, key: str, labels=("N=2", "N=4")) -> str:
    return " / ".join(f"{_g(_num(rows.get(label), key), 2)}x" for label in labels)


def best_remedy(report_dir, patches: int = 2) -> dict | None:
    """The seam remedy at ``patches`` that meets most of its targets, then the lowest seam score: its row of
    ``tables/seam_remedies.csv`` (None when the report has no remedies)."""
    rows = [r for r in _rows(report_dir, "seam_remedies").values()
            if r["N"] == str(patches) and r["windows"] != "grid"]
    if not rows:
        return None
    return min(rows, key=lambda r: (r["targets met"] != "True", float(r["seam"])))


def _ranked(report_dir, metric: str) -> str | None:
    """The model ranked first on ``metric`` in ``tables/ranking.csv``, and whether it ties: with the models whose
    95% interval overlaps its own where the table holds intervals ("N=2, a tie with N=1 within the 95%
    intervals"), else when its lead is within the noise floor ("N=2, a tie within the noise floor")."""
    rows = _rows(report_dir, "ranking")
    tied = f"{metric} tied with first"
    for label, row in rows.items():
        if row.get(f"{metric} rank") == "1":
            if any(r.get(tied) in ("True", "False") for r in rows.values()):
                others = [other for other, r in rows.items() if r.get(tied) == "True"]
                return label + (f", a tie with {' and '.join(others)} within the 95% intervals" if others else "")
            lead = row.get(f"{metric} lead > floor")
            return label + ("" if lead == "True" else ", a tie within the noise floor" if lead == "False" else "")
    return None


def _steps(report_dir) -> str:
    rows = list(_rows(report_dir, "training").values())
    return rows[0]["steps"] if rows else "?"


def _content_key(row: dict | None) -> str | None:
    """The primary content column a table row holds (coherence for shapes, confident for digits)."""
    return next((k for k in CONTENT if (row or {}).get(k) not in ("", None)), None)


def _data(report_dir) -> str:
    """"shapes, 16 px" from the report's README parameters (the dataset and image size it was run with)."""
    path = Path(report_dir) / "README.md"
    text = path.read_text() if path.is_file() else ""
    if "```json" in text:
        try:
            params = json.loads(text.rsplit("```json", 1)[1].split("```", 1)[0])
            return f"{params.get('dataset', '?')}, {params.get('image_size', '?')} px"
        except (ValueError, IndexError):
            pass
    return "?"


def equal_memory(report_dir) -> list[tuple[int, float, float, int]]:
    """At the memory of N = 2 and N = 4 one patch at a time: (N, patch step s, N = 1 micro-batched step s,
    images per pass) from ``tables/baselines.csv`` (profile scale, timed side by side); [] without it."""
    path = Path(report_dir) / "tables" / "baselines.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = {r["row"]: r for r in csv.DictReader(f) if r["scale"] == "profile"}
    out = []
    for n in (2, 4):
        patch, split = rows.get(f"N={n} sequential"), rows.get(f"N=1 micro-batched to N={n}")
        if patch and split and patch["step s"] and split["step s"]:
            out.append((n, float(patch["step s"]), float(split["step s"]), int(split["images per pass"])))
    return out


def _equal_memory_sentence(report_dir) -> str | None:
    parts = []
    for n, patch, split, k in equal_memory(report_dir):
        faster = (f"the patch step is {split / patch:.2g}x faster" if patch < split
                  else f"N = 1 in micro-batches of {k} is {patch / split:.2g}x faster")
        parts.append(f"at N = {n}'s peak {faster} ({patch:.3g} s against {split:.3g} s)")
    if not parts:
        return None
    return ("Timed side by side at equal memory, with N = 1's batch split into micro-batches (the same gradient, "
            "the same model): " + "; ".join(parts) + ".")


def summary(report_dir) -> list[str]:
    """Three to five sentences of what ``report_dir`` measured: which N saves what, which ranks best, what the
    seam remedies buy. Each number comes from the report's tables."""
    mq = _rows(report_dir, "memory_vs_quality")
    if not {"N=1", "N=2", "N=4"} <= set(mq):
        return []
    paper = [_num(mq[k], "paper train GiB (est.)") for k in ("N=1", "N=2", "N=4")]
    out = [f"One patch at a time, a training step needs {_ratios(mq, 'train x N=1')} of the N = 1 peak at "
           f"N = 2 / 4 and a sampling step {_ratios(mq, 'sample x N=1')}"
           + (f"; at the paper's size (estimated) the training step needs "
              + " / ".join(_g(v, 3) for v in paper) + " GiB for N = 1 / 2 / 4." if None not in paper else ".")]
    quality = _values(mq, "SWD", ("N=1", "N=2", "N=4"))
    seams = _values(mq, "seam", ("N=1", "N=2", "N=4"))
    ranked = _ranked(report_dir, "SWD")
    out.append(f"After {_steps(report_dir)} training steps SWD is {quality} for N = 1 / 2 / 4"
               + (f" (first: {ranked})" if ranked else "") + f", and the seam score {seams} (1: no seam).")
    key = _content_key(mq["N=1"])
    if key == "coherence":
        coherent = _values(mq, "coherence", ("N=1", "N=2", "N=4"), 2)
        out.append(f"Samples that are one consistent object: {coherent} for N = 1 / 2 / 4{_against_n1(mq, key)}.")
    elif key == "confident":
        recognizable = _recognizable_words(report_dir)
        out.append(_digits_sentence(mq) + (f" {recognizable[0].upper()}{recognizable[1:]}." if recognizable else ""))
    remedy = best_remedy(report_dir)
    if remedy is not None:
        grid = _rows(report_dir, "seam_remedies").get("N=2", {})
        rkey = _content_key(remedy)
        out.append(f"The best seam remedy at N = 2, `{remedy['windows']}`, brings the seam score from "
                   f"{_valued(grid, 'seam')} to {_valued(remedy, 'seam')}"
                   + (f" and {rkey} to {_valued(remedy, rkey, 2)}" if rkey else "")
                   + f" at {_g(_num(remedy, 'peak x grid'), 3)}x the peak and "
                   f"{_g(_num(remedy, 'time x grid'), 2)}x the time of the fixed grid one patch at a time.")
    said = _equal_memory_sentence(report_dir)
    if said:
        out.append(said)
    return out


LONGER = "n1_longer"  # <report>/n1_longer/: the report's N = 1 trained alone for longer (`make digits-longer`)


def recognizable_at(report_dir, share: float = 0.5) -> dict | None:
    """When N = 1's samples become recognizable: the first point at which its ``confident`` share reaches
    ``share`` x that of real held-out digits, or, when no point does, the step a straight line through its last
    two points projects (None when they do not rise). The points: its learning curve
    (``tables/learning_curves.csv``, few samples each), the last one replaced by the final evaluation of the same
    step (``tables/memory_vs_quality.csv``, more samples). {target, step, projected, last_step, last, points,
    longer}; ``longer``: the same for the report's N = 1 trained alone for longer (:func:`longer_curve`), or None.
    None for a report without recognizability."""
    n1 = _rows(report_dir, "memory_vs_quality").get("N=1")
    real, final = _num(n1, "confident real"), _num(n1, "confident")
    path = Path(report_dir) / "tables" / "learning_curves.csv"
    if real is None or not path.is_file():
        return None
    points = _confident_points(path, model="N=1")
    if not points:
        return None
    if final is not None and str(points[-1][0]) == _steps(report_dir):
        points[-1] = (points[-1][0], final)
    out = _reaching(points, share * real)
    longer = longer_curve(report_dir)
    out["longer"] = _reaching(longer, share * real) if longer else None
    return out


def _reaching(points: list[tuple[int, float]], target: float) -> dict:
    """The first of ``points`` (step, share) at ``target``, else the step its last two points project."""
    reached = next((step for step, value in points if value >= target), None)
    out = {"target": target, "step": reached, "projected": None, "last_step": points[-1][0], "last": points[-1][1],
           "points": points}
    if reached is None and len(points) >= 2:
        (s0, v0), (s1, v1) = points[-2:]
        if v1 > v0:
            out["projected"] = int(round(s1 + (target - v1) * (s1 - s0) / (v1 - v0), -2))
    return out


def longer_curve(report_dir) -> list[tuple[int, float]]:
    """(step, confident share) of the learning curve in ``<report>/n1_longer/curve.csv``: the report's N = 1
    configuration trained alone for more steps (written by ``python -m patchlab train --curve-every``; its
    ``config.json`` beside it); [] when the report has none."""
    path = Path(report_dir) / LONGER / "curve.csv"
    return _confident_points(path) if path.is_file() else []


def _confident_points(path: Path, model: str | None = None) -> list[tuple[int, float]]:
    """(step, confident) of a learning-curve CSV, of the rows of ``model`` when it has a model column."""
    with path.open(newline="") as f:
        return [(int(r["step"]), float(r["confident"])) for r in csv.DictReader(f)
                if (model is None or r["model"] == model) and r.get("confident") not in ("", None)]


def _points_words(found: dict) -> str:
    return (" / ".join(_g(v, 2) for _, v in found["points"]) + " at "
            + " / ".join(str(s) for s, _ in found["points"]) + " steps")


def _recognizable_words(report_dir) -> str | None:
    found = recognizable_at(report_dir)
    if found is None:
        return None
    if found["step"] is not None:
        said = f"N = 1 reaches half the real digits' share ({found['target']:.2g}) at step {found['step']}"
    else:
        where = (f"a straight line through its last two points reaches it at about {found['projected']} steps"
                 if found["projected"] else "its last two points do not rise, so they project no step")
        said = (f"N = 1 does not reach half the real digits' share ({found['target']:.2g}) in {found['last_step']} "
                f"steps ({_points_words(found)}; the last from the final evaluation); {where}")
    longer = found["longer"]
    if longer is None:
        return said
    alone = f"trained alone for {longer['last_step']} steps ([{LONGER}]({LONGER}/))"
    if longer["step"] is not None:
        return f"{said}; {alone}, it reaches it at step {longer['step']} ({_points_words(longer)})"
    return f"{said}; {alone}, it does not reach it either ({_points_words(longer)})"


def _against_n1(mq: dict, key: str, label: str = "N=2") -> str:
    """The clause comparing ``label`` with N = 1 on the column ``key`` of ``tables/memory_vs_quality`` by their
    95% intervals ("; N = 2 and N = 1 tie within the 95% intervals", or which scores higher beyond them); empty
    where the table holds no intervals."""
    mine, n1 = U.read(mq.get(label), key), U.read(mq.get("N=1"), key)
    if mine is None or n1 is None:
        return ""
    n = label.split("=")[1]
    if mine.overlaps(n1):
        return f"; N = {n} and N = 1 tie within the 95% intervals"
    higher, lower = (f"N = {n}", "N = 1") if _num(mq[label], key) > _num(mq["N=1"], key) else ("N = 1", f"N = {n}")
    return f"; {higher} scores higher than {lower} beyond the 95% intervals"


def _digits_sentence(mq: dict) -> str:
    three = ("N=1", "N=2", "N=4")
    confident = _values(mq, "confident", three, 2)
    fid = _values(mq, "digit_fid", three, 3)
    ablations = [(k, words) for k, words in (("N=2 no position", "without position"), ("N=2 no GCC", "without GCC"),
                                             ("N=2 neither", "without either")) if k in mq]
    without = ("; at N = 2 " + ", ".join(f"{_valued(mq[k], 'confident', 2)} {words}" for k, words in ablations)
               if ablations else "")
    return (f"Digits recognised with confidence >= 0.9: {confident} for N = 1 / 2 / 4 (real held-out digits "
            f"{_g(_num(mq['N=1'], 'confident real'), 2)}){_against_n1(mq, 'confident')}{without}; digit FID {fid} "
            f"(two real sets: {_g(_num(mq['N=1'], 'digit_fid real'), 3)}).")


def _cells(report_dir) -> dict[str, str]:
    """{finding: cell} for one report."""
    mq = _rows(report_dir, "memory_vs_quality")
    remedy = best_remedy(report_dir)
    three = ("N=1", "N=2", "N=4")
    cells = {
        "data; training steps": f"{_data(report_dir)}; {_steps(report_dir)}",
        "training-step peak, N = 2 / 4 one patch at a time (x N = 1)": _ratios(mq, "train x N=1"),
        "sampling-step peak, N = 2 / 4 (x N = 1)": _ratios(mq, "sample x N=1"),
        "paper's size, training peak N = 1 / 2 / 4 (GiB, estimated)":
            " / ".join(_g(_num(mq.get(k), "paper train GiB (est.)")) for k in three),
        "SWD N = 1 / 2 / 4 (lower is better)": _values(mq, "SWD", three),
        "ranks first on SWD": _ranked(report_dir, "SWD") or "-",
        "seam score N = 1 / 2 / 4 (1: no seam)": _values(mq, "seam", three),
        "one consistent object, N = 1 / 2 / 4 (shapes)": _values(mq, "coherence", three, 2),
        "recognisable digits, N = 1 / 2 / 4 (real)":
            _values(mq, "confident", three, 2) + f" ({_g(_num(mq.get('N=1'), 'confident real'), 2)})",
        "N = 1 recognisable (half the real share) at step": _recognition_cell(report_dir),
        "seam at N = 2: both / no position / no GCC / neither":
            _values(mq, "seam", ("N=2", "N=2 no position", "N=2 no GCC", "N=2 neither")),
    }
    for n, patch, split, k in equal_memory(report_dir):
        cells[f"step time at N = {n}'s peak: patches / N = 1 micro-batched"] = f"{patch:.3g} s / {split:.3g} s"
    if remedy is not None:
        key = _content_key(remedy) or "coherence"
        cells["best remedy at N = 2: seam, coherence or confident, time x grid"] = (
            f"`{remedy['windows']}`: {_valued(remedy, 'seam')}, {_valued(remedy, key, 2)}, "
            f"{_g(_num(remedy, 'time x grid'), 2)}x")
    return {k: v for k, v in cells.items() if v.strip("-/ ()")}  # a finding the report has nothing for: -


def _recognition_cell(report_dir) -> str:
    found = recognizable_at(report_dir)
    if found is None:
        return "-"
    if found["step"] is not None:
        return str(found["step"])
    cell = f"not in {found['last_step']}" + (f" (projected: about {found['projected']})" if found["projected"] else "")
    longer = found["longer"]
    if longer is not None:
        cell += (f"; trained alone: {longer['step']}" if longer["step"] is not None
                 else f"; trained alone: not in {longer['last_step']} ({_g(longer['last'], 2)})")
    return cell


def findings_table(reports_root, names=REPORTS) -> str:
    """The README's findings: one row per finding, one column per committed report
    (``reports_root/<name>/``), linked."""
    names = [n for n in names if (Path(reports_root) / n / "tables").is_dir()]
    columns = {name: _cells(Path(reports_root) / name) for name in names}
    keys = list(dict.fromkeys(k for cells in columns.values() for k in cells))
    head = "| | " + " | ".join(f"[`{n}`](reports/{n}/README.md)" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    lines += [f"| {k} | " + " | ".join(columns[n].get(k, "-") for n in names) + " |" for k in keys]
    return "\n".join(lines)


FRONTIER = "frontier_paper_unet.json"  # python -m patchlab plan --frontier --json > reports/frontier_paper_unet.json


def frontier_sentence(reports_root, budget: str = "24") -> str | None:
    """Where patches pay, from the committed frontier (``reports_root/frontier_paper_unet.json``): the largest
    image that trains at ``budget`` GiB with each lever, and the size from which one image's activations
    outweigh the fixed state. None without the file."""
    path = Path(reports_root) / FRONTIER
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    size = {r["lever"]: r["sizes"][budget] for r in data["rows"] if (r["phase"], r["precision"]) == ("train", "fp32")}
    return (f"**Where patches pay** (the paper's UNet, batch 1, fp32, Adam; [{FRONTIER}](reports/{FRONTIER}), "
            f"`python -m patchlab plan --frontier`): within {budget} GiB a training step fits images up to "
            f"{size['N=1 plain']} px with N = 1, {size['N=1 checkpointed']} px with N = 1 and checkpointed blocks, "
            f"and {size['N=2 sequential']} / {size['N=4 sequential']} / {size['N=8 sequential']} px with N = 2 / 4 / 8 "
            f"one patch at a time. One image's activations outweigh the weights, gradients and Adam's state from "
            f"about {data['crossover_px']} px (N = 1 checkpointed): below that, N = 1 checkpointed (and micro-batched "
            f"for larger batches) stays within 2x of the floor every lever shares, without changing the model, so "
            f"patches have at most half of the peak to save; above it, patches are what let larger images train.")


def update_readme(readme, reports_root, *, check: bool = False) -> bool:
    """Write :func:`findings_table` (and :func:`frontier_sentence`) between the ``findings`` markers of ``readme``;
    with ``check`` write nothing.
    Returns whether the README already held the current table."""
    path = Path(readme)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no findings markers: put {BEGIN!r} and {END!r} where the table goes")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    sentence = frontier_sentence(reports_root)
    block = findings_table(reports_root) + (f"\n\n{sentence}" if sentence else "")
    new = f"{before}{BEGIN}\n{block}\n{END}{after}"
    if new != text and not check:
        path.write_text(new)
    return new == text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "findings", help="rewrite the README's findings table from the committed reports",
        description="Rewrite the findings table of README.md (between its findings markers) from "
                    "the committed reports (" + ", ".join(f"reports/{n}" for n in REPORTS) + "); --check only "
                    "says whether it is current.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--readme", default="README.md", help="the README to update")
    p.add_argument("--reports", default="reports", help="folder of the committed reports")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the table is out of date")
    p.set_defaults(handler=_findings)


def _findings(args: argparse.Namespace) -> int:
    current = update_readme(args.readme, args.reports, check=args.check)
    if args.check and not current:
        print(f"{args.readme}: the findings table is out of date; run python -m patchlab findings")
        return 1
    print(f"{args.readme}: findings table " + ("current" if current else "rewritten"))
    return 0


def duration_note(report_dir) -> str | None:
    """One sentence on how long the report's reproduction took (``notebooks/reproduction.json``)."""
    path = Path(report_dir) / "notebooks" / "reproduction.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    last, scratch = record.get("last"), record.get("from_scratch")
    parts = []
    if scratch:
        parts.append(f"From scratch this profile took {scratch['minutes']:.0f} minutes on {scratch['cpu_cores']} "
                     f"cores ({scratch['when']}, training {scratch['runs_trained']} runs)")
    if last and last is not scratch and last != scratch:
        parts.append(f"the last reproduction took {last['minutes']:.0f} minutes, reusing {last['runs_reused']} "
                     f"trained runs")
    return "; ".join(parts) + "." if parts else None
