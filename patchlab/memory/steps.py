"""Memory of diffusion steps: the two steps whose memory the paper is about, under the profiler.

The profiler (:mod:`patchlab.memory.profiler`) knows nothing of diffusion; this module builds the
steps and profiles them:

- ``"sample"``: one denoising step of a tiling (:mod:`patchlab.tiling`; the fixed grid by default) on
  ``batch`` noisy images [B x C x H x W] under ``no_grad`` (as :func:`patchlab.sampling.sample` runs it);
- ``"train"``: one training step, i.e. :func:`patchlab.training.accumulate_gradients` on ``batch``
  images (forward + backward per pass, exact gradients accumulated into ``.grad``, which start empty
  as after ``zero_grad(set_to_none=True)``); with ``optimizer="adam"`` also gradient clipping and an
  Adam step whose state already exists (the steady state of a run).

:func:`profile_step` measures (real tensors) or estimates (fake tensors: seconds even at the paper's
size) one such step, run as an :class:`patchlab.execution.Execution` says; :func:`sweep` profiles
many; :mod:`patchlab.memory.planner` picks the execution that fits a memory budget.
"""

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import config as C
from .. import patches as P
from .. import tiling as T
from ..accel import CompiledUNet, CudaGraphUNet, GraphedTrainUNet, cast_weights
from ..distributed import World, shards_optimizer, zero_shards
from ..execution import PHASES, PRECISIONS, SAMPLE_PRECISIONS, Execution
from ..model import PatchUNet, build, count_parameters
from ..objective import build as build_objective
from ..runtime import make_generator, resolve_device
from ..sampling import timesteps_for
from ..training import accumulate_gradients
from .profiler import CATEGORIES, MemoryProfiler, MemoryReport, estimating
from .table import ROW_FIELDS

OPTIMIZERS = ("none", "adam")


@dataclass
class Step:
    """A diffusion step ready to run: ``prepare()`` before each ``run()`` (outside any timer/profiler).

    ``fast_fn``, when set, computes the same step faster in a way the tensor-level profiler cannot see
    (CUDA-graph replays, compiled graphs): it is timed, while ``run()`` is what is profiled. ``fast``
    names it (``"compile"``, ``"graphs"`` or ``"custom"``); ``passes``: UNet passes per step.
    """

    model: PatchUNet
    phase: str
    run_fn: Any
    prepare_fn: Any
    optimizer: torch.optim.Optimizer | None
    passes: int
    fast_fn: Any = None
    fast: str | None = None

    def prepare(self) -> None:
        self.prepare_fn()

    def run(self) -> Any:
        return self.run_fn()

    def run_fast(self) -> Any:
        return (self.fast_fn or self.run_fn)()


def build_step(cfg: C.Config, phase: str, *, batch: int, execution: Execution | None = None, device="cpu",
               optimizer: str = "none", tiling=None, plan: int = 0, steps: int = 25, world_size: int = 1) -> Step:
    """Model, inputs and the step callable of ``phase`` for ``cfg`` on ``device``.

    Call inside :func:`patchlab.memory.estimating` to get a fake (estimate-only) step. The inputs are
    drawn from generators seeded with ``cfg.train.seed``. ``execution`` (default: ``cfg.train``'s patch mode
    and precision) says how the passes run; the profiled ``run()`` is always its plain form, a fast path or a
    custom ``unet`` is what ``run_fast()`` times. ``precision="bf16-weights"`` (sample phase) stores the
    weights in bf16 (:func:`patchlab.accel.cast_weights`). ``tiling`` (sample phase; a name, a
    :class:`patchlab.tiling.Tiling` or None: the model's own) and ``plan``: which of the tiling's distinct
    steps over ``steps`` DDIM steps (:meth:`patchlab.tiling.Tiling.plans`; e.g. a shifted grid's step off the
    fixed grid; coarse to fine's step from the global view, 0, and with windows, 1). ``world_size`` (train
    phase, with ``optimizer="adam"`` and ``cfg.train.shard_optimizer``): the step of one process of a
    data-parallel job whose Adam state is sharded over ``world_size`` processes; ``batch`` is that process's
    part of the global batch and Adam holds the state of the largest share
    (:func:`patchlab.distributed.zero_shards`).
    """
    execution = _execution(cfg, execution)
    check_phase(phase, optimizer)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if tiling is not None and phase != "sample":
        raise ValueError("a sampler's tiling (a seam remedy) applies to the sample phase only")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    execution.check(phase, device=device)
    cfg = cfg.replace(patch_mode=execution.patch_mode)  # validates the mode against N
    device = torch.device(device)
    model, schedule = build(cfg)
    if device.type != "cpu":  # (built on the CPU; fake parameters cannot be moved in place)
        model.to(device)
        schedule = schedule.to(device)
    if execution.precision == "bf16-weights":
        cast_weights(model)
    g = make_generator(cfg.train.seed, device)
    mc = cfg.model
    x = torch.rand(batch, mc.channels, mc.image_size, mc.image_size, generator=g, device=device) * 2 - 1
    plain = execution.replace(fast_path="off", unet=None)
    fast = execution if execution.fast_path != "off" or execution.unet is not None else None
    if phase == "sample":
        return _sample_step(model, schedule, x, g, T.build(mc, tiling), plan, steps, plain, fast)
    return _train_step(cfg, model, schedule, x, optimizer, world_size, plain, fast)


def _execution(cfg: C.Config, execution: Execution | None) -> Execution:
    return execution or Execution.of_training(cfg.train, fast_path="off")


def _sample_step(model, schedule, x, g, tiling, plan: int, steps: int, plain: Execution,
                 fast: Execution | None) -> Step:
    """One denoising step (under ``no_grad``) of plan ``plan`` of ``tiling``, at timesteps drawn from ``g``."""
    model.eval().requires_grad_(False)
    t = torch.randint(0, schedule.timesteps, (x.shape[0],), generator=g, device=x.device)
    chosen, _ = tiling.plans(_visited(schedule.timesteps, steps), schedule.timesteps)[plan]

    def run_sample(execution: Execution = plain):
        with torch.no_grad(), execution.autocast(x.device):
            return chosen.predict_images(model, schedule, x, t, execution)

    timed = (lambda: run_sample(fast)) if fast is not None else None
    return Step(model, "sample", run_sample, lambda: None, None, plain.passes(x.shape[0], chosen.windows), timed,
                _fast_name(fast, model, "sample"))


def _train_step(cfg: C.Config, model, schedule, x, optimizer: str, world_size: int, plain: Execution,
                fast: Execution | None) -> Step:
    """One training step (and with ``optimizer="adam"`` gradient clipping and an Adam step whose state exists)."""
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

    def run_train(execution: Execution = plain):
        loss = accumulate_gradients(model, schedule, x, execution, objective=build_objective(cfg),
                                    generator=make_generator(cfg.train.seed + 1, x.device))
        if opt is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        return loss

    prepare_train()
    timed = (lambda: run_train(fast)) if fast is not None else None
    passes = plain.passes(x.shape[0], cfg.model.num_patches)
    return Step(model, "train", run_train, prepare_train, opt, passes, timed, _fast_name(fast, model, "train"))


def _fast_name(execution: Execution | None, model, phase: str) -> str | None:
    """The name of a step's fast path: the path of :func:`patchlab.accel.fast_unet`, or ``"custom"``; the
    fast path is built here (outside any timer), so a step's first timed run only compiles or captures."""
    if execution is None:
        return None
    forward = execution.forward(model, phase)
    if isinstance(forward, CompiledUNet):
        return "compile"
    return "graphs" if isinstance(forward, (CudaGraphUNet, GraphedTrainUNet)) else "custom"


def check_precision(phase: str, precision: str) -> None:
    """Training precisions are :data:`patchlab.execution.PRECISIONS`; sampling adds ``"bf16-weights"``."""
    allowed = SAMPLE_PRECISIONS if phase == "sample" else PRECISIONS
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
    images_per_pass: int | None = None  # images per UNet pass (None: the whole batch)
    checkpointing: str = "none"
    fast: str | None = None  # the fast path timed (patchlab.accel.fast_unet), None for the plain step
    compile_seconds: float | None = None  # the fast path's first step minus its median (compilation, capture)

    def row(self) -> dict[str, Any]:
        """The memory-table row (:data:`patchlab.memory.table.ROW_FIELDS`): the same columns for the
        ``profile`` command, the study's tables and the benchmarks."""
        rep = self.report
        values = {"phase": self.phase, "patches": self.patches, "position": self.config["position"],
                  "gcc": self.config["gcc"], "patch_mode": self.patch_mode,
                  "images_per_pass": min(self.images_per_pass or self.batch, self.batch),
                  "checkpointing": self.checkpointing, "batch": self.batch,
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


def profile_step(cfg: C.Config, phase: str, *, batch: int | None = None, execution: Execution | None = None,
                 tiling=None, steps: int = 25, device=None, optimizer: str = "none", estimate: bool = False,
                 repeats: int = 3, world_size: int = 1) -> StepProfile:
    """Profile one ``phase`` step of ``cfg`` (defaults from ``cfg.train``: batch_size, device, and the
    patch mode and precision of the default ``execution``).

    ``estimate=True``: fake tensors on the CPU, nothing allocated, no timing (``step_seconds`` None).
    Otherwise the step runs for real: on CUDA once to warm up, then under the profiler, then
    ``repeats`` more times for the median step time (CUDA-synchronized; ``repeats=0``: no timing).
    An execution with a fast path or a custom ``unet`` is used for the timing only (memory is that of the
    plain step: graph replays and compiled kernels are invisible to tensor accounting); its first step,
    which compiles or captures every pass shape, is timed apart: ``compile_seconds`` is that step's time
    minus the median. Sample phase: a denoising step of ``tiling`` (see :func:`build_step`); a tiling whose
    steps differ (coarse to fine: from the global view, then with windows) is profiled at each of its
    kinds of step over ``steps`` DDIM steps, the row's memory that of the larger peak and its time the mean
    over the sampler's steps.
    ``world_size``: one process of a data-parallel job of that many processes (torchrun): ``batch`` is
    the global batch, of which the process steps ``batch / world_size`` images, and with
    ``cfg.train.shard_optimizer`` it holds only its share of Adam's state. (DDP's gradient buckets are
    the gradients themselves: patchlab trains with ``gradient_as_bucket_view``.)
    """
    batch = cfg.train.batch_size if batch is None else batch
    if phase == "train" and world_size > 1:
        batch = World(size=world_size).rows(batch)
    execution = _execution(cfg, execution)
    check_precision(phase, execution.precision)
    check_phase(phase, optimizer)
    dev = torch.device("cpu") if estimate else resolve_device(cfg.train.device if device is None else str(device))
    plans = _plan_counts(cfg, phase, tiling, steps)
    kinds = [_profile_one(cfg, phase, batch=batch, execution=execution, device=dev, optimizer=optimizer,
                          estimate=estimate, repeats=repeats, tiling=tiling, plan=i, steps=steps, world_size=world_size)
             for i in range(len(plans))]
    step, report, _, _ = max(kinds, key=lambda k: k[1].peak_bytes)  # the first of equal peaks
    seconds = compile_seconds = None
    if all(k[2] is not None for k in kinds):
        seconds = sum(k[2] * count for k, count in zip(kinds, plans)) / sum(plans)
    if any(k[3] is not None for k in kinds):
        compile_seconds = sum(k[3] or 0.0 for k in kinds)
    return StepProfile(phase=phase, patches=cfg.model.patches, patch_mode=execution.patch_mode, batch=batch,
                       passes=step.passes, precision=execution.precision,
                       optimizer=_optimizer_name(optimizer, cfg, phase, world_size),
                       parameters=count_parameters(step.model), report=report, step_seconds=seconds,
                       config=cfg.to_dict()["model"], fast=step.fast, compile_seconds=compile_seconds,
                       images_per_pass=execution.images_per_pass, checkpointing=execution.checkpointing)


def _plan_counts(cfg: C.Config, phase: str, tiling, steps: int) -> list[int]:
    """How many of ``steps`` DDIM steps each distinct step of the sample phase's tiling takes ([1]: train)."""
    if phase != "sample":
        return [1]
    total = cfg.diffusion.timesteps
    return [count for _, count in T.build(cfg.model, tiling).plans(_visited(total, steps), total)]


def _visited(timesteps: int, steps: int) -> list[int]:
    """The timesteps of ``steps`` DDIM steps (at most T = ``timesteps``)."""
    return timesteps_for("ddim", timesteps, min(steps, timesteps))


def _profile_one(cfg: C.Config, phase: str, *, device: torch.device, estimate: bool, repeats: int,
                 **kwargs) -> tuple[Step, MemoryReport, float | None, float | None]:
    """(step, memory report, median seconds, compile seconds) of one step of :func:`build_step`."""
    release_memory()
    if estimate:  # the first two passes of each loop give the peak of all (Execution.first_passes)
        kwargs["execution"] = kwargs["execution"].replace(first_passes=2)
        with estimating():
            step = build_step(cfg, phase, device="cpu", **kwargs)
            with MemoryProfiler([step.model], step.optimizer) as prof:
                step.run()
        return step, prof.report, None, None
    step = build_step(cfg, phase, device=device, **kwargs)
    if device.type == "cuda":  # lazy CUDA/cuBLAS initialisation out of the measurement
        step.run()
        step.prepare()
    first = None
    if step.fast_fn is not None:  # compilation / graph capture of every pass shape, timed apart
        first = time_interleaved([step], 1, device)[0]
        step.prepare()
    with MemoryProfiler([step.model], step.optimizer, device=device) as prof:
        step.run()
    seconds = time_interleaved([step], repeats, device)[0] if repeats > 0 else None
    compile_seconds = max(first - seconds, 0.0) if first is not None and seconds is not None else first
    return step, prof.report, seconds, compile_seconds


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
          execution: Execution | None = None, sample_precision: str | None = None, progress: bool = False,
          **kwargs) -> list[StepProfile]:
    """:func:`profile_step` for every phase x N x patch mode; one row per distinct step.

    ``patches``: the N to sweep (default ``[cfg.model.patches]``); ``modes``: patch modes (default
    ``[cfg.train.patch_mode]``), each run as ``execution`` says otherwise (default: ``cfg.train``'s
    precision). Modes that run the same number of patches per pass at some N (at N=1 every mode is one
    whole image per pass) are profiled once, under the first such mode's name; a chunk size larger than
    N*N is capped to N*N. ``sample_precision`` (e.g. ``"bf16-weights"``) replaces the precision of the
    sample phase's rows. ``kwargs`` go to :func:`profile_step`.
    """
    from tqdm.auto import tqdm

    base = _execution(cfg, execution)
    for phase in phases:  # every row's arguments checked before the first is profiled
        check_phase(phase, kwargs.get("optimizer", "none"))
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
                own = {"checkpointing": "none"} if phase == "sample" else {}  # (training passes only)
                own.update({"precision": sample_precision} if phase == "sample" and sample_precision else {})
                name = mode if mode in P.PATCH_MODES else P.mode_name(k, n * n)
                jobs.append((phase, ncfg, base.replace(patch_mode=name, **own)))
    rows = [profile_step(ncfg, phase, batch=batch, execution=ex, **kwargs)
            for phase, ncfg, ex in tqdm(jobs, desc="profiling", disable=not progress)]
    release_memory()
    return rows
