"""Training the runs a profile compares: one after the other, in parallel processes, or data-parallel under
torchrun, with a progress line per run (plain lines, so they reach a terminal through papermill too).
"""

import os
import re
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import config as C
from ..runs import read_metrics
from ..runtime import resolve_device
from ..training import train
from .variants import Run, is_trained, unique, variant_runs


def trained_runs(setup, labels=None, *, progress: bool = True) -> list[Run]:
    """The runs a notebook compares (``labels``, default all :data:`VARIANTS`; only those of the profile's
    ``variants`` key) on the base configuration of ``setup`` (a :class:`patchlab.study.params.Setup`), trained
    first where they are not yet (with the profile's learning curves)."""
    chosen = setup["variants"]
    if chosen is not None:
        labels = [label for label in (labels or chosen) if label in chosen]
    runs = variant_runs(setup.config, setup.runs_dir, labels)
    return ensure(runs, workers=setup["workers"], threads=setup["threads"], progress=progress,
                  curve=curve_settings(setup), gpus=setup["gpus"])


def curve_settings(setup) -> dict | None:
    """The learning-curve settings of a profile (``curve_every``, ``curve_samples``), None when off."""
    every = setup["curve_every"]
    return {"every": every, "n": setup["curve_samples"]} if every else None


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
