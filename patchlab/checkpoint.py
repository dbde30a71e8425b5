"""Checkpoints: written atomically, read with ``weights_only=True``, checked against the config.

A checkpoint is a dict ``{"format", "step", "config", "model", "ema", "optimizer"}`` where ``config``
is the nested dict of :meth:`patchlab.config.Config.to_dict`.
"""

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import config as C

FORMAT = "patchlab-checkpoint-1"
KEYS = ("format", "step", "config", "model", "ema", "optimizer")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, corrupt, or does not belong to this configuration."""


def save(path, *, step: int, config: C.Config, model: torch.nn.Module, ema: torch.nn.Module,
         optimizer: torch.optim.Optimizer) -> Path:
    """Write a checkpoint atomically: to a temporary file in the same folder, fsync, then rename."""
    state = {"format": FORMAT, "step": int(step), "config": config.to_dict(),
             "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()}
    return atomic_torch_save(state, path)


def atomic_torch_save(obj: Any, path) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``: a temporary file in the same
    folder, fsync, then a rename; the file gets the usual permissions (0644 under the common umask).
    A write that fails (a full disk, no permission) raises :class:`CheckpointError` naming ``path`` and
    leaves the previous file as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}; the previous checkpoint, if any, "
                              f"is unchanged") from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path, map_location="cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (``weights_only=True``); raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise CheckpointError(f"{path} holds Python objects other than tensors, numbers and plain containers: "
                                  f"refused, since loading it could run arbitrary code (patchlab checkpoints never "
                                  f"hold such objects)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {_reason(exc)}") from None
    except Exception as exc:  # truncated zip, not a torch file ...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {_reason(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a patchlab checkpoint (expected format {FORMAT!r})")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it is incomplete")
    try:
        state["config"] = C.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds an invalid configuration: {exc}") from exc
    return state


def read_step(path) -> int:
    """The step of a checkpoint, read without loading its tensors (memory-mapped); raises
    :class:`CheckpointError` like :func:`load`."""
    path = Path(path)
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {_reason(exc)}") \
            from None


def _reason(exc: BaseException) -> str:
    """What went wrong in torch.load, in a line, without its advice to turn ``weights_only`` off."""
    text = str(exc).strip()
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(\n\s*\n|$)", text, re.S)
    if found:
        return " ".join(found.group(1).split())
    return text.splitlines()[0] if text else type(exc).__name__


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], *, what: str, path) -> None:
    """``load_state_dict(strict=True)`` with an error that says which file and what differs."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the {what} weights in {path} do not fit this model: {exc}") from exc


def check_resumable(saved: C.Config, wanted: C.Config, path, *, hint: str = "") -> None:
    """Refuse to resume when the configs differ in anything but :data:`patchlab.config.RESUMABLE_CHANGES`
    (run length, logging, device); ``hint`` ends the message (e.g. the command that resumes as it was)."""
    bad = {k: v for k, v in saved.differences(wanted).items() if k not in C.RESUMABLE_CHANGES}
    if bad:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in bad.items())
        raise CheckpointError(
            f"cannot resume from {path}: its configuration differs ({lines}). Use a new run directory, "
            f"or change only {', '.join(sorted(C.RESUMABLE_CHANGES))}" + (f"; {hint}" if hint else "."))
