"""Building models from a config, and the layout of a run directory.

A run directory holds::

    config.json      the resolved configuration (nested JSON)
    checkpoint.pt    model, EMA, optimizer, step and config (written atomically)
    metrics.csv      one row every ``log_every`` steps
    samples/         sample grids (PNG) written during and after training
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import config as C
from .model import PatchUNet
from .schedule import Schedule, make_schedule


def build(cfg: C.Config) -> tuple[PatchUNet, Schedule]:
    """The UNet (on CPU, float32, initialised from ``cfg.train.seed``) and the noise schedule of ``cfg``.

    The caller's global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = PatchUNet(cfg.model)
    return model, make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)


@dataclass(frozen=True)
class RunPaths:
    """Where a run keeps its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def samples(self) -> Path:
        return self.root / "samples"


def load_run(run_dir, *, ema: bool = True, device="cpu") -> tuple[PatchUNet, Schedule, C.Config]:
    """Model (EMA weights unless ``ema=False``, in eval mode), schedule and config of a trained run."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise FileNotFoundError(f"no run directory at {paths.root}")
    if not paths.checkpoint.is_file():
        raise ckpt.CheckpointError(f"{paths.root} holds no checkpoint.pt yet: train it first "
                                   f"(python -m patchlab train --run-dir {paths.root} ...)")
    state = ckpt.load(paths.checkpoint)
    cfg = state["config"]
    model, schedule = build(cfg)
    ckpt.load_weights(model, state["ema" if ema else "model"], what="EMA" if ema else "model",
                      path=paths.checkpoint)
    return model.to(device).eval(), schedule.to(device), cfg
