"""How a step runs: patches per pass, precision, fast path and the data-parallel part.

An :class:`Execution` never changes what a step computes (the tiling does, :mod:`patchlab.tiling`): every
execution of a step gives the same result up to float round-off (the tests check it), so a run may train
or sample with another one after a resume. It is validated once where it is built (its values and which
of them combine), checked against the phase and the model's device when a step starts
(:meth:`Execution.check`), and passed whole to :func:`patchlab.training.accumulate_gradients`,
:func:`patchlab.sampling.sample`, :func:`patchlab.metrics.evaluate.evaluate_run` and the memory steps::

    ex = Execution(patch_mode="sequential", fast_path="compile")
    loss = accumulate_gradients(model, schedule, x0, ex, generator=g)
    images = sample(model, schedule, 16, execution=ex.replace(precision="bf16"))

The fast path of a model is built on its first use and kept by the execution (so reuse one execution for
the batches of an evaluation: each compiled shape is compiled once).
"""

import contextlib
import dataclasses
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import patches as P
from .accel import FAST_PATHS, fast_unet

PHASES = ("sample", "train")
PRECISIONS = ("fp32", "bf16")  # training: float32, or bf16 autocast of the UNet
SAMPLE_PRECISIONS = PRECISIONS + ("bf16-weights",)  # sampling also with the weights stored in bf16
FAST_PATH_SETTINGS = ("off", *FAST_PATHS)  # the fast_path setting: off, or one of the paths

PatchMode = str | int  # "batched" | "sequential" | k patches per pass


@dataclass(frozen=True)
class Execution:
    """How the UNet passes of a step run (never what they compute).

    ``patch_mode``: ``"batched"`` (all windows of an image in one pass, as the official code), ``"sequential"``
    (one per pass: the memory of one patch) or k per pass. ``precision``: ``"fp32"``, ``"bf16"`` (autocast)
    or, for sampling, ``"bf16-weights"`` (weights stored in bf16, :func:`patchlab.accel.cast_weights`).
    ``fast_path``: ``"off"``, ``"compile"`` or ``"graphs"`` (:func:`patchlab.accel.fast_unet`); ``unet``:
    a callable ``unet(inputs, t, pos)`` run instead of each pass (tests, benchmarks), not with a fast path.
    ``part``: ``(i, k)``, this process's part i of k of a data-parallel step's global batch; ``runner``:
    the ``DistributedDataParallel`` wrapper that runs its passes (gradients synchronised in the last).
    """

    patch_mode: PatchMode = "sequential"
    precision: str = "fp32"
    fast_path: str = "off"
    unet: Callable | None = field(default=None, compare=False, repr=False)
    part: tuple[int, int] = (0, 1)
    runner: Any = field(default=None, compare=False, repr=False)
    _fast: Any = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        P.check_patch_mode(self.patch_mode)
        _choice("precision", self.precision, SAMPLE_PRECISIONS)
        _choice("fast_path", self.fast_path, FAST_PATH_SETTINGS)
        index, count = self.part
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"part must be (i, k) with 0 <= i < k, got {self.part}")
        if self.unet is not None and self.fast_path != "off":
            raise ValueError(f"give either a UNet replacement (unet) or a fast path (fast_path={self.fast_path!r}), "
                             f"not both")
        if self.runner is not None and (self.unet is not None or self.fast_path != "off"):
            raise ValueError("a data-parallel runner cannot be combined with a fast path or a unet replacement: "
                             "DDP's gradient synchronisation runs in its own forward")
        object.__setattr__(self, "_fast", weakref.WeakKeyDictionary())

    def replace(self, **changes) -> "Execution":
        """A copy with some fields changed (validated again; the fast paths built so far are not kept)."""
        return dataclasses.replace(self, **changes)

    @property
    def parallel(self) -> bool:
        """Whether this is one part of a data-parallel step."""
        return self.part[1] > 1 or self.runner is not None

    def check(self, phase: str, model: torch.nn.Module | None = None, device=None) -> None:
        """Refuse what ``phase`` (``"sample"`` or ``"train"``), the ``model`` (its weights' dtype) or its
        ``device`` (default: the model's) does not support."""
        if phase not in PHASES:
            raise ValueError(f"phase must be 'sample' or 'train', got {phase!r}")
        if phase == "train" and self.precision not in PRECISIONS:
            raise ValueError(f"train precision must be one of {', '.join(map(repr, PRECISIONS))}, got "
                             f"{self.precision!r} (bf16 weights are for sampling)")
        if device is None and model is not None:
            device = next(model.parameters()).device
        if self.fast_path == "graphs" and device is not None and torch.device(device).type != "cuda":
            raise ValueError(f"fast_path='graphs' replays CUDA graphs: it needs a CUDA device, the model is on "
                             f"{device}; use 'compile' or 'off'")
        if self.precision == "bf16-weights" and model is not None \
                and any(p.dtype != torch.bfloat16 for p in model.parameters()):
            raise ValueError("precision='bf16-weights' samples with weights stored in bf16: cast them first "
                             "(patchlab.accel.cast_weights(model), or load_run(..., precision='bf16-weights'))")

    def chunks(self, count: int) -> list[list[int]]:
        """Window indices per UNet pass for ``count`` windows of each image (:func:`patchlab.patches.chunks`;
        k above ``count`` is one pass with all of them)."""
        return P.chunks(count, "batched" if P.per_pass(count, self.patch_mode) >= count else self.patch_mode)

    def forward(self, model: torch.nn.Module, phase: str) -> Callable:
        """What runs one pass ``(inputs, t, pos) -> noise`` of ``model`` in ``phase``: the custom ``unet``, the
        fast path (built once per model and phase), the data-parallel runner, or the model itself."""
        if self.unet is not None:
            return self.unet
        if self.fast_path != "off":
            per_model = self._fast.setdefault(model, {})
            if phase not in per_model:
                per_model[phase] = fast_unet(model, phase, path=self.fast_path)
            return per_model[phase]
        return self.runner if self.runner is not None else model

    def autocast(self, device) -> contextlib.AbstractContextManager:
        """bf16 autocast for ``"bf16"`` and ``"bf16-weights"``; nothing for ``"fp32"``."""
        from .runtime import autocast

        return autocast(self.precision, device)

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Around a training pass: the data-parallel runner's ``no_sync()`` in every pass but the step's last,
        so the gradients are all-reduced once per step."""
        return self.runner.no_sync() if self.runner is not None and not last else contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        """The settings to record with results."""
        return {"patch_mode": self.patch_mode, "precision": self.precision, "fast_path": self.fast_path}


def _choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
