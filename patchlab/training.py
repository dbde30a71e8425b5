"""Training: exact-gradient patch-sequential steps, EMA, and a resumable training loop.

GCC is computed from x_t (a constant with respect to the weights) and GroupNorm normalises each sample
on its own, so every patch's prediction depends only on its own UNet pass. The loss over the whole
image is a sum over patches; running forward+backward one patch (or k patches) at a time and
accumulating gradients therefore gives the same gradient as the batched step, at the activation
memory of one pass.
"""

import contextlib
import copy
import math
import signal
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import config as C
from . import distributed
from . import objective as O
from . import patches as P
from . import schedule as S
from .data import StepBatchSampler, make_dataset
from .execution import Execution
from .model import PatchUNet, build, check_image, global_batch, patch_batch, window_batch
from .runs import MetricsLog, RunPaths, lock_run_dir, remove_stale_temporaries, write_text_atomic
from .runtime import Stream, derived_seed, make_generator
from .sampling import sample
from .schedule import Schedule, q_sample
from .tiling import TrainingWindows, training_tiling
from .viz import save_grid

def accumulate_gradients(model: PatchUNet, schedule: Schedule, x0: torch.Tensor, execution: Execution | None = None,
                         *, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, objective: O.Objective | None = None) -> float:
    """Loss of one training step on ``x0`` [B x C x H x W] in [-1, 1], back-propagated into ``.grad``.

    ``objective`` (:mod:`patchlab.objective`; default the paper's: noise, L1, uniform) says what the UNet is
    trained to predict (it must be the model's ``prediction``), the loss, its weights over noise levels and
    how the timesteps are drawn. Draws ``t`` [B] (as the objective says: the paper's uniform in [0, T)) and
    then ``noise`` [B x C x H x W] from ``generator`` unless given; cuts each image as the model's training
    tiling says (:func:`patchlab.tiling.training_tiling`: the fixed grid, shifted grids for ``coords`` models,
    global views and fine-step windows for ``global_view`` models; what it draws comes from ``generator`` after
    the noise) and predicts every window's target, running backward after each pass. ``execution``
    (:class:`patchlab.execution.Execution`, default one patch per pass in fp32) says how the passes run; the
    gradients add up to those of the batched step whatever it says. Does not zero gradients or step an
    optimizer. Returns the mean loss.

    Data parallelism (:mod:`patchlab.distributed`): with ``execution.part = (i, k)``, ``x0`` is the i-th of k
    equal parts of the global batch; ``t`` [k*B], the noise [k*B x C x H x W] and the tiling's draws are
    made (or given) for the whole global batch and this part's rows kept, so k processes see exactly what
    one would. The loss is normalised by this part's size: averaging the gradients of the k parts (as
    DistributedDataParallel does) gives the gradient of the global batch. ``execution.runner`` (that
    DistributedDataParallel wrapper of ``model``) runs the passes, synchronising gradients in the last.
    A ``global_view`` model trains in one process only.
    """
    execution, objective = execution or Execution(), objective or O.PAPER
    check_image(model, x0)
    _check_objective(model, objective)
    execution.check("train", model, x0.device)
    tiling = training_tiling(model.config)
    tiling.check(parallel=execution.parallel)
    t, noise = _timesteps_and_noise(schedule, x0, execution.part, t, noise, generator, objective)
    x_t = q_sample(schedule.to(x0.device), x0, t, noise)
    total = torch.zeros((), device=x0.device)
    windows = tiling.draw(schedule, x0, t, noise, x_t, execution.part, generator)
    if not objective.target.uses_x0:  # (the paper's noise target: a step's memory as before objectives)
        windows = replace(windows, x0=None)
    del t, noise, x_t  # the windows hold them (and drop what the windows' passes do not need)
    if windows.views is not None:
        total = _global_view_loss(model, schedule, x0, windows, objective, execution)
        if not len(windows.rows):
            return float(total)
    windows = tiling.for_windows(windows, schedule, x0)
    return float(_window_losses(model, schedule, windows, total, x0.numel(), objective, execution))


def _check_objective(model: PatchUNet, objective: O.Objective) -> None:
    if not isinstance(objective, O.Objective):
        raise TypeError(f"objective must be a patchlab.objective.Objective, got {objective!r}")
    if objective.target != O.target_of(model.config):
        raise ValueError(f"this model predicts {model.config.prediction!r} (its prediction), the objective "
                         f"{objective.target.name!r}: build the objective from the model's configuration "
                         f"(patchlab.objective.build(cfg))")


def _timesteps_and_noise(schedule: Schedule, x0: torch.Tensor, part: tuple[int, int], t, noise, generator,
                         objective: O.Objective) -> tuple[torch.Tensor, torch.Tensor]:
    """This part's rows of the global batch's timesteps [B] and noise [B x C x H x W], drawn unless given."""
    (index, count), batch, device = part, x0.shape[0], x0.device
    full = (batch * count, *x0.shape[1:])  # the global batch's shape
    if t is None:
        t = objective.draw_timesteps(schedule.alphas_cumprod, full[0], generator, device)
    elif t.shape != full[:1] or t.min() < 0 or t.max() >= schedule.timesteps:
        raise ValueError(f"t must be [{full[0]}] timesteps in [0, {schedule.timesteps}), got {t}")
    if noise is None:
        noise = torch.randn(full, generator=generator, device=device, dtype=x0.dtype)
    elif noise.shape != full:
        raise ValueError(f"noise must have the shape of the global batch {list(full)}, got {list(noise.shape)}")
    rows = slice(index * batch, (index + 1) * batch)
    return t.to(device)[rows], noise[rows]


def _window_losses(model: PatchUNet, schedule: Schedule, windows: TrainingWindows, total: torch.Tensor, size: int,
                   objective: O.Objective, execution: Execution) -> torch.Tensor:
    """The windows' passes (per chunk of ``execution.images_per_pass`` images, per chunk of the patch mode's
    windows), each back-propagated at once (so one pass's activations are alive at a time); their loss sums
    (over ``size``, the elements of the step's images) added to ``total``."""
    n, device = model.patches, windows.x_t.device
    forward = execution.forward(model, "train")
    passes = [(rows, idx) for rows in execution.image_chunks(len(windows.t)) for idx in execution.chunks(n * n)]
    for i, (rows, idx) in enumerate(passes):
        some = windows.images(rows)
        with execution.sync(last=i == len(passes) - 1):
            with execution.autocast(device):
                pred = forward(*_window_inputs(model, some, idx, some.context))
            x0, noise = (None if v is None else P.gather(v, n, idx) if some.origins is None else
                         P.gather_windows(v, some.origins[idx], model.patch_size) for v in (some.x0, some.noise))
            # alpha-bar per window, in the passes' order (only for objectives that read it: memory as before)
            a = schedule.alphas_cumprod.to(device)[some.t].repeat(len(idx)) if objective.uses_abar else None
            part_loss = objective.loss_sum(pred.float(), x0, noise, a) / size
            del x0, noise, some  # not kept through backward: a patch's target is the step's only other live tensor
            part_loss.backward()
        total += part_loss.detach()
    return total


def _window_inputs(model: PatchUNet, windows: TrainingWindows, idx: list[int], context):
    """The UNet's arguments for windows ``idx`` of every image: the fixed grid's patches, or windows anywhere."""
    if windows.origins is None:
        return patch_batch(model, windows.x_t, windows.t, idx, context)
    return window_batch(model, windows.x_t, windows.t, windows.origins[idx], context)


def _global_view_loss(model: PatchUNet, schedule: Schedule, x0: torch.Tensor, windows: TrainingWindows,
                      objective: O.Objective, execution: Execution) -> torch.Tensor:
    """The passes over the global views of the images ``windows.views`` [k] (indices; ``images_per_pass`` of
    them per pass), each back-propagated; each view counts as much as an image denoised as windows (its loss
    sum times N*N, over x0's size). -> their loss."""
    n, total = model.patches, torch.zeros((), device=x0.device)
    for rows in execution.image_chunks(len(windows.views)) if len(windows.views) else []:
        views = windows.views[rows]
        view, t_view, a_view = S.pooled_view(schedule, P.global_context(windows.x_t[views], n), windows.t[views], n)
        noise = n * P.global_context(windows.noise[views], n)  # the view's unit noise
        with execution.autocast(x0.device):
            pred = execution.forward(model, "train")(*global_batch(model, view, t_view))
        clean = P.global_context(x0[views], n) if objective.target.uses_x0 else None  # the view's clean image
        part_loss = objective.loss_sum(pred.float(), clean, noise, a_view) * (n * n) / x0.numel()
        del view, noise, clean
        part_loss.backward()
        total += part_loss.detach()
    return total


class EMA:
    """Exponential moving average of a model's weights: ema <- d * ema + (1 - d) * weights.

    ``d = min(decay, (1 + step) / (10 + step))``: the average warms up over the first steps instead of
    dragging the random initial weights along for ~1/(1 - decay) steps (matters for short CPU runs).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update after ``step`` completed steps (step >= 1)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), weight)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


@dataclass
class TrainResult:
    """What :func:`train` did: the run directory, the last completed step and this call's losses."""

    run_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> loss
    interrupted: bool = False
    signal: str | None = None  # "SIGINT" or "SIGTERM" when interrupted
    saved: int | None = None  # the step of the checkpoint on disk at the end (None: none written)
    lost_step: str | None = None  # why the step under way when interrupted failed (its work is dropped)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: training stopped before the update."""


def train(cfg: C.Config, run_dir, *, progress: bool = True, on_log=None, evaluator=None) -> TrainResult:
    """Train ``cfg`` in ``run_dir``, resuming from its checkpoint if it has one.

    Writes config.json, checkpoint.pt (every ``checkpoint_every`` steps and at the end), metrics.csv
    and sample grids (see :mod:`patchlab.runs`). A resumed run reads the same batches, timesteps and
    noise as an uninterrupted one: they are drawn from generators seeded by (seed, step). Ctrl-C,
    SIGTERM (SLURM, ``docker stop``, ``timeout``) or a notebook interrupt finishes the current step,
    writes a checkpoint and stops. ``on_log(row)`` is called with every metrics row (a dict), e.g. for a
    live loss plot. ``evaluator(step, ema_model, schedule, raw=model)`` is called after every step (e.g. a
    :class:`patchlab.metrics.curves.LearningCurve`, which measures quality at intervals; ``raw``: the weights
    the EMA follows).

    Refused, before anything is written: a dataset that cannot be read, a run directory that another
    process is training in (:class:`patchlab.runs.RunBusyError`), a checkpoint of a different
    configuration or of more steps than ``steps``. A NaN or infinite loss or gradient stops training
    with :class:`TrainingDivergedError` before the weights are updated; the last checkpoint stays.
    """
    with distributed.join(cfg.train.device) as (world, device):
        try:
            return _train(cfg, RunPaths(Path(run_dir)), world, device, progress=progress and world.main,
                          on_log=on_log, evaluator=evaluator if world.main else None)
        except RuntimeError as exc:
            if not (world.joined and distributed.lost_peer(exc)):
                raise
            raise distributed.PeerLostError(
                f"rank {world.rank} of {world.size}: another process of this job stopped or cannot be reached "
                f"({distributed.short_reason(exc)}); the last checkpoint in "
                f"{run_dir} is kept: run the same command again to resume") from exc


def check_job(cfg: C.Config, world_size: int = 1, *, parallel: bool | None = None) -> None:
    """Refuse a training job that cannot run as configured, before any work: a batch that does not divide
    over ``world_size`` processes, a fast path or a model that trains in one process only under torchrun
    (``parallel``: a process group is running; default: more than one process), a global-view share that
    leaves the global view or the windows without an image per step. ``train`` and the planner ask."""
    parallel = world_size > 1 if parallel is None else parallel
    rows = distributed.World(size=world_size).rows(cfg.train.batch_size)
    if parallel and cfg.train.fast_path != "off":
        raise ValueError(f"fast_path={cfg.train.fast_path!r} runs in a single process; under torchrun train with "
                         f"fast_path='off'")
    training_tiling(cfg.model).check(parallel=parallel, batch=rows)


def _train(cfg: C.Config, paths: RunPaths, world: distributed.World, device: torch.device, *, progress: bool,
           on_log, evaluator) -> TrainResult:
    with contextlib.ExitStack() as held:
        start = _Start(cfg, paths, world, device, held)
        loop = _Loop(cfg, paths, world, device, start, on_log=on_log, evaluator=evaluator)
        if start.step >= cfg.train.steps:
            return loop.result
        tc = cfg.train
        loader = DataLoader(start.dataset, batch_sampler=StepBatchSampler(
            len(start.dataset), tc.batch_size, seed=tc.seed, start=start.step, stop=tc.steps,
            part=(world.rank, world.size)), num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
        loop.run(loader, progress=progress)
        distributed.barrier(world)  # the other ranks leave once rank 0's last checkpoint is written
    result = loop.result
    if result.interrupted and world.main:
        print(_interrupted_note(result, paths))
    return result


def _interrupted_note(result: TrainResult, paths: RunPaths) -> str:
    """One line for an interrupted run: which checkpoint is kept, and the step dropped when the interrupt also
    broke the step under way (a compiler's workers get the terminal's Ctrl-C too)."""
    if result.lost_step is None:
        return f"interrupted ({result.signal}): checkpoint written at step {result.step}; run again to resume"
    kept = f"the last checkpoint ({_checkpoint_note(paths, result.saved)}) is kept" if result.saved else \
        "no checkpoint was written yet"
    return (f"interrupted ({result.signal}) during step {result.step + 1}, which stopped with {result.lost_step}; "
            f"{kept}; run again to resume")


class _Start:
    """Where a run starts: rank 0 (or the only process) checks the job, takes the run's lock (held by
    ``held``), reads the checkpoint it resumes from and writes config.json; the other ranks then read
    the same checkpoint. ``step``: the checkpoint's step (0 for a new run); ``state``: the checkpoint."""

    def __init__(self, cfg: C.Config, paths: RunPaths, world: distributed.World, device, held: contextlib.ExitStack):
        self.cfg, self.paths, self.world, self.device, self.held = cfg, paths, world, device, held
        self.dataset = self.state = None
        self.step = distributed.on_main(world, self._on_main)
        if not world.main:
            self.dataset = _dataset(cfg)
            self.state = _peer_state(paths, self.step, device, world) if self.step else None

    def _on_main(self) -> int:
        check_job(self.cfg, self.world.size, parallel=self.world.joined)
        self.dataset = _dataset(self.cfg)
        self.held.enter_context(lock_run_dir(self.paths.root))
        remove_stale_temporaries(self.paths.root)
        self.state = _resume_state(self.paths, self.cfg, self.device)
        write_text_atomic(self.paths.config, self.cfg.to_json() + "\n")
        return 0 if self.state is None else int(self.state["step"])


class _Loop:
    """The training loop of one process: model, EMA and optimizer (resumed from ``start``), the execution of
    its steps, and what it logs, checkpoints, samples and evaluates after each step (rank 0)."""

    def __init__(self, cfg: C.Config, paths: RunPaths, world: distributed.World, device: torch.device,
                 start: _Start, *, on_log, evaluator):
        self.cfg, self.paths, self.world, self.device = cfg, paths, world, device
        self.on_log, self.evaluator = on_log, evaluator
        self.model, schedule = build(cfg)
        self.objective = O.build(cfg)
        self.model.to(device)
        self.schedule = schedule.to(device)
        self.optimizer = _optimizer(self.model, cfg.train, world)
        self.ema = EMA(self.model, cfg.train.ema_decay)
        if start.state is not None:
            _load_state(start.state, self.model, self.ema, self.optimizer, paths.checkpoint)
            start.state = None
        self.result = TrainResult(paths.root, start.step, saved=start.step or None)
        self.step = self.saved = start.step
        self.log = MetricsLog(paths.metrics, keep_until=start.step) if world.main and start.step < cfg.train.steps \
            else None

    def execution(self) -> Execution:
        """The steps' execution: the configured patch mode, precision and fast path; under torchrun this
        process's part of the batch, its passes run by DistributedDataParallel (one all-reduce of the
        gradients per step; parameters start equal on every rank, as DDP broadcasts rank 0's, and stay
        equal, and so does the EMA; gradients live in DDP's buckets, constant buffers are not re-sent)."""
        tc, runner = self.cfg.train, None
        if self.world.joined:
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                             else None, forward_sync_buffers=False, gradient_as_bucket_view=True)
        return Execution.of_training(tc, part=(self.world.rank, self.world.size), runner=runner)

    def run(self, loader: DataLoader, *, progress: bool) -> None:
        tc, execution = self.cfg.train, self.execution()
        bar = tqdm(total=tc.steps, initial=self.step, desc="training", disable=not progress, dynamic_ncols=True,
                   mininterval=0.5)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with _deferred_interrupt(escalate=not self.world.joined) as interrupt, contextlib.closing(bar):
            for x0 in loader:
                try:
                    loss, grad_norm, stop = self.update(x0.to(self.device, non_blocking=True), execution, interrupt)
                except Exception as exc:  # e.g. a compiler whose workers the same Ctrl-C killed
                    if interrupt.requested is None:
                        raise
                    self.result.interrupted, self.result.signal = True, interrupt.requested
                    self.result.lost_step = f"{type(exc).__name__}: {distributed.short_reason(exc)[:200]}"
                    break
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                self.after_step(loss, grad_norm, last=self.step == tc.steps or stop)
                if stop:
                    self.result.interrupted, self.result.signal = True, interrupt.requested or "peer"
                    break

    def update(self, x0: torch.Tensor, execution: Execution, interrupt) -> tuple[float, float, bool]:
        """One optimizer step on the batch x0 -> (the global batch's loss, the gradient norm, whether any
        rank was asked to stop: all ranks stop together). Diverged: raises before the update."""
        tc, step = self.cfg.train, self.step
        for group in self.optimizer.param_groups:
            group["lr"] = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(self.model, self.schedule, x0, execution, objective=self.objective,
                                    generator=make_generator(derived_seed(tc.seed, Stream.TRAIN_STEP, step),
                                                             self.device))
        loss, stop = distributed.mean_and_any(self.world, loss, interrupt.requested is not None, self.device)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf")))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # every rank sees the same; rank 0 says so
            error = TrainingDivergedError(
                f"training diverged at step {step + 1}: loss {loss}, gradient norm {grad_norm}; stopped before "
                f"the update, the last checkpoint ({_checkpoint_note(self.paths, self.saved)}) is kept. Lower the "
                f"learning rate (lr={tc.lr}) or clip gradients (grad_clip), then train again")
            raise error if self.world.main else distributed.PeerError(str(error))
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        self.result.step, self.result.losses[self.step] = self.step, loss
        return loss, grad_norm, stop

    def after_step(self, loss: float, grad_norm: float, *, last: bool) -> None:
        """Rank 0: the metrics row, the checkpoint, the sample grid and the evaluator, each when due."""
        tc, step = self.cfg.train, self.step
        save = step % tc.checkpoint_every == 0 or last
        if save and distributed.shards_optimizer(tc, self.world.size):
            self.optimizer.consolidate_state_dict(to=0)  # every rank sends its shard of Adam's state
        if not self.world.main:
            return
        self.log.add(loss)
        if step % tc.log_every == 0 or last:
            row = self.log.write(step, loss, grad_norm, self.optimizer.param_groups[0]["lr"], tc.batch_size,
                                 self.device)
            if self.on_log is not None:
                self.on_log(row)
        if save:
            ckpt.save(self.paths.checkpoint, step=step, config=self.cfg, model=self.model, ema=self.ema.model,
                      optimizer=self.optimizer)
            self.saved = self.result.saved = step
        if (tc.sample_every and step % tc.sample_every == 0) or step == tc.steps:
            write_sample_grid(self.ema.model, self.schedule, self.cfg, self.paths.samples / f"step_{step:07d}.png")
        if self.evaluator is not None:
            self.evaluator(step, self.ema.model, self.schedule, raw=self.model)


def _optimizer(model: PatchUNet, tc: C.TrainConfig, world: distributed.World) -> torch.optim.Optimizer:
    """Adam; with ``shard_optimizer`` under torchrun, each rank keeps the state of its share of the
    parameters (ZeroRedundancyOptimizer) and broadcasts them after its update. A checkpoint holds the
    whole state either way, so runs resume sharded or not, on any number of processes."""
    if distributed.shards_optimizer(tc, world.size):
        from torch.distributed.optim import ZeroRedundancyOptimizer  # (imports FSDP: half a second)

        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=tc.lr)
    return torch.optim.Adam(model.parameters(), lr=tc.lr)


def _dataset(cfg: C.Config):
    return make_dataset(cfg.data.dataset, cfg.data.data_root, image_size=cfg.model.image_size,
                        channels=cfg.model.channels, size=cfg.data.dataset_size)


def _checkpoint_note(paths: RunPaths, step: int) -> str:
    return f"step {step}, {paths.checkpoint}" if paths.checkpoint.is_file() else "none written yet"


def write_sample_grid(model: PatchUNet, schedule: Schedule, cfg: C.Config, path) -> Path:
    """A DDIM sample grid of ``cfg.train.sample_count`` images from a fixed seed, with patch borders."""
    device = next(model.parameters()).device
    images = sample(model, schedule, cfg.train.sample_count, sampler="ddim",
                    steps=min(cfg.train.sample_steps, schedule.timesteps),
                    execution=Execution.of_training(cfg.train, checkpointing="none", fast_path="off"),
                    generator=make_generator(derived_seed(cfg.train.seed, Stream.SAMPLE_GRID), device))
    return save_grid(images, path, scale=max(1, 64 // cfg.model.image_size))


def _resume_state(paths: RunPaths, cfg: C.Config, device) -> dict | None:
    """The checkpoint in ``paths`` checked against ``cfg`` (None without one: nothing was trained, so
    ``cfg`` replaces whatever config.json a failed or early-stopped start left)."""
    if not paths.checkpoint.exists():
        return None
    state = ckpt.load(paths.checkpoint, map_location=device)
    start = int(state["step"])
    ckpt.check_resumable(state["config"], cfg, paths.checkpoint,
                         hint=f"to resume the run as it was: python -m patchlab train --run-dir {paths.root} "
                              f"--config {paths.config}")
    if start > cfg.train.steps:
        raise ValueError(f"the run in {paths.root} has completed {start} steps, more than steps={cfg.train.steps}: "
                         f"a run cannot be shortened; ask for {start} steps or more, or use a new run directory")
    return state


def _peer_state(paths: RunPaths, start: int, device, world: distributed.World) -> dict:
    """The checkpoint rank 0 resumes from, read by another rank (the run directory must be on a file
    system that every machine of the job sees)."""
    try:
        state = ckpt.load(paths.checkpoint, map_location=device)
    except (OSError, ckpt.CheckpointError) as exc:
        raise RuntimeError(f"rank {world.rank} cannot read the checkpoint {paths.checkpoint} that rank 0 resumes "
                           f"from ({exc}): the run directory must be on a file system all machines share") from exc
    if int(state["step"]) != start:
        raise RuntimeError(f"rank {world.rank} reads step {state['step']} in {paths.checkpoint}, rank 0 step {start}")
    return state


def _load_state(state: dict, model, ema: EMA, optimizer, path) -> None:
    ckpt.load_weights(model, state["model"], what="model", path=path)
    ckpt.load_weights(ema.model, state["ema"], what="EMA", path=path)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ckpt.CheckpointError(f"optimizer state in {path} does not fit: {exc}") from exc


class _Interrupt:
    requested: str | None = None  # the name of the signal that asked to stop


@contextlib.contextmanager
def _deferred_interrupt(escalate: bool = True):
    """Turn the first SIGINT or SIGTERM into a flag checked between steps; a second one interrupts at once
    (with ``escalate``; torchrun forwards a Ctrl-C to its processes again, and its own timeout bounds
    the wait, so data-parallel ranks keep finishing the step)."""
    flag = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        if flag.requested and escalate:
            raise KeyboardInterrupt
        flag.requested = signal.Signals(signum).name

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s in signals:
            signal.signal(s, previous[s])
