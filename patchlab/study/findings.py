"""What a report shows, in a few generated sentences and one short table: read from the report's own
tables, never typed by hand.

- :func:`summary` -> the three to five sentences that open a report's README.md
  (:func:`patchlab.study.reports.write_readme`).
- :func:`findings_table` -> the findings table of the top-level README, one column per committed report;
  ``python -m patchlab findings`` rewrites it between the README's ``findings`` markers, and
  ``--check`` fails when it is out of date (the tests run the check).

Only the standard library: the command works without the notebook extras.
"""

import argparse
import csv
import json
from pathlib import Path

BEGIN, END = "<!-- findings:begin (python -m patchlab findings) -->", "<!-- findings:end -->"
REPORTS = ("default", "long")  # the committed reports the README's table shows, in this order


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
    """The model ranked first on ``metric`` in ``tables/ranking.csv``, and whether its lead beats the noise
    floor ("N=2, a tie within the noise floor")."""
    for label, row in _rows(report_dir, "ranking").items():
        if row.get(f"{metric} rank") == "1":
            lead = row.get(f"{metric} lead > floor")
            return label + ("" if lead == "True" else ", a tie within the noise floor" if lead == "False" else "")
    return None


def _steps(report_dir) -> str:
    rows = list(_rows(report_dir, "training").values())
    return rows[0]["steps"] if rows else "?"


def summary(report_dir) -> list[str]:
    """Three to five sentences of what ``report_dir`` measured: which N saves what, which ranks best, what the
    seam remedies buy. Each number comes from the report's tables."""
    mq = _rows(report_dir, "memory_vs_quality")
    if not {"N=1", "N=2", "N=4"} <= set(mq):
        return []
    out = [f"One patch at a time, a training step needs {_ratios(mq, 'train x N=1')} of the N = 1 peak at "
           f"N = 2 / 4 and a sampling step {_ratios(mq, 'sample x N=1')}; at the paper's size (estimated) the "
           f"training step needs " + " / ".join(_g(_num(mq[k], "paper train GiB (est.)"), 3) for k in
                                                  ("N=1", "N=2", "N=4")) + " GiB for N = 1 / 2 / 4."]
    quality = " / ".join(_g(_num(mq[k], "SWD")) for k in ("N=1", "N=2", "N=4"))
    seams = " / ".join(_g(_num(mq[k], "seam")) for k in ("N=1", "N=2", "N=4"))
    ranked = _ranked(report_dir, "SWD")
    out.append(f"After {_steps(report_dir)} training steps SWD is {quality} for N = 1 / 2 / 4"
               + (f" (first: {ranked})" if ranked else "") + f", and the seam score {seams} (1: no seam).")
    if "N=1" in mq and "coherence" in mq["N=1"] and mq["N=1"]["coherence"] not in ("", None):
        coherent = " / ".join(_g(_num(mq[k], "coherence"), 2) for k in ("N=1", "N=2", "N=4"))
        out.append(f"Samples that are one consistent object: {coherent} for N = 1 / 2 / 4.")
    remedy = best_remedy(report_dir)
    if remedy is not None:
        grid = _rows(report_dir, "seam_remedies").get("N=2", {})
        out.append(f"The best seam remedy at N = 2, `{remedy['windows']}`, brings the seam score from "
                   f"{_g(_num(grid, 'seam'))} to {_g(_num(remedy, 'seam'))} and coherence to "
                   f"{_g(_num(remedy, 'coherence'), 2)} at {_g(_num(remedy, 'peak x grid'), 3)}x the peak and "
                   f"{_g(_num(remedy, 'time x grid'), 2)}x the time of the fixed grid one patch at a time.")
    return out


def _cells(report_dir) -> dict[str, str]:
    """{finding: cell} for one report."""
    mq = _rows(report_dir, "memory_vs_quality")
    remedy = best_remedy(report_dir)
    three = ("N=1", "N=2", "N=4")
    cells = {
        "training steps (shapes, 16 px)": _steps(report_dir),
        "training-step peak, N = 2 / 4 one patch at a time (x N = 1)": _ratios(mq, "train x N=1"),
        "sampling-step peak, N = 2 / 4 (x N = 1)": _ratios(mq, "sample x N=1"),
        "paper's size, training peak N = 1 / 2 / 4 (GiB, estimated)":
            " / ".join(_g(_num(mq.get(k), "paper train GiB (est.)")) for k in three),
        "SWD N = 1 / 2 / 4 (lower is better)": " / ".join(_g(_num(mq.get(k), "SWD")) for k in three),
        "ranks first on SWD": _ranked(report_dir, "SWD") or "-",
        "seam score N = 1 / 2 / 4 (1: no seam)": " / ".join(_g(_num(mq.get(k), "seam")) for k in three),
        "one consistent object, N = 1 / 2 / 4": " / ".join(_g(_num(mq.get(k), "coherence"), 2) for k in three),
        "seam at N = 2: both / no position / no GCC / neither":
            " / ".join(_g(_num(mq.get(k), "seam")) for k in ("N=2", "N=2 no position", "N=2 no GCC", "N=2 neither")),
    }
    if remedy is not None:
        cells["best remedy at N = 2: seam, coherence, time x grid"] = (
            f"`{remedy['windows']}`: {_g(_num(remedy, 'seam'))}, {_g(_num(remedy, 'coherence'), 2)}, "
            f"{_g(_num(remedy, 'time x grid'), 2)}x")
    return cells


def findings_table(reports_root, names=REPORTS) -> str:
    """The README's findings: one row per finding, one column per committed report
    (``reports_root/<name>/``), linked."""
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
                    "reports/default and reports/long; --check only says whether it is current.",
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
