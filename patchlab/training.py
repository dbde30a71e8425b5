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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import config as C
from . import distributed
from . import patches as P
from . import schedule as S
from .accel import unet_for
from .data import StepBatchSampler, make_dataset
from .model import PatchUNet, build, check_image, global_batch, patch_batch, window_batch
from .runs import MetricsLog, RunPaths, lock_run_dir, remove_stale_temporaries, write_text_atomic
from .runtime import Stream, autocast, derived_seed, make_generator
from .sampling import sample
from .schedule import Schedule, q_sample
from .viz import save_grid

LOSS_FUNCTIONS = {"l1": F.l1_loss, "l2": F.mse_loss}  # one per patchlab.config.LOSSES


def accumulate_gradients(model: PatchUNet, schedule: Schedule, x0: torch.Tensor, *, patch_mode="sequential",
                         t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, loss: str = "l1",
                         precision: str = "fp32", part: tuple[int, int] = (0, 1), runner=None,
                         unet: Callable | None = None) -> float:
    """Loss of one training step on ``x0`` [B x C x H x W] in [-1, 1], back-propagated into ``.grad``.

    Draws ``t`` [B] (uniform in [0, T)) and then ``noise`` [B x C x H x W] from ``generator`` unless
    given; predicts the noise of every patch in ``patch_mode`` (``"batched"``, ``"sequential"`` or k
    patches per pass), running backward after each pass. Gradients add up to those of the batched
    step, whatever the mode. Does not zero gradients or step an optimizer. Returns the mean loss.
    A ``coords`` model is trained on its N x N grid shifted by a random offset per image (drawn from
    ``generator`` after the noise): the windows still tile the image, so the gradients stay exact. One
    trained on the global view too (``global_view`` > 0) denoises that share of the images (drawn after
    the shifts: round(``global_view`` * B) images, a random permutation's first) as their global view
    (:func:`patchlab.model.global_batch`), in one pass before the windows' passes, and the others as
    windows; it trains in one process (not with ``part`` or ``runner``). With ``window_until`` < 1 the
    windows' timesteps are scaled into the fine steps, t * m // T (m: :func:`patchlab.patches.fine_timesteps`;
    about uniform there when ``t`` is), and their x_t drawn again from the same noise at those timesteps.

    Data parallelism (:mod:`patchlab.distributed`): ``part=(i, k)`` says that ``x0`` is the i-th of k
    equal parts of the global batch; ``t`` [k*B], the noise [k*B x C x H x W] and the shifts are drawn
    (or given) for the whole global batch and this part's rows kept, so k processes see exactly what one
    would. The loss is normalised by this part's size: averaging the gradients of the k parts (as
    DistributedDataParallel does) gives the gradient of the global batch. ``runner`` (that
    DistributedDataParallel wrapper of ``model``) runs the passes, synchronising gradients only in the
    last one (``no_sync()`` in the others).

    ``unet(inputs, t, pos)``, when given, runs each pass instead of the model (same arguments and result;
    e.g. :func:`patchlab.accel.fast_unet`: compiled passes, CUDA graphs of forward and backward); the
    gradients are those of the plain model. Not together with ``runner``.
    """
    check_image(model, x0)
    if unet is not None and runner is not None:
        raise ValueError("a data-parallel runner and a unet replacement cannot be combined: DDP's gradient "
                         "synchronisation runs in its own forward")
    if loss not in LOSS_FUNCTIONS:
        raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
    index, count = part
    if not 0 <= index < count:
        raise ValueError(f"part must be (i, k) with 0 <= i < k, got {part}")
    batch, device, n = x0.shape[0], x0.device, model.patches
    full = (batch * count, *x0.shape[1:])  # the global batch's shape
    rows = slice(index * batch, (index + 1) * batch)
    if t is None:
        t = torch.randint(0, schedule.timesteps, full[:1], generator=generator, device=device)
    elif t.shape != full[:1] or t.min() < 0 or t.max() >= schedule.timesteps:
        raise ValueError(f"t must be [{full[0]}] timesteps in [0, {schedule.timesteps}), got {t}")
    if noise is None:
        noise = torch.randn(full, generator=generator, device=device, dtype=x0.dtype)
    elif noise.shape != full:
        raise ValueError(f"noise must have the shape of the global batch {list(full)}, got {list(noise.shape)}")
    t, noise = t.to(device)[rows], noise[rows]
    x_t = q_sample(schedule.to(device), x0, t, noise)
    context = P.global_context(x_t, n) if model.gcc else None
    total = torch.zeros((), device=device)
    if model.coords:  # windows at random offsets: the grid of each image shifted on the torus
        shift = torch.randint(0, model.patch_size, (full[0], 2), generator=generator, device=device)[rows]
        origins = (P.grid_origins(model.image_size, n).to(device)[:, None] + shift) % model.image_size
    passes = P.chunks(n * n, patch_mode)
    if model.global_view:  # a fixed share of the images is denoised as their global view, the others as windows
        if runner is not None or count > 1:
            raise ValueError("a model trained on the global view cannot train data-parallel yet (its passes "
                             "differ between processes); train it in one process")
        order = torch.randperm(batch, generator=generator, device=device)
        share = math.floor(model.config.global_view * batch + 0.5)
        views, keep = order[:share].sort().values, order[share:].sort().values  # static shapes (estimates too)
        total = _global_view_loss(model, schedule, x0, x_t, t, noise, views, loss, precision, unet)
        if not len(keep):
            return float(total)
        x_t, t, noise, origins = x_t[keep], t[keep], noise[keep], origins[:, keep]
        context = None if context is None else context[keep]
        if model.config.window_until < 1:  # the windows learn the fine steps only: t scaled into [0, m)
            m = P.fine_timesteps(model.config.window_until, schedule.timesteps)
            t = t * m // schedule.timesteps
            x_t = q_sample(schedule.to(device), x0[keep], t, noise)
            context = P.global_context(x_t, n) if model.gcc else None
    for i, idx in enumerate(passes):
        last = i == len(passes) - 1
        with (runner.no_sync() if runner is not None and not last else contextlib.nullcontext()):
            forward = unet if unet is not None else runner if runner is not None else model
            with autocast(precision, device):
                if model.coords:
                    pred = forward(*window_batch(model, x_t, t, origins[idx], context))
                else:
                    pred = forward(*patch_batch(model, x_t, t, idx, context))
            target = P.gather_windows(noise, origins[idx], model.patch_size) if model.coords \
                else P.gather(noise, n, idx)
            part_loss = LOSS_FUNCTIONS[loss](pred.float(), target, reduction="sum") / x0.numel()
            del target  # not kept through backward: a patch's noise is the step's only other live tensor
            part_loss.backward()
        total += part_loss.detach()
    return float(total)


def _global_view_loss(model: PatchUNet, schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor, views: torch.Tensor, loss: str, precision: str,
                      unet: Callable | None) -> torch.Tensor:
    """One pass over the global views of the images ``views`` [k] (indices) of x_t, back-propagated; each
    counts as much as an image denoised as windows (its loss sum times N*N, over x0's size). -> its loss."""
    if not len(views):
        return torch.zeros((), device=x0.device)
    n = model.patches
    view, t_view, _ = S.pooled_view(schedule, P.global_context(x_t[views], n), t[views], n)
    target = n * P.global_context(noise[views], n)  # the view's unit noise
    with autocast(precision, x0.device):
        pred = (unet if unet is not None else model)(*global_batch(model, view, t_view))
    part_loss = LOSS_FUNCTIONS[loss](pred.float(), target, reduction="sum") \
        * (n * n) / x0.numel()
    part_loss.backward()
    return part_loss.detach()


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


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: training stopped before the update."""


def train(cfg: C.Config, run_dir, *, progress: bool = True, on_log=None, evaluator=None) -> TrainResult:
    """Train ``cfg`` in ``run_dir``, resuming from its checkpoint if it has one.

    Writes config.json, checkpoint.pt (every ``checkpoint_every`` steps and at the end), metrics.csv
    and sample grids (see :mod:`patchlab.runs`). A resumed run reads the same batches, timesteps and
    noise as an uninterrupted one: they are drawn from generators seeded by (seed, step). Ctrl-C,
    SIGTERM (SLURM, ``docker stop``, ``timeout``) or a notebook interrupt finishes the current step,
    writes a checkpoint and stops. ``on_log(row)`` is called with every metrics row (a dict), e.g. for a
    live loss plot. ``evaluator(step, ema_model, schedule)`` is called after every step (e.g. a
    :class:`patchlab.metrics.curves.LearningCurve`, which measures quality at intervals).

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


def _train(cfg: C.Config, paths: RunPaths, world: distributed.World, device: torch.device, *, progress: bool,
           on_log, evaluator) -> TrainResult:
    tc = cfg.train
    with contextlib.ExitStack() as held:
        found = {}

        def prepare() -> int:  # rank 0 (or the only process): checks, the lock, config.json
            world.rows(tc.batch_size)
            if world.joined and tc.fast_path != "off":
                raise ValueError(f"fast_path={tc.fast_path!r} runs in a single process; under torchrun train with "
                                 f"fast_path='off'")
            if world.joined and cfg.model.global_view:
                raise ValueError("a model trained on the global view (global_view > 0) trains in one process for "
                                 "now (its passes differ between processes); run it without torchrun")
            found["dataset"] = _dataset(cfg)
            held.enter_context(lock_run_dir(paths.root))
            remove_stale_temporaries(paths.root)
            found["state"] = _resume_state(paths, cfg, device)
            write_text_atomic(paths.config, cfg.to_json() + "\n")
            return 0 if found["state"] is None else int(found["state"]["step"])

        start = distributed.on_main(world, prepare)
        if not world.main:
            found["dataset"] = _dataset(cfg)
            found["state"] = _peer_state(paths, start, device, world) if start else None
        model, schedule = build(cfg)
        model.to(device)
        schedule = schedule.to(device)
        optimizer = _optimizer(model, tc, world)
        ema = EMA(model, tc.ema_decay)
        if found["state"] is not None:
            _load_state(found.pop("state"), model, ema, optimizer, paths.checkpoint)
        result = TrainResult(paths.root, start)
        if start >= tc.steps:
            return result
        # one all-reduce of the gradients per step (no_sync() in all passes but the last); parameters
        # start equal on every rank (DDP broadcasts rank 0's) and stay equal, and so does the EMA
        # (gradients live in DDP's buckets, not in a second copy; constant buffers are not re-sent every pass)
        runner = None
        if world.joined:
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                             forward_sync_buffers=False, gradient_as_bucket_view=True)
        unet = unet_for(model, "train", tc.fast_path)
        dataset = found.pop("dataset")
        loader = DataLoader(dataset, batch_sampler=StepBatchSampler(len(dataset), tc.batch_size, seed=tc.seed,
                                                                    start=start, stop=tc.steps,
                                                                    part=(world.rank, world.size)),
                            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
        log = MetricsLog(paths.metrics, keep_until=start) if world.main else None
        bar = tqdm(total=tc.steps, initial=start, desc="training", disable=not progress, dynamic_ncols=True,
                   mininterval=0.5)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step, saved = start, start
        with _deferred_interrupt(escalate=not world.joined) as interrupt:
            for x0 in loader:
                for group in optimizer.param_groups:
                    group["lr"] = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
                optimizer.zero_grad(set_to_none=True)
                loss = accumulate_gradients(
                    model, schedule, x0.to(device, non_blocking=True), patch_mode=tc.patch_mode,
                    generator=make_generator(derived_seed(tc.seed, Stream.TRAIN_STEP, step), device),
                    loss=cfg.diffusion.loss, precision=tc.precision, part=(world.rank, world.size), runner=runner,
                    unet=unet)
                # the global batch's loss, and whether any rank was asked to stop: all ranks stop together
                loss, stop = distributed.mean_and_any(world, loss, interrupt.requested is not None, device)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf")))
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    bar.close()  # (every rank sees the same loss and norm; rank 0 alone says so)
                    error = TrainingDivergedError(
                        f"training diverged at step {step + 1}: loss {loss}, gradient norm {grad_norm}; stopped "
                        f"before the update, the last checkpoint ({_checkpoint_note(paths, saved)}) is kept. "
                        f"Lower the learning rate (lr={tc.lr}) or clip gradients (grad_clip), then train again")
                    raise error if world.main else distributed.PeerError(str(error))
                optimizer.step()
                step += 1
                ema.update(model, step)
                result.step, result.losses[step] = step, loss
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                last = step == tc.steps or stop
                save = step % tc.checkpoint_every == 0 or last
                if save and distributed.shards_optimizer(tc, world.size):
                    optimizer.consolidate_state_dict(to=0)  # every rank sends its shard of Adam's state
                if world.main:
                    log.add(loss)
                    if step % tc.log_every == 0 or last:
                        row = log.write(step, loss, grad_norm, optimizer.param_groups[0]["lr"], tc.batch_size,
                                        device)
                        if on_log is not None:
                            on_log(row)
                    if save:
                        ckpt.save(paths.checkpoint, step=step, config=cfg, model=model, ema=ema.model,
                                  optimizer=optimizer)
                        saved = step
                    if (tc.sample_every and step % tc.sample_every == 0) or step == tc.steps:
                        write_sample_grid(ema.model, schedule, cfg, paths.samples / f"step_{step:07d}.png")
                    if evaluator is not None:
                        evaluator(step, ema.model, schedule)
                if stop:
                    result.interrupted, result.signal = True, interrupt.requested or "peer"
                    break
        bar.close()
        distributed.barrier(world)  # the other ranks leave once rank 0's last checkpoint is written
    if result.interrupted and world.main:
        print(f"interrupted ({result.signal}): checkpoint written at step {step}; run again to resume")
    return result


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
                    steps=min(cfg.train.sample_steps, schedule.timesteps), patch_mode=cfg.train.patch_mode,
                    generator=make_generator(derived_seed(cfg.train.seed, Stream.SAMPLE_GRID), device),
                    precision=cfg.train.precision)
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
