"""Tables (pandas -> CSV and Markdown), executed notebooks and the README of ``reports/<profile>/``.

The tables are built from the files the notebooks write (runs' ``metrics.csv``, ``tables/memory_steps.csv``,
``eval/<model>/metrics.json``), so an interactive run and a batch run leave the same artifacts.
Columns whose name ends in ``s`` after a space (``train step s``, ``time s``) are wall-clock
measurements and vary between runs; every other value is a deterministic function of the profile on
the same machine (CPU). A quality column ``X`` may have its 95% interval beside it, ``X_lo`` and ``X_hi``
(:mod:`patchlab.metrics.uncertainty`; evaluations written before intervals have none): the CSV keeps the
three columns, the Markdown shows them in one cell, ``X [lo, hi]``.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import tiling as T
from ..metrics import content
from ..metrics import uncertainty as U
from ..runs import read_metrics
from .variants import PAPER_BATCH, VARIANTS, Run, slug

MIB = 2 ** 20
GIB = 2 ** 30
TIMING_SUFFIX = " s"  # table columns that are wall-clock times end with this
MEMORY_STEPS = "tables/memory_steps.csv"  # written by patchlab.study.measure.profile_memory (notebook 03)
EVALUATIONS = "eval"  # eval/<model slug>/metrics.json, written by patchlab.study.measure.evaluate (notebook 03)


def markdown_table(df: pd.DataFrame, *, digits: int = 4) -> str:
    """A GitHub Markdown table of ``df`` (``DataFrame.to_markdown``): floats to ``digits`` significant
    digits, missing values as ``-``, booleans as yes / no; a column ``X`` with ``X_lo`` and ``X_hi`` beside it
    as one column ``X`` of cells ``value [lo, hi]`` (:func:`fold_intervals`)."""
    df = fold_intervals(df, digits=digits)

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        return v.replace("|", "\\|") if isinstance(v, str) else v

    shown = pd.DataFrame({c: [cell(v) for v in df[c]] for c in df.columns}, dtype=object)
    return shown.to_markdown(index=False, floatfmt=f".{digits}g", missingval="-") + "\n"


def fold_intervals(df: pd.DataFrame, *, digits: int = 4) -> pd.DataFrame:
    """``df`` with every column ``X`` that has ``X_lo`` and ``X_hi`` (:func:`patchlab.metrics.uncertainty.columns`)
    shown as text ``value [lo, hi]`` (``value`` alone where the bounds are missing), the bounds' columns dropped;
    other columns unchanged."""
    def missing(v):
        return v is None or (isinstance(v, float) and math.isnan(v))

    def text(v, lo, hi):
        if missing(v):
            return None
        return f"{v:.{digits}g}" + ("" if missing(lo) or missing(hi) else f" [{lo:.{digits}g}, {hi:.{digits}g}]")

    out = df
    for column in df.columns:
        lo, hi = U.columns(str(column))
        if lo in df.columns and hi in df.columns:
            out = out.assign(**{column: [text(*cells) for cells in zip(df[column], df[lo], df[hi])]})
            out = out.drop(columns=[lo, hi])
    return out


def with_intervals(columns: list[str]) -> list[str]:
    """``columns`` with each one's interval columns (``X_lo``, ``X_hi``) after it, for choosing columns of a
    table that may hold them."""
    return [c for column in columns for c in (column, *U.columns(column))]


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
    rows, features, notes = [], set(), set()
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
            row.update({**U.with_interval(m, "fid", "FID"), **U.with_interval(m, "kid", "KID"),
                        "KID stderr": m["kid_stderr"], **U.with_interval(m, "swd", "SWD"),
                        **U.with_interval(m, "seam_fake", "seam"), "seam real": m["seam_real"],
                        **content.values(m, references=True, intervals=True), "samples": m["n_fake"]})
            notes.add(content.for_dataset(m.get("dataset", "")).describe(m))
        rows.append(row)
    df = pd.DataFrame(rows)
    note = _table_note(steps, features, notes, intervals=_has_intervals(df))
    write_table(df, stem or reports_dir / "tables" / "memory_vs_quality", note=note)
    return df


def _has_intervals(df: pd.DataFrame) -> bool:
    """Whether a table holds any interval (a column ``X_lo`` with a value)."""
    return any(str(c).endswith(U.LO) and df[c].notna().any() for c in df.columns)


def _one(df: pd.DataFrame, scale: str, phase: str):
    sel = df[(df["scale"] == scale) & (df["phase"] == phase)]
    return None if sel.empty else sel.iloc[0]


INTERVALS_NOTE = ("`[lo, hi]` (CSV: `X_lo`, `X_hi`): the 95% interval of the samples' value: Wilson for shares "
                  "(`confident`, `coherence`), else over resamples of the samples (the bootstrap; half-samples for "
                  "FID and digit FID), the real images fixed. Two models whose intervals overlap tie.")


def _table_note(steps: pd.DataFrame, features: set[str], content_notes: set[str] = frozenset(), *,
                intervals: bool = False) -> str:
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
                     f"estimated with fake tensors at batch {PAPER_BATCH['train']} (train) "
                     f"and {PAPER_BATCH['sample']} (sample).")
    if features:
        parts.append("Quality: FID/KID on features " + "; ".join(sorted(features)) +
                     ". SWD x 1e3. Seam score: 1 = no seam (real images score `seam real`)." +
                     "".join(f" {n}" for n in sorted(content_notes) if n))
    if intervals:
        parts.append(INTERVALS_NOTE)
    if steps["label"].isin([v.label for v in VARIANTS if v.remedy]).any():
        parts.append("Rows `shifted`, `overlap` and `global` (seam remedies, models trained with window coordinates): "
                     "their seam scores look at every line where a window border fell during sampling, not only at "
                     "the fixed grid (tables/seam_remedies.md names the lines); their sampling step is measured with "
                     "the remedy's windows (`global`: the mean step over the sampler's steps, the larger peak of "
                     "its two kinds of step).")
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
                                                   text=f"[output of {size // 1024} kB removed; "
                                                        "see the files in reports/]\n"))
            else:
                kept.append(out)
        cell["outputs"] = kept
    nbformat.write(nb, path)
    return path


MEMORY_COLUMNS = ["model", "N", "position", "GCC", "train peak MiB", "train x N=1", "sample peak MiB", "sample x N=1",
                  "train step s", "sample step s", "paper train GiB (est.)", "paper sample GiB (est.)"]
QUALITY_COLUMNS = ["model", "N", "position", "GCC", *with_intervals(["FID", "KID"]), "KID stderr",
                   *with_intervals(["SWD", "seam"]), "seam real",
                   *[k for c in content.ALL_COLUMNS for k in (*with_intervals([c]), f"{c} real")], "samples"]
FIGURE_CAPTIONS = {
    "samples_scaling": "Samples of N = 1, 2, 4 from the same noise (patch borders in red)",
    "samples_ablations": "Ablations at N = 2: without position, without GCC, without either",
    "samples_remedies": "Seam remedies at N = 2 (red: every line where a window border fell)",
    "learning_curves": "Quality against training steps, per model",
    "handover": "Coarse to fine: coherence and seams against the steps left to the windows",
    "trajectory": "Denoising trajectory of one sample (N = 2): x_t and the predicted x0",
    "memory_vs_quality": "Peak memory of a step against quality, per model",
    "pareto": "Every lever: training step memory against quality and against time (profile size)",
    "frontier": "The largest image each lever trains and samples per budget (the paper's UNet, batch 1)",
    "seam_inspector": "The seam inspector's default view (notebook 04 makes it interactive)",
    "training_loss": "Training loss of every run",
}


def _columns_section(reports_dir: Path, stem: str, columns: list[str], title: str) -> list[str]:
    """A section showing some ``columns`` of ``tables/<stem>.csv`` (those it has)."""
    csv = reports_dir / "tables" / f"{stem}.csv"
    if not csv.is_file():
        return []
    df = pd.read_csv(csv)
    shown = df[[c for c in columns if c in df.columns]]
    return [f"## {title}", "", markdown_table(shown).rstrip(), "",
            f"(All columns and how they were measured: [{stem}.md](tables/{stem}.md), [CSV](tables/{stem}.csv).)", ""]


def _longer_section(reports_dir: Path) -> list[str]:
    """The learning curve of ``<report>/n1_longer/`` (N = 1 trained alone for longer), when the report has one."""
    from .findings import LONGER

    folder = reports_dir / LONGER
    if not (folder / "curve.csv").is_file():
        return []
    df = pd.read_csv(folder / "curve.csv")
    shown = df[[c for c in ("step", "confident", "class_entropy", "digit_fid", "kid", "swd", "seam") if c in df]]
    steps = json.loads((folder / "config.json").read_text())["train"]["steps"]
    return ["## N = 1 trained longer, alone", "",
            f"The N = 1 run of this profile, its configuration unchanged but for {steps} steps "
            f"([config.json]({LONGER}/config.json); `make digits-longer` retrains it): its learning curve "
            f"([CSV]({LONGER}/curve.csv), training losses in [metrics.csv]({LONGER}/metrics.csv)).", "",
            markdown_table(shown).rstrip(), ""]


def write_readme(reports_dir, *, profile: str, params: dict, timings: dict[str, float], command: str) -> Path:
    """``reports_dir/README.md``: what the run shows first (the samples figure and sentences generated from its
    own numbers, :func:`patchlab.study.findings.summary`), then memory apart from quality, the remedies,
    the other tables and figures, the training runs, the notebooks with their wall times and the parameters."""
    from .findings import duration_note, summary

    reports_dir = Path(reports_dir)
    lines = [f"# Reproduction: profile `{profile}`", "",
             f"Written by `{command}`; the executed notebooks are in [notebooks/](notebooks/)."]
    took = duration_note(reports_dir)
    lines += [took, ""] if took else [""]
    if params.get("description"):
        lines += [params["description"], ""]
    figures = {f.stem: f for f in sorted((reports_dir / "figures").glob("*.png"))}
    if "samples_scaling" in figures:
        lines += [f"![{FIGURE_CAPTIONS['samples_scaling']}](figures/samples_scaling.png)", ""]
    said = summary(reports_dir)
    if said:
        lines += ["## What this run shows", "", " ".join(said), ""]
    lines += _columns_section(reports_dir, "memory_vs_quality", MEMORY_COLUMNS, "Memory of one step")
    lines += _columns_section(reports_dir, "memory_vs_quality", QUALITY_COLUMNS, "Quality of the samples")
    lines += _table_section(reports_dir, "baselines", "Against micro-batches and checkpointing: when do patches pay?")
    lines += _table_section(reports_dir, "frontier", "The frontier: the largest image each lever reaches")
    lines += _table_section(reports_dir, "seam_remedies", "Seam remedies: seam-free patches at the memory of one patch")
    lines += _table_section(reports_dir, "handover", "Coarse to fine: where the global view hands over to the windows")
    lines += _table_section(reports_dir, "ranking", "Does N = 1 rank best? (against the real-vs-real noise floor)")
    lines += _table_section(reports_dir, "curve_gaps", "Quality against training: does the gap to N = 1 shrink?")
    order = list(FIGURE_CAPTIONS)
    rest = sorted((f for stem, f in figures.items() if stem != "samples_scaling"),
                  key=lambda f: (order.index(f.stem) if f.stem in order else len(order), f.stem))
    if rest:
        lines += ["## Figures", ""]
        for fig in rest:
            lines += [f"### {FIGURE_CAPTIONS.get(fig.stem, fig.stem)}", "", f"![{fig.stem}](figures/{fig.name})", ""]
    lines += _table_section(reports_dir, "learning_curves", "Learning curves (last point of each run)")
    lines += _longer_section(reports_dir)
    lines += _table_section(reports_dir, "training", "Training runs")
    lines += ["## Notebooks", "", "| notebook | wall time s |", "|---|---:|"]
    lines += [f"| [{name}](notebooks/{name}.ipynb) | {t:.1f} |" for name, t in timings.items()]
    lines += [f"| total | {sum(timings.values()):.1f} |", ""]
    shown = {k: v for k, v in params.items() if k != "description"}
    lines += ["## Parameters", "", "```json", json.dumps(shown, indent=2), "```", ""]
    path = reports_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


# --- seam remedies and learning curves -----------------------------------------------------------------

REMEDY_TARGETS = {"seam": 1.5, "peak": 1.1, "time": 2.5}  # at N = 2: seam score, x the fixed grid's step


def remedies_table(reports_dir, *, stem=None) -> pd.DataFrame:
    """The seam remedies beside the paper's method, per N: seam score on every border line, coherence,
    KID, SWD (with their 95% intervals where the evaluations hold them), the sampling step's peak and time
    relative to the fixed grid one patch at a time, and whether a remedy at N = 2 meets its targets (its content
    score at least N = 1's or tied with it: :func:`_as_good`). Built from ``tables/memory_steps.csv`` and
    ``eval/<model>/metrics.json``; written to ``stem`` (default ``tables/seam_remedies``)."""
    reports_dir = Path(reports_dir)
    steps = pd.read_csv(reports_dir / MEMORY_STEPS)
    sample = steps[(steps["scale"] == "profile") & (steps["phase"] == "sample")].set_index("label")
    n1 = _metrics(reports_dir, "N=1")
    rows, score = [], content.NO_CONTENT
    for label in [v.label for v in VARIANTS if v.coords or v.label in ("N=2", "N=4")]:
        m = _metrics(reports_dir, label)
        if m is None or label not in sample.index:
            continue
        v = next(x for x in VARIANTS if x.label == label)
        score = content.for_dataset(m.get("dataset", ""))
        key = score.primary.key if score.primary else None
        base = sample.loc[f"N={v.patches}"] if f"N={v.patches}" in sample.index else None
        row = {"model": label, "N": v.patches, "windows": v.windows, **U.with_interval(m, "seam_fake", "seam"),
               "seam real": m["seam_real"], "seam lines": m.get("seam_lines", ""),
               **({**U.with_interval(m, f"{key}_fake", key), f"{key} N=1": n1[f"{key}_fake"] if n1 else None}
                  if key else {}),
               **U.with_interval(m, "kid", "KID"), **U.with_interval(m, "swd", "SWD"),
               "sample peak MiB": sample.loc[label, "peak_bytes"] / MIB,
               "peak x grid": sample.loc[label, "peak_bytes"] / base["peak_bytes"] if base is not None else None,
               "sample step s": sample.loc[label, "step_seconds"],
               "time x grid": (sample.loc[label, "step_seconds"] / base["step_seconds"]
                               if base is not None and base["step_seconds"] else None)}
        if v.patches == 2 and v.remedy:
            row["targets met"] = bool(row["seam"] <= REMEDY_TARGETS["seam"] and _as_good(m, n1, score.primary)
                                      and row["peak x grid"] <= REMEDY_TARGETS["peak"]
                                      and (row["time x grid"] is None or row["time x grid"] <= REMEDY_TARGETS["time"]))
        rows.append(row)
    df = pd.DataFrame(rows)
    intervals = _has_intervals(df)
    note = ("Seam remedies (models trained with continuous window coordinates on randomly shifted grids; "
            "`coords`: sampled on the fixed grid, `shifted`: the grid moves by half a patch at every other "
            "step, `overlap`: windows every half patch blended with tent weights; `global`: coarse to fine, a model "
            "also trained on the global view, the whole image pooled to one patch at its own noise level, which "
            f"denoises the steps at timesteps >= {T.GLOBAL_FROM} T, overlapping windows the others, trained on "
            "those fine steps only (`windows_below`, in the run's config); its step time is "
            "the mean over the sampler's steps, its peak the larger of the two kinds). `seam`: seam score on every "
            "line where a window border fell during sampling (`seam lines`, in pixels; lines within 3 pixels of "
            "the edge have no reference and are left out); `seam real`: real images on the same lines. "
            "`peak x grid` and `time x grid`: the sampling step relative to the fixed grid of the same N one "
            "patch at a time (the memory-saving mode). Targets at N = 2: seam <= "
            f"{REMEDY_TARGETS['seam']}, {_target_words(score.primary, intervals)}peak <= {REMEDY_TARGETS['peak']}x, "
            f"time <= {REMEDY_TARGETS['time']}x. Columns ending in ` s` are wall-clock seconds."
            + (f" {INTERVALS_NOTE}" if intervals else ""))
    return write_table(df, stem or reports_dir / "tables" / "seam_remedies", note=note)


def handover_table(rows: list[dict], reports_dir, *, stem=None) -> pd.DataFrame:
    """The coarse-to-fine remedy at each hand-over ``global_from`` (:func:`patchlab.study.measure.handover_sweep`),
    with N = 1's primary content score (coherence for shapes) beside it; written to ``stem`` (default
    ``tables/handover``)."""
    reports_dir = Path(reports_dir)
    n1 = _metrics(reports_dir, "N=1")
    df = pd.DataFrame(rows)
    key = content_key(df)
    if len(df) and key:
        after = next(c for c in (U.columns(key)[1], key) if c in df.columns)  # after its interval, if any
        df.insert(df.columns.get_loc(after) + 1, f"{key} N=1", n1[f"{key}_fake"] if n1 else None)
    note = ("The coarse-to-fine remedy (`global`) with the hand-over moved: the global view (the whole image "
            "pooled to one patch) denoises the DDIM steps at timesteps >= `global from` x T, overlapping windows "
            "the rest (`global steps` / `window steps`; 0: no window step, 1: no global step, i.e. the "
            "`overlap` sampler of the same model; values above the model's `windows_below` are left out: its "
            "windows never learnt those steps). Same model, noise and real images in every row; the seam "
            "score looks at the overlapping windows' border lines in every row. The remedy's rows in "
            f"seam_remedies use `global from` = {T.GLOBAL_FROM}, fixed from a trial run (another seed) before this "
            "sweep." + (f" {INTERVALS_NOTE}" if _has_intervals(df) else ""))
    return write_table(df, stem or reports_dir / "tables" / "handover", note=note)


def _metrics(reports_dir: Path, label: str) -> dict | None:
    path = reports_dir / EVALUATIONS / slug(label) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


CURVE_METRICS = {"seam": "seam score (1 = no seam)", "kid": "KID (offline features)", "swd": "SWD x 1e3",
                 **{c.key: c.title for s in content.SCORES.values() for c in s.columns},
                 "mean": "mean pixel value (real: dashed)"}  # every metric a learning curve may hold, titled


def _as_good(mine: dict, n1: dict | None, column) -> bool:
    """Whether a remedy's evaluation ``mine`` scores at least N = 1's (``n1``) on the primary content column, or
    ties with it (their 95% intervals overlap); True without the column or N = 1's value."""
    key = f"{column.key}_fake" if column is not None else None
    if key is None or n1 is None or mine.get(key) is None or n1.get(key) is None:
        return True
    if mine[key] >= n1[key] if column.higher_is_better else mine[key] <= n1[key]:
        return True
    return bool(U.tie(U.read(mine, key), U.read(n1, key)))


def _target_words(column, intervals: bool = False) -> str:
    if column is None:
        return ""
    return (f"{column.key} {'>=' if column.higher_is_better else '<='} N = 1's"
            + (" or tied with it (overlapping intervals)" if intervals else "") + ", ")


def content_key(table: pd.DataFrame) -> str | None:
    """The primary content column a study table holds (``coherence`` for shapes, ``confident`` for digits)."""
    return next((c.key for s in content.SCORES.values() for c in s.columns[:1] if c.key in table.columns), None)


def learning_curves(runs: list[Run], stem) -> pd.DataFrame:
    """Every learning-curve point of ``runs`` (one per trained model) from their ``curve.csv``: model, N,
    step and the metrics; written to ``stem`` as CSV (the Markdown holds the last point of each run)."""
    from ..metrics.curves import read_curve

    own = dict.fromkeys(c.key for run in runs for c in content.for_dataset(run.config.data.dataset).columns)
    rows, metrics = [], [*with_intervals(["seam", "kid", "swd", *own]), "mean"]
    for run in runs:
        for point in read_curve(run.paths.curve):
            rows.append({"model": run.label, "N": run.patches, "step": point["step"],
                         **{k: point.get(k) for k in metrics}, "seam real": point["seam_real"],
                         "mean real": point.get("mean_real")})
    df = pd.DataFrame(rows, columns=["model", "N", "step", *metrics, "seam real", "mean real"])
    df = df.drop(columns=[c for c in df.columns if c.endswith((U.LO, U.HI)) and df[c].isna().all()])  # old curves
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(stem.with_suffix(".csv"), index=False)
    last = df.groupby("model", sort=False).tail(1) if len(df) else df
    stem.with_suffix(".md").write_text(markdown_table(last) + "\nThe last point of each run's learning curve; "
                                       "every point is in the CSV.\n")
    return df


def curve_gaps(curves: pd.DataFrame, stem, *, baseline: str = "N=1", against=("N=2", "N=4")) -> pd.DataFrame:
    """Is the gap between ``baseline`` and each of ``against`` shrinking with training? Per metric and model:
    the gap (model minus baseline) at the first and the last point, and its change per 1000 steps
    (least-squares slope over the second half of the points); where the curves hold intervals, whether the
    two tie at the last point (``tie last``: their 95% intervals overlap). Written to ``stem``."""
    rows, ties = [], False
    base = curves[curves["model"] == baseline].set_index("step")
    for label in against:
        mine = curves[curves["model"] == label].set_index("step")
        common = sorted(set(base.index) & set(mine.index))
        if len(common) < 2:
            continue
        for metric in [k for k in CURVE_METRICS if k in curves.columns]:
            gap = (mine.loc[common, metric] - base.loc[common, metric]).astype(float)
            if gap.isna().all():
                continue
            half = gap.iloc[len(gap) // 2:]
            slope = float(np.polyfit(np.array(half.index, dtype=float), half.to_numpy(), 1)[0]) * 1000 \
                if len(half) >= 2 else None
            tie = U.tie(U.read(mine.loc[common[-1]].to_dict(), metric), U.read(base.loc[common[-1]].to_dict(), metric))
            ties = ties or tie is not None
            rows.append({"model": label, "metric": metric, "gap first": float(gap.iloc[0]),
                         "gap last": float(gap.iloc[-1]), "from step": common[0], "to step": common[-1],
                         "gap change per 1000 steps": slope,
                         "shrinking": bool(abs(gap.iloc[-1]) < abs(gap.iloc[0])), "tie last": tie})
    df = pd.DataFrame(rows, columns=["model", "metric", "gap first", "gap last", "from step", "to step",
                                     "gap change per 1000 steps", "shrinking", "tie last"])
    if not ties:  # curves recorded before intervals
        df = df.drop(columns=["tie last"])
    lower = [m for m in ("seam", "KID", "SWD", "digit_fid") if m.lower() in curves.columns]
    higher = [c.key for c in content.columns_of(curves.columns) if c.higher_is_better]
    return write_table(df, stem, note=f"Gap = model minus {baseline} on the same learning-curve points (for "
                                      f"{_and(lower)} lower is better; for {_and(higher) or 'none'} higher). "
                                      "`shrinking`: smaller in magnitude at the last point than at the first."
                                      + (" `tie last`: the two models' 95% intervals overlap at the last point."
                                         if ties else ""))


def _and(words: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def ranking_table(reports_dir, floor: dict, *, labels=("N=1", "N=2", "N=4"), stem=None) -> pd.DataFrame:
    """Does N = 1 rank best? SWD, KID, coherence and the mean pixel value of ``labels`` from
    ``eval/<model>/metrics.json``, their ranks, and whether the best model's lead exceeds the noise floor
    ``floor`` (:func:`patchlab.metrics.evaluate.real_floor`: real images against other real images); where the
    evaluations hold 95% intervals, which models tie with the first (``SWD tied with first``: their intervals
    overlap), the ranking's test of a tie."""
    reports_dir = Path(reports_dir)
    rows = []
    for label in labels:
        m = _metrics(reports_dir, label)
        if m is not None:
            rows.append({"model": label, **U.with_interval(m, "swd", "SWD"), **U.with_interval(m, "kid", "KID"),
                         **content.values(m, references=True, intervals=True),
                         "mean pixel": m.get("mean_fake"), "real mean pixel": m.get("mean_real"),
                         "samples": m["n_fake"], "sampler steps": m["steps"]})
    df = pd.DataFrame(rows)
    intervals = False
    if len(df):
        for metric in ("SWD", "KID"):
            df[f"{metric} rank"] = df[metric].rank(method="min").astype(int)
            ordered = df[metric].sort_values().to_numpy()
            df[f"{metric} lead > floor"] = None
            if len(ordered) > 1:
                best = df[metric] == ordered[0]
                df.loc[best, f"{metric} lead > floor"] = bool(ordered[1] - ordered[0] > abs(floor[metric.lower()]))
            tied = _tied_with_first(df, metric)
            if tied is not None:
                df[f"{metric} tied with first"], intervals = tied, True
    note = (f"Noise floor: real images against {floor['n']} other real images give SWD {floor['swd']:.1f} and KID "
            f"{floor['kid']:.4f}; a lead smaller than that is a tie (`lead > floor`: the best model's margin over the "
            "second exceeds it). Mean pixel: the samples' against the real images' (a global colour shift shows "
            "an undertrained model).")
    if intervals:
        note += (f" {INTERVALS_NOTE} `tied with first`: the model's interval overlaps that of the model ranked "
                 "first; where intervals exist, they decide a tie, not the noise floor.")
    return write_table(df, stem or reports_dir / "tables" / "ranking", note=note)


def _tied_with_first(df: pd.DataFrame, metric: str) -> list | None:
    """Per row, whether its ``metric`` interval overlaps that of the row ranked first (lowest value; None for that
    row); None when a row has no interval."""
    intervals = [U.read(row, metric) for row in df.to_dict("records")]
    if len(df) < 2 or None in intervals:
        return None
    first = int(df[metric].to_numpy().argmin())
    return [None if i == first else interval.overlaps(intervals[first]) for i, interval in enumerate(intervals)]
