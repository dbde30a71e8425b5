"""The fair memory study: patches against what a practitioner short of memory does first.

N = 1 with its batch split into micro-batches (gradients accumulated: the same gradient, so the same model)
or with checkpointed blocks trains the same model as the N = 1 run; N = 2 and N = 4 one patch at a time train
other models. :func:`baseline_steps` measures one training step (Adam included) of each, side by side:

- ``N=1 one pass`` (the study's table's baseline), ``N=2 sequential``, ``N=4 sequential``;
- ``N=1 micro-batched to N=2`` / ``to N=4``: the most images per pass whose step peak is at most that of N = 2
  (N = 4) one patch at a time;
- ``N=1 checkpointed`` (the whole batch, blocks recomputed) and ``N=1 checkpointed, 1 image per pass``;
- ``N=4 sequential, 1 image per pass, checkpointed``: every lever at once, against the floor (weights,
  gradients and Adam's state) that no lever goes below.

Memory is the tensor-level peak (measured at the profile's size; estimated with fake tensors at the paper's),
time the median of steps timed round-robin in one run (:func:`patchlab.memory.steps.time_interleaved`), so that
a drift of the machine's load hits every row alike.
"""

from pathlib import Path

import torch

from .. import config as C
from .. import memory as MP
from ..execution import Execution
from ..memory.planner import images_per_pass_choices
from ..metrics import content
from ..metrics import uncertainty as U
from ..runtime import resolve_device
from .measure import progress_lines
from .variants import PAPER_BATCH, Run, find

BASELINES = "tables/baseline_steps.csv"  # written by baseline_steps (notebook 03)
SAME_MODEL = {"N=1 one pass", "N=1 micro-batched to N=2", "N=1 micro-batched to N=4", "N=1 checkpointed",
              "N=1 checkpointed, 1 image per pass"}  # the rows that train (and sample) the N = 1 run's model


def _rows(n1: C.Config, n2: C.Config, n4: C.Config, batch: int) -> list[tuple[str, str, C.Config, Execution]]:
    """(row label, model label, configuration, execution) before the micro-batches are sized."""
    seq = Execution(patch_mode="sequential")
    return [("N=1 one pass", "N=1", n1, Execution(patch_mode="batched")),
            ("N=2 sequential", "N=2", n2, seq), ("N=4 sequential", "N=4", n4, seq),
            ("N=1 micro-batched to N=2", "N=1", n1, None), ("N=1 micro-batched to N=4", "N=1", n1, None),
            ("N=1 checkpointed", "N=1", n1, Execution(patch_mode="batched", checkpointing="blocks")),
            ("N=1 checkpointed, 1 image per pass", "N=1", n1,
             Execution(patch_mode="batched", images_per_pass=1, checkpointing="blocks")),
            ("N=4 sequential, 1 image per pass, checkpointed", "N=4", n4,
             Execution(patch_mode="sequential", images_per_pass=1, checkpointing="blocks"))]


def micro_batch_to(cfg: C.Config, batch: int, peak_bytes: int) -> Execution:
    """The N = 1 execution with the most images per pass whose estimated training step peak (Adam included) is at
    most ``peak_bytes`` (one image per pass when none is)."""
    for k in images_per_pass_choices(batch):
        ex = Execution(patch_mode="batched", images_per_pass=None if k == batch else k)
        if _estimate(cfg, batch, ex) <= peak_bytes:
            return ex
    return Execution(patch_mode="batched", images_per_pass=1)


def _estimate(cfg: C.Config, batch: int, execution: Execution) -> int:
    return MP.profile_step(cfg, "train", batch=batch, execution=execution, optimizer="adam",
                           estimate=True).report.peak_bytes


def baseline_steps(runs: list[Run], path, *, batch: int | None = None, device="auto", repeats: int = 3,
                   paper_estimate: bool = True, progress: bool = True) -> Path:
    """One training step of every row of the module's list, for the runs ``N=1``, ``N=2`` and ``N=4`` of
    ``runs``, written to the CSV ``path``: ``row``, ``model`` (whose samples its quality is), ``scale``
    (``"profile"``: the runs' configuration with ``batch`` images, default their batch size, measured on
    ``device``; ``"paper"``: the same N at the paper's size and batch, estimated), ``floor_bytes`` and the
    memory-table columns (:data:`patchlab.memory.ROW_FIELDS`)."""
    import pandas as pd

    dev = resolve_device(str(device))
    scales = [("profile", {r: find(runs, r).config for r in ("N=1", "N=2", "N=4")},
               batch or find(runs, "N=1").config.train.batch_size, False)]
    if paper_estimate:
        scales.append(("paper", {r: C.from_params(**{**C.PAPER_PARAMS, "patches": n})
                                 for r, n in (("N=1", 1), ("N=2", 2), ("N=4", 4))}, PAPER_BATCH["train"], True))
    out = []
    for scale, cfgs, b, fake in scales:
        out += baseline_rows(cfgs["N=1"], cfgs["N=2"], cfgs["N=4"], b, scale=scale, device=dev, estimate=fake,
                             repeats=repeats, progress=progress)
    MP.release_memory()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(out, columns=["row", "model", "scale", "floor_bytes", *MP.ROW_FIELDS]).to_csv(path, index=False)
    return path


def baseline_rows(n1: C.Config, n2: C.Config, n4: C.Config, batch: int, *, scale: str = "profile", device="cpu",
                  estimate: bool = False, repeats: int = 3, progress: bool = True) -> list[dict]:
    """The rows of :func:`baseline_steps` for the configurations of N = 1, 2 and 4 at ``batch`` images: measured
    on ``device`` (timed round-robin, ``repeats`` rounds) or, with ``estimate``, estimated."""
    targets = {"N=1 micro-batched to N=2": n2, "N=1 micro-batched to N=4": n4}
    sized = []
    for label, model, cfg, ex in _rows(n1, n2, n4, batch):
        if ex is None:
            ex = micro_batch_to(cfg, batch, _estimate(targets[label], batch, Execution(patch_mode="sequential")))
        sized.append((label, model, cfg, ex))
    return _measure(sized, scale, batch, torch.device(device), estimate, repeats, progress)


def _measure(jobs, scale: str, batch: int, device, fake: bool, repeats: int, progress: bool) -> list[dict]:
    """Profile each job's training step (estimated when ``fake``), then time the measured ones round-robin."""
    rows, steps = [], []
    for label, model, cfg, ex in progress_lines(jobs, "baselines", lambda j: f"{j[0]} at the {scale}'s size",
                                                enabled=progress):
        prof = MP.profile_step(cfg, "train", batch=batch, execution=ex, optimizer="adam", device=device,
                               estimate=fake, repeats=0)
        rep = prof.report
        floor = rep.weights_bytes + 4 * prof.parameters + rep.optimizer_state_bytes  # all gradients, fp32
        rows.append({"row": label, "model": model, "scale": scale, "floor_bytes": floor, **prof.row()})
        if not fake and repeats > 0:
            steps.append(MP.steps.build_step(cfg, "train", batch=batch, execution=ex, device=device, optimizer="adam"))
    if steps:
        for step in steps:  # a first run each, out of the timing (allocations, lazy initialisation)
            step.prepare()
            step.run()
        seconds = MP.steps.time_interleaved(steps, repeats, device)
        for row, s in zip(rows, seconds, strict=True):
            row["step_seconds"] = s
    del steps
    return rows


def baselines_table(reports_dir, *, stem=None):
    """The fair memory table from ``tables/baseline_steps.csv`` and the evaluations under ``reports_dir``: per
    row and scale, the training step's peak (and its ratio to N=1 in one pass and to the floor), passes and
    time (and the ratio to N=1 in one pass), and the quality of the model it trains (N=1's for the rows that
    only change how N=1's step runs: they train and sample the same model). Written to ``stem`` (default
    ``tables/baselines``)."""
    import pandas as pd

    from .reports import GIB, INTERVALS_NOTE, MIB, _has_intervals, _metrics, write_table

    reports_dir = Path(reports_dir)
    steps = pd.read_csv(reports_dir / BASELINES)
    rows = []
    for scale, group in steps.groupby("scale", sort=False):
        base = group[group["row"] == "N=1 one pass"].iloc[0]
        unit, name = (MIB, "MiB") if scale == "profile" else (GIB, "GiB")
        for _, r in group.iterrows():
            m = _metrics(reports_dir, r["model"]) or {}
            timed = not pd.isna(r["step_seconds"])
            rows.append({"scale": scale, "row": r["row"], "model trained": r["model"],
                         "same model as N=1": r["row"] in SAME_MODEL, "images per pass": int(r["images_per_pass"]),
                         "checkpointing": r["checkpointing"], "passes": int(r["passes"]),
                         f"train peak {name}": r["peak_bytes"] / unit, "x N=1 one pass": r["peak_bytes"] /
                         base["peak_bytes"], "x floor": r["peak_bytes"] / r["floor_bytes"],
                         "step s": float(r["step_seconds"]) if timed else None,
                         "time x N=1": float(r["step_seconds"] / base["step_seconds"]) if timed else None,
                         **U.with_interval(m, "kid", "KID"), **U.with_interval(m, "swd", "SWD"),
                         **U.with_interval(m, "seam_fake", "seam"), **content.values(m, intervals=True)})
    df = pd.DataFrame(rows)
    note = ("One training step (Adam included) of batch "
            f"{int(steps[steps['scale'] == 'profile']['batch'].iloc[0])} at the profile's size (measured, tensor "
            "level; `step s` timed round-robin in one run) and, where listed, of batch "
            f"{PAPER_BATCH['train']} at the paper's size (estimated with fake tensors). Rows marked `same model as "
            "N=1` split N=1's batch (micro-batches: the same gradient) or recompute its blocks: they train the N=1 "
            "run, so their quality columns are N=1's (its samples; a test checks that sampling k images per pass "
            "gives the same images). `x floor`: the peak over weights + gradients + Adam's state, which no lever "
            "goes below. Columns ending in ` s` or `time x` are wall-clock and vary between runs."
            + (f" {INTERVALS_NOTE}" if _has_intervals(df) else ""))
    write_table(df, stem or reports_dir / "tables" / "baselines", note=note)
    return df


def frontier_table(rows: list[dict], checks: list[dict], reports_dir, *, stem=None):
    """The frontier (:func:`patchlab.memory.frontier.frontier`) as a table, written to ``stem`` (default
    ``tables/frontier``): per phase, lever and precision the largest square image per budget."""
    import pandas as pd

    from ..memory import frontier as F
    from .reports import GIB, write_table

    df = pd.DataFrame([{"phase": r["phase"], "lever": r["lever"], "changes the model": r["changes_model"],
                        "precision": r["precision"], "floor GiB": r["floor_bytes"] / GIB, "fit error": r["fit_error"],
                        **{f"{b} GiB": r["sizes"][b] for b in r["sizes"]}} for r in rows])
    worst = max(abs(c["error"]) for c in checks)
    note = (f"The largest square image (px, multiples of {F.STEP}) whose step (batch 1; training with Adam) fits "
            f"each budget with the planner's 10% headroom, for the paper's UNet (dim 128, mults 1,2,4,8); 0: "
            f"none. From fake-tensor estimates: a + b s^2 + c s^4 fitted at N x {', '.join(map(str, F.FIT_SIZES))} "
            f"px, checked against direct estimates at N x {', '.join(map(str, F.CHECK_SIZES))} px (`fit error`: the "
            f"row's larger relative error; largest {worst:.1%}). One image's activations outweigh the fixed state "
            f"(weights, gradients, Adam's) from "
            f"{F.crossover(rows, lever='N=1 plain')} px for N=1 plain and from {F.crossover(rows)} px for N=1 "
            f"checkpointed: below that, splitting the batch or checkpointing leaves patches little to save.")
    write_table(df, stem or Path(reports_dir) / "tables" / "frontier", note=note)
    return df


def frontier_report(setup, *, progress: bool = True):
    """Notebook 03's frontier: :func:`patchlab.memory.frontier.frontier`, its figure (``figures/frontier.png``)
    and its table (``tables/frontier``) in the report of ``setup``; returns the table."""
    from ..memory import frontier as F

    rows, checks = F.frontier(progress=print if progress else None)
    frontier_figure(rows, path=setup.figure("frontier.png"))
    return frontier_table(rows, checks, setup.reports_dir)


def pareto_figure(table, path):
    """Memory against quality (KID) and against time, one point per row of :func:`baselines_table` at the
    profile's size: which lever reaches a memory at what cost. Writes ``path``; returns the image."""
    from matplotlib.figure import Figure

    from .plots import _image, save

    df = table[table["scale"] == "profile"].copy()
    fig = Figure(figsize=(11, 4.2))
    for i, (y, ylabel) in enumerate((("KID", "KID of the model trained (lower is better)"),
                                     ("step s", "training step, s (wall clock)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        data = df.dropna(subset=[y])
        for same, marker in ((True, "o"), (False, "s")):
            part = data[data["same model as N=1"] == same]
            ax.scatter(part["train peak MiB"], part[y], marker=marker, s=70,
                       label="N=1's model (exact levers)" if same else "patch models (N > 1)")
        for _, r in data.iterrows():
            ax.annotate(r["row"], (r["train peak MiB"], r[y]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if data.empty:
            ax.text(0.5, 0.5, f"no {y} values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training step peak memory (MiB, tensor level)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if i == 0 and not data.empty:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _image(save(fig, path))


def frontier_figure(rows: list[dict], path):
    """Largest image against budget, one line per lever (fp32; training left, sampling right)."""
    from matplotlib.figure import Figure

    from .plots import _image, save

    fig = Figure(figsize=(11, 4.2))
    for i, phase in enumerate(("train", "sample")):
        ax = fig.add_subplot(1, 2, i + 1)
        for r in rows:
            if r["phase"] == phase and r["precision"] == "fp32":
                budgets = [float(b) for b in r["sizes"]]
                ax.plot(budgets, list(r["sizes"].values()), marker="o", label=r["lever"],
                        linestyle="--" if r["changes_model"] else "-")
        ax.set_xlabel("memory budget (GiB)")
        ax.set_ylabel("largest square image (px)")
        ax.set_title(f"{phase} step, batch 1, the paper's UNet (fp32)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _image(save(fig, path))
