"""Figures of the notebooks (matplotlib, seaborn), written as PNG and shown as images.

Every function draws on its own ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend), writes
the PNG and returns an ``IPython.display.Image`` of it, which a notebook cell shows as its value.
"""

import io
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .. import viz
from ..runs import read_metrics
from ..trajectory import Trajectory

DPI = 100


def _image(path: Path):
    from IPython.display import Image

    return Image(filename=str(path))


def save(fig: Figure, path) -> Path:
    """Write ``fig`` as PNG to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


# --- training loss -----------------------------------------------------------------------------


class LossPlot:
    """Live training-loss curves: pass it as ``on_log(label, row)`` to :func:`patchlab.study.orchestrate.ensure`.

    Shows one curve per run (the mean loss of each logged interval), redrawn at most every
    ``interval`` seconds in a notebook output that is updated in place; :meth:`finish` draws the
    final state, writes it to ``path`` and returns the image. Runs that were already trained are
    drawn from their ``metrics.csv`` (:meth:`load`).
    """

    def __init__(self, path, *, interval: float = 2.0, display: bool = True):
        self.path, self.interval = Path(path), interval
        self.curves: dict[str, tuple[list[int], list[float]]] = {}
        self._last = 0.0
        self._handle = None
        if display:
            from IPython.display import display

            self._handle = display(self._placeholder(), display_id=True)

    @staticmethod
    def _placeholder():
        from IPython.display import HTML

        return HTML("<i>waiting for the first losses ...</i>")

    def load(self, label: str, metrics_csv) -> None:
        """Replace ``label``'s curve by the rows of a run's ``metrics.csv`` (nothing if it has none)."""
        rows = read_metrics(metrics_csv)
        if rows:
            self.curves[label] = ([r["step"] for r in rows], [r["loss_avg"] for r in rows])

    def load_runs(self, runs) -> None:
        """:meth:`load` every :class:`patchlab.study.variants.Run` of ``runs`` that has logged already."""
        for run in runs:
            self.load(run.label, run.paths.metrics)
        self._refresh()

    def __call__(self, label: str, row: dict) -> None:
        steps, losses = self.curves.setdefault(label, ([], []))
        if steps and row["step"] <= steps[-1]:  # a resumed run redoes steps after its checkpoint
            keep = sum(s < row["step"] for s in steps)
            del steps[keep:], losses[keep:]
        steps.append(int(row["step"]))
        losses.append(float(row["loss_avg"]))
        if time.monotonic() - self._last >= self.interval:
            self._refresh()

    def figure(self) -> Figure:
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.add_subplot()
        for label, (steps, losses) in self.curves.items():
            ax.plot(steps, losses, label=label, lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean per log interval)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if self.curves:
            ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def _refresh(self):
        self._last = time.monotonic()
        if self._handle is not None and self.curves:
            from IPython.display import Image

            self._handle.update(Image(data=png_bytes(self.figure())))

    def finish(self):
        """Write the final figure to ``path``; update the live output; return the image."""
        save(self.figure(), self.path)
        self._refresh()
        return _image(self.path)


def latest_grid(run):
    """The last sample grid a run wrote during training (``samples/step_*.png``), as an image."""
    grids = sorted(run.paths.samples.glob("step_*.png"))
    if not grids:
        raise FileNotFoundError(f"{run.path} has no sample grid yet: train it first")
    return _image(grids[-1])


# --- samples -------------------------------------------------------------------------------------


def sample_panels(samples: dict[str, torch.Tensor], runs, labels, path, *, borders: bool = True,
                  title: str | None = None):
    """Side-by-side grids of ``samples[label]`` [n x C x H x W] in [-1, 1] for each of ``labels``.

    ``runs``: the :class:`patchlab.study.variants.Run` s; with ``borders`` each model's patch borders are
    drawn in red (for a seam remedy, every line where a window border fell during sampling). The same
    position in every grid means the same initial noise. Writes ``path`` (PNG); returns the image.
    """
    by_label = {run.label: run for run in runs}
    labels = [label for label in labels if label in samples]
    if not labels:
        raise ValueError("none of the requested models has samples")
    size = samples[labels[0]].shape[-1]
    scale = max(1, 64 // size)
    fig = Figure(figsize=(3.2 * len(labels), 3.6))
    for i, label in enumerate(labels):
        run = by_label[label]
        lines = run.tiling.seam_lines(2) if borders and run.tiling.moves else None
        ax = fig.add_subplot(1, len(labels), i + 1)
        grid = viz.make_grid(samples[label], patches=run.patches if borders else None, scale=scale, lines=lines)
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(label, fontsize=11)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _image(save(fig, path))


def trajectory_figure(traj: Trajectory, index: int, patches: int, path, *, frames: int = 10,
                      borders: bool = True, title: str | None = None):
    """The denoising of image ``index``: x_t (top) and the predicted x0 (bottom) at ``frames`` steps."""
    picks = traj.pick(frames)
    scale = max(1, 64 // traj.x_t.shape[-1])
    fig = Figure(figsize=(1.3 * len(picks), 3.0))
    for col, f in enumerate(picks):
        for row, (name, stack) in enumerate((("x_t", traj.x_t), ("predicted x0", traj.x0))):
            ax = fig.add_subplot(2, len(picks), row * len(picks) + col + 1)
            tile = viz.make_grid(stack[f, index:index + 1], pad=0, patches=patches if borders else None, scale=scale)
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                t = traj.timesteps[f]
                ax.set_title("done" if t < 0 else f"t={t}", fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _image(save(fig, path))


# --- memory versus quality -----------------------------------------------------------------------


def memory_vs_quality(table, path, *, quality: str = "KID", memory: str = "train peak MiB"):
    """Scatter of each model's peak memory against a quality column of the memory/quality table.

    Left: ``memory`` (a training step) against ``quality`` (lower is better); right: the sampling
    step's peak against the seam score (1 = no seam). Writes ``path``; returns the image.
    """
    import seaborn as sns

    df = table.copy()
    df["kind"] = np.where(df["model"].str.contains(" no | neither", regex=True), "ablation at N=2", "N sweep")
    sample_mem = memory.replace("train", "sample")
    fig = Figure(figsize=(11, 4.2))
    panels = [(memory, quality, f"{quality} (lower is better)"), (sample_mem, "seam", "seam score (1 = no seam)")]
    for i, (x, y, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        data = df.dropna(subset=[x, y])
        if data.empty:
            ax.text(0.5, 0.5, f"no {y} values", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        sns.scatterplot(data=data, x=x, y=y, hue="model", style="kind", s=90, ax=ax, legend=i == 0)
        for _, r in data.iterrows():
            ax.annotate(r["model"], (r[x], r[y]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(x.replace("MiB", "(MiB, tensor level)").replace("peak", "step peak memory"))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if i == 0 and ax.get_legend() is not None:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _image(save(fig, path))



# --- learning curves -----------------------------------------------------------------------------------


def learning_curves(curves, path, *, labels=None):
    """Quality against training steps, one line per model: a panel per metric of
    :data:`patchlab.study.reports.CURVE_METRICS` (``curves``: :func:`patchlab.study.reports.learning_curves`).
    Writes ``path``; returns the image."""
    from .reports import CURVE_METRICS

    labels = (list(dict.fromkeys(curves["model"])) if labels is None
              else [x for x in labels if x in set(curves["model"])])
    metrics = [m for m in CURVE_METRICS if m in curves.columns and curves[m].notna().any()] if len(curves) else []
    fig = Figure(figsize=(3.6 * max(1, len(metrics)), 3.4))
    if not metrics:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no learning curves recorded (curve_every = 0)", ha="center", va="center")
        ax.set_axis_off()
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for label in labels:
            mine = curves[curves["model"] == label]
            ax.plot(mine["step"], mine[metric], marker="o", ms=3, lw=1.2, label=label)
        real = {"seam": "seam real", "mean": "mean real"}.get(metric)
        if real and curves[real].notna().any():
            ax.axhline(float(curves[real].mean()), color="0.5", ls="--", lw=1, label="real images")
        ax.set_xlabel("training step")
        ax.set_title(CURVE_METRICS[metric], fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _image(save(fig, path))


# --- the coarse-to-fine remedy's hand-over ----------------------------------------------------------------


def handover(table, path):
    """The primary content score (coherence for shapes) and the seam score of the coarse-to-fine remedy against
    the number of DDIM steps left to the windows, one line per model (``table``:
    :func:`patchlab.study.reports.handover_table`), N = 1's content score dashed. Writes ``path``; returns the
    image."""
    from .reports import content_key

    key = content_key(table)  # a primary content column: higher is better
    panels = [(key, f"{key} (higher is better)")] if key else []
    panels.append(("seam", "seam score on the window borders (1 = no seam)"))
    fig = Figure(figsize=(4.5 * len(panels), 3.4))
    for i, (metric, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label in dict.fromkeys(table["model"]):
            mine = table[table["model"] == label].sort_values("window steps")
            ax.plot(mine["window steps"], mine[metric], marker="o", ms=4, lw=1.2, label=label)
        if metric == key and table[f"{key} N=1"].notna().any():
            ax.axhline(float(table[f"{key} N=1"].iloc[0]), color="0.5", ls="--", lw=1, label="N=1")
        if metric == "seam":
            ax.axhline(float(table["seam real"].mean()), color="0.5", ls="--", lw=1, label="real images")
        ax.set_xlabel("DDIM steps denoised with windows (the rest: the global view)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _image(save(fig, path))
