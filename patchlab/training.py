"""Training: exact-gradient patch-sequential steps, EMA, and a resumable training loop.

GCC is computed from x_t (a constant with respect to the weights) and GroupNorm normalises each sample
on its own, so every patch's prediction depends only on its own UNet pass. The loss over the whole
image is a sum over patches; running forward+backward one patch (or k patches) at a time and
accumulating gradients therefore gives the same gradient as the batched step, at the activation
memory of one pass.
"""

import contextlib
import copy
import csv
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import config as C
from . import patches as P
from .data import StepBatchSampler, make_dataset
from .model import PatchUNet, check_image, patch_batch
from .runs import RunPaths, build
from .runtime import autocast, derived_seed, make_generator, resolve_device
from .sampling import sample
from .schedule import Schedule, q_sample
from .viz import save_grid

LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
METRIC_FIELDS = ("step", "loss", "loss_avg", "grad_norm", "lr", "elapsed_s", "images_per_s", "peak_mem_mib")


def accumulate_gradients(model: PatchUNet, schedule: Schedule, x0: torch.Tensor, *, patch_mode="sequential",
                         t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, loss: str = "l1",
                         precision: str = "fp32") -> float:
    """Loss of one training step on ``x0`` [B x C x H x W] in [-1, 1], back-propagated into ``.grad``.

    Draws ``t`` [B] (uniform in [0, T)) and then ``noise`` [B x C x H x W] from ``generator`` unless
    given; predicts the noise of every patch in ``patch_mode`` (``"batched"``, ``"sequential"`` or k
    patches per pass), running backward after each pass. Gradients add up to those of the batched
    step, whatever the mode. Does not zero gradients or step an optimizer. Returns the mean loss.
    """
    check_image(model, x0)
    if loss not in LOSSES:
        raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
    batch, device, n = x0.shape[0], x0.device, model.patches
    if t is None:
        t = torch.randint(0, schedule.timesteps, (batch,), generator=generator, device=device)
    elif t.shape != (batch,) or t.min() < 0 or t.max() >= schedule.timesteps:
        raise ValueError(f"t must be [{batch}] timesteps in [0, {schedule.timesteps}), got {t}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}")
    t = t.to(device)
    x_t = q_sample(schedule.to(device), x0, t, noise)
    context = P.global_context(x_t, n) if model.gcc else None
    total = torch.zeros((), device=device)
    for idx in P.chunks(n * n, patch_mode):
        with autocast(precision, device):
            pred = model(*patch_batch(model, x_t, t, idx, context))
        part = LOSSES[loss](pred.float(), P.gather(noise, n, idx), reduction="sum") / x0.numel()
        part.backward()
        total += part.detach()
    return float(total)


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


def train(cfg: C.Config, run_dir, *, progress: bool = True, on_log=None) -> TrainResult:
    """Train ``cfg`` in ``run_dir``, resuming from its checkpoint if it has one.

    Writes config.json, checkpoint.pt (every ``checkpoint_every`` steps and at the end), metrics.csv
    and sample grids (see :mod:`patchlab.runs`). A resumed run reads the same batches, timesteps and
    noise as an uninterrupted one: they are drawn from generators seeded by (seed, step). Ctrl-C (or
    a notebook interrupt) finishes the current step, writes a checkpoint and stops.
    ``on_log(row)`` is called with every metrics row (a dict), e.g. for a live loss plot.
    """
    paths = RunPaths(Path(run_dir))
    device = resolve_device(cfg.train.device)
    model, schedule = build(cfg)
    model.to(device)
    schedule = schedule.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay)
    start = _prepare_run_dir(paths, cfg, model, ema, optimizer, device)
    result = TrainResult(paths.root, start)
    if start >= cfg.train.steps:
        return result

    tc = cfg.train
    dataset = make_dataset(cfg.data.dataset, cfg.data.data_root, image_size=cfg.model.image_size,
                           channels=cfg.model.channels, size=cfg.data.dataset_size)
    loader = DataLoader(dataset, batch_sampler=StepBatchSampler(len(dataset), tc.batch_size, seed=tc.seed,
                                                                start=start, stop=tc.steps),
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    log = _MetricsLog(paths.metrics, keep_until=start)
    bar = tqdm(total=tc.steps, initial=start, desc="training", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = start
    with _deferred_interrupt() as interrupt:
        for x0 in loader:
            for group in optimizer.param_groups:
                group["lr"] = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
            optimizer.zero_grad(set_to_none=True)
            loss = accumulate_gradients(
                model, schedule, x0.to(device, non_blocking=True), patch_mode=tc.patch_mode,
                generator=make_generator(derived_seed(tc.seed, 2, step), device),
                loss=cfg.diffusion.loss, precision=tc.precision)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"))
            optimizer.step()
            step += 1
            ema.update(model, step)
            log.add(loss)
            result.step, result.losses[step] = step, loss
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            last = step == tc.steps or interrupt.requested
            if step % tc.log_every == 0 or last:
                row = log.write(step, loss, float(grad_norm), optimizer.param_groups[0]["lr"], tc.batch_size, device)
                if on_log is not None:
                    on_log(row)
            if step % tc.checkpoint_every == 0 or last:
                ckpt.save(paths.checkpoint, step=step, config=cfg, model=model, ema=ema.model, optimizer=optimizer)
            if (tc.sample_every and step % tc.sample_every == 0) or step == tc.steps:
                write_sample_grid(ema.model, schedule, cfg, paths.samples / f"step_{step:07d}.png")
            if interrupt.requested:
                result.interrupted = True
                break
    bar.close()
    if result.interrupted:
        print(f"interrupted: checkpoint written at step {step}; run again to resume")
    return result


def write_sample_grid(model: PatchUNet, schedule: Schedule, cfg: C.Config, path) -> Path:
    """A DDIM sample grid of ``cfg.train.sample_count`` images from a fixed seed, with patch borders."""
    device = next(model.parameters()).device
    images = sample(model, schedule, cfg.train.sample_count, sampler="ddim",
                    steps=min(cfg.train.sample_steps, schedule.timesteps), patch_mode=cfg.train.patch_mode,
                    generator=make_generator(derived_seed(cfg.train.seed, 3), device),
                    precision=cfg.train.precision)
    return save_grid(images, path, scale=max(1, 64 // cfg.model.image_size))


def _prepare_run_dir(paths: RunPaths, cfg: C.Config, model, ema: EMA, optimizer, device) -> int:
    """Create the run directory or resume it; returns the number of steps already done."""
    paths.root.mkdir(parents=True, exist_ok=True)
    start = 0
    if paths.checkpoint.exists():
        state = ckpt.load(paths.checkpoint, map_location=device)
        ckpt.check_resumable(state["config"], cfg, paths.checkpoint)
        ckpt.load_weights(model, state["model"], what="model", path=paths.checkpoint)
        ckpt.load_weights(ema.model, state["ema"], what="EMA", path=paths.checkpoint)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(f"optimizer state in {paths.checkpoint} does not fit: {exc}") from exc
        start = int(state["step"])
    elif paths.config.exists():
        ckpt.check_resumable(C.load_json(paths.config), cfg, paths.config)
    _write_text_atomic(paths.config, cfg.to_json() + "\n")
    return start


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class _MetricsLog:
    """metrics.csv writer; on resume, rows after the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, keep_until: int):
        self.path = path
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= keep_until]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in METRIC_FIELDS} for r in rows)
        self.t0, self.last_step, self.last_time, self.window = time.perf_counter(), keep_until, None, []

    def add(self, loss: float) -> None:
        self.window.append(loss)

    def write(self, step: int, loss: float, grad_norm: float, lr: float, batch: int, device) -> dict:
        now = time.perf_counter()
        since = self.last_time or self.t0
        row = {"step": step, "loss": loss, "loss_avg": sum(self.window) / len(self.window),
               "grad_norm": grad_norm, "lr": lr, "elapsed_s": round(now - self.t0, 3),
               "images_per_s": round((step - self.last_step) * batch / max(now - since, 1e-9), 2),
               "peak_mem_mib": round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
               if torch.device(device).type == "cuda" else ""}
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRIC_FIELDS).writerow(row)
        self.last_step, self.last_time, self.window = step, now, []
        return row


class _Interrupt:
    requested = False


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn the first SIGINT into a flag checked between steps; a second one interrupts at once."""
    flag = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
