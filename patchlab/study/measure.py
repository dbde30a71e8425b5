"""What the notebooks measure on a profile's trained runs: samples and trajectories, the memory and time of
their steps, their quality (:func:`patchlab.metrics.evaluate.evaluate_run`), the noise floor, and the
coarse-to-fine remedy's hand-over sweep.
"""

import time
from pathlib import Path

import torch

from .. import config as C
from .. import tiling as T
from ..metrics import content
from ..metrics import uncertainty as U
from ..execution import Execution
from ..runs import load_run
from ..runtime import resolve_device
from .variants import PAPER_BATCH, Run, slug


def progress_lines(items: list, stage: str, name, *, enabled: bool = True):
    """Yield ``items``, printing a plain line after each: ``[stage] name(item): done in s (i/n, s so far)``.

    Plain lines, not a progress bar, so that they reach a terminal through papermill too (like the training
    runs' :class:`patchlab.study.orchestrate.ProgressLines`)."""
    start = time.monotonic()
    for i, item in enumerate(items, 1):
        began = time.monotonic()
        yield item
        if enabled:
            now = time.monotonic()
            print(f"[{stage}] {name(item)}: done in {now - began:.1f} s ({i}/{len(items)}, {now - start:.0f} s so far)",
                  flush=True)


def load(run: Run, device="cpu"):
    """(model with EMA weights in eval mode, schedule) of a trained run, on ``device``."""
    model, schedule, _ = load_run(run.path, device=resolve_device(str(device)))
    return model, schedule


def sample_all(runs: list[Run], n: int, *, steps: int, seed: int = 0, patch_mode="batched",
               device="auto") -> dict[str, torch.Tensor]:
    """{label: n DDIM samples [n x C x H x W] on the CPU}; every model starts from the same noise, each drawn
    with its own tiling."""
    return {run.label: trajectory(run, n, steps=steps, seed=seed, patch_mode=patch_mode, device=device).images
            for run in runs}


def trajectory(run: Run, n: int, *, steps: int, seed: int = 0, patch_mode="batched", device="auto"):
    """The :class:`patchlab.trajectory.Trajectory` of ``n`` DDIM samples of ``run`` (with its tiling)."""
    from ..trajectory import record

    model, schedule = load(run, device)
    return record(model, schedule, n, steps=steps, seed=seed, tiling=run.tiling,
                  execution=Execution(patch_mode=patch_mode))


def profile_memory(runs: list[Run], path, *, batch: int | None = None, patch_mode="sequential", device="auto",
                   repeats: int = 3, paper_estimate: bool = True, progress: bool = True, steps: int = 25) -> Path:
    """Peak memory (tensor level; the CUDA allocator's too on a GPU) and median time of one training step
    and one sampling step of every run's configuration, written to the CSV ``path``: one memory-table
    row (:data:`patchlab.memory.ROW_FIELDS`) per run, phase and scale, after the columns ``label`` and
    ``scale``.

    ``scale="profile"``: the runs' own configuration, measured on ``device`` with ``batch`` images
    (default: the runs' batch size). ``scale="paper"`` (with ``paper_estimate``): the same switches at
    the paper's size (:data:`patchlab.config.PAPER_PARAMS`), estimated with fake tensors (nothing
    allocated, no timing) at batch :data:`PAPER_BATCH`. ``patch_mode`` is capped at one pass per
    image for N = 1. Each run's sampling step is its tiling's: one that takes two kinds of steps (coarse to
    fine: from the global view, then with overlapping windows) gives the larger peak of the two and the mean
    step time over the ``steps`` DDIM steps of its samples (:func:`patchlab.memory.profile_step`).
    """
    import pandas as pd

    from .. import memory as MP

    dev = resolve_device(str(device))
    jobs = []
    for run in runs:
        mode = patch_mode if run.patches > 1 else "batched"
        for phase in MP.PHASES[::-1]:  # train, then sample
            jobs.append((run, "profile", phase, run.config, batch or run.config.train.batch_size, mode, False))
        if paper_estimate:
            m = run.config.model
            paper = C.from_params(**{**C.PAPER_PARAMS, "patches": run.patches, "position": m.position, "gcc": m.gcc,
                                     "coords": m.coords, "global_view": m.global_view})
            for phase in MP.PHASES[::-1]:
                jobs.append((run, "paper", phase, paper, PAPER_BATCH[phase], mode, True))
    rows = []
    for run, scale, phase, cfg, b, mode, fake in progress_lines(
            jobs, "memory", lambda job: f"{job[0].label} {job[2]} step at the {job[1]}'s size", enabled=progress):
        row = MP.profile_step(cfg, phase, batch=b, execution=Execution(patch_mode=mode, precision=cfg.train.precision),
                              tiling=run.windows if phase == "sample" else None, steps=steps, device=dev,
                              estimate=fake, repeats=0 if fake else repeats).row()
        rows.append({"label": run.label, "scale": scale, **row})
    MP.release_memory()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["label", "scale", *MP.ROW_FIELDS]).to_csv(path, index=False)
    return path


def global_steps(tiling: T.CoarseToFine, steps: int, timesteps: int) -> int:
    """How many of ``steps`` DDIM steps (of T = ``timesteps``) the coarse-to-fine ``tiling`` denoises from
    the global view."""
    from ..sampling import timesteps_for

    return sum(tiling.uses_global_view(t, timesteps) for t in timesteps_for("ddim", timesteps, steps))


HANDOVERS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)  # global_from values compared (fractions of T)


def handover_sweep(run: Run, *, n: int, steps: int, seed: int = 0, values=HANDOVERS, patch_mode="batched",
                   device="auto", features: str = "auto", progress: bool = True) -> list[dict]:
    """Where the coarse-to-fine remedy should hand over to the windows: ``run`` (sampled coarse to fine, a model
    trained with ``global_view``) evaluated (:func:`patchlab.metrics.evaluate.evaluate_run`, ``n`` samples of
    ``steps`` DDIM steps, same seed and noise for every value) with the hand-over ``global_from`` at each of
    ``values`` (fractions of T; 1: windows at every step, 0: the global view at every step) up to the
    model's ``windows_below`` (its windows never learnt the steps above). -> one dict per value: the metrics
    and how many steps each kind of pass denoised (the samples' scores with their 95% intervals, ``X_lo``, ``X_hi``)."""
    from ..metrics.evaluate import evaluate_run

    if not isinstance(run.tiling, T.CoarseToFine):
        raise ValueError(f"the sweep is of the coarse-to-fine remedy; {run.label!r} samples with {run.tiling!r}")
    rows = []
    values = [v for v in values if v <= run.config.model.windows_below]
    for handover in progress_lines(values, "hand-over", lambda v: f"{run.label} global from {v:g} T ({n} samples)",
                                   enabled=progress):
        tiling = T.CoarseToFine(run.config.model, float(handover))
        m = evaluate_run(run.path, n=n, steps=steps, seed=seed, tiling=tiling,
                         execution=Execution(patch_mode=patch_mode),
                         device=device, fid=False, features=features, write=False)
        k = global_steps(tiling, m["steps"], run.config.diffusion.timesteps)
        rows.append({"model": run.label, "global from": float(handover), "global steps": k,
                     "window steps": m["steps"] - k, **U.with_interval(m, "seam_fake", "seam"),
                     "seam real": m["seam_real"], **content.values(m, intervals=True),
                     **U.with_interval(m, "kid", "KID"), **U.with_interval(m, "swd", "SWD"), "mean": m["mean_fake"],
                     "features": m["features"]})
    return rows


def noise_floor(runs: list[Run], *, n: int, seed: int = 0, features: str = "offline") -> dict:
    """SWD and KID of real images against other real images of the runs' dataset
    (:func:`patchlab.metrics.evaluate.real_floor`): below it, two models' values are a tie."""
    from ..metrics.evaluate import real_floor

    return real_floor(runs[0].config, n, seed=seed, features=features)


def evaluate(runs: list[Run], out_dir, *, n: int, steps: int, seed: int = 0, patch_mode="batched", device="auto",
             fid: bool = True, features: str = "auto", progress: bool = True) -> list[Path]:
    """:func:`patchlab.metrics.evaluate.evaluate_run` of every run, written to ``out_dir/<slug>/metrics.json``
    (with ``metrics.csv`` and ``samples.png``); returns the metrics.json paths."""
    from ..metrics.evaluate import evaluate_run

    paths = []
    for run in progress_lines(runs, "evaluate", lambda r: f"{r.label} ({n} samples, DDIM {steps})", enabled=progress):
        folder = Path(out_dir) / slug(run.label)
        evaluate_run(run.path, n=n, steps=steps, seed=seed, tiling=run.tiling,
                     execution=Execution(patch_mode=patch_mode),
                     device=device, fid=fid, features=features, out_dir=folder, progress=False)
        paths.append(folder / "metrics.json")
    return paths
