"""What a step computes: which windows of the image the UNet denoises, and how their predictions join.

Two families, one small class per variant, each validated once where it is built:

- **Sampling tilings** (:class:`Tiling`): what a denoising step computes. :class:`Grid` is the paper's
  fixed N x N grid; the seam remedies move the patches: :class:`Shifted` (the grid moves by half a patch
  at every other step), :class:`Overlap` (windows every half patch, blended with tent weights) and
  :class:`CoarseToFine` (the global view, the whole image pooled to one patch, denoises the noisy steps;
  overlapping windows the rest). A tiling says which windows step i denoises (:meth:`Tiling.plan`), which
  lines a seam score must look at (:meth:`Tiling.seam_lines`), and what the model must have been trained
  with (:meth:`Tiling.check`, against the model's training tiling).
- **Training tilings** (:class:`TrainingTiling`): how a training step cuts each image, fixed by the model's
  configuration: :class:`TrainOnGrid` (the paper), :class:`TrainOnShiftedGrids` (``coords``: the grid of
  each image shifted at random) and :class:`TrainWithGlobalView` (``global_view``: a share of the images
  denoised as their global view, the windows on the fine steps below ``windows_below``).

::

    tiling = for_model(model.config)             # the model's own: the grid, or coarse to fine
    tiling = build(model.config, "overlap")      # a seam remedy; refused for a model not trained for it
    eps = tiling.predict(model, schedule, x_t, t_batch, step, execution)

Nothing outside this module compares a tiling's name; a new remedy is one new class here (and its tests).
The geometry the classes use (grids, windows, their lines) is :mod:`patchlab.patches`.
"""

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import patches as P
from .config import ModelConfig

# CoarseToFine's default hand-over: the global view denoises the timesteps t >= GLOBAL_FROM * T (0.05: the
# last 5% of the diffusion, the details, is left to the windows; t >= 50 of T = 1000). Chosen from a trial
# run outside the study (another seed); the study reports the trade at other values (tables/handover.md).
GLOBAL_FROM = 0.05


# --- what one step computes ------------------------------------------------------------------------------


class StepPlan(ABC):
    """One denoising step's computation: ``predict(model, schedule, x_t, t, execution)`` -> noise
    [B x C x H x W] for images x_t [B x C x H x W] at timesteps t [B]; ``windows``: UNet inputs per image."""

    windows: int

    @abstractmethod
    def predict(self, model, schedule, x_t: torch.Tensor, t: torch.Tensor, execution) -> torch.Tensor:
        ...

    def predict_images(self, model, schedule, x_t: torch.Tensor, t: torch.Tensor, execution) -> torch.Tensor:
        """:meth:`predict` for chunks of ``execution.images_per_pass`` images at a time (each image's
        prediction depends on that image only, so the result is the same), put back together."""
        chunks = execution.image_chunks(x_t.shape[0])
        if len(chunks) == 1 and chunks[0] == slice(0, x_t.shape[0]):
            return self.predict(model, schedule, x_t, t, execution)
        out = None
        for rows in chunks:
            part = self.predict(model, schedule, x_t[rows], t[rows], execution)
            if out is None:
                out = part.new_zeros(x_t.shape)
            out[rows] = part
            del part
        return out

    @abstractmethod
    def lines(self, size: int, n: int) -> list[int]:
        """Where this step's window borders lie in a ``size`` px image of N = ``n`` (one axis)."""


@dataclass(frozen=True, eq=False)
class Windows(StepPlan):
    """Patch-sized windows at ``origins`` [K x 2] (None: the model's fixed grid), their predictions put
    together (overlapping ones blended with :func:`patchlab.patches.tent` weights)."""

    origins: torch.Tensor | None
    count: int

    @property
    def windows(self) -> int:
        return self.count

    def predict(self, model, schedule, x_t, t, execution):
        from .model import predict_noise

        return predict_noise(model, x_t, t, execution, windows=self.origins, schedule=schedule)

    def lines(self, size, n):
        return P.window_lines(P.grid_origins(size, n) if self.origins is None else self.origins, size, n)


@dataclass(frozen=True)
class GlobalView(StepPlan):
    """The whole image pooled to one patch, denoised in one pass (:func:`patchlab.model.predict_noise_global`)."""

    windows: int = 1

    def predict(self, model, schedule, x_t, t, execution):
        from .model import predict_noise_global

        return predict_noise_global(model, schedule, x_t, t, execution)

    def lines(self, size, n):
        return []  # one view of the whole image: no border


# --- how a model is trained ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingWindows:
    """What one training step denoises, for the B images of this process: their timesteps ``t`` [B], clean
    images ``x0`` (None when the objective's target does not need them), noise and noisy images ``x_t``
    [B x C x H x W] and GCC images ``context`` [B x C x h x w] (None without GCC); the windows' ``origins``
    [K x B x 2] (None: the fixed grid, patch k of each image), from the per-image ``shifts`` [B x 2]; for a
    global-view model, the images denoised as their global view ``views`` [V] and
    those denoised as windows ``rows`` [R] (indices, in order) from the random ``order`` [B]. What was drawn
    is kept with the windows (so a step's memory is the same however it is split into helpers)."""

    t: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor
    context: torch.Tensor | None
    origins: torch.Tensor | None = None
    shifts: torch.Tensor | None = None
    views: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    order: torch.Tensor | None = None

    def images(self, rows: slice) -> "TrainingWindows":
        """The windows of the images ``rows`` only (a micro-batch of them: their timesteps, x0, noise, x_t,
        context and windows; the global-view draws stay whole, they index the step's images)."""
        pick = {"t": self.t[rows], "x0": None if self.x0 is None else self.x0[rows], "noise": self.noise[rows],
                "x_t": self.x_t[rows]}
        if self.context is not None:
            pick["context"] = self.context[rows]
        if self.origins is not None:
            pick["origins"] = self.origins[:, rows]
        if self.shifts is not None:
            pick["shifts"] = self.shifts[rows]
        return dataclasses.replace(self, **pick)


class TrainingTiling(ABC):
    """How a model's training step cuts each image (fixed by its configuration, see :func:`training_tiling`)."""

    name: ClassVar[str]

    def __init__(self, model: ModelConfig):
        self.model = model

    def check(self, *, parallel: bool = False, batch: int | None = None) -> None:
        """Refuse a job this training cannot run: data-parallel (``parallel``), or a run whose every step
        has ``batch`` images per process (None: a single step, which may be anything)."""

    def draw(self, schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor,
             part: tuple[int, int], generator: torch.Generator | None) -> TrainingWindows:
        """The windows of one step of this process's B images x0 [B x C x H x W] (part ``(i, k)`` of a global
        batch of k*B), their timesteps t [B], noise and x_t [B x C x H x W]; what is random is drawn from
        ``generator`` after the timesteps and the noise, for the whole global batch."""
        context = P.global_context(x_t, self.model.patches) if self.model.gcc else None
        return TrainingWindows(t, x0, noise, x_t, context)

    def for_windows(self, windows: TrainingWindows, schedule, x0: torch.Tensor) -> TrainingWindows:
        """The part of ``windows`` denoised as windows (all of it but for the global view's images)."""
        return windows

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TrainOnGrid(TrainingTiling):
    """The paper: every image cut into its fixed N x N grid."""

    name = "grid"


class TrainOnShiftedGrids(TrainingTiling):
    """``coords`` models: the N x N grid of each image shifted on the torus by a random offset (drawn per
    image for the whole global batch, so processes see what one would); the windows still tile each image,
    so the gradients of a step stay exact in every execution."""

    name = "shifted grids"

    def draw(self, schedule, x0, t, noise, x_t, part, generator):
        windows = super().draw(schedule, x0, t, noise, x_t, part, generator)
        m, (index, count), batch = self.model, part, x0.shape[0]
        shifts = torch.randint(0, m.patch_size, (batch * count, 2), generator=generator,
                               device=x0.device)[index * batch:(index + 1) * batch]
        origins = (P.grid_origins(m.image_size, m.patches).to(x0.device)[:, None] + shifts) % m.image_size
        return dataclasses.replace(windows, origins=origins, shifts=shifts)


class TrainWithGlobalView(TrainOnShiftedGrids):
    """``global_view`` models: round(global_view * B) images (a random permutation's first, drawn after the
    shifts) are denoised as their global view, the others as shifted grids; with ``windows_below`` < 1 those
    windows learn only the fine steps: their timesteps are scaled into [0, m), t * m // T (m:
    :meth:`fine_timesteps`; about uniform there when t is), and their x_t drawn again from the same noise."""

    name = "global view"

    def share(self, batch: int) -> int:
        """Images of a batch of ``batch`` denoised as their global view: round(global_view x batch)."""
        return math.floor(self.model.global_view * batch + 0.5)

    def check(self, *, parallel=False, batch=None):
        if parallel:
            raise ValueError("a model trained on the global view (global_view > 0) cannot train data-parallel yet "
                             "(its passes differ between processes); train it in one process, without torchrun")
        if batch is not None:
            self.check_batch(batch)

    def check_batch(self, batch: int) -> None:
        """Refuse a training batch whose share leaves the global view or the windows without an image."""
        share = self.share(batch)
        if not 0 < share < batch:
            what = "the global view" if share == 0 else "the windows"
            smallest = next(b for b in range(2, 10 ** 6) if 0 < self.share(b) < b)
            raise ValueError(f"global_view={self.model.global_view} of a batch of {batch} images is {share} global "
                             f"view(s) per step (round(global_view x batch)): {what} would never train; use "
                             f"batch_size >= {smallest} or another global_view")

    def fine_timesteps(self, timesteps: int) -> int:
        """How many of the ``timesteps`` = T timesteps (0 to m - 1) the windows learn: every t < windows_below
        * T, the steps :class:`CoarseToFine` gives them (m = ceil(windows_below * T))."""
        return max(1, math.ceil(self.model.windows_below * timesteps))

    def draw(self, schedule, x0, t, noise, x_t, part, generator):
        windows = super().draw(schedule, x0, t, noise, x_t, part, generator)
        order = torch.randperm(x0.shape[0], generator=generator, device=x0.device)
        share = self.share(x0.shape[0])
        views, rows = order[:share].sort().values, order[share:].sort().values  # static shapes (estimates too)
        return dataclasses.replace(windows, views=views, rows=rows, order=order)

    def for_windows(self, windows, schedule, x0):
        from .schedule import q_sample

        w, keep = windows, windows.rows
        context = None if w.context is None else w.context[keep]
        w = dataclasses.replace(w, t=w.t[keep], x0=None if w.x0 is None else w.x0[keep], noise=w.noise[keep],
                                x_t=w.x_t[keep], context=context, origins=w.origins[:, keep])
        if self.model.windows_below < 1:  # the windows learn the fine steps only
            t = w.t * self.fine_timesteps(schedule.timesteps) // schedule.timesteps
            x_t = q_sample(schedule.to(x0.device), x0[keep], t, w.noise)
            w = dataclasses.replace(w, t=t, x_t=x_t,
                                    context=P.global_context(x_t, self.model.patches) if self.model.gcc else None)
        return w


def training_tiling(model: ModelConfig) -> TrainingTiling:
    """The training tiling of a model configuration: global view, shifted grids (``coords``) or the grid."""
    if model.global_view:
        return TrainWithGlobalView(model)
    return TrainOnShiftedGrids(model) if model.coords else TrainOnGrid(model)


# --- what a sampler computes -----------------------------------------------------------------------------


class Tiling(ABC):
    """What a sampler's denoising steps compute. Built for one model configuration (:func:`build`), which it
    checks once: a tiling that moves the patches needs a model trained on windows anywhere."""

    name: ClassVar[str]  # the name users choose it by (``--windows NAME``), recorded with results
    needs: ClassVar[type[TrainingTiling]] = TrainingTiling  # the training it needs (or a subclass of it)
    moves: ClassVar[bool] = True  # whether its windows leave the fixed grid (a seam remedy)
    doc: ClassVar[str]

    def __init__(self, model: ModelConfig):
        self.model = model
        self.size, self.n = model.image_size, model.patches
        self.check(model)

    def check(self, model: ModelConfig) -> None:
        """Refuse a model that was not trained for this tiling."""
        trained = training_tiling(model)
        if not isinstance(trained, self.needs):
            raise ValueError(f"windows={self.name!r} {self.doc}: it needs a model trained with "
                             f"{_TRAINED_WITH[self.needs]}; this one was trained on {_TRAINED_ON[type(trained)]}")
        self.check_steps(model)

    def check_steps(self, model: ModelConfig) -> None:
        """Refuse a model whose windows never learnt some of the steps this tiling gives them."""
        if model.windows_below < 1:
            raise ValueError(f"this model's windows learnt only the fine steps (timesteps below windows_below = "
                             f"{model.windows_below} of T): sample it with windows='global' and global_from <= "
                             f"{model.windows_below} (the global view denoises the others); got "
                             f"windows={self.name!r}")

    @abstractmethod
    def plan(self, step: int, t: int, timesteps: int) -> StepPlan:
        """What step ``step`` (0 first) at timestep ``t`` of ``timesteps`` = T computes."""

    def plans(self, visited: Sequence[int], timesteps: int) -> list[tuple[StepPlan, int]]:
        """The distinct computations of a sampler that visits the timesteps ``visited``, each with how many
        of its steps run it (for memory and time profiles); by default the second step's, for all."""
        step = min(1, len(visited) - 1)
        return [(self.plan(step, visited[step], timesteps), len(visited))]

    def predict(self, model, schedule, x_t: torch.Tensor, t: torch.Tensor, step: int, execution) -> torch.Tensor:
        """The noise prediction [B x C x H x W] of step ``step`` for x_t [B x C x H x W] at timesteps t [B]
        (all equal, as a sampler gives them), run as ``execution`` says (its precision included)."""
        plan = self.plan(step, int(t[0]), schedule.timesteps)
        with execution.autocast(x_t.device):
            return plan.predict_images(model, schedule, x_t, t, execution).float()

    def seam_lines(self, steps: int, patches: int | None = None) -> list[int]:
        """Every line (one axis, square images) on which a window border fell during ``steps`` denoising
        steps: where a seam can form, so where a seam score must look. ``patches``: the grid to score a
        model without patches at (N = 1 is scored at 2 x 2, as a baseline)."""
        return P.border_coordinates(self.size, patches or self.n)

    def settings(self) -> dict:
        """What to record with results: ``{"windows": name}`` and the tiling's options."""
        return {"windows": self.name}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "windows")
        return f"{type(self).__name__}({options})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.settings() == self.settings() and other.model == self.model

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.settings().items())))


class Grid(Tiling):
    """The paper's fixed N x N grid (patch k of :func:`patchlab.patches.split` at every step)."""

    name = "grid"
    moves = False
    doc = "denoises the fixed N x N grid"

    def plan(self, step, t, timesteps):
        return Windows(None, self.model.num_patches)


class Shifted(Tiling):
    """The grid moved by half a patch on both axes at every other step (Patch-DM's shifted windows), so no
    border stays in place; the windows wrap around the image (a torus) and tile it."""

    name = "shifted"
    needs = TrainOnShiftedGrids
    doc = "moves the grid by half a patch at every other step"

    def shift(self, step: int) -> tuple[int, int]:
        half = P.patch_size(self.size, self.n) // 2
        return (half, half) if step % 2 == 1 else (0, 0)

    def plan(self, step, t, timesteps):
        return Windows(P.grid_origins(self.size, self.n, self.shift(step)), self.model.num_patches)

    def seam_lines(self, steps, patches=None):
        origins = [P.grid_origins(self.size, self.n, self.shift(s)) for s in range(min(steps, 2))]
        return sorted({line for o in origins for line in P.window_lines(o, self.size, self.n)})


class Overlap(Tiling):
    """Windows of the patch size every half patch inside the image, blended with tent weights (the smooth
    weighting of Mixture of Diffusers, in place of MultiDiffusion's plain average): (2N - 1)^2 windows."""

    name = "overlap"
    needs = TrainOnShiftedGrids
    doc = "blends overlapping windows"

    def origins(self) -> torch.Tensor:
        return P.overlap_origins(self.size, self.n)

    def plan(self, step, t, timesteps):
        origins = self.origins()
        return Windows(origins, len(origins))

    def seam_lines(self, steps, patches=None):
        return P.window_lines(self.origins(), self.size, self.n)


class CoarseToFine(Overlap):
    """Coarse to fine: the global view (the whole image pooled to one patch, one pass that sees all of it)
    denoises every step whose timestep is at least ``global_from`` x T, where the layout is decided, and
    overlapping windows the others, where the details are. For models trained with ``global_view`` > 0;
    one whose windows learnt only the fine steps (``windows_below`` < 1) needs ``global_from`` <= its
    ``windows_below`` (default: the smaller of :data:`GLOBAL_FROM` and it)."""

    name = "global"
    needs = TrainWithGlobalView
    doc = "denoises the noisy steps from the global view"

    def __init__(self, model: ModelConfig, global_from: float | None = None):
        self.global_from = min(GLOBAL_FROM, model.windows_below) if global_from is None else global_from
        if isinstance(self.global_from, bool) or not isinstance(self.global_from, (int, float)) \
                or not 0 <= self.global_from <= 1:
            raise ValueError(f"global_from is a fraction of the diffusion's T in [0, 1], got {global_from!r}")
        self.global_from = float(self.global_from)
        super().__init__(model)

    def check_steps(self, model):
        if self.global_from > model.windows_below:
            raise ValueError(f"this model's windows learnt only the fine steps (timesteps below windows_below = "
                             f"{model.windows_below} of T): sample it with global_from <= {model.windows_below} "
                             f"(the global view denoises the others); got global_from={self.global_from}")

    def uses_global_view(self, t: int, timesteps: int) -> bool:
        """Whether the step at timestep ``t`` (of ``timesteps`` = T) is denoised from the global view."""
        return t >= self.global_from * timesteps

    def plan(self, step, t, timesteps):
        return GlobalView() if self.uses_global_view(t, timesteps) else super().plan(step, t, timesteps)

    def plans(self, visited, timesteps):
        views = sum(self.uses_global_view(t, timesteps) for t in visited)
        return [(GlobalView(), views), (super().plan(0, -1, timesteps), len(visited) - views)]

    def settings(self):
        return {"windows": self.name, "global_from": self.global_from}


TILINGS: dict[str, type[Tiling]] = {cls.name: cls for cls in (Grid, Shifted, Overlap, CoarseToFine)}
NAMES = tuple(TILINGS)  # the choices of --windows
_TRAINED_WITH = {TrainingTiling: "anything", TrainOnShiftedGrids: "coords=True (continuous window coordinates)",
                 TrainWithGlobalView: "global_view > 0"}
_TRAINED_ON = {TrainOnGrid: "its fixed N x N grid only", TrainOnShiftedGrids: "shifted grids without a global view",
               TrainWithGlobalView: "the global view"}


def for_model(model: ModelConfig) -> Tiling:
    """The tiling a model samples with unless told otherwise: the fixed grid, or coarse to fine for a model
    whose windows learnt only the fine steps (``windows_below`` < 1)."""
    return CoarseToFine(model) if model.windows_below < 1 else Grid(model)


def build(model: ModelConfig, windows: "str | Tiling | None" = None, *, global_from: float | None = None) -> Tiling:
    """The tiling ``windows`` (a name of :data:`NAMES`, a :class:`Tiling`, or None: the model's own,
    :func:`for_model`) for ``model``, checked against it. ``global_from`` is an option of ``"global"`` only
    (refused with any other tiling)."""
    if isinstance(windows, Tiling):
        if global_from is not None:
            raise ValueError("give global_from when building the tiling, not beside a built one")
        if windows.model != model:
            windows = build(model, windows.name, **{k: v for k, v in windows.settings().items() if k != "windows"})
        return windows
    if windows is None:
        windows = for_model(model).name
    if windows not in TILINGS:
        raise ValueError(f"windows must be one of {', '.join(map(repr, NAMES))}, got {windows!r}")
    cls = TILINGS[windows]
    if cls is CoarseToFine:
        return cls(model, global_from)
    if global_from is not None:
        raise ValueError(f"global_from says when the global view hands over to the windows: it applies to "
                         f"windows='global' only, not to windows={windows!r}")
    return cls(model)
