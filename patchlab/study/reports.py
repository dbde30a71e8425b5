"""Tables (pandas -> CSV and Markdown), executed notebooks and the README of ``reports/<profile>/``.

The tables are built from the files the notebooks write (runs' ``metrics.csv``, ``tables/memory_steps.csv``,
``eval/<model>/metrics.json``), so an interactive run and a batch run leave the same artifacts.
Columns whose name ends in ``s`` after a space (``train step s``, ``time s``) are wall-clock
measurements and vary between runs; every other value is a deterministic function of the profile on
the same machine (CPU).
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..runs import read_metrics
from .experiments import PAPER_BATCH, VARIANTS, Run, slug

MIB = 2 ** 20
GIB = 2 ** 30
TIMING_SUFFIX = " s"  # table columns that are wall-clock times end with this
MEMORY_STEPS = "tables/memory_steps.csv"  # written by patchlab.study.experiments.profile_memory (notebook 03)
EVALUATIONS = "eval"  # eval/<model slug>/metrics.json, written by patchlab.study.experiments.evaluate (notebook 03)


def markdown_table(df: pd.DataFrame, *, digits: int = 4) -> str:
    """A GitHub Markdown table of ``df`` (``DataFrame.to_markdown``): floats to ``digits`` significant
    digits, missing values as ``-``, booleans as yes / no."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        return v.replace("|", "\\|") if isinstance(v, str) else v

    shown = pd.DataFrame({c: [cell(v) for v in df[c]] for c in df.columns}, dtype=object)
    return shown.to_markdown(index=False, floatfmt=f".{digits}g", missingval="-") + "\n"


def write_table(df: pd.DataFrame, stem, *, note: str = "") -> pd.DataFrame:
    """Write ``df`` to ``stem.csv`` and ``stem.md`` (with ``note`` under the table); returns ``df``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(markdown_table(df) + (f"\n{note}\n" if note else ""))
    return df


def training_table(runs: list[Run], stem) -> pd.DataFrame:
    """One row per run from its ``metrics.csv``: steps done, final mean loss, training time."""
    rows = []
    for run in runs:
        rows_logged = read_metrics(run.paths.metrics)
        last = rows_logged[-1] if rows_logged else None
        rows.append({"model": run.label, "run": run.path.name, "N": run.patches,
                     "parameters": _parameters(run),
                     "steps": int(last["step"]) if last is not None else 0,
                     "final loss": float(last["loss_avg"]) if last is not None else None,
                     "train time s": float(last["elapsed_s"]) if last is not None else None})
    return write_table(pd.DataFrame(rows), stem)


def _parameters(run: Run) -> int:
    from ..memory import estimating
    from ..model import PatchUNet, count_parameters

    with estimating():
        return count_parameters(PatchUNet(run.config.model))


def memory_quality_table(reports_dir, *, stem=None) -> pd.DataFrame:
    """The paper's table, measured: per model, peak memory and time of a training and a sampling step
    and the quality metrics, from ``tables/memory_steps.csv`` and ``eval/<model>/metrics.json`` under
    ``reports_dir``. Written to ``stem`` (default ``tables/memory_vs_quality``) as CSV and Markdown.
    """
    reports_dir = Path(reports_dir)
    steps = pd.read_csv(reports_dir / MEMORY_STEPS)
    order = [v.label for v in VARIANTS]
    labels = sorted(steps["label"].unique(), key=lambda x: order.index(x) if x in order else len(order))
    rows, features = [], set()
    for label in labels:
        mine = steps[steps["label"] == label]
        first = mine.iloc[0]
        row = {"model": label, "N": int(first["patches"]), "position": bool(first["position"]),
               "GCC": bool(first["gcc"])}
        for phase in ("train", "sample"):
            r = _one(mine, "profile", phase)
            base = _one(steps[steps["label"] == labels[0]], "profile", phase)
            row[f"{phase} peak MiB"] = r["peak_bytes"] / MIB
            row[f"{phase} x N=1"] = r["peak_bytes"] / base["peak_bytes"] if labels[0] == "N=1" else None
            if not pd.isna(r["allocator_step_peak_bytes"]):
                row[f"{phase} CUDA alloc MiB"] = r["allocator_step_peak_bytes"] / MIB
        for phase in ("train", "sample"):
            r = _one(mine, "profile", phase)
            row[f"{phase} step s"] = None if pd.isna(r["step_seconds"]) else float(r["step_seconds"])
        for phase in ("train", "sample"):
            r = _one(mine, "paper", phase)
            if r is not None:
                row[f"paper {phase} GiB (est.)"] = r["peak_bytes"] / GIB
        metrics_file = reports_dir / EVALUATIONS / slug(label) / "metrics.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            features.add(m["features"])
            row.update({"FID": m["fid"], "KID": m["kid"], "KID stderr": m["kid_stderr"], "SWD": m["swd"],
                        "seam": m["seam_fake"], "seam real": m["seam_real"], "coherence": m["coherence_fake"],
                        "samples": m["n_fake"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    note = _table_note(steps, features)
    write_table(df, stem or reports_dir / "tables" / "memory_vs_quality", note=note)
    return df


def _one(df: pd.DataFrame, scale: str, phase: str):
    sel = df[(df["scale"] == scale) & (df["phase"] == phase)]
    return None if sel.empty else sel.iloc[0]


def _table_note(steps: pd.DataFrame, features: set[str]) -> str:
    prof = steps[steps["scale"] == "profile"]
    parts = []
    if len(prof):
        r = prof.iloc[0]
        modes = ", ".join(sorted({str(m) for m in prof["patch_mode"]}))
        parts.append(f"Memory: tensor-level peak of one step (weights, gradients, activations, temporaries; "
                     f"patchlab.memory.profile_step), batch {int(r['batch'])}, patch mode {modes} "
                     f"(one pass per image at N=1), measured on {r['device']}; `x N=1` is the ratio to N=1.")
    if (steps["scale"] == "paper").any():
        parts.append(f"`paper ... (est.)`: the same models at the paper's size (128 px, dim 128, mults 1,2,4,8), "
                     f"estimated with fake tensors at batch {PAPER_BATCH['train']} (train) and {PAPER_BATCH['sample']} (sample).")
    if features:
        parts.append("Quality: FID/KID on features " + "; ".join(sorted(features)) +
                     ". SWD x 1e3. Seam score: 1 = no seam (real images score `seam real`). "
                     "Coherence: share of samples with one object of one colour (shapes only).")
    parts.append("Columns ending in ` s` are wall-clock seconds and vary between runs; the rest is deterministic.")
    return "\n\n".join(parts)


# --- executed notebooks and the README -------------------------------------------------------------


def _table_section(reports_dir: Path, stem: str, title: str) -> list[str]:
    md = reports_dir / "tables" / f"{stem}.md"
    if not md.is_file():
        return []
    return [f"## {title}", "", md.read_text().rstrip(), "", f"([CSV](tables/{stem}.csv))", ""]


def slim_notebook(path, *, max_output_bytes: int = 300_000) -> Path:
    """Drop widget state and any single output larger than ``max_output_bytes`` from an executed
    notebook (figures are saved as files next to it anyway); keeps it a few hundred kB."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            size = len(json.dumps(out))
            if size > max_output_bytes:
                kept.append(nbformat.v4.new_output("stream", name="stdout",
                                                   text=f"[output of {size // 1024} kB removed; see the files in reports/]\n"))
            else:
                kept.append(out)
        cell["outputs"] = kept
    nbformat.write(nb, path)
    return path


def write_readme(reports_dir, *, profile: str, params: dict, timings: dict[str, float], command: str) -> Path:
    """``reports_dir/README.md``: the memory/quality table and the figures inline, then the training runs,
    the notebooks with their wall times, and the parameters."""
    reports_dir = Path(reports_dir)
    lines = [f"# Reproduction: profile `{profile}`", "",
             f"Written by `{command}`; the executed notebooks are in [notebooks/](notebooks/).", ""]
    if params.get("description"):
        lines += [params["description"], ""]
    lines += _table_section(reports_dir, "memory_vs_quality", "Memory versus quality (the paper's table, measured)")
    captions = {
        "samples_scaling": "Samples of N = 1, 2, 4 from the same noise (patch borders in red)",
        "samples_ablations": "Ablations at N = 2: without position, without GCC, without either",
        "trajectory": "Denoising trajectory of one sample (N = 2): x_t and the predicted x0",
        "memory_vs_quality": "Peak memory of a step against quality, per model",
        "seam_inspector": "The seam inspector's default view (notebook 04 makes it interactive)",
        "training_loss": "Training loss of every run",
    }
    order = list(captions)
    figures = sorted((reports_dir / "figures").glob("*.png"),
                     key=lambda f: (order.index(f.stem) if f.stem in order else len(order), f.stem))
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            lines += [f"### {captions.get(fig.stem, fig.stem)}", "", f"![{fig.stem}](figures/{fig.name})", ""]
    lines += _table_section(reports_dir, "training", "Training runs")
    lines += ["## Notebooks", "", "| notebook | wall time s |", "|---|---:|"]
    lines += [f"| [{name}](notebooks/{name}.ipynb) | {t:.1f} |" for name, t in timings.items()]
    lines += [f"| total | {sum(timings.values()):.1f} |", ""]
    shown = {k: v for k, v in params.items() if k != "description"}
    lines += ["## Parameters", "", "```json", json.dumps(shown, indent=2), "```", ""]
    path = reports_dir / "README.md"
    path.write_text("\n".join(lines))
    return path
