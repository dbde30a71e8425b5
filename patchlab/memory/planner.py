"""The budget planner: the fastest patch mode whose estimated step peak fits a memory budget, or what would
fit when nothing does.

Without a time model, fewer UNet passes is taken as faster. With ``speed=True`` the candidates also
include the fast per-pass execution (:func:`patchlab.accel.fast_unet`) and bf16, each timed by a
:class:`TimeModel` calibrated from measured steps of one image (:func:`calibrate`), and the planner
picks the fastest (patch mode, fast path, precision) that fits.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import config as C
from .. import patches as P
from .profiler import format_bytes
from ..distributed import World
from ..runtime import resolve_device
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
    patch_mode: Any
    passes: int
    peak_bytes: int
    fits: bool
    precision: str = "fp32"
    fast: str | None = None
    seconds: float | None = None  # predicted step time (speed planning only)


@dataclass(frozen=True)
class TimeModel:
    """Step time = passes x ``pass_seconds`` + patch rows x ``row_seconds`` for one (fast path, precision).

    A pass's fixed cost (launches, Python, weight traffic) and the cost of each patch of each image, solved
    from two measured steps of the same images: all patches in one pass, and one patch per pass."""

    fast: str | None
    precision: str
    pass_seconds: float
    row_seconds: float
    batch: int  # images of the measured steps

    @classmethod
    def from_steps(cls, batched: float, sequential: float, num_patches: int, batch: int, *, fast=None,
                   precision="fp32") -> "TimeModel":
        """From the measured seconds of a batched (1 pass) and a sequential (N*N passes) step of ``batch`` images."""
        if num_patches == 1:
            return cls(fast, precision, 0.0, batched / batch, batch)
        per_pass = max((sequential - batched) / (num_patches - 1), 0.0)
        return cls(fast, precision, per_pass, max(batched - per_pass, 0.0) / (num_patches * batch), batch)

    def seconds(self, passes: int, rows: int) -> float:
        return passes * self.pass_seconds + rows * self.row_seconds


def speed_candidates(phase: str, device) -> list[tuple[str | None, str]]:
    """The (fast path, precision) pairs the speed planner weighs on ``device``: plain and the device's fast
    path (CUDA graphs on CUDA, torch.compile on the CPU), each in fp32 and bf16 (autocast for training,
    bf16 weights for sampling)."""
    import torch

    fast = "graphs" if torch.device(device).type == "cuda" else "compile"
    low = "bf16-weights" if phase == "sample" else "bf16"
    return [(f, p) for f in (None, fast) for p in ("fp32", low)]


def calibrate(cfg: C.Config, phase: str, pairs, *, device=None, repeats: int = 3, optimizer: str = "none",
              progress=None) -> dict[tuple, TimeModel]:
    """A :class:`TimeModel` per (fast path, precision) of ``pairs``, from measured batched and sequential steps
    of one image on ``device`` (``cfg.train.device`` by default). Compiling (``"compile"``) takes minutes on
    a small CPU; it is timed apart and left out of the model."""
    models = {}
    n2 = cfg.model.num_patches
    for fast, precision in pairs:
        times = []
        for mode in ("batched", "sequential"):
            if progress:
                progress(f"timing a {phase} step of 1 image, patch_mode={mode}, fast={fast or 'off'}, {precision}")
            prof = profile_step(cfg, phase, batch=1, patch_mode=mode, device=device, precision=precision,
                                optimizer=optimizer, repeats=repeats, fast=fast)
            times.append(prof.step_seconds)
        models[(fast, precision)] = TimeModel.from_steps(*times, n2, 1, fast=fast, precision=precision)
    return models


@dataclass(frozen=True)
class Plan:
    """The planner's answer: the fastest fitting ``patch_mode`` (None when nothing fits) and why."""

    fits: bool
    patch_mode: Any
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
    precision: str = "fp32"
    fast: str | None = None
    seconds: float | None = None  # predicted step time of the choice (speed planning only)
    timings: tuple[TimeModel, ...] = ()

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
        return next(c.passes for c in self.candidates if c.patch_mode == self.patch_mode)

    def choice(self) -> dict[str, Any]:
        """The parameters to run with: ``patch_mode`` and ``precision``, and the fast path to switch on."""
        return {"patch_mode": self.patch_mode, "precision": self.precision, "fast": self.fast}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["message"] = self.message()
        return out


def plan(cfg: C.Config, budget_bytes: int, *, phase: str = "train", batch: int | None = None,
         precision: str | None = None, optimizer: str = "none", headroom: float = 0.1,
         progress=None, world_size: int = 1, speed: bool = False, timings: dict | None = None,
         device=None) -> Plan:
    """The fastest patch mode for ``cfg`` whose estimated peak, plus ``headroom`` (a fraction, for what
    tensor-level accounting does not see: CUDA workspaces, allocator rounding), fits ``budget_bytes``.

    Fewer UNet passes per step is taken as faster (per-pass overhead; see the benchmarks), and memory
    as growing with patches per pass, so a binary search over :func:`candidate_modes` needs a few
    estimates. When not even ``"sequential"`` fits, ``suggestions`` name the largest batch that fits at
    this N and the smallest larger N that fits at this batch, or say that the weights alone are too big.
    ``progress(text)`` is called before each estimate. ``world_size`` > 1 (train phase): what one
    process of a data-parallel job needs, stepping its part of the global ``batch`` and, with
    ``cfg.train.shard_optimizer``, holding its share of Adam's state.

    ``speed=True``: also weigh bf16 and the fast path of ``device`` (:func:`speed_candidates`): for each
    precision the fewest-pass mode that fits, then the (mode, fast path, precision) whose step
    :class:`TimeModel` predicts fastest (``timings``, else :func:`calibrate` on ``device``). Fast paths
    are taken to need the plain step's memory (compiled kernels and graph replays run the same passes).
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"the memory budget must be a positive number of bytes, got {budget_bytes!r}")
    if not 0 <= headroom < 10:
        raise ValueError(f"headroom must be a fraction >= 0 (e.g. 0.1 for 10%), got {headroom}")
    check_phase(phase, optimizer)
    batch = cfg.train.batch_size if batch is None else batch
    world = 1 if phase == "sample" else world_size
    per_process = World(size=world).rows(batch)
    precision = cfg.train.precision if precision is None else precision
    if speed:
        return _speed_plan(cfg, budget_bytes, phase=phase, batch=batch, precision=precision, optimizer=optimizer,
                           headroom=headroom, progress=progress, world_size=world_size, timings=timings,
                           device=device)
    limit = budget_bytes / (1.0 + headroom)
    cache: dict[tuple, StepProfile] = {}

    def estimate(mode, *, n=cfg.model.patches, b=per_process) -> StepProfile:  # b: images per process
        key = (mode, n, b)
        if key not in cache:
            if progress:
                progress(f"estimating N={n} batch {b * world} patch_mode={mode}" +
                         (f" ({b} per process)" if world > 1 else ""))
            cache[key] = profile_step(cfg.replace(patches=n), phase, batch=b * world, patch_mode=mode,
                                      precision=precision, optimizer=optimizer, estimate=True, world_size=world)
        return cache[key]

    modes = candidate_modes(cfg.model.num_patches)
    seen: dict[Any, Candidate] = {}

    def check(i: int) -> bool:
        prof = estimate(modes[i])
        seen[modes[i]] = Candidate(modes[i], prof.passes, prof.report.peak_bytes, prof.report.peak_bytes <= limit,
                                   precision)
        return seen[modes[i]].fits

    if not check(len(modes) - 1):
        lean = estimate(modes[-1])
        candidates = (seen[modes[-1]],)
        return Plan(False, None, None, budget_bytes, headroom, phase, batch, cfg.model.patches, candidates,
                    tuple(_suggestions(cfg, lean, limit, per_process, estimate, world)), world,
                    cfg.train.shard_optimizer and world > 1, precision)
    best = seen[modes[_first_fitting(modes, check)]]
    return Plan(True, best.patch_mode, best.peak_bytes, budget_bytes, headroom, phase, batch, cfg.model.patches,
                tuple(seen[m] for m in modes if m in seen), (), world, cfg.train.shard_optimizer and world > 1,
                precision)


def _speed_plan(cfg: C.Config, budget_bytes: int, *, phase, batch, precision, timings, device, **kwargs) -> Plan:
    """:func:`plan` with ``speed=True``: the fewest-pass fitting mode of each precision (a precision that does not
    fit is left out; when none fits, the plan of ``precision`` says what would), then the fastest (mode, fast
    path, precision) by the calibrated time models."""
    device = resolve_device(cfg.train.device if device is None else str(device))
    pairs = speed_candidates(phase, device)
    precisions = list(dict.fromkeys([precision] + [p for _, p in pairs]))
    plans = {p: plan(cfg, budget_bytes, phase=phase, batch=batch, precision=p, **kwargs) for p in precisions}
    if not any(found.fits for found in plans.values()):
        return plans[precision]
    if timings is None:
        timings = calibrate(cfg, phase, pairs, device=device, optimizer=kwargs["optimizer"],
                            progress=kwargs["progress"])
    first = plans[precision]
    rows = cfg.model.num_patches * World(size=first.world_size).rows(batch)
    options = []
    for p, found in plans.items():
        if not found.fits:
            continue
        fitting = next(c for c in found.candidates if c.patch_mode == found.patch_mode)
        options += [dataclasses.replace(fitting, fast=fast, seconds=timings[(fast, p)].seconds(fitting.passes, rows))
                    for fast, q in pairs if q == p and (fast, p) in timings]
    if not options:
        raise ValueError(f"the timings cover none of the fitting (fast path, precision) pairs: "
                         f"{sorted(timings, key=str)}")
    options.sort(key=lambda c: c.seconds)
    pick = options[0]
    return dataclasses.replace(first, fits=True, patch_mode=pick.patch_mode, peak_bytes=pick.peak_bytes,
                               candidates=tuple(options), precision=pick.precision, fast=pick.fast,
                               seconds=pick.seconds, timings=tuple(timings[k] for k in pairs if k in timings),
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
