"""The budget planner: the fastest execution (:class:`patchlab.execution.Execution`) whose estimated step peak
fits a memory budget, or what would fit when nothing does.

Every candidate is exact: images per pass (micro-batches), the patch mode and activation checkpointing change
how a step runs, never what the model is; a larger N, which changes the model, is only suggested (and a plan
at N > 1 says whether N = 1 would fit with the exact levers alone: whether the patches are needed).
Without a time model, fewer UNet passes is taken as faster and a checkpointed pass as a third slower (it runs
each block's forward twice). With ``speed=True`` the candidates also include the fast per-pass execution
(:func:`patchlab.accel.fast_unet`) and bf16, each timed by a :class:`TimeModel` calibrated from measured steps
of one image (:func:`calibrate`), and the planner picks the fastest execution that fits.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .. import config as C
from .. import patches as P
from ..distributed import World
from ..execution import Execution
from ..runtime import resolve_device
from ..training import check_job
from .profiler import format_bytes
from .steps import StepProfile, check_phase, profile_step


def candidate_modes(num_patches: int) -> list:
    """Patch modes from the fastest (fewest passes) to the leanest: ``"batched"``, k, ..., ``"sequential"``.

    For each number of passes (as :func:`patchlab.patches.chunks` cuts them) only the smallest k that
    achieves it is kept: more patches per pass than needed would cost memory for no fewer passes.
    """
    smallest: dict[int, int] = {}
    for k in range(1, num_patches + 1):
        smallest.setdefault(len(P.chunks(num_patches, k)), k)
    return [P.mode_name(smallest[passes], num_patches) for passes in sorted(smallest)]


CHECKPOINT_COST = 4 / 3  # a checkpointed pass without a time model: forward, recomputed forward, backward


def images_per_pass_choices(batch: int) -> list[int]:
    """Images per pass to weigh for a step of ``batch`` images: the batch, then halves down to 1 (for each
    number of chunks only the smallest k that gives it)."""
    halves = {batch}
    while min(halves) > 1:
        halves.add(math.ceil(min(halves) / 2))
    return sorted({math.ceil(batch / math.ceil(batch / k)) for k in halves}, reverse=True)


def lever_candidates(num_patches: int, batch: int, checkpointing=("none",)) -> list[Execution]:
    """Every execution (images per pass x patch mode x checkpointing) of a step of ``batch`` images of
    ``num_patches`` patches, from the fastest to the leanest by the uncalibrated cost (passes, a checkpointed
    pass a third dearer); among equal costs, more images per pass first (the patch mode as before)."""
    out = [Execution(patch_mode=mode, images_per_pass=None if k == batch else k, checkpointing=ckpt)
           for ckpt in checkpointing for k in images_per_pass_choices(batch) for mode in candidate_modes(num_patches)]
    return sorted(out, key=lambda ex: (_cost(ex, batch, num_patches), -rows_per_pass(ex, batch, num_patches)))


def rows_per_pass(execution: Execution, batch: int, num_patches: int) -> int:
    """Patch rows (images x patches) in one UNet pass of ``execution``: what its activations grow with."""
    images = min(execution.images_per_pass or batch, batch)
    return images * min(P.per_pass(num_patches, execution.patch_mode), num_patches)


def _cost(execution: Execution, batch: int, num_patches: int) -> float:
    return execution.passes(batch, num_patches) * (CHECKPOINT_COST if execution.checkpointing != "none" else 1.0)


def _passes(count: int) -> str:
    return f"{count} UNet pass" + ("es" if count != 1 else "")


def _uses_levers(execution: Execution, batch: int) -> bool:
    return (execution.images_per_pass or batch) < batch or execution.checkpointing != "none"


def describe_levers(execution: Execution, batch: int, num_patches: int) -> str:
    """In words: ``patch_mode=sequential, micro-batches of 4 images, checkpointed blocks``."""
    parts = [f"patch_mode={execution.patch_mode}"] if num_patches > 1 else []
    if execution.images_per_pass is not None and execution.images_per_pass < batch:
        parts.append(f"micro-batches of {execution.images_per_pass} image" + "s" * (execution.images_per_pass > 1))
    if execution.checkpointing != "none":
        parts.append(f"checkpointing={execution.checkpointing}")
    return ", ".join(parts) or "the whole batch in one pass"


@dataclass(frozen=True)
class Candidate:
    """An execution the planner estimated: its UNet passes per step, its peak, whether it fits and (speed
    planning) its predicted step time."""

    execution: Execution
    passes: int
    peak_bytes: int
    fits: bool
    seconds: float | None = None

    @property
    def patch_mode(self):
        return self.execution.patch_mode

    @property
    def precision(self) -> str:
        return self.execution.precision


@dataclass(frozen=True)
class TimeModel:
    """Step time = passes x ``pass_seconds`` + patch rows x ``row_seconds`` for the fast path and precision of
    ``execution`` (whatever its patch mode). A pass's fixed cost (launches, Python, weight traffic) and the
    cost of each patch of each image, solved from two measured steps of the same images: all patches in one
    pass, and one patch per pass."""

    execution: Execution
    pass_seconds: float
    row_seconds: float
    batch: int  # images of the measured steps

    @classmethod
    def from_steps(cls, batched: float, sequential: float, num_patches: int, batch: int, *,
                   execution: Execution | None = None) -> "TimeModel":
        """From the measured seconds of a batched (1 pass) and a sequential (N*N passes) step of ``batch`` images."""
        execution = execution or Execution()
        if num_patches == 1:
            return cls(execution, 0.0, batched / batch, batch)
        per_pass = max((sequential - batched) / (num_patches - 1), 0.0)
        return cls(execution, per_pass, max(batched - per_pass, 0.0) / (num_patches * batch), batch)

    def seconds(self, passes: int, rows: int) -> float:
        return passes * self.pass_seconds + rows * self.row_seconds

    def times(self, execution: Execution) -> bool:
        """Whether this model predicts ``execution``'s steps (the same fast path, precision and checkpointing)."""
        return _timed(execution) == _timed(self.execution)


def _timed(execution: Execution) -> tuple:
    return execution.fast_path, execution.precision, execution.checkpointing


def speed_candidates(phase: str, device) -> list[Execution]:
    """The executions (patch mode and images per pass aside) the speed planner weighs on ``device``: plain and
    the device's fast path (CUDA graphs on CUDA, torch.compile on the CPU), each in fp32 and bf16 (autocast
    for training, bf16 weights for sampling), and for training plain with checkpointed blocks."""
    import torch

    fast = "graphs" if torch.device(device).type == "cuda" else "compile"
    low = "bf16-weights" if phase == "sample" else "bf16"
    out = [Execution(fast_path=f, precision=p) for f in ("off", fast) for p in ("fp32", low)]
    if phase == "train":
        out += [Execution(checkpointing="blocks", precision=p) for p in ("fp32", low)]
    return out


def calibrate(cfg: C.Config, phase: str, executions: list[Execution], *, device=None, repeats: int = 3,
              optimizer: str = "none", progress=None) -> list[TimeModel]:
    """A :class:`TimeModel` per execution of ``executions`` (fast path and precision), from measured batched and
    sequential steps of one image on ``device`` (``cfg.train.device`` by default). Compiling (``"compile"``)
    takes minutes on a small CPU; it is timed apart and left out of the model."""
    models = []
    for execution in executions:
        times = []
        for mode in ("batched", "sequential"):
            if progress:
                progress(f"timing a {phase} step of 1 image, patch_mode={mode}, fast={execution.fast_path}, "
                         f"{execution.precision}")
            prof = profile_step(cfg, phase, batch=1, execution=execution.replace(patch_mode=mode), device=device,
                                optimizer=optimizer, repeats=repeats)
            times.append(prof.step_seconds)
        models.append(TimeModel.from_steps(*times, cfg.model.num_patches, 1, execution=execution))
    return models


@dataclass(frozen=True)
class Plan:
    """The planner's answer: the fastest fitting execution (``fits``), or the leanest one tried and what would
    fit instead (``suggestions``)."""

    fits: bool
    execution: Execution
    peak_bytes: int | None
    budget_bytes: int
    headroom: float
    phase: str
    batch: int
    patches: int
    candidates: tuple[Candidate, ...]
    suggestions: tuple[str, ...]
    world_size: int = 1
    shard_optimizer: bool = False
    seconds: float | None = None  # predicted step time of the choice (speed planning only)
    timings: tuple[TimeModel, ...] = ()
    without_patches: str | None = None  # at N > 1: whether, and how, N = 1 fits with the exact levers alone

    @property
    def patch_mode(self):
        """The chosen patch mode (None when nothing fits)."""
        return self.execution.patch_mode if self.fits else None

    @property
    def precision(self) -> str:
        return self.execution.precision

    @property
    def fast(self) -> str | None:
        """The chosen fast path (None: off)."""
        return None if self.execution.fast_path == "off" else self.execution.fast_path

    def message(self) -> str:
        budget = format_bytes(self.budget_bytes)
        where = ""
        if self.world_size > 1:
            sharded = ", Adam's state sharded" if self.shard_optimizer else ""
            where = (f" per process of {self.world_size} ({self.batch // self.world_size} images of the batch of "
                     f"{self.batch} each{sharded})")
        note = [f"  - {self.without_patches}"] if self.without_patches else []
        if self.fits:
            speed = ""
            if self.seconds is not None:
                speed = (f", fast path {self.fast or 'off'}, precision {self.precision}: predicted step "
                         f"{self.seconds:.4g} s (time model from measured steps of 1 image)")
            rows = World(size=self.world_size).rows(self.batch)
            head = "fits without patches" if self.patches == 1 and _uses_levers(self.execution, rows) else "fits"
            return "\n".join([f"{head}: {describe_levers(self.execution, rows, self.patches ** 2)} "
                               f"({_passes(self._passes())} per step; exact, the model is the one configured)"
                               f"{speed}, estimated peak {format_bytes(self.peak_bytes)}{where} + "
                               f"{self.headroom:.0%} headroom <= budget {budget}"] + note)
        lines = [f"nothing fits: N={self.patches}, batch {self.batch}, {self.phase} step needs at least "
                 f"{format_bytes(self.candidates[-1].peak_bytes)}{where} (+{self.headroom:.0%} headroom) even one "
                 f"image and one patch per pass" +
                 (" with checkpointed blocks" if self.candidates[-1].execution.checkpointing != "none" else "") +
                 f"; budget {budget}"]
        return "\n".join(lines + [f"  - {s}" for s in self.suggestions] + note)

    def _passes(self) -> int:
        return next(c.passes for c in self.candidates if c.execution == self.execution)

    def choice(self) -> dict[str, Any]:
        """The settings to run with: ``patch_mode``, ``precision`` and ``fast_path``."""
        return self.execution.describe()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["execution"] = self.execution.describe()
        out["candidates"] = [{**c.execution.describe(), "passes": c.passes, "peak_bytes": c.peak_bytes,
                              "fits": c.fits, "seconds": c.seconds} for c in self.candidates]
        out["timings"] = [{**t.execution.describe(), "pass_seconds": t.pass_seconds, "row_seconds": t.row_seconds,
                           "batch": t.batch} for t in self.timings]
        out.update(patch_mode=self.patch_mode, precision=self.precision, fast=self.fast, message=self.message())
        return out


def plan(cfg: C.Config, budget_bytes: int, *, phase: str = "train", batch: int | None = None,
         execution: Execution | None = None, optimizer: str = "none", headroom: float = 0.1,
         progress=None, world_size: int = 1, speed: bool = False, timings: list[TimeModel] | None = None,
         device=None, checkpointing=None) -> Plan:
    """The fastest execution for ``cfg`` whose estimated peak, plus ``headroom`` (a fraction, for what
    tensor-level accounting does not see: CUDA workspaces, allocator rounding), fits ``budget_bytes``.

    The patch modes are weighed for the precision of ``execution`` (default ``cfg.train``'s). Fewer UNet
    passes per step is taken as faster (per-pass overhead; see the benchmarks), and memory as growing with
    patches per pass, so a binary search over :func:`candidate_modes` needs a few estimates. When not even
    ``"sequential"`` fits, ``suggestions`` name the largest batch that fits at this N and the smallest
    larger N that fits at this batch, or say that the weights alone are too big. ``progress(text)`` is
    called before each estimate. ``world_size`` > 1 (train phase): what one process of a data-parallel job
    needs, stepping its part of the global ``batch`` and, with ``cfg.train.shard_optimizer``, holding its
    share of Adam's state. A training job that ``train`` would refuse is refused here too
    (:func:`patchlab.training.check_job`).

    ``checkpointing``: the settings weighed (default: ``"none"`` and ``"blocks"`` for training).

    ``speed=True``: also weigh bf16 and the fast path of ``device`` (:func:`speed_candidates`): for each
    precision the fewest-pass mode that fits, then the execution whose :class:`TimeModel` predicts the
    fastest step (``timings``, else :func:`calibrate` on ``device``). Fast paths are taken to need the plain
    step's memory (compiled kernels and graph replays run the same passes).
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"the memory budget must be a positive number of bytes, got {budget_bytes!r}")
    if not 0 <= headroom < 10:
        raise ValueError(f"headroom must be a fraction >= 0 (e.g. 0.1 for 10%), got {headroom}")
    check_phase(phase, optimizer)
    if phase == "sample" and world_size > 1:
        raise ValueError("world_size applies to the train phase (data-parallel training); a sampling step runs "
                         "in one process")
    batch = cfg.train.batch_size if batch is None else batch
    if phase == "train":
        check_job(cfg.replace(batch_size=batch), world_size)
    execution = execution or Execution(patch_mode=cfg.train.patch_mode, precision=cfg.train.precision)
    if speed:
        return _speed_plan(cfg, budget_bytes, phase=phase, batch=batch, execution=execution, optimizer=optimizer,
                           headroom=headroom, progress=progress, world_size=world_size, timings=timings,
                           device=device)
    return _memory_plan(cfg, budget_bytes, phase=phase, batch=batch, execution=execution, optimizer=optimizer,
                        headroom=headroom, progress=progress, world_size=world_size, checkpointing=checkpointing)


def _memory_plan(cfg: C.Config, budget_bytes: int, *, phase, batch, execution, optimizer, headroom, progress,
                 world_size, checkpointing=None, compare_without_patches: bool = True) -> Plan:
    """:func:`plan` without speed: the cheapest exact execution (:func:`lever_candidates`: images per pass,
    patch mode and, training, checkpointing) that fits, for the precision of ``execution``.

    The peak grows with the patch rows of a pass (:func:`rows_per_pass`), so for each checkpointing setting a
    binary search over the distinct row counts finds the largest that fits in a few estimates; the cheapest
    candidate within it is the plan (estimated to confirm)."""
    world = world_size
    per_process = World(size=world).rows(batch)
    limit = budget_bytes / (1.0 + headroom)
    if checkpointing is None:
        checkpointing = ("none", "blocks") if phase == "train" else ("none",)
    estimate = _Estimates(cfg, phase, execution, optimizer, world, per_process, progress)
    n2 = cfg.model.num_patches
    candidates = lever_candidates(n2, per_process, checkpointing)
    fits: dict[Execution, Candidate] = {}

    def check(ex: Execution) -> bool:
        prof = estimate(ex)
        fits[ex] = Candidate(execution.replace(patch_mode=ex.patch_mode, images_per_pass=ex.images_per_pass,
                                               checkpointing=ex.checkpointing),
                             prof.passes, prof.report.peak_bytes, prof.report.peak_bytes <= limit)
        return fits[ex].fits

    largest: dict[str, int] = {}  # per checkpointing setting, found when its first candidate comes up
    sharded = cfg.train.shard_optimizer and world > 1
    compare = dict(phase=phase, batch=batch, execution=execution, optimizer=optimizer, headroom=headroom,
                   progress=progress, world_size=world)
    compare = compare if compare_without_patches and cfg.model.patches > 1 else None
    for ex in candidates:
        if ex.checkpointing not in largest:
            largest[ex.checkpointing] = _largest_rows([c for c in candidates if c.checkpointing == ex.checkpointing],
                                                      per_process, n2, check)
        if rows_per_pass(ex, per_process, n2) <= largest[ex.checkpointing] and check(ex):
            best = fits[ex]
            note = _without_patches(cfg, budget_bytes, fits_with_patches=True, **compare) if compare else None
            return Plan(True, best.execution, best.peak_bytes, budget_bytes, headroom, phase, batch, cfg.model.patches,
                        tuple(sorted(fits.values(), key=lambda c: c.peak_bytes, reverse=True)), (), world, sharded,
                        without_patches=note)
    leanest = candidates[-1]
    check(leanest)
    lean = estimate(leanest)
    note = _without_patches(cfg, budget_bytes, fits_with_patches=False, **compare) if compare else None
    return Plan(False, fits[leanest].execution, None, budget_bytes, headroom, phase, batch, cfg.model.patches,
                (fits[leanest],), tuple(_suggestions(cfg, lean, limit, per_process, estimate, leanest, world)), world,
                sharded, without_patches=note)


_ESTIMATED: dict[tuple, StepProfile] = {}  # the process's fake-tensor estimates of plan(): see _Estimates
_ESTIMATED_MAX = 512  # entries kept (a few kB each); the oldest go first


def forget_estimates() -> None:
    """Empty the process's cache of :func:`plan`'s estimates (the tests do before each test)."""
    _ESTIMATED.clear()


class _Estimates:
    """Fake-tensor estimates of a step's executions (and other N or batches, for the suggestions), cached for
    the process: an estimate depends only on the configuration, phase, batch, optimizer, world size and
    execution, so plans of one model (another budget, the precisions of a speed plan, a notebook re-run)
    share theirs. Executions with a custom ``unet`` or a data-parallel ``runner`` (neither is in an execution's
    repr, the key) are kept for this plan only."""

    def __init__(self, cfg, phase, execution, optimizer, world, per_process, progress):
        self.cfg, self.phase, self.execution, self.optimizer = cfg, phase, execution, optimizer
        self.world, self.per_process, self.progress = world, per_process, progress
        self.own: dict[tuple, StepProfile] = {}  # this plan's estimates of the executions the process does not keep

    def __call__(self, ex: Execution, *, n: int | None = None, b: int | None = None) -> StepProfile:
        n, b = n or self.cfg.model.patches, b or self.per_process  # b: images per process
        cfg = self.cfg.replace(patches=n)
        execution = self.execution.replace(patch_mode=ex.patch_mode, images_per_pass=ex.images_per_pass,
                                           checkpointing=ex.checkpointing)
        key = (cfg.to_json(), self.phase, b, self.optimizer, self.world, repr(execution))
        cached = execution.unet is None and execution.runner is None
        store = _ESTIMATED if cached else self.own
        if key in store:
            return store[key]
        if self.progress:
            self.progress(f"estimating N={n} batch {b * self.world} {describe_levers(ex, b, n * n)}" +
                          (f" ({b} per process)" if self.world > 1 else ""))
        found = profile_step(cfg, self.phase, batch=b * self.world, optimizer=self.optimizer, execution=execution,
                             estimate=True, world_size=self.world)
        if cached and len(_ESTIMATED) >= _ESTIMATED_MAX:
            del _ESTIMATED[next(iter(_ESTIMATED))]
        store[key] = found
        return found


def _largest_rows(candidates: list[Execution], batch: int, num_patches: int, check) -> int:
    """The largest patch rows per pass among ``candidates`` whose step fits (0: none; binary search, the peak
    growing with the rows), checking the leanest candidate of each row count tried."""
    by_rows: dict[int, Execution] = {}
    for ex in candidates:  # cheapest first: keep the last (leanest) of each row count
        by_rows[rows_per_pass(ex, batch, num_patches)] = ex
    counts = sorted(by_rows)
    lo, hi = 0, len(counts) - 1
    if not check(by_rows[counts[0]]):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if check(by_rows[counts[mid]]):
            lo = mid
        else:
            hi = mid - 1
    return counts[lo]


def _without_patches(cfg: C.Config, budget_bytes: int, *, fits_with_patches: bool, **kwargs) -> str | None:
    """Whether N = 1 (the same UNet without patches) fits with the exact levers alone, said in words (None when
    neither it nor the patches fit)."""
    try:
        flat = cfg.replace(patches=1, patch_mode="batched", coords=False, global_view=0.0, windows_below=1.0)
    except ValueError:
        return None
    found = _memory_plan(flat, budget_bytes, compare_without_patches=False, **kwargs)
    if not (found.fits or fits_with_patches):
        return None
    if found.fits:
        rows = World(size=found.world_size).rows(found.batch)
        return (f"without patches (N=1) the step fits too: {describe_levers(found.execution, rows, 1)} "
                f"({_passes(found._passes())}, estimated peak {format_bytes(found.peak_bytes)}): patches are "
                f"not needed for this budget")
    return (f"without patches (N=1) nothing fits, not even one image per pass"
            f"{' with checkpointed blocks' if found.phase == 'train' else ''}: the patches are what make it fit")


def _speed_plan(cfg: C.Config, budget_bytes: int, *, phase, batch, execution, timings, device, checkpointing=None,
                **kwargs) -> Plan:
    """:func:`plan` with ``speed=True``: the cheapest fitting execution of each precision and checkpointing
    setting (one that does not fit is left out; when none fits, the plan of ``execution``'s precision says what
    would), then the fastest by the calibrated time models (a fast path runs without checkpointing)."""
    device = resolve_device(cfg.train.device if device is None else str(device))
    weighed = [e for e in speed_candidates(phase, device) if checkpointing is None or e.checkpointing in checkpointing]
    settings = list(dict.fromkeys([(execution.precision, "none")] + [(e.precision, e.checkpointing) for e in weighed]))
    plans = {(p, c): _memory_plan(cfg, budget_bytes, phase=phase, batch=batch, execution=execution.replace(precision=p),
                                  checkpointing=(c,), compare_without_patches=(p, c) == settings[0], **kwargs)
             for p, c in settings}
    first = plans[settings[0]]
    if not any(found.fits for found in plans.values()):
        return first
    if timings is None:
        timings = calibrate(cfg, phase, weighed, device=device, optimizer=kwargs["optimizer"],
                            progress=kwargs["progress"])
    rows = cfg.model.num_patches * World(size=first.world_size).rows(batch)
    options = []
    for (precision, ckpt), found in plans.items():
        if not found.fits:
            continue
        fitting = next(c for c in found.candidates if c.execution == found.execution)
        for candidate in weighed:
            model = next((t for t in timings if t.times(candidate)), None)
            if (candidate.precision, candidate.checkpointing) == (precision, ckpt) and model is not None:
                chosen = fitting.execution.replace(fast_path=candidate.fast_path)
                options.append(dataclasses.replace(fitting, execution=chosen,
                                                   seconds=model.seconds(fitting.passes, rows)))
    if not options:
        raise ValueError(f"the timings cover none of the fitting executions: "
                         f"{[t.execution.describe() for t in timings]}")
    options.sort(key=lambda c: c.seconds)
    pick = options[0]
    return dataclasses.replace(first, fits=True, execution=pick.execution, peak_bytes=pick.peak_bytes,
                               candidates=tuple(options), seconds=pick.seconds, timings=tuple(timings),
                               suggestions=())


def _suggestions(cfg: C.Config, lean: StepProfile, limit: float, batch: int, estimate, leanest: Execution,
                 world: int = 1) -> list[str]:
    """What would fit when the leanest execution does not: a larger N (a change of the model), or nothing
    (``batch``: images per process; ``world`` processes). A smaller batch is not suggested: micro-batches of one
    image already give its memory, with the batch's gradient."""
    n = cfg.model.patches
    fixed = lean.report.weights_bytes + lean.report.gradients_bytes + lean.report.optimizer_state_bytes
    if fixed > limit:
        what = "weights" + (" + gradients" if lean.report.gradients_bytes else "") + \
               (" + optimizer state" if lean.report.optimizer_state_bytes else "")
        return [f"the {what} alone take {format_bytes(fixed)} > the usable budget {format_bytes(limit)}: no batch "
                f"or patch count fits; a larger budget or a smaller model (dim, dim_mults) is needed"]
    n2, leanest = 2 * n, leanest.replace(patch_mode="sequential")
    while True:
        try:
            bigger = cfg.replace(patches=n2)
        except ValueError:
            return [f"no larger N fits at batch {batch * world}: N={n2} is not a valid patch grid for image_size "
                    f"{cfg.model.image_size} and {len(cfg.model.dim_mults)} UNet levels"]
        peak = estimate(leanest, n=bigger.model.patches).report.peak_bytes
        if peak <= limit:
            return [f"a larger N (a different model): patches={n2} fits at batch {batch * world} with "
                    f"{describe_levers(leanest, batch, n2 * n2)} (peak {format_bytes(peak)})"]
        n2 *= 2
