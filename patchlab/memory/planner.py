"""The budget planner: the fastest execution (:class:`patchlab.execution.Execution`) whose estimated step peak
fits a memory budget, or what would fit when nothing does.

Without a time model, fewer UNet passes is taken as faster, and the candidates are the patch modes. With
``speed=True`` they also include the fast per-pass execution (:func:`patchlab.accel.fast_unet`) and bf16,
each timed by a :class:`TimeModel` calibrated from measured steps of one image (:func:`calibrate`), and the
planner picks the fastest execution that fits.
"""

import dataclasses
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
        """Whether this model predicts ``execution``'s steps (the same fast path and precision)."""
        return (execution.fast_path, execution.precision) == (self.execution.fast_path, self.execution.precision)


def speed_candidates(phase: str, device) -> list[Execution]:
    """The executions (patch mode aside) the speed planner weighs on ``device``: plain and the device's fast
    path (CUDA graphs on CUDA, torch.compile on the CPU), each in fp32 and bf16 (autocast for training,
    bf16 weights for sampling)."""
    import torch

    fast = "graphs" if torch.device(device).type == "cuda" else "compile"
    low = "bf16-weights" if phase == "sample" else "bf16"
    return [Execution(fast_path=f, precision=p) for f in ("off", fast) for p in ("fp32", low)]


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
        if self.fits:
            speed = ""
            if self.seconds is not None:
                speed = (f", fast path {self.fast or 'off'}, precision {self.precision}: predicted step "
                         f"{self.seconds:.4g} s (time model from measured steps of 1 image)")
            return (f"fits: patch_mode={self.patch_mode} ({self._passes()} UNet passes per step){speed}, estimated "
                    f"peak {format_bytes(self.peak_bytes)}{where} + {self.headroom:.0%} headroom <= budget {budget}")
        lines = [f"nothing fits: N={self.patches}, batch {self.batch}, {self.phase} step needs at least "
                 f"{format_bytes(self.candidates[-1].peak_bytes)}{where} (+{self.headroom:.0%} headroom) even one "
                 f"patch at a time; budget {budget}"]
        return "\n".join(lines + [f"  - {s}" for s in self.suggestions])

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
         device=None) -> Plan:
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
                        headroom=headroom, progress=progress, world_size=world_size)


def _memory_plan(cfg: C.Config, budget_bytes: int, *, phase, batch, execution, optimizer, headroom, progress,
                 world_size) -> Plan:
    """:func:`plan` without speed: the fewest-pass patch mode that fits, for the precision of ``execution``."""
    world = world_size
    per_process = World(size=world).rows(batch)
    limit = budget_bytes / (1.0 + headroom)
    cache: dict[tuple, StepProfile] = {}

    def estimate(mode, *, n=cfg.model.patches, b=per_process) -> StepProfile:  # b: images per process
        key = (mode, n, b)
        if key not in cache:
            if progress:
                progress(f"estimating N={n} batch {b * world} patch_mode={mode}" +
                         (f" ({b} per process)" if world > 1 else ""))
            cache[key] = profile_step(cfg.replace(patches=n), phase, batch=b * world,
                                      execution=execution.replace(patch_mode=mode), optimizer=optimizer,
                                      estimate=True, world_size=world)
        return cache[key]

    modes = candidate_modes(cfg.model.num_patches)
    seen: dict[Any, Candidate] = {}

    def check(i: int) -> bool:
        prof = estimate(modes[i])
        seen[modes[i]] = Candidate(execution.replace(patch_mode=modes[i]), prof.passes, prof.report.peak_bytes,
                                   prof.report.peak_bytes <= limit)
        return seen[modes[i]].fits

    sharded = cfg.train.shard_optimizer and world > 1
    if not check(len(modes) - 1):
        lean = estimate(modes[-1])
        candidates = (seen[modes[-1]],)
        return Plan(False, candidates[0].execution, None, budget_bytes, headroom, phase, batch, cfg.model.patches,
                    candidates, tuple(_suggestions(cfg, lean, limit, per_process, estimate, world)), world, sharded)
    best = seen[modes[_first_fitting(modes, check)]]
    return Plan(True, best.execution, best.peak_bytes, budget_bytes, headroom, phase, batch, cfg.model.patches,
                tuple(seen[m] for m in modes if m in seen), (), world, sharded)


def _speed_plan(cfg: C.Config, budget_bytes: int, *, phase, batch, execution, timings, device, **kwargs) -> Plan:
    """:func:`plan` with ``speed=True``: the fewest-pass fitting mode of each precision (a precision that does not
    fit is left out; when none fits, the plan of ``execution``'s precision says what would), then the fastest
    execution by the calibrated time models."""
    device = resolve_device(cfg.train.device if device is None else str(device))
    weighed = speed_candidates(phase, device)
    precisions = list(dict.fromkeys([execution.precision] + [e.precision for e in weighed]))
    plans = {p: _memory_plan(cfg, budget_bytes, phase=phase, batch=batch, execution=execution.replace(precision=p),
                             **kwargs) for p in precisions}
    if not any(found.fits for found in plans.values()):
        return plans[execution.precision]
    if timings is None:
        timings = calibrate(cfg, phase, weighed, device=device, optimizer=kwargs["optimizer"],
                            progress=kwargs["progress"])
    first = plans[execution.precision]
    rows = cfg.model.num_patches * World(size=first.world_size).rows(batch)
    options = []
    for found in plans.values():
        if not found.fits:
            continue
        fitting = next(c for c in found.candidates if c.execution == found.execution)
        for candidate in weighed:
            model = next((t for t in timings if t.times(candidate)), None)
            if candidate.precision == found.precision and model is not None:
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


def _first_fitting(modes: list, check) -> int:
    """The first index of ``modes`` that fits (fits is monotone along modes; the last one does)."""
    lo, hi = 0, len(modes) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if check(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _suggestions(cfg: C.Config, lean: StepProfile, limit: float, batch: int, estimate, world: int = 1) -> list[str]:
    """What would fit when one patch at a time does not: a smaller batch, a larger N, or nothing
    (``batch``: images per process; ``world`` processes)."""
    out = []
    n = cfg.model.patches
    fixed = lean.report.weights_bytes + lean.report.gradients_bytes + lean.report.optimizer_state_bytes
    if fixed > limit:
        what = "weights" + (" + gradients" if lean.report.gradients_bytes else "") + \
               (" + optimizer state" if lean.report.optimizer_state_bytes else "")
        return [f"the {what} alone take {format_bytes(fixed)} > the usable budget {format_bytes(limit)}: no batch "
                f"or patch count fits; a larger budget or a smaller model (dim, dim_mults) is needed"]
    best_batch = _largest_batch(lean, limit, batch, estimate)
    if best_batch:
        per = f" ({best_batch} per process)" if world > 1 else ""
        out.append(f"a smaller batch: batch {best_batch * world}{per} fits at N={n} with patch_mode=sequential "
                   f"(peak {format_bytes(estimate('sequential', b=best_batch).report.peak_bytes)})")
    else:
        out.append(f"no batch fits at N={n}, not even 1 image")
    n2 = 2 * n
    while True:
        try:
            bigger = cfg.replace(patches=n2)
        except ValueError:
            out.append(f"no larger N fits at batch {batch * world}: N={n2} is not a valid patch grid for image_size "
                       f"{cfg.model.image_size} and {len(cfg.model.dim_mults)} UNet levels")
            break
        peak = estimate("sequential", n=bigger.model.patches).report.peak_bytes
        if peak <= limit:
            out.append(f"a larger N: patches={n2} fits at batch {batch * world} with patch_mode=sequential "
                       f"(peak {format_bytes(peak)})")
            break
        n2 *= 2
    return out


def _largest_batch(lean: StepProfile, limit: float, batch: int, estimate) -> int:
    """Largest batch < ``batch`` whose sequential step fits (peak is affine in the batch); 0 if none."""
    if batch == 1:
        return 0
    one = estimate("sequential", b=1).report.peak_bytes
    if one > limit:
        return 0
    slope = max((lean.report.peak_bytes - one) / (batch - 1), 1.0)
    b = min(batch - 1, max(1, int((limit - one) / slope) + 1))
    while b > 1 and estimate("sequential", b=b).report.peak_bytes > limit:
        b -= 1
    while b + 1 < batch and estimate("sequential", b=b + 1).report.peak_bytes <= limit:
        b += 1
    return b
