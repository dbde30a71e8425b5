"""How a step runs: images and patches per pass, activation checkpointing, precision, fast path and the
data-parallel part.

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
import functools
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
# Activation checkpointing of training passes: "blocks" keeps only the inputs of each ResNet block and
# attention layer through a pass's forward and recomputes the block in backward (torch.utils.checkpoint).
CHECKPOINTING = ("none", "blocks")

PatchMode = str | int  # "batched" | "sequential" | k patches per pass


@dataclass(frozen=True)
class Execution:
    """How the UNet passes of a step run (never what they compute).

    ``patch_mode``: ``"batched"`` (all windows of an image in one pass, as the official code), ``"sequential"``
    (one per pass: the memory of one patch) or k per pass. ``images_per_pass``: how many of a step's images
    go through a pass (None: all of them); a training step then accumulates the gradients of chunks of that
    many images (micro-batches; exact, since GroupNorm normalises each image on its own), a denoising step
    predicts them chunk by chunk. ``checkpointing`` (training): ``"none"`` or ``"blocks"``
    (:data:`CHECKPOINTING`: recompute each ResNet block and attention layer in backward instead of keeping
    its activations). ``precision``: ``"fp32"``, ``"bf16"`` (autocast)
    or, for sampling, ``"bf16-weights"`` (weights stored in bf16, :func:`patchlab.accel.cast_weights`).
    ``fast_path``: ``"off"``, ``"compile"`` or ``"graphs"`` (:func:`patchlab.accel.fast_unet`); ``unet``:
    a callable ``unet(inputs, t, pos)`` run instead of each pass (tests, benchmarks), not with a fast path.
    ``part``: ``(i, k)``, this process's part i of k of a data-parallel step's global batch; ``runner``:
    the ``DistributedDataParallel`` wrapper that runs its passes (gradients synchronised in the last).
    ``first_passes`` (memory estimates only): run only the first that many chunks of images and of windows of
    each loop: the later passes repeat their shapes (and the tensors alive between passes are the same), so the
    step's peak is that of the first two; an estimate of many passes then takes the time of a few.
    """

    patch_mode: PatchMode = "sequential"
    images_per_pass: int | None = None
    checkpointing: str = "none"
    precision: str = "fp32"
    fast_path: str = "off"
    unet: Callable | None = field(default=None, compare=False, repr=False)
    part: tuple[int, int] = (0, 1)
    runner: Any = field(default=None, compare=False, repr=False)
    first_passes: int | None = field(default=None, compare=False)
    _fast: Any = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        P.check_patch_mode(self.patch_mode)
        check_images_per_pass(self.images_per_pass)
        _choice("checkpointing", self.checkpointing, CHECKPOINTING)
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
        if self.checkpointing != "none" and (self.unet is not None or self.fast_path != "off"):
            raise ValueError(f"checkpointing={self.checkpointing!r} recomputes the model's own blocks: it runs "
                             f"with fast_path='off' and without a unet replacement")
        if self.first_passes is not None and (isinstance(self.first_passes, bool) or not isinstance(
                self.first_passes, int) or self.first_passes < 2):
            raise ValueError(f"first_passes must be an integer >= 2 (the second pass is the first that finds the "
                             f"gradients of the others), got {self.first_passes!r}")
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
        if phase == "sample" and self.checkpointing != "none":
            raise ValueError(f"checkpointing={self.checkpointing!r} saves the activations kept for backward: "
                             f"sampling keeps none (use checkpointing='none')")
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
        k above ``count`` is one pass with all of them); the first ``first_passes`` of them when set."""
        return self._window_chunks(count)[:self.first_passes]

    def _window_chunks(self, count: int) -> list[list[int]]:
        return P.chunks(count, "batched" if P.per_pass(count, self.patch_mode) >= count else self.patch_mode)

    def _image_chunks(self, batch: int) -> list[slice]:
        k = batch if self.images_per_pass is None else min(self.images_per_pass, batch)
        return [slice(start, min(start + k, batch)) for start in range(0, batch, max(k, 1))]

    def image_chunks(self, batch: int) -> list[slice]:
        """The rows of a step's ``batch`` images that go through the UNet together: chunks of
        ``images_per_pass`` (the last one smaller), or one chunk of all of them; the first ``first_passes`` of
        them when set."""
        return self._image_chunks(batch)[:self.first_passes]

    def passes(self, batch: int, windows: int) -> int:
        """UNet passes of a whole step over ``batch`` images of ``windows`` windows each."""
        return len(self._image_chunks(batch)) * len(self._window_chunks(windows))

    def forward(self, model: torch.nn.Module, phase: str) -> Callable:
        """What runs one pass ``(inputs, t, pos) -> noise`` of ``model`` in ``phase``: the custom ``unet``, the
        fast path (built once per model and phase), the data-parallel runner, or the model itself (training
        with checkpointing: its blocks checkpointed, :meth:`patchlab.model.PatchUNet.forward`)."""
        if self.unet is not None:
            return self.unet
        if self.fast_path != "off":
            per_model = self._fast.setdefault(model, {})
            if phase not in per_model:
                per_model[phase] = fast_unet(model, phase, path=self.fast_path)
            return per_model[phase]
        run = self.runner if self.runner is not None else model
        if phase == "train" and self.checkpointing != "none":
            return functools.partial(run, checkpointing=self.checkpointing)
        return run

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
        return {"patch_mode": self.patch_mode, "images_per_pass": self.images_per_pass,
                "checkpointing": self.checkpointing, "precision": self.precision, "fast_path": self.fast_path}

    @classmethod
    def of_training(cls, train, **changes) -> "Execution":
        """The execution a run's :class:`patchlab.config.TrainConfig` ``train`` configures (its patch mode,
        images per pass, checkpointing, precision and fast path), with ``changes``."""
        settings = {"patch_mode": train.patch_mode, "images_per_pass": train.images_per_pass,
                    "checkpointing": train.checkpointing, "precision": train.precision, "fast_path": train.fast_path}
        return cls(**{**settings, **changes})


def check_images_per_pass(value) -> int | None:
    """``images_per_pass`` is None (the whole batch in one pass) or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"images_per_pass must be a positive integer (images per UNet pass) or None (the whole "
                         f"batch), got {value!r}")
    return value


def _choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
