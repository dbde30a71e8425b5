"""Typed, strict configuration.

One frozen dataclass per component (model, diffusion, training, data); every field carries a one-line
doc that doubles as the CLI help. :func:`from_params` takes the flat keyword form used by notebooks and
the CLI and refuses unknown keys, naming the valid ones; :func:`from_dict` reads the nested JSON form
saved next to every run.
"""

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from . import patches as _patches
from .execution import CHECKPOINTING, FAST_PATH_SETTINGS, PRECISIONS, PatchMode, check_images_per_pass
from .objective import LOSSES as _LOSS_FUNCTIONS
from .objective import NOISE_LEVELS, PREDICTIONS, WEIGHTINGS

FORMAT_VERSION = 1

SCHEDULES = ("cosine", "linear")
LOSSES = tuple(_LOSS_FUNCTIONS)
LAYOUTS = ("official", "standard")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError, TypeError):
    """An unknown parameter or a value of the wrong type (catch as ValueError or TypeError)."""


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with a one-line doc (used for --help and error messages)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    """The patch UNet and its conditioning."""

    image_size: int = _f(32, "side of the square images in pixels")
    channels: int = _f(3, "image channels (1 grayscale, 3 RGB)")
    patches: int = _f(2, "N: the image is cut into N x N patches (1 = ordinary DDPM)")
    dim: int = _f(32, "base channel width of the UNet (paper: 128)")
    dim_mults: tuple[int, ...] = _f((1, 2, 4), "channel multiplier per UNet level (paper: 1,2,4,8)")
    init_dim: int | None = _f(None, "channels after the 7x7 input conv; None = dim // 3 * 2")
    groups: int = _f(8, "GroupNorm groups in every ResNet block")
    attn_heads: int = _f(4, "attention heads (linear and full attention)")
    attn_dim_head: int = _f(32, "channels per attention head")
    position: bool = _f(True, "one-hot patch position fused with the time embedding")
    gcc: bool = _f(True, "Global Content Conditioning: pooled whole x_t concatenated to each patch")
    coords: bool = _f(False, "continuous window coordinates instead of the one-hot position, trained on windows at "
                             "random offsets: patches anywhere (the seam remedies need it)")
    global_view: float = _f(0.0, "coords models: share of the training images denoised as the global view (the "
                                   "whole image pooled to one patch, at its own lower noise level) instead of as "
                                   "windows; > 0 lets the sampler's 'global' windows decide the layout with it")
    windows_below: float = _f(1.0, "global_view models: the windows train only on timesteps below this fraction "
                                    "of T (the fine steps, where the sampler uses them; the global view trains on "
                                    "all); 1 = every timestep")
    layout: str = _f("official", "decoder layout: 'official' (as released) or 'standard' (all skips)")
    prediction: str = _f("eps", "what the UNet predicts: 'eps' (the noise, paper), 'v', 'x0' or 'edm' (EDM's "
                                "preconditioned denoiser); see patchlab.objective")

    def __post_init__(self) -> None:
        _sized(self, "image_size", "channels", "patches", "dim", "groups", "attn_heads", "attn_dim_head")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ValueError(f"dim_mults must be a non-empty tuple of positive ints, got {self.dim_mults}")
        if self.init_dim is not None and not 1 <= self.init_dim <= MAX_SIZE:
            raise ValueError(f"init_dim must be in [1, {MAX_SIZE}] or None, got {self.init_dim}")
        if any(m > MAX_SIZE for m in self.dim_mults):
            raise ValueError(f"dim_mults must be at most {MAX_SIZE} each, got {self.dim_mults}")
        _choice(self, "layout", LAYOUTS)
        _choice(self, "prediction", PREDICTIONS)
        if self.coords and not (self.position and self.patches > 1):
            raise ValueError("coords (continuous window coordinates) replace the one-hot position of a patch model: "
                             f"they need position=True and patches >= 2, got position={self.position}, "
                             f"patches={self.patches}")
        if not 0.0 <= self.global_view < 1.0:
            raise ValueError(f"global_view is a share of the training images in [0, 1) (some must train the "
                             f"windows), got {self.global_view}")
        if self.global_view and not self.coords:
            raise ValueError("global_view trains the global view beside windows at random offsets: it needs "
                             "coords=True")
        if not 0.0 < self.windows_below <= 1.0:
            raise ValueError(f"windows_below is a fraction of the diffusion's T in (0, 1], got {self.windows_below}")
        if self.windows_below < 1.0 and not self.global_view:
            raise ValueError("windows_below < 1 trains the windows on the fine steps only: the noisy ones need the "
                             "global view, so global_view must be > 0")
        factor = 2 ** (len(self.dim_mults) - 1)
        unit = self.patches * factor  # the image sizes that build: multiples of N x 2^(halvings)
        if self.image_size % unit:
            below, above = self.image_size // unit * unit, (self.image_size // unit + 1) * unit
            sizes = f"{below} or {above}" if below else f"{above} or {above + unit}"
            what = (f"image size {self.image_size} is not divisible by N={self.patches} patches per side"
                    if self.image_size % self.patches else
                    f"patch size {self.image_size // self.patches} (image_size {self.image_size} / patches "
                    f"{self.patches}) must be divisible by {factor}")
            raise ValueError(f"{what}: the UNet halves each patch {len(self.dim_mults) - 1} times (one fewer than "
                             f"len(dim_mults) = {len(self.dim_mults)}), so the image size must be a multiple of "
                             f"N x {factor} = {unit}, e.g. {sizes}")
        size = _patches.patch_size(self.image_size, self.patches)
        if size % factor:
            raise ValueError(
                f"patch size {size} (image_size {self.image_size} / patches {self.patches}) must be "
                f"divisible by {factor}: the UNet halves it {len(self.dim_mults) - 1} times "
                f"(one fewer than len(dim_mults) = {len(self.dim_mults)})")
        for m in self.dim_mults:
            if (self.dim * m) % self.groups:
                raise ValueError(f"channels dim*mult = {self.dim * m} not divisible by groups {self.groups}")

    @property
    def patch_size(self) -> int:
        """Side of one patch in pixels (image_size / patches)."""
        return self.image_size // self.patches

    @property
    def num_patches(self) -> int:
        """N * N."""
        return self.patches * self.patches

    @property
    def resolved_init_dim(self) -> int:
        return self.init_dim if self.init_dim is not None else self.dim // 3 * 2


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process and the training objective's loss (with the model's ``prediction``: patchlab.objective)."""

    timesteps: int = _f(1000, "T, number of diffusion steps")
    schedule: str = _f("cosine", "beta schedule: 'cosine' (s=0.008, paper) or 'linear'")
    loss: str = _f("l1", "loss on the UNet's prediction: 'l1' (paper) or 'l2'")
    weighting: str = _f("uniform", "loss weight over noise levels: 'uniform' (paper) or 'min_snr' (Min-SNR-gamma)")
    snr_gamma: float = _f(5.0, "gamma of weighting='min_snr' (Hang et al.: 5)")
    noise_levels: str = _f("uniform", "training timesteps: 'uniform' (paper), 'lognormal' (EDM: ln sigma ~ "
                                      "N(-1.2, 1.2^2)) or 'logit_normal' (t/T = sigmoid(N(0, 1)))")

    def __post_init__(self) -> None:
        _positive(self, "timesteps")
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "loss", LOSSES)
        _choice(self, "weighting", WEIGHTINGS)
        _choice(self, "noise_levels", tuple(NOISE_LEVELS))
        if not (math.isfinite(self.snr_gamma) and self.snr_gamma > 0):
            raise ValueError(f"snr_gamma must be a positive number, got {self.snr_gamma}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, patch execution, checkpoints and logging."""

    steps: int = _f(1000, "optimizer steps in total (a resumed run continues up to this)")
    batch_size: int = _f(16, "images per optimizer step")
    lr: float = _f(2e-4, "Adam learning rate (paper: 1e-4)")
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps")
    ema_decay: float = _f(0.995, "EMA decay of the sampling weights (paper: 0.995)")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    patch_mode: PatchMode = _f("sequential", "'batched', 'sequential' or k patches per forward+backward (how a step "
                                             "runs: free to change on resume)")
    images_per_pass: int | None = _f(None, "images per forward+backward: gradients accumulate over chunks of this "
                                            "many images (micro-batches; exact, free to change on resume); "
                                            "None: the whole batch")
    checkpointing: str = _f("none", "activation checkpointing: 'none' or 'blocks' (recompute each ResNet block "
                                    "and attention in backward: less memory, more time; free to change on resume)")
    shard_optimizer: bool = _f(False, "under torchrun: split Adam's state across the processes "
                                      "(ZeroRedundancyOptimizer; same results, less memory per GPU)")
    precision: str = _f("fp32", "'fp32' or 'bf16' (autocast of the UNet; meant for CUDA)")
    fast_path: str = _f("off", "per-pass execution: 'off', 'compile' (torch.compile of each pass; compiling takes "
                          "minutes on a small CPU) or 'graphs' (CUDA graphs of each pass, forward and backward)")
    seed: int = _f(0, "seed of model init, data order, timesteps and noise")
    device: str = _f("auto", "'auto' (CUDA if available), 'cpu' or 'cuda'")
    log_every: int = _f(10, "write a metrics row every this many steps")
    checkpoint_every: int = _f(200, "write a checkpoint every this many steps (and at the end)")
    sample_every: int = _f(0, "write a sample grid every this many steps (0 = only at the end)")
    sample_count: int = _f(16, "images in each sample grid")
    sample_steps: int = _f(50, "DDIM steps for the sample grids written during training")

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "log_every", "checkpoint_every", "sample_count",
                  "sample_steps")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("warmup_steps", "sample_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        _patches.check_patch_mode(self.patch_mode)
        check_images_per_pass(self.images_per_pass)
        _choice(self, "checkpointing", CHECKPOINTING)
        _choice(self, "precision", PRECISIONS)
        _choice(self, "fast_path", FAST_PATH_SETTINGS)
        if self.checkpointing != "none" and self.fast_path != "off":
            raise ValueError(f"checkpointing={self.checkpointing!r} runs with fast_path='off', got "
                             f"fast_path={self.fast_path!r}")
        _choice(self, "device", DEVICES)


@dataclass(frozen=True)
class DataConfig:
    """Training data."""

    dataset: str = _f("shapes", "dataset name: built-in 'shapes', 'faces' or 'digits', or 'celeba', 'lsun_bedroom', "
                                "'folder' (see data/README.md)")
    data_root: str | None = _f(None, "folder of a real dataset (not needed for built-ins)")
    dataset_size: int = _f(10000, "number of distinct images of a procedural built-in; for 'digits' the "
                                       "first (class-balanced) images of the split")
    num_workers: int = _f(0, "DataLoader worker processes")

    def __post_init__(self) -> None:
        _positive(self, "dataset_size")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "data": DataConfig,
}

# The keys that do not change what a run trains, only what it logs and where it runs: left out of a
# run's identity (Config.identity) and free to change when a run resumes.
NOT_TRAINED = frozenset({"log_every", "checkpoint_every", "sample_every", "sample_count", "sample_steps", "device",
                         "num_workers", "shard_optimizer", "fast_path", "images_per_pass", "checkpointing"})
# What may differ between a checkpoint and the configuration that resumes it: the above, the run's length
# (a resumed run may go on longer) and how its steps run (the patch mode: the same gradients up to
# round-off). The patch mode stays in a run's identity, as it was when the first runs were published.
RESUMABLE_CHANGES = NOT_TRAINED | {"steps", "patch_mode"}
# Keys added after runs were first published, with the value that reproduces those runs: at that value
# they are left out of a run's identity (Config.identity), so the older runs keep theirs.
IDENTITY_OMITS_AT = {"coords": False, "global_view": 0.0, "windows_below": 1.0, "prediction": "eps",
                     "weighting": "uniform", "snr_gamma": 5.0, "noise_levels": "uniform"}
# Keys renamed since runs were first written: {old name: new name}. Old names still load (from_params,
# from_dict, so old config.json files and checkpoints), and a run's identity is computed with the old
# names, so renaming a key never changes a run's directory.
RENAMED = {"window_until": "windows_below"}


@dataclass(frozen=True)
class Config:
    """The resolved configuration of a run: one section per component."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        mode = self.train.patch_mode
        if isinstance(mode, int) and mode > self.model.num_patches:
            raise ValueError(
                f"patch_mode {mode} asks for more patches per pass than the {self.model.num_patches} "
                f"an image has (patches={self.model.patches}); use 'batched' or a value <= "
                f"{self.model.num_patches}")

    def to_dict(self) -> dict[str, Any]:
        """Nested, JSON-serialisable form: {"version", "model": {...}, "diffusion": {...}, ...}."""
        out: dict[str, Any] = {"version": FORMAT_VERSION}
        for name in SECTIONS:
            out[name] = {k: _jsonable(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
        return out

    def flat(self) -> dict[str, Any]:
        """Flat form {key: value}, the form :func:`from_params` takes."""
        return {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def replace(self, **params: Any) -> "Config":
        """A copy with some flat keys changed (validated like :func:`from_params`)."""
        return from_params(**{**self.flat(), **params})

    def trained_params(self) -> dict[str, Any]:
        """The flat keys that define what a run trains: all but :data:`NOT_TRAINED`, and without the
        :data:`IDENTITY_OMITS_AT` keys at the values that reproduce the runs published before them."""
        return {k: v for k, v in self.flat().items()
                if k not in NOT_TRAINED and not (k in IDENTITY_OMITS_AT and v == IDENTITY_OMITS_AT[k])}

    def identity(self) -> dict[str, Any]:
        """A run's identity: :meth:`trained_params` under the names the keys had when runs were first
        written (:data:`RENAMED`), sorted (what :func:`patchlab.study.variants.config_hash` hashes)."""
        old = {new: old for old, new in RENAMED.items()}
        return dict(sorted((old.get(k, k), v) for k, v in self.trained_params().items()))

    def differences(self, other: "Config") -> dict[str, tuple[Any, Any]]:
        """{key: (self value, other value)} for every flat key that differs."""
        a, b = self.flat(), other.flat()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# The paper's CelebA 128 x 128 configuration (Arakawa et al.; the official code's defaults).
PAPER_PARAMS: dict[str, Any] = dict(image_size=128, channels=3, patches=4, dim=128, dim_mults=(1, 2, 4, 8),
                                    timesteps=1000, schedule="cosine", loss="l1", batch_size=32, lr=1e-4,
                                    ema_decay=0.995)


def parameter_docs() -> dict[str, tuple[str, Any, Any]]:
    """{flat key: (section, type, doc)} for every parameter, in declaration order."""
    out = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f.name] = (section, hints[f.name], f.metadata.get("doc", ""))
    return out


def valid_keys() -> list[str]:
    return list(parameter_docs())


def from_params(**params: Any) -> Config:
    """Resolve flat parameters into a :class:`Config`.

    Unknown keys raise :class:`ConfigError` (a ``ValueError`` and a ``TypeError``) naming the closest
    valid key and listing all of them; values of the wrong type raise it too, and values out of range
    raise ``ValueError``, each saying which key and why.
    Lists are accepted where tuples are expected (JSON and YAML give lists).
    """
    docs = parameter_docs()
    params = _renamed(params)
    unknown = [k for k in params if k not in docs]
    if unknown:
        raise ConfigError(_unknown_message(unknown, list(docs)))
    grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in params.items():
        section, typ, _ = docs[key]
        grouped[section][key] = _coerce(key, value, typ)
    return Config(**{name: SECTIONS[name](**kw) for name, kw in grouped.items()})


def from_dict(data: dict[str, Any]) -> Config:
    """Read the nested form written by :meth:`Config.to_dict` (e.g. a run's ``config.json``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"config format version {version} is not supported (expected {FORMAT_VERSION})")
    extra = [k for k in data if k not in SECTIONS and k != "version"]
    if extra:
        raise ConfigError(f"unknown config sections {extra}; valid sections: {list(SECTIONS)}")
    flat: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = data.get(name, {})
        names = {f.name for f in dataclasses.fields(cls)}
        section = _renamed(section)
        wrong = [k for k in section if k not in names]
        if wrong:
            raise ConfigError(f"section '{name}': " + _unknown_message(wrong, sorted(names)))
        flat.update(section)
    return from_params(**flat)


def load_json(path) -> Config:
    with open(path) as fh:
        return from_dict(json.load(fh))


# --- helpers -----------------------------------------------------------------------------------


def _renamed(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the old names of :data:`RENAMED` keys replaced by the new ones (both given: an error)."""
    both = [f"'{old}' (now '{new}')" for old, new in RENAMED.items() if old in params and new in params]
    if both:
        raise ConfigError(f"parameter(s) given under the old and the new name: {', '.join(both)}")
    return {RENAMED.get(k, k): v for k, v in params.items()}


def _unknown_message(unknown: list[str], valid: list[str]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"unknown parameter(s) {', '.join(parts)}; valid parameters are: {', '.join(valid)}"


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the annotation ``typ``; lists become tuples, ints become floats."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(typ)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"parameter '{key}' must be one of {_type_name(typ)}, got {value!r}")
    if origin is tuple:
        (item_type, _) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter '{key}' must be a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(key, v, item_type) for v in value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"parameter '{key}' must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"parameter '{key}' must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"parameter '{key}' must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"parameter '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"parameter '{key}' has an unsupported type {typ}")  # pragma: no cover


def _type_name(typ: Any) -> str:
    return " | ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(typ))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


MAX_SIZE = 2 ** 16  # the largest image side, channel count or width a model may have (far above any that runs)


def _sized(obj: Any, *names: str) -> None:
    """The model's sizes are positive and at most :data:`MAX_SIZE` (a typo such as ``dim=800000000`` would
    otherwise reach an estimate as an overflow)."""
    _positive(obj, *names)
    for name in names:
        if getattr(obj, name) > MAX_SIZE:
            raise ValueError(f"{name} must be at most {MAX_SIZE}, got {getattr(obj, name)}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(obj, name)}")


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    if getattr(obj, name) not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {getattr(obj, name)!r}")
