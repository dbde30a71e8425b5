"""The runs a profile trains and compares, where they live, and what the notebooks measure on them.

The paper compares N = 1, 2, 4 (position and GCC on; N = 1 is a plain DDPM) and, at N = 2, the
ablations without position, without GCC and without either. Beyond the paper, the seam remedies: a
model trained with continuous window coordinates on randomly shifted grids (``coords``), sampled on
the fixed grid, on a grid that moves between steps (``shifted``) and with overlapping blended windows
(``overlap``), at N = 2 and 4; and coarse to fine (``global``): a coords model also trained on the
global view (the whole image pooled to one patch) that denoises the noisy steps from it and the last
ones with overlapping windows, its windows trained on those fine steps only. :data:`VARIANTS` lists
them; every run is the profile's base configuration with the variant's switches, and the window
remedies of one N share one trained model.

A run lives in ``runs/<profile>/<slug>-<hash>``, where ``hash`` is :func:`config_hash` of its resolved
configuration: a run whose configuration is unchanged is reused (and an interrupted one resumed by
:func:`patchlab.training.train`); any change that alters what is trained gives a new directory.
"""

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import config as C
from .. import patches as P
from ..runs import RunPaths, load_run, read_metrics
from ..runtime import resolve_device
from ..training import train


GLOBAL_SHARE = 0.5  # the global remedy's share of training images denoised as the global view
# ... and its windows learn only the timesteps below this fraction of T, twice the sampler's hand-over
# (patchlab.patches.GLOBAL_UNTIL): the steps they denoise and a margin. Chosen from trial runs outside the
# study (three seeds each, N = 2, hand-over 0.05): coherence 0.21 on average with windows trained on every
# timestep, 0.23 with 0.05, 0.35 with 0.1, 0.32 with 0.2.
GLOBAL_WINDOW_UNTIL = 0.1


@dataclass(frozen=True)
class Variant:
    """One model compared: N, the conditioning switches and, for the seam remedies, the sampler's windows."""

    label: str
    patches: int
    position: bool
    gcc: bool
    coords: bool = False  # trained with continuous window coordinates on randomly shifted grids
    windows: str = "grid"  # the sampler's windows (patchlab.sampling.sample)
    global_view: float = 0.0  # share of the training images denoised as the global view (coords models)
    window_until: float = 1.0  # the windows train on timesteps below this fraction of T (global_view models)

    @property
    def trains(self) -> str:
        """The label of the variant whose trained model this one samples (the remedies share one)."""
        if self.global_view:
            return f"N={self.patches} global"
        return f"N={self.patches} coords" if self.coords else self.label


VARIANTS = (
    Variant("N=1", 1, False, False),
    Variant("N=2", 2, True, True),
    Variant("N=4", 4, True, True),
    Variant("N=2 no position", 2, False, True),
    Variant("N=2 no GCC", 2, True, False),
    Variant("N=2 neither", 2, False, False),
    Variant("N=2 coords", 2, True, True, coords=True),
    Variant("N=2 shifted", 2, True, True, coords=True, windows="shifted"),
    Variant("N=2 overlap", 2, True, True, coords=True, windows="overlap"),
    Variant("N=4 coords", 4, True, True, coords=True),
    Variant("N=4 shifted", 4, True, True, coords=True, windows="shifted"),
    Variant("N=4 overlap", 4, True, True, coords=True, windows="overlap"),
    Variant("N=2 global", 2, True, True, coords=True, windows="global", global_view=GLOBAL_SHARE,
            window_until=GLOBAL_WINDOW_UNTIL),
    Variant("N=4 global", 4, True, True, coords=True, windows="global", global_view=GLOBAL_SHARE,
            window_until=GLOBAL_WINDOW_UNTIL),
)
PAPER = ("N=1", "N=2", "N=4", "N=2 no position", "N=2 no GCC", "N=2 neither")  # the paper's comparisons
SCALING = ("N=1", "N=2", "N=4")  # the memory/quality trade-off
ABLATIONS = ("N=2", "N=2 no position", "N=2 no GCC", "N=2 neither")  # what each conditioning adds
REMEDIES = ("N=2", "N=2 coords", "N=2 shifted", "N=2 overlap", "N=2 global")  # seam-free patches at N = 2
REMEDIES_N4 = ("N=4", "N=4 coords", "N=4 shifted", "N=4 overlap", "N=4 global")
PAPER_BATCH = {"train": 32, "sample": 16}  # the paper's training batch per GPU; a sampling batch of 16


def variant(label: str) -> Variant:
    for v in VARIANTS:
        if v.label == label:
            return v
    raise ValueError(f"unknown variant {label!r}; the variants are {', '.join(v.label for v in VARIANTS)}")


def variant_of(cfg: C.Config) -> str:
    """The label of ``cfg``'s switches: a label of :data:`VARIANTS`, or a description like ``N=4 no GCC``."""
    m = cfg.model
    for v in VARIANTS:
        if (v.patches, v.position, v.gcc, v.coords, v.windows) == (m.patches, m.position, m.gcc, m.coords, "grid") \
                and not m.global_view:
            return v.label
    if m.global_view:
        return f"N={m.patches} global"
    off = [name for name, on in (("position", m.position), ("GCC", m.gcc)) if not on]
    return f"N={m.patches}" + ("" if not off else " neither" if len(off) == 2 else f" no {off[0]}")


def config_hash(cfg: C.Config) -> str:
    """12 hex digits identifying what ``cfg`` trains (:meth:`patchlab.config.Config.trained_params`)."""
    flat = dict(sorted(cfg.trained_params().items()))
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=list).encode()).hexdigest()[:12]


def slug(label: str) -> str:
    """``"N=2 no GCC"`` -> ``"n2-no-gcc"``."""
    return label.lower().replace("=", "").replace(" ", "-")


@dataclass(frozen=True)
class Run:
    """A run of a profile: its variant label, resolved configuration and directory, and the windows its
    samples are drawn with (variants that only sample differently share a directory)."""

    label: str
    config: C.Config
    path: Path
    windows: str = "grid"

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.path)

    @property
    def patches(self) -> int:
        return self.config.model.patches


def run_for(cfg: C.Config, runs_dir, label: str | None = None, *, windows: str = "grid",
            trains: str | None = None) -> Run:
    """The :class:`Run` of ``cfg`` under ``runs_dir`` (``<slug of trains>-<hash>``)."""
    label = label or variant_of(cfg)
    return Run(label, cfg, Path(runs_dir) / f"{slug(trains or label)}-{config_hash(cfg)}", windows)


def variant_runs(base: C.Config, runs_dir, labels=None) -> list[Run]:
    """The runs of ``labels`` (default: all :data:`VARIANTS`) on the base configuration ``base``."""
    labels = [v.label for v in VARIANTS] if labels is None else list(labels)
    runs = []
    for label in labels:
        v = variant(label)
        cfg = base.replace(patches=v.patches, position=v.position, gcc=v.gcc, coords=v.coords,
                           global_view=v.global_view, window_until=v.window_until)
        runs.append(run_for(cfg, runs_dir, label, windows=v.windows, trains=v.trains))
    return runs


def unique(runs: list[Run]) -> list[Run]:
    """One run per directory (the remedies of one N share their trained model), in order."""
    seen, out = set(), []
    for run in runs:
        if run.path not in seen:
            seen.add(run.path)
            out.append(run)
    return out


def training_runs(cfg: C.Config, runs_dir, *, comparison_runs: bool = False) -> list[Run]:
    """The run of ``cfg`` first, then (with ``comparison_runs``) every other model the notebooks compare on the
    same base: one run per trained model (the remedies of one N share theirs)."""
    main = run_for(cfg, runs_dir)
    return unique([main] + (variant_runs(cfg, runs_dir) if comparison_runs else []))


def trained_runs(setup, labels=None, *, progress: bool = True) -> list[Run]:
    """The runs a notebook compares (``labels``, default all :data:`VARIANTS`) on the base configuration of
    ``setup`` (a :class:`patchlab.study.params.Setup`), trained first where they are not yet (with the
    profile's learning curves)."""
    runs = variant_runs(setup.config, setup.runs_dir, labels)
    return ensure(runs, workers=setup["workers"], threads=setup["threads"], progress=progress,
                  curve=curve_settings(setup), gpus=setup["gpus"])


def curve_settings(setup) -> dict | None:
    """The learning-curve settings of a profile (``curve_every``, ``curve_samples``), None when off."""
    every = setup["curve_every"]
    return {"every": every, "n": setup["curve_samples"]} if every else None


def find(runs: list[Run], label: str) -> Run:
    """The run labelled ``label`` among ``runs``."""
    for run in runs:
        if run.label == label:
            return run
    raise ValueError(f"no run {label!r} among {[r.label for r in runs]}")


def is_trained(run: Run) -> bool:
    """Whether ``run`` has a checkpoint at its final step."""
    return run.paths.checkpoint.is_file() and ckpt.read_step(run.paths.checkpoint) >= run.config.train.steps


# --- training ---------------------------------------------------------------------------------------


class ProgressLines:
    """A printed line per run every ``interval`` seconds: its step, steps per second and ETA, and a last
    line when it is done.

    Plain lines (not a progress bar), so they reach a terminal through papermill too. ``update(label,
    row)`` takes each metrics row of a run (:func:`patchlab.runs.read_metrics`); the speed is measured
    from the row's ``elapsed_s`` since the run (re)started at its checkpoint's step.
    """

    def __init__(self, runs: list[Run], *, interval: float = 20.0, enabled: bool = True):
        self.total = {run.label: run.config.train.steps for run in runs}
        self.begin = {run.label: ckpt.read_step(run.paths.checkpoint) if run.paths.checkpoint.is_file() else 0
                      for run in runs}
        self.interval, self.enabled = interval, enabled
        self.last: dict[str, float] = {}

    def update(self, label: str, row: dict) -> None:
        if not self.enabled:
            return
        now, step, total = time.monotonic(), row["step"], self.total[label]
        if label in self.last and step < total and now - self.last[label] < self.interval:
            return
        self.last[label] = now
        elapsed = row.get("elapsed_s") or 0.0
        rate = (step - self.begin[label]) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {(total - step) / rate:.0f} s" if rate > 0 and step < total else ""
        print(f"[training] {label}: step {step}/{total}, {rate:.1f} steps/s{eta}" + (", done" if step >= total else ""),
              flush=True)


def ensure(runs: list[Run], *, progress: bool = True, on_log=None, workers: int = 1,
           threads: int | None = None, poll: float = 2.0, curve: dict | None = None, gpus: int = 1) -> list[Run]:
    """Train every run of ``runs`` that is not finished (reusing or resuming the others).

    ``on_log(label, row)`` receives each metrics row (see :func:`patchlab.training.train`); with
    ``progress`` a line per run reports its speed and ETA (:class:`ProgressLines`). ``threads``: PyTorch
    CPU threads while training (None: as they are). ``workers > 1`` trains up to that many CPU runs at
    once, each in its own process with ``threads`` threads (results are the same as one after the other
    with as many threads: every run is seeded on its own); ``on_log`` then receives the rows as the
    processes write them (read every ``poll`` seconds). GPU runs are trained one after the other.
    ``curve``: keyword arguments of :func:`patchlab.metrics.curves.evaluator_for` (``every``, ``n``): each
    run records its learning curve while it trains. Runs that share a directory train once. ``gpus`` > 1:
    each run trains data-parallel in that many processes, launched by torchrun as a subprocess
    (:func:`train_with_torchrun`), one run after the other. Returns ``runs``.
    """
    todo = [run for run in unique(runs) if not is_trained(run)]
    lines = ProgressLines(todo, enabled=progress)
    if gpus > 1:
        for run in todo:
            train_with_torchrun(run, gpus, threads=threads, curve=curve, poll=poll,
                                on_row=lambda row, label=run.label: _report(lines, on_log, label, row))
        return runs
    on_cpu = all(resolve_device(run.config.train.device).type == "cpu" for run in todo)
    if workers > 1 and len(todo) > 1 and on_cpu:
        _train_in_processes(todo, workers=workers, threads=threads, on_log=on_log, lines=lines, poll=poll, curve=curve)
        return runs
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for run in todo:
            train(run.config, run.path, progress=False, evaluator=_curve(run, curve),
                  on_log=lambda row, label=run.label: _report(lines, on_log, label, row))
    finally:
        torch.set_num_threads(previous)
    return runs


def _report(lines: ProgressLines, on_log, label: str, row: dict) -> None:
    lines.update(label, row)
    if on_log is not None:
        on_log(label, row)


def train_with_torchrun(run: Run, processes: int, *, threads: int | None = None, curve: dict | None = None,
                        poll: float = 2.0, on_row=None) -> None:
    """Train ``run`` data-parallel: ``python -m torch.distributed.run --standalone --nproc-per-node
    processes -m patchlab train ...`` in a subprocess (one process per GPU on CUDA), passing each new
    metrics row to ``on_row(row)`` as rank 0 writes it (read every ``poll`` seconds). The launcher's
    output goes to RUN_DIR/torchrun.log; a failed job raises with patchlab's error lines from it (or its
    last lines)."""
    import subprocess
    import sys
    import tempfile

    run.path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="patchlab-config-", delete=False) as fh:
        fh.write(run.config.to_json())
    config, log = Path(fh.name), run.path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "patchlab", "train", "--run-dir", str(run.path), "--config", str(config), "--no-progress"]
    if curve:
        cmd += ["--curve-every", str(curve["every"]), "--curve-samples", str(curve["n"])]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    seen = ckpt.read_step(run.paths.checkpoint) if run.paths.checkpoint.is_file() else 0
    job = None
    try:
        with open(log, "w") as out:
            job = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            while True:
                finished = job.poll() is not None
                for row in read_metrics(run.paths.metrics):
                    if row["step"] > seen:
                        seen = row["step"]
                        if on_row is not None:
                            on_row(row)
                if finished:
                    break
                time.sleep(poll)
    except BaseException:
        if job is not None:  # a notebook interrupt: torchrun stops every rank at a step, rank 0 checkpoints
            job.terminate()
            job.wait()
        raise
    finally:
        config.unlink(missing_ok=True)
    if job.returncode != 0:
        lines = log.read_text().splitlines()
        errors = [line for line in lines if re.match(r"(\[rank \d+\] )?error: ", line)]  # patchlab's own
        raise RuntimeError(f"training {run.label} with torchrun ({processes} processes) failed, exit status "
                           f"{job.returncode}: " + "\n".join(errors or lines[-15:]) + f"\n(the whole output: {log})")


def _train_in_processes(todo: list[Run], *, workers: int, threads: int | None, on_log, lines: ProgressLines,
                        poll: float, curve: dict | None) -> None:
    """Train ``todo`` in a pool of ``workers`` spawned processes, reporting progress from their metrics.csv."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    seen = {run.label: 0 for run in todo}  # last step passed to on_log
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads (kernels)
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
        pending = {pool.submit(_train_quietly, run.config.to_dict(), str(run.path), threads, curve) for run in todo}
        while pending:
            done, pending = wait(pending, timeout=poll, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # re-raises a worker's error
            for run in todo:
                rows = read_metrics(run.paths.metrics)
                for row in rows:
                    if row["step"] > seen[run.label] and on_log is not None:
                        on_log(run.label, row)
                if rows and rows[-1]["step"] > seen[run.label]:
                    lines.update(run.label, rows[-1])
                seen[run.label] = max([seen[run.label]] + [row["step"] for row in rows])


def _train_quietly(config: dict, path: str, threads: int | None, curve: dict | None) -> int:
    """Worker of :func:`_train_in_processes`: train one run without a progress bar; returns its step."""
    if threads is not None:
        torch.set_num_threads(threads)
    run = Run("", C.from_dict(config), Path(path))
    return train(run.config, path, progress=False, evaluator=_curve(run, curve)).step


def _curve(run: Run, curve: dict | None):
    from ..metrics.curves import evaluator_for

    return evaluator_for(run.config, run.path, **curve) if curve else None


# --- what the notebooks measure on the runs -------------------------------------------------------


def load(run: Run, device="cpu"):
    """(model with EMA weights in eval mode, schedule) of a trained run, on ``device``."""
    model, schedule, _ = load_run(run.path, device=resolve_device(str(device)))
    return model, schedule


def sample_all(runs: list[Run], n: int, *, steps: int, seed: int = 0, patch_mode="batched",
               device="auto") -> dict[str, torch.Tensor]:
    """{label: n DDIM samples [n x C x H x W] on the CPU}; every model starts from the same noise."""
    return {run.label: trajectory(run, n, steps=steps, seed=seed, patch_mode=patch_mode, device=device).images
            for run in runs}  # each with its own windows


def trajectory(run: Run, n: int, *, steps: int, seed: int = 0, patch_mode="batched", device="auto"):
    """The :class:`patchlab.trajectory.Trajectory` of ``n`` DDIM samples of ``run``."""
    from ..trajectory import record

    model, schedule = load(run, device)
    return record(model, schedule, n, steps=steps, seed=seed, patch_mode=patch_mode, windows=run.windows)


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
    image for N = 1. A run sampled with ``windows="global"`` takes two kinds of steps, from the global view
    and with overlapping windows: its sampling row is the larger peak of the two and the mean step time
    over the ``steps`` DDIM steps of its samples (:func:`global_steps` of them from the global view).
    """
    import pandas as pd
    from tqdm.auto import tqdm

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
    for run, scale, phase, cfg, b, mode, fake in tqdm(jobs, desc="profiling steps", disable=not progress):
        MP.release_memory()
        windows = run.windows if phase == "sample" else "grid"
        row = MP.profile_step(cfg, phase, batch=b, patch_mode=mode, device=dev, estimate=fake,
                              repeats=0 if fake else repeats, windows=windows).row()
        if windows == "global":  # and the steps with windows; the mean over the trajectory
            MP.release_memory()
            view = row
            local = MP.profile_step(cfg, phase, batch=b, patch_mode=mode, device=dev, estimate=fake,
                                    repeats=0 if fake else repeats, windows="overlap").row()
            row = dict(max(view, local, key=lambda r: r["peak_bytes"]))  # the peak step's memory columns
            if local["step_seconds"] is not None:
                k = global_steps(cfg, steps)
                row["step_seconds"] = (k * view["step_seconds"] + (steps - k) * local["step_seconds"]) / steps
        rows.append({"label": run.label, "scale": scale, **row})
    MP.release_memory()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["label", "scale", *MP.ROW_FIELDS]).to_csv(path, index=False)
    return path


def global_steps(cfg: C.Config, steps: int, global_until: float | None = None) -> int:
    """How many of ``steps`` DDIM steps the sampler's ``windows="global"`` denoises from the global view."""
    from ..sampling import timesteps_for

    until = P.GLOBAL_UNTIL if global_until is None else global_until
    total = cfg.diffusion.timesteps
    return sum(P.uses_global_view("global", t, total, until) for t in timesteps_for("ddim", total, steps))


GLOBAL_SWEEP = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)  # global_until values compared (fractions of T)


def global_sweep(run: Run, *, n: int, steps: int, seed: int = 0, values=GLOBAL_SWEEP, patch_mode="batched",
                 device="auto", features: str = "auto", progress: bool = True) -> list[dict]:
    """Where the coarse-to-fine remedy should hand over to the windows: ``run`` (a model trained with
    ``global_view``) evaluated (:func:`patchlab.metrics.evaluate.evaluate_run`, ``n`` samples of ``steps``
    DDIM steps, same seed and noise for every value) with ``windows="global"`` at each ``global_until`` of
    ``values`` (fractions of T; 1: windows at every step, 0: the global view at every step) up to the
    model's ``window_until`` (its windows never learnt the steps above). -> one dict per value: the metrics
    and how many steps each kind of pass denoised."""
    from tqdm.auto import tqdm

    from ..metrics.evaluate import evaluate_run

    if run.windows != "global":
        raise ValueError(f"the sweep is of the global remedy; {run.label!r} samples with windows={run.windows!r}")
    rows = []
    values = [v for v in values if v <= run.config.model.window_until]
    for until in tqdm(values, desc=f"{run.label}: global_until", disable=not progress):
        m = evaluate_run(run.path, n=n, steps=steps, seed=seed, patch_mode=patch_mode, device=device, fid=False,
                         features=features, write=False, windows="global", global_until=float(until))
        k = global_steps(run.config, m["steps"], float(until))
        rows.append({"model": run.label, "global until": float(until), "global steps": k,
                     "window steps": m["steps"] - k, "seam": m["seam_fake"], "seam real": m["seam_real"],
                     "coherence": m["coherence_fake"], "KID": m["kid"], "SWD": m["swd"], "mean": m["mean_fake"],
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
    from tqdm.auto import tqdm

    from ..metrics.evaluate import evaluate_run

    paths = []
    for run in tqdm(runs, desc="evaluating runs", disable=not progress):
        folder = Path(out_dir) / slug(run.label)
        evaluate_run(run.path, n=n, steps=steps, seed=seed, patch_mode=patch_mode, device=device, fid=fid,
                     features=features, out_dir=folder, progress=False, windows=run.windows)
        paths.append(folder / "metrics.json")
    return paths
