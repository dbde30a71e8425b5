"""Memory of diffusion steps, and a planner that picks the fastest patch mode that fits a budget.

The generic profiler (:mod:`patchlab.memory`) knows nothing of diffusion; this module builds the two
steps whose memory the paper is about and profiles them:

- ``"sample"``: one denoising step, i.e. :func:`patchlab.model.predict_noise` on ``batch`` noisy
  images [B x C x H x W] under ``no_grad`` (as :func:`patchlab.sampling.sample` runs it);
- ``"train"``: one training step, i.e. :func:`patchlab.training.accumulate_gradients` on ``batch``
  images (forward + backward per pass, exact gradients accumulated into ``.grad``, which start empty
  as after ``zero_grad(set_to_none=True)``); with ``optimizer="adam"`` also gradient clipping and an
  Adam step whose state already exists (the steady state of a run).

:func:`profile_step` measures (real tensors) or estimates (fake tensors, seconds even for the paper's
126.85 M-parameter model) one such step; :func:`plan` returns the fastest patch mode that fits a
memory budget, or says what would fit.
"""

import dataclasses
import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from . import config as C
from . import patches as P
from .memory import MemoryProfiler, MemoryReport, estimating, format_bytes
from .model import PatchUNet, count_parameters, predict_noise
from .runs import build
from .runtime import autocast, make_generator, resolve_device
from .training import accumulate_gradients

PHASES = ("sample", "train")
OPTIMIZERS = ("none", "adam")


@dataclass
class Step:
    """A diffusion step ready to run: ``prepare()`` before each ``run()`` (outside any timer/profiler).

    ``fast_fn``, when set, computes the same step faster in a way the tensor-level profiler cannot see
    (CUDA-graph replays): it is timed, while ``run()`` is what is profiled.
    """

    model: PatchUNet
    phase: str
    run_fn: Any
    prepare_fn: Any
    optimizer: torch.optim.Optimizer | None
    fast_fn: Any = None

    def prepare(self) -> None:
        self.prepare_fn()

    def run(self) -> Any:
        return self.run_fn()

    def run_fast(self) -> Any:
        return (self.fast_fn or self.run_fn)()


def build_step(cfg: C.Config, phase: str, *, batch: int, patch_mode, device, precision: str = "fp32",
               optimizer: str = "none", unet_factory=None) -> Step:
    """Model, inputs and the step callable of ``phase`` for ``cfg`` on ``device``.

    Call inside :func:`patchlab.memory.estimating` to get a fake (estimate-only) step. The inputs are
    drawn from generators seeded with ``cfg.train.seed``. ``unet_factory(model)`` (sample phase only)
    returns a replacement of the model's forward for :func:`predict_noise` (e.g.
    :func:`patchlab.accel.cuda_graph_unet`).
    """
    check_phase(phase, optimizer)
    if unet_factory is not None and phase != "sample":
        raise ValueError("a UNet replacement (e.g. CUDA graphs) applies to the sample phase only")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    cfg = cfg.replace(patch_mode=patch_mode)  # validates the mode against N
    device = torch.device(device)
    model, schedule = build(cfg)
    if device.type != "cpu":  # (built on the CPU; fake parameters cannot be moved in place)
        model.to(device)
        schedule = schedule.to(device)
    seed, mc = cfg.train.seed, cfg.model
    g = make_generator(seed, device)
    x = torch.rand(batch, mc.channels, mc.image_size, mc.image_size, generator=g, device=device) * 2 - 1

    if phase == "sample":
        model.eval().requires_grad_(False)
        t = torch.randint(0, schedule.timesteps, (batch,), generator=g, device=device)
        unet = unet_factory(model) if unet_factory is not None else None

        def run_sample(replace=None):
            with torch.no_grad(), autocast(precision, device):
                return predict_noise(model, x, t, patch_mode=patch_mode, unet=replace)

        fast = (lambda: run_sample(unet)) if unet is not None else None
        return Step(model, phase, run_sample, lambda: None, None, fast)

    model.train()
    opt = None
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        for p in model.parameters():  # create Adam's state (a zero gradient leaves the weights as they are)
            p.grad = torch.zeros_like(p)
        opt.step()
    clip = cfg.train.grad_clip or float("inf")

    def prepare_train():
        model.zero_grad(set_to_none=True)

    def run_train():
        loss = accumulate_gradients(model, schedule, x, patch_mode=patch_mode,
                                    generator=make_generator(seed + 1, device), loss=cfg.diffusion.loss,
                                    precision=precision)
        if opt is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        return loss

    prepare_train()
    return Step(model, phase, run_train, prepare_train, opt)


def check_phase(phase: str, optimizer: str = "none") -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be 'sample' or 'train', got {phase!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if optimizer != "none" and phase != "train":
        raise ValueError("an optimizer only takes part in the train phase")


@dataclass(frozen=True)
class StepProfile:
    """The memory report of one step, what was profiled, and its median wall time."""

    phase: str
    patches: int
    patch_mode: Any
    batch: int
    passes: int
    precision: str
    optimizer: str
    parameters: int
    report: MemoryReport
    step_seconds: float | None  # median over repeats, without the profiler; None when estimating
    config: dict

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready row: the report's fields (``peak_bytes``, ``weights_bytes``, ...) and the setup."""
        rep = self.report.to_dict()
        rep.pop("breakdown")
        rep["profile_seconds"] = rep.pop("seconds")
        return {"phase": self.phase, "patches": self.patches, "patch_mode": self.patch_mode, "batch": self.batch,
                "passes": self.passes, "precision": self.precision, "optimizer": self.optimizer,
                "parameters": self.parameters, **rep, "step_seconds": self.step_seconds, "config": self.config}


def profile_step(cfg: C.Config, phase: str, *, batch: int | None = None, patch_mode=None, device=None,
                 precision: str | None = None, optimizer: str = "none", estimate: bool = False,
                 repeats: int = 3, unet_factory=None) -> StepProfile:
    """Profile one ``phase`` step of ``cfg`` (defaults from ``cfg.train``: batch_size, patch_mode, device,
    precision).

    ``estimate=True``: fake tensors on the CPU, nothing allocated, no timing (``step_seconds`` None).
    Otherwise the step runs for real: on CUDA once to warm up, then under the profiler, then
    ``repeats`` more times for the median step time (CUDA-synchronized; ``repeats=0``: no timing).
    ``unet_factory(model)`` (sample phase) gives the ``unet`` of :func:`build_step`; it is used for the
    timing only (memory is that of the plain step: graph replays are invisible to tensor accounting).
    """
    batch = cfg.train.batch_size if batch is None else batch
    patch_mode = cfg.train.patch_mode if patch_mode is None else patch_mode
    precision = cfg.train.precision if precision is None else precision
    cfg = cfg.replace(patch_mode=patch_mode, precision=precision)
    if estimate:
        with estimating():
            step = build_step(cfg, phase, batch=batch, patch_mode=patch_mode, device="cpu",
                              precision=precision, optimizer=optimizer)
            with MemoryProfiler([step.model], step.optimizer) as prof:
                step.run()
        seconds = None
    else:
        dev = resolve_device(cfg.train.device if device is None else str(device))
        step = build_step(cfg, phase, batch=batch, patch_mode=patch_mode, device=dev, precision=precision,
                          optimizer=optimizer, unet_factory=unet_factory)
        if dev.type == "cuda":  # lazy CUDA/cuBLAS initialisation (and graph capture) out of the measurement
            step.run()
            step.prepare()
            if step.fast_fn is not None:
                step.run_fast()
                step.prepare()
        with MemoryProfiler([step.model], step.optimizer, device=dev) as prof:
            step.run()
        seconds = time_step(step, repeats, dev) if repeats > 0 else None
    return StepProfile(phase=phase, patches=cfg.model.patches, patch_mode=patch_mode, batch=batch,
                       passes=len(P.chunks(cfg.model.num_patches, patch_mode)), precision=precision,
                       optimizer=optimizer, parameters=count_parameters(step.model), report=prof.report,
                       step_seconds=seconds, config=cfg.to_dict()["model"])


def time_step(step: Step, repeats: int, device) -> float:
    """Median wall time of ``repeats`` runs of ``step`` (``prepare()`` excluded; CUDA synchronized)."""
    return time_interleaved([step], repeats, device)[0]


def time_interleaved(steps: list[Step], repeats: int, device) -> list[float]:
    """Median wall time of each step, timed round-robin: each round runs every step once.

    On a shared, noisy machine, drifts in load then hit every step alike, so the ratios between the
    steps stay fair. Each step should have run once already (warm-up, CUDA graph capture)."""
    device = torch.device(device)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            step.prepare()
            _sync(device)
            start = time.perf_counter()
            step.run_fast()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory() -> None:
    """Collect garbage and return cached CUDA blocks, so the next measurement starts clean."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --- planner -----------------------------------------------------------------------------------------


def candidate_modes(num_patches: int) -> list:
    """Patch modes from the fastest (fewest passes) to the leanest: ``"batched"``, k, ..., ``"sequential"``.

    For each number of passes only the smallest k that achieves it is kept (k = ceil(N*N / passes)).
    """
    per_pass = sorted({math.ceil(num_patches / p) for p in range(1, num_patches + 1)}, reverse=True)
    return [_mode_for(k, num_patches) for k in per_pass]


def _mode_for(k: int, num_patches: int):
    return "batched" if k == num_patches else "sequential" if k == 1 else k


@dataclass(frozen=True)
class Candidate:
    patch_mode: Any
    passes: int
    peak_bytes: int
    fits: bool


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

    def message(self) -> str:
        budget = format_bytes(self.budget_bytes)
        if self.fits:
            return (f"fits: patch_mode={self.patch_mode} ({self._passes()} UNet passes per step), estimated peak "
                    f"{format_bytes(self.peak_bytes)} + {self.headroom:.0%} headroom <= budget {budget}")
        lines = [f"nothing fits: N={self.patches}, batch {self.batch}, {self.phase} step needs at least "
                 f"{format_bytes(self.candidates[-1].peak_bytes)} (+{self.headroom:.0%} headroom) even one patch "
                 f"at a time; budget {budget}"]
        return "\n".join(lines + [f"  - {s}" for s in self.suggestions])

    def _passes(self) -> int:
        return next(c.passes for c in self.candidates if c.patch_mode == self.patch_mode)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["message"] = self.message()
        return out


def plan(cfg: C.Config, budget_bytes: int, *, phase: str = "train", batch: int | None = None,
         precision: str | None = None, optimizer: str = "none", headroom: float = 0.1,
         progress=None) -> Plan:
    """The fastest patch mode for ``cfg`` whose estimated peak, plus ``headroom`` (a fraction, for what
    tensor-level accounting does not see: CUDA workspaces, allocator rounding), fits ``budget_bytes``.

    Fewer UNet passes per step is taken as faster (per-pass overhead; see the benchmarks), and memory
    as growing with patches per pass, so a binary search over :func:`candidate_modes` needs a few
    estimates. When not even ``"sequential"`` fits, ``suggestions`` name the largest batch that fits at
    this N and the smallest larger N that fits at this batch, or say that the weights alone are too big.
    ``progress(text)`` is called before each estimate.
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"the memory budget must be a positive number of bytes, got {budget_bytes!r}")
    if not 0 <= headroom < 10:
        raise ValueError(f"headroom must be a fraction >= 0 (e.g. 0.1 for 10%), got {headroom}")
    check_phase(phase, optimizer)
    batch = cfg.train.batch_size if batch is None else batch
    precision = cfg.train.precision if precision is None else precision
    limit = budget_bytes / (1.0 + headroom)
    cache: dict[tuple, StepProfile] = {}

    def estimate(mode, *, n=cfg.model.patches, b=batch) -> StepProfile:
        key = (mode, n, b)
        if key not in cache:
            if progress:
                progress(f"estimating N={n} batch {b} patch_mode={mode}")
            cache[key] = profile_step(cfg.replace(patches=n), phase, batch=b, patch_mode=mode,
                                      precision=precision, optimizer=optimizer, estimate=True)
        return cache[key]

    modes = candidate_modes(cfg.model.num_patches)
    seen: dict[Any, Candidate] = {}

    def check(i: int) -> bool:
        prof = estimate(modes[i])
        seen[modes[i]] = Candidate(modes[i], prof.passes, prof.report.peak_bytes, prof.report.peak_bytes <= limit)
        return seen[modes[i]].fits

    lo, hi = 0, len(modes) - 1  # find the first index that fits (fits is monotone along modes)
    if not check(hi):
        lean = estimate(modes[-1])
        candidates = (seen[modes[-1]],)
        return Plan(False, None, None, budget_bytes, headroom, phase, batch, cfg.model.patches, candidates,
                    tuple(_suggestions(cfg, lean, limit, batch, estimate)))
    while lo < hi:
        mid = (lo + hi) // 2
        if check(mid):
            hi = mid
        else:
            lo = mid + 1
    best = seen[modes[lo]]
    ordered = tuple(seen[m] for m in modes if m in seen)
    return Plan(True, best.patch_mode, best.peak_bytes, budget_bytes, headroom, phase, batch, cfg.model.patches,
                ordered, ())


def _suggestions(cfg: C.Config, lean: StepProfile, limit: float, batch: int, estimate) -> list[str]:
    """What would fit when one patch at a time does not: a smaller batch, a larger N, or nothing."""
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
        out.append(f"a smaller batch: batch {best_batch} fits at N={n} with patch_mode=sequential "
                   f"(peak {format_bytes(estimate('sequential', b=best_batch).report.peak_bytes)})")
    else:
        out.append(f"no batch fits at N={n}, not even 1 image")
    n2 = 2 * n
    while True:
        try:
            bigger = cfg.replace(patches=n2)
        except ValueError:
            out.append(f"no larger N fits at batch {batch}: N={n2} is not a valid patch grid for image_size "
                       f"{cfg.model.image_size} and {len(cfg.model.dim_mults)} UNet levels")
            break
        peak = estimate("sequential", n=bigger.model.patches).report.peak_bytes
        if peak <= limit:
            out.append(f"a larger N: patches={n2} fits at batch {batch} with patch_mode=sequential "
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


# --- sweeps ------------------------------------------------------------------------------------------


def effective_chunk(patch_mode, num_patches: int) -> int:
    """Patches per UNet pass of ``patch_mode`` for an image of ``num_patches`` patches."""
    if patch_mode == "batched":
        return num_patches
    if patch_mode == "sequential":
        return 1
    return min(int(patch_mode), num_patches)


def sweep(cfg: C.Config, *, phases=PHASES, patches=None, modes=None, batch: int | None = None,
          progress: bool = False, **kwargs) -> list[StepProfile]:
    """:func:`profile_step` for every phase x N x patch mode; one row per distinct step.

    ``patches``: the N to sweep (default ``[cfg.model.patches]``); ``modes``: patch modes (default
    ``[cfg.train.patch_mode]``). Modes that run the same number of patches per pass at some N (at N=1
    every mode is one whole image per pass) are profiled once, under the first such mode's name; a
    chunk size larger than N*N is capped to N*N. ``kwargs`` go to :func:`profile_step`.
    """
    from tqdm.auto import tqdm

    patches = [cfg.model.patches] if patches is None else list(patches)
    modes = [cfg.train.patch_mode] if modes is None else list(modes)
    jobs = []
    for phase in phases:
        for n in patches:
            ncfg = cfg.replace(patches=n, patch_mode="batched")
            seen = set()
            for mode in modes:
                k = effective_chunk(mode, n * n)
                if k in seen:
                    continue
                seen.add(k)
                jobs.append((phase, ncfg, mode if mode in ("batched", "sequential") else _mode_for(k, n * n)))
    rows = []
    for phase, ncfg, mode in tqdm(jobs, desc="profiling", disable=not progress):
        release_memory()
        rows.append(profile_step(ncfg, phase, batch=batch, patch_mode=mode, **kwargs))
    release_memory()
    return rows


def with_ratios(rows: list[StepProfile]) -> list[dict[str, Any]]:
    """Rows as dicts with ``peak_ratio`` / ``time_ratio``: relative to the row of the same phase, batch,
    precision and optimizer with the smallest N (its first mode); None where there is no such row."""
    out = []
    for row in rows:
        base = min((r for r in rows if (r.phase, r.batch, r.precision, r.optimizer) ==
                    (row.phase, row.batch, row.precision, row.optimizer)), key=lambda r: r.patches)
        d = row.to_dict()
        d["peak_ratio"] = row.report.peak_bytes / base.report.peak_bytes if base.report.peak_bytes else None
        both = row.step_seconds is not None and base.step_seconds
        d["time_ratio"] = row.step_seconds / base.step_seconds if both else None
        d["baseline_patches"] = base.patches
        out.append(d)
    return out
