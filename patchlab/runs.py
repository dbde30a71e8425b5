"""The layout of a run directory, and loading a trained run.

A run directory holds::

    config.json      the resolved configuration (nested JSON)
    checkpoint.pt    model, EMA, optimizer, step and config (written atomically)
    metrics.csv      one row every ``log_every`` steps (:data:`METRIC_FIELDS`)
    samples/         sample grids (PNG) written during and after training
    curve.csv        quality at intervals during training (patchlab.metrics.curves), when asked for
    eval/            what ``python -m patchlab evaluate`` writes
    .lock            held by the process that trains the run (see :func:`lock_run_dir`)
"""

import contextlib
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import config as C
from .accel import cast_weights
from .execution import SAMPLE_PRECISIONS
from .model import PatchUNet, build
from .schedule import Schedule


LOCK_FILE = ".lock"
STALE_TEMPORARIES = (".checkpoint.pt.*.tmp", ".config.json.tmp")  # what interrupted atomic writes leave


class RunBusyError(RuntimeError):
    """Another process is training in this run directory."""


class RunDirectoryError(RuntimeError):
    """The run directory cannot be created or written (a file of that name, no permission, ...)."""


METRIC_FIELDS = ("step", "loss", "loss_avg", "grad_norm", "lr", "elapsed_s", "images_per_s", "peak_mem_mib")


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

    @property
    def curve(self) -> Path:
        """Quality during training (:class:`patchlab.metrics.curves.LearningCurve`), when recorded."""
        return self.root / "curve.csv"

    @property
    def evaluation(self) -> Path:
        """Where ``python -m patchlab evaluate`` writes by default."""
        return self.root / "eval"


@contextlib.contextmanager
def lock_run_dir(root: Path):
    """Create the run directory ``root`` and hold its lock while the block runs; a second process that
    asks for it meanwhile gets :class:`RunBusyError` at once. The lock is an advisory ``flock`` on
    ``root/.lock``: the operating system releases it when its process dies, so a run killed with
    ``kill -9`` resumes without a stale lock. Problems creating the directory raise
    :class:`RunDirectoryError` naming it."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunDirectoryError(f"the run directory {root} is a file, not a folder; choose another --run-dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK_FILE, "a+")
    except OSError as exc:
        raise RunDirectoryError(f"cannot create or write the run directory {root}: {exc.strerror or exc}") from exc
    try:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no protection against a second process
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise RunBusyError(f"the run directory {root} is in use: another process ({owner}) is training "
                                   f"in it; wait for it to finish, or stop it and run again to resume") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield root
    finally:
        handle.close()  # releases the lock


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in a run directory (a checkpoint's
    can take gigabytes). Call it only while holding the run's lock. Returns what was removed."""
    removed = []
    for pattern in STALE_TEMPORARIES:
        for path in Path(root).glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file); an error
    names the file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunDirectoryError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _trained(run_dir) -> RunPaths:
    """The paths of a run directory that holds a checkpoint (else a clear error)."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise FileNotFoundError(f"no run directory at {paths.root}")
    if not paths.checkpoint.is_file():
        raise ckpt.CheckpointError(f"{paths.root} holds no checkpoint.pt yet: train it first "
                                   f"(python -m patchlab train --run-dir {paths.root} ...)")
    return paths


def read_run_config(run_dir) -> C.Config:
    """The configuration of a trained run, without loading its weights: its config.json (written with every
    checkpoint's configuration; the checkpoint's own when config.json is missing or unreadable)."""
    paths = _trained(run_dir)
    try:
        return C.load_json(paths.config)
    except (OSError, ValueError, TypeError):
        return ckpt.load(paths.checkpoint)["config"]


def load_run(run_dir, *, ema: bool = True, device="cpu",
             precision: str = "fp32") -> tuple[PatchUNet, Schedule, C.Config]:
    """Model (EMA weights unless ``ema=False``, in eval mode), schedule and config of a trained run.

    ``precision="bf16-weights"``: the weights are stored in bf16 (half the memory; sample with that
    precision, see :func:`patchlab.accel.cast_weights`); other precisions keep them in float32."""
    if precision not in SAMPLE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, SAMPLE_PRECISIONS))}, got {precision!r}")
    paths = _trained(run_dir)
    state = ckpt.load(paths.checkpoint)
    cfg = state["config"]
    model, schedule = build(cfg)
    ckpt.load_weights(model, state["ema" if ema else "model"], what="EMA" if ema else "model",
                      path=paths.checkpoint)
    if precision == "bf16-weights":
        cast_weights(model)
    return model.to(device).eval(), schedule.to(device), cfg


def read_metrics(path) -> list[dict]:
    """The rows of a run's ``metrics.csv``: ``step`` an int, the other columns floats (None where empty);
    [] when there is no file. A row still being written (incomplete) is left out."""
    return read_step_rows(path, complete="loss_avg")


def read_step_rows(path, *, complete: str, fields=None) -> list[dict]:
    """The rows of a CSV file a run appends to as it trains (metrics.csv, curve.csv): ``step`` an int, the
    ``fields`` (default all) floats or None where empty. Rows without a step or without their ``complete``
    column (a row being written when the process died) are left out; [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            if not (raw.get("step") or "").isdigit() or raw.get(complete) in ("", None):
                continue
            row = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()
                   if k is not None and (fields is None or k in fields)}
            row["step"] = int(raw["step"])
            rows.append(row)
    return rows


class MetricsLog:
    """The writer of metrics.csv (:data:`METRIC_FIELDS`); on resume, rows after the checkpoint's step are
    dropped (they will be done again)."""

    def __init__(self, path: Path, keep_until: int):
        self.path = path
        rows = [r for r in read_metrics(path) if r["step"] <= keep_until]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows({k: r.get(k) for k in METRIC_FIELDS} for r in rows)
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
        try:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=METRIC_FIELDS).writerow(row)
        except OSError as exc:
            raise RunDirectoryError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.last_step, self.last_time, self.window = step, now, []
        return row
