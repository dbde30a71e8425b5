"""What a model is trained to predict, and how its training loss weighs the noise levels.

An objective is four small choices, one class per variant, built and validated once by :func:`build`:

- the **target** (the model's ``prediction``): what the UNet outputs for a noisy image
  x_t = sqrt(a) x0 + sqrt(1 - a) eps (a = alpha-bar at the image's timestep): :class:`Epsilon` (the
  paper), :class:`V` (v = sqrt(a) eps - sqrt(1 - a) x0), :class:`X0`, or :class:`EDM` (Karras et al.'s
  preconditioned denoiser, x0 = c_skip x_t / sqrt(a) + c_out F, the UNet predicting F). Sampling turns every
  target into the noise it implies (:meth:`Target.to_eps`), so samplers, tilings and executions never see it.
- the **loss** on the target: L1 (the paper) or L2 (:data:`LOSSES`);
- the **weighting** over noise levels: :class:`Uniform` (the paper) or :class:`MinSNR` (Hang et al., 2023:
  the x0 loss weighted by min(SNR, gamma), i.e. ``min(SNR, gamma) / SNR`` for epsilon and
  ``min(SNR, gamma) / (SNR + 1)`` for v; :meth:`Target.x0_scale` turns x0 weights into the target's);
- the **noise levels** training draws: :class:`UniformLevels` (t uniform in [0, T), the paper),
  :class:`LogNormalLevels` (EDM: ln sigma ~ N(-1.2, 1.2^2), sigma = sqrt((1 - a) / a), at the nearest of the
  schedule's T timesteps) or :class:`LogitNormalLevels` (Esser et al., 2024: t / T = sigmoid(N(0, 1))).

The paper's objective (:data:`PAPER`: epsilon, L1, uniform, uniform) is every configuration's default, so a
run written before objectives existed loads as the paper's. Every loss here is a sum over images of a
per-image term, so patch-sequential, micro-batched and checkpointed steps keep the batched step's gradient.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

# --- the target ------------------------------------------------------------------------------------------


def _abar(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha-bar per image ``a`` [B] (any float dtype) as [B x 1 x 1 x 1] in ``like``'s dtype and device."""
    return a.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def snr(a: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a / (1 - a) of alpha-bar ``a`` [B]."""
    return a / (1.0 - a)


class Target(ABC):
    """What the UNet predicts. ``a`` is alpha-bar per image [B] (float64 from the schedule, or the global view's
    own); x0, eps, x_t and outputs are [B x C x h x w] (whole images or windows, one ``a`` per row)."""

    name: ClassVar[str]  # the model's ``prediction``
    doc: ClassVar[str]
    uses_x0: ClassVar[bool] = True  # whether :meth:`target` reads the clean image (training keeps its windows)
    uses_abar: ClassVar[bool] = True  # whether :meth:`target` reads the alpha-bars

    @abstractmethod
    def target(self, x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """What the UNet should output for x_t = sqrt(a) x0 + sqrt(1 - a) eps."""

    @abstractmethod
    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The noise implied by the UNet's output ``out`` for ``x_t``."""

    @abstractmethod
    def x0_scale(self, a: torch.Tensor) -> torch.Tensor:
        """(d x0 / d output)^2 [B]: an error e in the output is an error sqrt(scale) e in x0."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True, repr=False)
class Epsilon(Target):
    name, doc = "eps", "the noise (the paper)"
    uses_x0 = uses_abar = False

    def target(self, x0, eps, a):
        return eps

    def to_eps(self, out, x_t, a):
        return out

    def x0_scale(self, a):
        return 1.0 / snr(a)


@dataclass(frozen=True, repr=False)
class V(Target):
    name, doc = "v", "v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho, 2022)"

    def target(self, x0, eps, a):
        a = _abar(a, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def to_eps(self, out, x_t, a):
        a = _abar(a, x_t)
        return a.sqrt() * out + (1 - a).sqrt() * x_t

    def x0_scale(self, a):
        return 1.0 - a


def _eps_of_x0(x0: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    a = _abar(a, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


@dataclass(frozen=True, repr=False)
class X0(Target):
    name, doc = "x0", "the clean image"

    def target(self, x0, eps, a):
        return x0

    def to_eps(self, out, x_t, a):
        return _eps_of_x0(out, x_t, a)

    def x0_scale(self, a):
        return torch.ones_like(a)


@dataclass(frozen=True, repr=False)
class EDM(Target):
    """Karras et al. (2022)'s preconditioning on the variance-preserving input: with sigma^2 = (1 - a) / a and
    x_t / sqrt(a) = x0 + sigma eps, x0 = c_skip x_t / sqrt(a) + c_out F, c_skip = s^2 / (sigma^2 + s^2) and
    c_out = sigma s / sqrt(sigma^2 + s^2) (s: ``sigma_data``). The UNet's input stays x_t (EDM's c_in x up to
    a per-image scale); with ``s = 1`` F is -v."""

    sigma_data: float = 0.5
    name: ClassVar[str] = "edm"
    doc: ClassVar[str] = "EDM's preconditioned denoiser F (Karras et al., 2022; sigma_data 0.5)"

    def _coefficients(self, a, like):
        s2, sigma2 = self.sigma_data ** 2, (1 - a) / a
        return _abar(s2 / (sigma2 + s2), like), _abar((sigma2 * s2 / (sigma2 + s2)).sqrt(), like)

    def target(self, x0, eps, a):
        c_skip, c_out = self._coefficients(a, x0)
        return (x0 - c_skip * (x0 + _abar(((1 - a) / a).sqrt(), x0) * eps)) / c_out

    def to_eps(self, out, x_t, a):
        c_skip, c_out = self._coefficients(a, x_t)
        return _eps_of_x0(c_skip * x_t / _abar(a, x_t).sqrt() + c_out * out, x_t, a)

    def x0_scale(self, a):
        s2, sigma2 = self.sigma_data ** 2, (1 - a) / a
        return sigma2 * s2 / (sigma2 + s2)


TARGETS: dict[str, Target] = {t.name: t for t in (Epsilon(), V(), X0(), EDM())}
PREDICTIONS = tuple(TARGETS)  # the choices of the model's ``prediction``
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


def target_of(model_config) -> Target:
    """The target of a model configuration (its ``prediction``)."""
    return TARGETS[model_config.prediction]


# --- the weighting over noise levels ---------------------------------------------------------------------


class Weighting(ABC):
    name: ClassVar[str]
    uses_abar: ClassVar[bool] = True  # whether :meth:`weights` reads the alpha-bars

    @abstractmethod
    def weights(self, target: Target, a: torch.Tensor) -> torch.Tensor | None:
        """Per-image loss weights [B] at alpha-bar ``a`` [B] for ``target`` (None: all 1)."""

    def settings(self) -> dict:
        return {"weighting": self.name}


@dataclass(frozen=True)
class Uniform(Weighting):
    """Every noise level weighs the same in the target's loss (the paper)."""

    name = "uniform"
    uses_abar = False

    def weights(self, target, a):
        return None


@dataclass(frozen=True)
class MinSNR(Weighting):
    """Min-SNR-gamma (Hang et al., ICCV 2023): the x0 loss weighted by min(SNR, gamma), written in the target's
    units: min(SNR, gamma) x0_scale, i.e. min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, 1x for x0."""

    gamma: float = 5.0
    name: ClassVar[str] = "min_snr"

    def __post_init__(self):
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"snr_gamma must be a positive number, got {self.gamma!r}")

    def weights(self, target, a):
        a = a.double()
        return snr(a).clamp(max=self.gamma) * target.x0_scale(a)

    def settings(self):
        return {"weighting": self.name, "snr_gamma": self.gamma}


WEIGHTINGS = ("uniform", "min_snr")


# --- the noise levels training draws ---------------------------------------------------------------------


class NoiseLevels(ABC):
    """How a training step draws each image's timestep in [0, T)."""

    name: ClassVar[str]

    @abstractmethod
    def draw(self, alphas_cumprod: torch.Tensor, count: int, generator: torch.Generator | None,
             device) -> torch.Tensor:
        """``count`` timesteps [count] (long) of a schedule with these alpha-bars [T], drawn from ``generator``."""


@dataclass(frozen=True)
class UniformLevels(NoiseLevels):
    """t uniform in [0, T) (the paper; DDPM)."""

    name = "uniform"

    def draw(self, alphas_cumprod, count, generator, device):
        return torch.randint(0, len(alphas_cumprod), (count,), generator=generator, device=device)


def _nearest(table: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of the entry of the increasing ``table`` [T] nearest to each of ``values`` [n]."""
    hi = torch.searchsorted(table, values).clamp(1, len(table) - 1)
    lo = hi - 1
    return torch.where((values - table[lo]).abs() <= (table[hi] - values).abs(), lo, hi)


@dataclass(frozen=True)
class LogNormalLevels(NoiseLevels):
    """EDM's training noise levels: ln sigma ~ N(mean, std^2), at the schedule's timestep nearest in ln sigma
    (sigma_t = sqrt((1 - abar_t) / abar_t) grows with t)."""

    mean: float = -1.2
    std: float = 1.2
    name: ClassVar[str] = "lognormal"

    def draw(self, alphas_cumprod, count, generator, device):
        a = alphas_cumprod.to(device=device, dtype=torch.float64)
        log_sigma = 0.5 * torch.log((1 - a) / a)
        drawn = self.mean + self.std * torch.randn(count, generator=generator, device=device, dtype=torch.float64)
        return _nearest(log_sigma, drawn)


@dataclass(frozen=True)
class LogitNormalLevels(NoiseLevels):
    """Esser et al. (2024)'s logit-normal timesteps: t / T = sigmoid(N(mean, std^2)), floored to an integer."""

    mean: float = 0.0
    std: float = 1.0
    name: ClassVar[str] = "logit_normal"

    def draw(self, alphas_cumprod, count, generator, device):
        u = torch.sigmoid(self.mean + self.std * torch.randn(count, generator=generator, device=device,
                                                             dtype=torch.float64))
        total = len(alphas_cumprod)
        return (u * total).long().clamp(0, total - 1)


NOISE_LEVELS: dict[str, NoiseLevels] = {n.name: n for n in (UniformLevels(), LogNormalLevels(), LogitNormalLevels())}


# --- the objective ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """A training objective: the target, the loss, the weighting and the noise levels (see the module)."""

    target: Target = TARGETS["eps"]
    loss: str = "l1"
    weighting: Weighting = Uniform()
    levels: NoiseLevels = NOISE_LEVELS["uniform"]

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}; got {self.loss!r}")
        for name, kind in (("target", Target), ("weighting", Weighting), ("levels", NoiseLevels)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a patchlab.objective.{kind.__name__}, got {getattr(self, name)!r}")

    @property
    def uses_abar(self) -> bool:
        """Whether :meth:`loss_sum` reads the alpha-bars (not for the paper's: a step keeps no tensor for them)."""
        return self.target.uses_abar or self.weighting.uses_abar

    @property
    def is_paper(self) -> bool:
        return self == PAPER

    def draw_timesteps(self, alphas_cumprod: torch.Tensor, count: int, generator, device) -> torch.Tensor:
        """Training timesteps [count] (long) in [0, T) for a schedule with these alpha-bars [T]."""
        return self.levels.draw(alphas_cumprod, count, generator, device)

    def loss_sum(self, out: torch.Tensor, x0: torch.Tensor | None, eps: torch.Tensor,
                 a: torch.Tensor | None) -> torch.Tensor:
        """The weighted loss summed over every element: UNet outputs ``out`` [K x C x h x w] (float32) for the
        windows of clean images ``x0`` (None when the target does not use them: ``target.uses_x0``) and noise
        ``eps`` [K x C x h x w] at alpha-bars ``a`` [K] (None when the objective does not use them:
        :attr:`uses_abar`)."""
        fn, target = LOSSES[self.loss], self.target.target(x0, eps, a)
        weights = self.weighting.weights(self.target, a)
        if weights is None:
            return fn(out, target, reduction="sum")
        per_window = fn(out, target, reduction="none").flatten(1).sum(1)
        return (per_window * weights.to(per_window)).sum()

    def settings(self) -> dict:
        """What a run records: ``{"prediction", "loss", "weighting", ("snr_gamma",) "noise_levels"}``."""
        return {"prediction": self.target.name, "loss": self.loss, **self.weighting.settings(),
                "noise_levels": self.levels.name}

    def label(self) -> str:
        """A short human label, e.g. ``"paper's (eps, l1, uniform)"`` or ``"v, l2, min_snr 5, lognormal"``."""
        w = self.weighting
        parts = [self.target.name, self.loss, w.name + (f" {w.gamma:g}" if isinstance(w, MinSNR) else "")]
        if self.levels.name != "uniform":
            parts.append(self.levels.name)
        return "paper's (" + ", ".join(parts) + ")" if self.is_paper else ", ".join(parts)


PAPER = Objective()


def build(cfg) -> Objective:
    """The objective of a :class:`patchlab.config.Config` (its model's ``prediction``; its diffusion's
    ``loss``, ``weighting``, ``snr_gamma``, ``noise_levels``; each checked against this module's choices where
    the configuration is built)."""
    d = cfg.diffusion
    weighting = MinSNR(d.snr_gamma) if d.weighting == "min_snr" else Uniform()
    return Objective(TARGETS[cfg.model.prediction], d.loss, weighting, NOISE_LEVELS[d.noise_levels])
