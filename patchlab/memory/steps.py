"""Memory of diffusion steps: the two steps whose memory the paper is about, under the profiler.

The profiler (:mod:`patchlab.memory.profiler`) knows nothing of diffusion; this module builds the
steps and profiles them:

- ``"sample"``: one denoising step, i.e. :func:`patchlab.model.predict_noise` on ``batch`` noisy
  images [B x C x H x W] under ``no_grad`` (as :func:`patchlab.sampling.sample` runs it);
- ``"train"``: one training step, i.e. :func:`patchlab.training.accumulate_gradients` on ``batch``
  images (forward + backward per pass, exact gradients accumulated into ``.grad``, which start empty
  as after ``zero_grad(set_to_none=True)``); with ``optimizer="adam"`` also gradient clipping and an
  Adam step whose state already exists (the steady state of a run).

:func:`profile_step` measures (real tensors) or estimates (fake tensors: seconds even at the paper's
size) one such step; :func:`sweep` profiles many; :mod:`patchlab.memory.planner` picks a patch mode
for a memory budget.
"""

import functools
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import config as C
from .. import patches as P
from ..accel import CompiledUNet, CudaGraphUNet, GraphedTrainUNet, cast_weights, fast_unet
from ..distributed import World, shards_optimizer, zero_shards
from ..model import PatchUNet, build, count_parameters, predict_noise, predict_noise_global
from ..runtime import autocast, make_generator, resolve_device
from ..training import accumulate_gradients
from .profiler import CATEGORIES, MemoryProfiler, MemoryReport, estimating
from .table import ROW_FIELDS

PHASES = ("sample", "train")
OPTIMIZERS = ("none", "adam")


@dataclass
class Step:
    """A diffusion step ready to run: ``prepare()`` before each ``run()`` (outside any timer/profiler).

    ``fast_fn``, when set, computes the same step faster in a way the tensor-level profiler cannot see
    (CUDA-graph replays, compiled graphs): it is timed, while ``run()`` is what is profiled. ``fast``
    names it (``"compile"``, ``"graphs"`` or ``"custom"``).
    """

    model: PatchUNet
    phase: str
    run_fn: Any
    prepare_fn: Any
    optimizer: torch.optim.Optimizer | None
    fast_fn: Any = None
    fast: str | None = None

    def prepare(self) -> None:
        self.prepare_fn()

    def run(self) -> Any:
        return self.run_fn()

    def run_fast(self) -> Any:
        return (self.fast_fn or self.run_fn)()


def build_step(cfg: C.Config, phase: str, *, batch: int, patch_mode, device, precision: str = "fp32",
               optimizer: str = "none", unet_factory=None, windows: str = "grid", world_size: int = 1,
               fast: str | None = None) -> Step:
    """Model, inputs and the step callable of ``phase`` for ``cfg`` on ``device``.

    Call inside :func:`patchlab.memory.estimating` to get a fake (estimate-only) step. The inputs are
    drawn from generators seeded with ``cfg.train.seed``. ``unet_factory(model)`` returns a replacement
    of the model's forward for each UNet pass (``unet=`` of :func:`predict_noise` or
    :func:`patchlab.training.accumulate_gradients`, e.g. :func:`patchlab.accel.cuda_graph_unet`);
    ``fast`` instead asks for the fast path of :func:`patchlab.accel.fast_unet` (``"auto"``: graphs on
    CUDA, compile on the CPU; or ``"compile"``, ``"graphs"``). ``precision="bf16-weights"`` (sample
    phase) stores the weights in bf16 (:func:`patchlab.accel.cast_weights`). ``windows`` (sample phase,
    ``coords`` models): the seam remedy's windows (:func:`patchlab.patches.step_windows`; of its second
    step, where a shifted grid is off the fixed one); ``"global"`` is the step denoised from the global
    view (:func:`patchlab.model.predict_noise_global`; the remedy's other steps are those of
    ``"overlap"``). ``world_size`` (train phase, with ``optimizer="adam"`` and
    ``cfg.train.shard_optimizer``): the step of one process of a data-parallel job whose Adam state is
    sharded over ``world_size`` processes; ``batch`` is that process's part of the global batch and Adam
    holds the state of the largest share (:func:`patchlab.distributed.zero_shards`).
    """
    check_phase(phase, optimizer)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if windows != "grid" and phase != "sample":
        raise ValueError("sampling windows (a seam remedy) apply to the sample phase only")
    if unet_factory is not None and fast is not None:
        raise ValueError("give either a UNet replacement (unet_factory) or a fast path (fast), not both")
    check_precision(phase, precision)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    cfg = cfg.replace(patch_mode=patch_mode)  # validates the mode against N
    device = torch.device(device)
    model, schedule = build(cfg)
    if device.type != "cpu":  # (built on the CPU; fake parameters cannot be moved in place)
        model.to(device)
        schedule = schedule.to(device)
    if precision == "bf16-weights":
        cast_weights(model)
    if fast is not None:
        unet_factory = functools.partial(fast_unet, phase=phase, path=None if fast == "auto" else fast)
    seed, mc = cfg.train.seed, cfg.model
    g = make_generator(seed, device)
    x = torch.rand(batch, mc.channels, mc.image_size, mc.image_size, generator=g, device=device) * 2 - 1

    if phase == "sample":
        model.eval().requires_grad_(False)
        t = torch.randint(0, schedule.timesteps, (batch,), generator=g, device=device)
        unet = unet_factory(model) if unet_factory is not None else None
        origins = None if windows == "grid" else P.step_windows(windows, mc.image_size, mc.patches, 1)

        def run_sample(replace=None):
            with torch.no_grad(), autocast(precision, device):
                if windows == "global":
                    return predict_noise_global(model, schedule, x, t, unet=replace)
                return predict_noise(model, x, t, patch_mode=patch_mode, unet=replace, windows=origins)

        timed = (lambda: run_sample(unet)) if unet is not None else None
        return Step(model, phase, run_sample, lambda: None, None, timed, _fast_name(unet))

    model.train()
    opt = None
    if optimizer == "adam":
        params = list(model.parameters())
        if shards_optimizer(cfg.train, world_size):
            shards = zero_shards([p.numel() for p in params], world_size)
            params = [params[i] for i in max(shards, key=lambda s: sum(params[i].numel() for i in s))]
        opt = torch.optim.Adam(params, lr=cfg.train.lr)
        for p in model.parameters():  # create Adam's state (a zero gradient leaves the weights as they are)
            p.grad = torch.zeros_like(p)
        opt.step()
    clip = cfg.train.grad_clip or float("inf")

    def prepare_train():
        model.zero_grad(set_to_none=True)

    def run_train(replace=None):
        loss = accumulate_gradients(model, schedule, x, patch_mode=patch_mode,
                                    generator=make_generator(seed + 1, device), loss=cfg.diffusion.loss,
                                    precision=precision, unet=replace)
        if opt is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        return loss

    prepare_train()
    unet = unet_factory(model) if unet_factory is not None else None
    timed = (lambda: run_train(unet)) if unet is not None else None
    return Step(model, phase, run_train, prepare_train, opt, timed, _fast_name(unet))


def _fast_name(unet) -> str | None:
    """The name of a step's fast path: the path of :func:`patchlab.accel.fast_unet`, or ``"custom"``."""
    if unet is None:
        return None
    if isinstance(unet, CompiledUNet):
        return "compile"
    return "graphs" if isinstance(unet, (CudaGraphUNet, GraphedTrainUNet)) else "custom"


def check_precision(phase: str, precision: str) -> None:
    """Training precisions are :data:`patchlab.config.PRECISIONS`; sampling adds ``"bf16-weights"``."""
    allowed = C.SAMPLE_PRECISIONS if phase == "sample" else C.PRECISIONS
    if precision not in allowed:
        raise ValueError(f"{phase} precision must be one of {', '.join(map(repr, allowed))}, got {precision!r}")


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
    fast: str | None = None  # the fast path timed (patchlab.accel.fast_unet), None for the plain step
    compile_seconds: float | None = None  # the fast path's first step minus its median (compilation, capture)

    def row(self) -> dict[str, Any]:
        """The memory-table row (:data:`patchlab.memory.table.ROW_FIELDS`): the same columns for the
        ``profile`` command, the study's tables and the benchmarks."""
        rep = self.report
        values = {"phase": self.phase, "patches": self.patches, "position": self.config["position"],
                  "gcc": self.config["gcc"], "patch_mode": self.patch_mode, "batch": self.batch,
                  "passes": self.passes, "precision": self.precision, "optimizer": self.optimizer,
                  "parameters": self.parameters, "peak_bytes": rep.peak_bytes,
                  **{f"{c}_bytes": rep.breakdown[c] for c in CATEGORIES},
                  "allocator_peak_bytes": rep.allocator_peak_bytes,
                  "allocator_step_peak_bytes": rep.allocator_step_peak_bytes, "step_seconds": self.step_seconds,
                  "device": rep.device, "method": rep.method}
        return {key: values[key] for key in ROW_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """:meth:`row` and the details: what the profiler saw (ops, the operator at the peak, bytes alive at
        the start and end, its own wall time) and the model configuration."""
        rep = self.report
        return {**self.row(), "fast": self.fast, "compile_seconds": self.compile_seconds,
                "start_bytes": rep.start_bytes, "end_bytes": rep.end_bytes,
                "allocator_start_bytes": rep.allocator_start_bytes, "ops": rep.ops, "peak_op": rep.peak_op,
                "profile_seconds": rep.seconds, "config": self.config}


def profile_step(cfg: C.Config, phase: str, *, batch: int | None = None, patch_mode=None, device=None,
                 precision: str | None = None, optimizer: str = "none", estimate: bool = False,
                 repeats: int = 3, unet_factory=None, windows: str = "grid", world_size: int = 1,
                 fast: str | None = None) -> StepProfile:
    """Profile one ``phase`` step of ``cfg`` (defaults from ``cfg.train``: batch_size, patch_mode, device,
    precision).

    ``estimate=True``: fake tensors on the CPU, nothing allocated, no timing (``step_seconds`` None).
    Otherwise the step runs for real: on CUDA once to warm up, then under the profiler, then
    ``repeats`` more times for the median step time (CUDA-synchronized; ``repeats=0``: no timing).
    ``unet_factory(model)`` or ``fast`` (see :func:`build_step`) give a faster way to run each UNet pass;
    it is used for the timing only (memory is that of the plain step: graph replays and compiled kernels
    are invisible to tensor accounting). Its first step, which compiles or captures every pass shape, is
    timed apart: ``compile_seconds`` is that step's time minus the median.
    ``world_size``: one process of a data-parallel job of that many processes (torchrun): ``batch`` is
    the global batch, of which the process steps ``batch / world_size`` images, and with
    ``cfg.train.shard_optimizer`` it holds only its share of Adam's state. (DDP's gradient buckets are
    the gradients themselves: patchlab trains with ``gradient_as_bucket_view``.)
    """
    batch = cfg.train.batch_size if batch is None else batch
    if phase == "train" and world_size > 1:
        batch = World(size=world_size).rows(batch)
    patch_mode = cfg.train.patch_mode if patch_mode is None else patch_mode
    precision = cfg.train.precision if precision is None else precision
    check_precision(phase, precision)
    cfg = cfg.replace(patch_mode=patch_mode, precision=C.autocast_precision(precision))
    if estimate:
        with estimating():
            step = build_step(cfg, phase, batch=batch, patch_mode=patch_mode, device="cpu",
                              precision=precision, optimizer=optimizer, windows=windows, world_size=world_size)
            with MemoryProfiler([step.model], step.optimizer) as prof:
                step.run()
        seconds = compile_seconds = None
    else:
        dev = resolve_device(cfg.train.device if device is None else str(device))
        step = build_step(cfg, phase, batch=batch, patch_mode=patch_mode, device=dev, precision=precision,
                          optimizer=optimizer, unet_factory=unet_factory, windows=windows, world_size=world_size,
                          fast=fast)
        if dev.type == "cuda":  # lazy CUDA/cuBLAS initialisation out of the measurement
            step.run()
            step.prepare()
        first = None
        if step.fast_fn is not None:  # compilation / graph capture of every pass shape, timed apart
            first = time_interleaved([step], 1, dev)[0]
            step.prepare()
        with MemoryProfiler([step.model], step.optimizer, device=dev) as prof:
            step.run()
        seconds = time_interleaved([step], repeats, dev)[0] if repeats > 0 else None
        compile_seconds = max(first - seconds, 0.0) if first is not None and seconds is not None else first
    windows_count = cfg.model.num_patches if windows == "grid" else 1 if windows == "global" else len(
        P.step_windows(windows, cfg.model.image_size, cfg.model.patches, 1))
    return StepProfile(phase=phase, patches=cfg.model.patches, patch_mode=patch_mode, batch=batch,
                       passes=len(P.chunks(windows_count, patch_mode)), precision=precision,
                       optimizer=_optimizer_name(optimizer, cfg, phase, world_size),
                       parameters=count_parameters(step.model), report=prof.report,
                       step_seconds=seconds, config=cfg.to_dict()["model"], fast=step.fast,
                       compile_seconds=compile_seconds)


def _optimizer_name(optimizer: str, cfg: C.Config, phase: str, world_size: int) -> str:
    """The row's optimizer: e.g. ``"adam"``, or ``"adam 1/4"`` for one process's share of a sharded state."""
    sharded = optimizer != "none" and phase == "train" and shards_optimizer(cfg.train, world_size)
    return f"{optimizer} 1/{world_size}" if sharded else optimizer


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


def sweep(cfg: C.Config, *, phases=PHASES, patches=None, modes=None, batch: int | None = None,
          progress: bool = False, sample_precision: str | None = None, **kwargs) -> list[StepProfile]:
    """:func:`profile_step` for every phase x N x patch mode; one row per distinct step.

    ``patches``: the N to sweep (default ``[cfg.model.patches]``); ``modes``: patch modes (default
    ``[cfg.train.patch_mode]``). Modes that run the same number of patches per pass at some N (at N=1
    every mode is one whole image per pass) are profiled once, under the first such mode's name; a
    chunk size larger than N*N is capped to N*N. ``sample_precision`` (e.g. ``"bf16-weights"``) replaces
    the precision of the sample phase's rows. ``kwargs`` go to :func:`profile_step`.
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
                k = P.per_pass(n * n, mode)
                if k in seen:
                    continue
                seen.add(k)
                jobs.append((phase, ncfg, mode if mode in P.PATCH_MODES else P.mode_name(k, n * n)))
    rows = []
    for phase, ncfg, mode in tqdm(jobs, desc="profiling", disable=not progress):
        release_memory()
        own = {"precision": sample_precision} if phase == "sample" and sample_precision else {}
        rows.append(profile_step(ncfg, phase, batch=batch, patch_mode=mode, **{**kwargs, **own}))
    release_memory()
    return rows
