"""Where and how computations run: devices, precision, and explicit random generators."""

import contextlib
import enum

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use 'cpu' or 'auto'")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """bf16 autocast context for ``precision="bf16"`` and ``"bf16-weights"`` (weights stored in bf16,
    :func:`patchlab.accel.cast_weights`); a no-op for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision in ("bf16", "bf16-weights"):
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32', 'bf16' or 'bf16-weights', got {precision!r}")


def make_generator(seed: int, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


class Stream(enum.IntEnum):
    """Named random streams: ``derived_seed(seed, Stream.X, ...)`` seeds the generator of one purpose, so
    that no two purposes draw the same numbers and adding one never shifts another."""

    TRAIN_STEP = 2  # timesteps and noise of training step s: derived_seed(seed, TRAIN_STEP, s)
    SAMPLE_GRID = 3  # the noise of the sample grids written during training
    DATA_ORDER = 7  # the permutation of each epoch: derived_seed(seed, DATA_ORDER, epoch)
    EVAL_REAL = 101  # which real images an evaluation compares with
    EVAL_SWD = 102  # the descriptors and directions of SWD in an evaluation
    EVAL_KID = 103  # the subsets of KID in an evaluation
    CURVE = 104  # the noise, real images and metric draws of a learning curve (patchlab.metrics.curves)
    RESAMPLE = 105  # the index sets of the 95% intervals (patchlab.metrics.uncertainty) of an evaluation or a curve


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer ``keys`` (e.g. a step), stable across runs.

    Used to give every training step its own generator, so a resumed run draws exactly what an
    uninterrupted one would without saving any RNG state.
    """
    h = (int(seed) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    for k in keys:
        h ^= (int(k) + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
