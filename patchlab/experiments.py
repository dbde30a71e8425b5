"""The runs a profile trains and compares, and where they live.

The paper compares N = 1, 2, 4 (position and GCC on; N = 1 is a plain DDPM) and, at N = 2, the
ablations without position, without GCC and without either. :data:`VARIANTS` lists them; every run is
the profile's base configuration with the variant's three switches.

A run lives in ``runs/<profile>/<slug>-<hash>``, where ``hash`` is :func:`config_hash` of its resolved
configuration: a run whose configuration is unchanged is reused (and an interrupted one resumed by
:func:`patchlab.training.train`); any change that alters what is trained gives a new directory.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as C
from .runs import RunPaths
from .runtime import resolve_device
from .training import train

# Keys that do not change what a run computes (logging, checkpoints, where it runs): left out of the hash.
UNHASHED = frozenset({"log_every", "checkpoint_every", "sample_every", "sample_count", "sample_steps", "device",
                      "num_workers"})


@dataclass(frozen=True)
class Variant:
    """One model the paper compares: N and the two conditioning switches."""

    label: str
    patches: int
    position: bool
    gcc: bool


VARIANTS = (
    Variant("N=1", 1, False, False),
    Variant("N=2", 2, True, True),
    Variant("N=4", 4, True, True),
    Variant("N=2 no position", 2, False, True),
    Variant("N=2 no GCC", 2, True, False),
    Variant("N=2 neither", 2, False, False),
)
SCALING = ("N=1", "N=2", "N=4")  # the memory/quality trade-off
ABLATIONS = ("N=2", "N=2 no position", "N=2 no GCC", "N=2 neither")  # what each conditioning adds


def variant(label: str) -> Variant:
    for v in VARIANTS:
        if v.label == label:
            return v
    raise ValueError(f"unknown variant {label!r}; the variants are {', '.join(v.label for v in VARIANTS)}")


def variant_of(cfg: C.Config) -> str:
    """The label of ``cfg``'s switches: a label of :data:`VARIANTS`, or a description like ``N=4 no GCC``."""
    m = cfg.model
    for v in VARIANTS:
        if (v.patches, v.position, v.gcc) == (m.patches, m.position, m.gcc):
            return v.label
    off = [name for name, on in (("position", m.position), ("GCC", m.gcc)) if not on]
    return f"N={m.patches}" + ("" if not off else " neither" if len(off) == 2 else f" no {off[0]}")


def config_hash(cfg: C.Config) -> str:
    """12 hex digits identifying what ``cfg`` trains (every key but :data:`UNHASHED`)."""
    flat = {k: v for k, v in sorted(cfg.flat().items()) if k not in UNHASHED}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=list).encode()).hexdigest()[:12]


def slug(label: str) -> str:
    """``"N=2 no GCC"`` -> ``"n2-no-gcc"``."""
    return label.lower().replace("=", "").replace(" ", "-")


@dataclass(frozen=True)
class Run:
    """A run of a profile: its variant label, resolved configuration and directory."""

    label: str
    config: C.Config
    path: Path

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.path)

    @property
    def patches(self) -> int:
        return self.config.model.patches


def run_for(cfg: C.Config, runs_dir, label: str | None = None) -> Run:
    """The :class:`Run` of ``cfg`` under ``runs_dir`` (``<slug>-<hash>``)."""
    label = label or variant_of(cfg)
    return Run(label, cfg, Path(runs_dir) / f"{slug(label)}-{config_hash(cfg)}")


def plan(base: C.Config, runs_dir, labels=None) -> list[Run]:
    """The runs of ``labels`` (default: all :data:`VARIANTS`) on the base configuration ``base``."""
    labels = [v.label for v in VARIANTS] if labels is None else list(labels)
    runs = []
    for label in labels:
        v = variant(label)
        runs.append(run_for(base.replace(patches=v.patches, position=v.position, gcc=v.gcc), runs_dir, label))
    return runs


def training_runs(cfg: C.Config, runs_dir, *, comparison_runs: bool = False) -> list[Run]:
    """The run of ``cfg`` first, then (with ``comparison_runs``) every :data:`VARIANTS` run on the same base
    that is a different run."""
    main = run_for(cfg, runs_dir)
    runs = [main]
    if comparison_runs:
        runs += [r for r in plan(cfg, runs_dir) if r.path != main.path]
    return runs


def find(runs: list[Run], label: str) -> Run:
    """The run labelled ``label`` among ``runs``."""
    for run in runs:
        if run.label == label:
            return run
    raise ValueError(f"no run {label!r} among {[r.label for r in runs]}")


def ensure(runs: list[Run], *, progress: bool = True, on_log=None, workers: int = 1,
           threads: int | None = None, poll: float = 2.0) -> list[Run]:
    """Train every run of ``runs`` that is not finished (reusing or resuming the others).

    ``on_log(label, row)`` receives each metrics row (see :func:`patchlab.training.train`).
    ``threads``: PyTorch CPU threads while training (None: as they are). ``workers > 1`` trains up to
    that many CPU runs at once, each in its own process with ``threads`` threads (results are the same
    as one after the other with as many threads: every run is seeded on its own);
    ``on_log`` then receives the rows as the processes write them (read every ``poll`` seconds).
    GPU runs are trained one after the other. Returns ``runs``.
    """
    todo = [run for run in runs if not is_trained(run)]
    on_cpu = all(resolve_device(run.config.train.device).type == "cpu" for run in todo)
    if workers > 1 and len(todo) > 1 and on_cpu:
        _train_in_processes(todo, workers=workers, threads=threads, progress=progress, on_log=on_log, poll=poll)
        return runs
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for run in runs:
            callback = None if on_log is None else (lambda row, label=run.label: on_log(label, row))
            if progress and run in todo:
                print(f"training {run.label}: {run.path}")
            train(run.config, run.path, progress=progress, on_log=callback)
    finally:
        torch.set_num_threads(previous)
    return runs


def _train_in_processes(todo: list[Run], *, workers: int, threads: int | None, progress: bool, on_log,
                        poll: float) -> None:
    """Train ``todo`` in a pool of ``workers`` spawned processes, reporting progress from their metrics.csv."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    seen = {run.label: 0 for run in todo}  # last step passed to on_log
    total = sum(run.config.train.steps for run in todo)
    bar = tqdm(total=total, desc=f"training {len(todo)} runs, {workers} at a time", disable=not progress,
               dynamic_ncols=True)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads (kernels)
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
        pending = {pool.submit(_train_quietly, run.config.to_dict(), str(run.path), threads) for run in todo}
        while pending:
            done, pending = wait(pending, timeout=poll, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # re-raises a worker's error
            steps = 0
            for run in todo:
                rows = read_metrics(run.paths.metrics)
                steps += rows[-1]["step"] if rows else 0
                for row in rows:
                    if row["step"] > seen[run.label] and on_log is not None:
                        on_log(run.label, row)
                seen[run.label] = max([seen[run.label]] + [row["step"] for row in rows])
            bar.n = min(steps, total)
            bar.refresh()
    bar.close()


def _train_quietly(config: dict, path: str, threads: int | None) -> int:
    """Worker of :func:`_train_in_processes`: train one run without a progress bar; returns its step."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return train(C.from_dict(config), path, progress=False).step


def read_metrics(path) -> list[dict]:
    """The rows of a run's ``metrics.csv`` with ``step`` as int and the other numbers as floats ([] if none)."""
    import csv

    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            if not raw.get("step", "").isdigit() or not raw.get("loss_avg"):
                continue  # a row being written
            row = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
            row["step"] = int(raw["step"])
            rows.append(row)
    return rows


def is_trained(run: Run) -> bool:
    """Whether ``run`` has a checkpoint at its final step."""
    import torch

    if not run.paths.checkpoint.is_file():
        return False
    state = torch.load(run.paths.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(state["step"]) >= run.config.train.steps


# --- what the notebooks measure on the runs -------------------------------------------------------


def load(run: Run, device="cpu"):
    """(model with EMA weights in eval mode, schedule) of a trained run, on ``device``."""
    from .runs import load_run
    from .runtime import resolve_device

    model, schedule, _ = load_run(run.path, device=resolve_device(str(device)))
    return model, schedule


def sample_all(runs: list[Run], n: int, *, steps: int, seed: int = 0, patch_mode="batched",
               device="auto") -> dict[str, "torch.Tensor"]:
    """{label: n DDIM samples [n x C x H x W] on the CPU}; every model starts from the same noise."""
    from .trajectory import record

    out = {}
    for run in runs:
        model, schedule = load(run, device)
        out[run.label] = record(model, schedule, n, steps=steps, seed=seed, patch_mode=patch_mode).images
    return out


def trajectory(run: Run, n: int, *, steps: int, seed: int = 0, patch_mode="batched", device="auto"):
    """The :class:`patchlab.trajectory.Trajectory` of ``n`` DDIM samples of ``run``."""
    from .trajectory import record

    model, schedule = load(run, device)
    return record(model, schedule, n, steps=steps, seed=seed, patch_mode=patch_mode)


MEMORY_FIELDS = ("label", "scale", "phase", "patches", "position", "gcc", "batch", "patch_mode", "passes",
                 "parameters", "peak_bytes", "weights_bytes", "activations_bytes", "temporaries_bytes",
                 "allocator_step_peak_bytes", "step_seconds", "device")
PAPER_BATCH = {"train": 32, "sample": 16}  # the paper's batch per GPU; the sampling batch of DESIGN.md's table


def profile_memory(runs: list[Run], path, *, batch: int | None = None, patch_mode="sequential", device="auto",
                   repeats: int = 3, paper_estimate: bool = True, progress: bool = True) -> Path:
    """Peak memory (tensor level; the CUDA allocator's too on a GPU) and median time of one training step
    and one sampling step of every run's configuration, written to the CSV ``path`` (one row per run,
    phase and scale; columns :data:`MEMORY_FIELDS`).

    ``scale="profile"``: the runs' own configuration, measured on ``device`` with ``batch`` images
    (default: the runs' batch size). ``scale="paper"`` (with ``paper_estimate``): the same switches at
    the paper's size (:data:`patchlab.config.PAPER_PARAMS`), estimated with fake tensors (nothing
    allocated, no timing) at batch :data:`PAPER_BATCH`. ``patch_mode`` is capped at one pass per
    image for N = 1.
    """
    import csv

    from tqdm.auto import tqdm

    from . import memory_plan as MP
    from .runtime import resolve_device

    dev = resolve_device(str(device))
    jobs = []
    for run in runs:
        mode = patch_mode if run.patches > 1 else "batched"
        for phase in MP.PHASES[::-1]:  # train, then sample
            jobs.append((run, "profile", phase, run.config, batch or run.config.train.batch_size, mode, False))
        if paper_estimate:
            paper = C.from_params(**{**C.PAPER_PARAMS, "patches": run.patches, "position": run.config.model.position,
                                     "gcc": run.config.model.gcc})
            for phase in MP.PHASES[::-1]:
                jobs.append((run, "paper", phase, paper, PAPER_BATCH[phase], mode, True))
    rows = []
    for run, scale, phase, cfg, b, mode, fake in tqdm(jobs, desc="profiling steps", disable=not progress):
        MP.release_memory()
        prof = MP.profile_step(cfg, phase, batch=b, patch_mode=mode, device=dev, estimate=fake,
                               repeats=0 if fake else repeats)
        rep = prof.report
        rows.append({"label": run.label, "scale": scale, "phase": phase, "patches": prof.patches,
                     "position": cfg.model.position, "gcc": cfg.model.gcc, "batch": b, "patch_mode": mode,
                     "passes": prof.passes, "parameters": prof.parameters, "peak_bytes": rep.peak_bytes,
                     "weights_bytes": rep.weights_bytes, "activations_bytes": rep.activations_bytes,
                     "temporaries_bytes": rep.temporaries_bytes,
                     "allocator_step_peak_bytes": rep.allocator_step_peak_bytes,
                     "step_seconds": None if prof.step_seconds is None else round(prof.step_seconds, 5),
                     "device": "estimate" if fake else str(dev)})
    MP.release_memory()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MEMORY_FIELDS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return path


def evaluate(runs: list[Run], out_dir, *, n: int, steps: int, seed: int = 0, patch_mode="batched", device="auto",
             fid: bool = True, features: str = "auto", progress: bool = True) -> list[Path]:
    """:func:`patchlab.evaluate.evaluate_run` of every run, written to ``out_dir/<slug>/metrics.json``
    (with ``metrics.csv`` and ``samples.png``); returns the metrics.json paths."""
    from tqdm.auto import tqdm

    from .evaluate import evaluate_run

    paths = []
    for run in tqdm(runs, desc="evaluating runs", disable=not progress):
        folder = Path(out_dir) / slug(run.label)
        evaluate_run(run.path, n=n, steps=steps, seed=seed, patch_mode=patch_mode, device=device, fid=fid,
                     features=features, out_dir=folder, progress=False)
        paths.append(folder / "metrics.json")
    return paths
