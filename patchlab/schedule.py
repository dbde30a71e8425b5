"""Noise schedules as plain tensors, and the closed-form terms of the forward process.

A :class:`Schedule` holds float64 tensors of length T indexed by the timestep ``t`` in ``[0, T)``.
The functions here are pure: they take the schedule and tensors and return tensors in the dtype of
the image they act on.
"""

import math
from dataclasses import dataclass, fields

import torch


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021): alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2).

    Returns betas [T] (float64), clipped to at most 0.999.
    """
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos((x / timesteps + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0.0, 0.999)


def linear_betas(timesteps: int) -> torch.Tensor:
    """Linear schedule of Ho et al. (2020), 1e-4 to 0.02 at T=1000, rescaled for other T.

    Returns betas [T] (float64).
    """
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype=torch.float64)


@dataclass(frozen=True)
class Schedule:
    """Precomputed diffusion terms, each a float64 tensor [T]."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance: torch.Tensor  # log of the posterior variance, clipped at t = 0
    posterior_mean_coef1: torch.Tensor  # multiplies x0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device) -> "Schedule":
        return Schedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def make_schedule(name: str, timesteps: int) -> Schedule:
    """Build a :class:`Schedule` from a beta schedule name (``"cosine"`` or ``"linear"``) and T."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be positive, got {timesteps}")
    if name == "cosine":
        betas = cosine_betas(timesteps)
    elif name == "linear":
        betas = linear_betas(timesteps)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose 'cosine' or 'linear'")
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The posterior variance is 0 at t = 0; take the log of the t = 1 value there, as DDPM does.
    clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if timesteps > 1 \
        else posterior_variance.clamp(min=1e-20)
    return Schedule(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        posterior_variance=posterior_variance,
        posterior_log_variance=torch.log(clipped),
        posterior_mean_coef1=betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] as [B x 1 x 1 x 1] in the dtype and device of ``like`` ([B x ...])."""
    out = values.to(like.device)[t.to(like.device)]
    return out.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.  x0, noise: [B x C x H x W]."""
    abar = schedule.alphas_cumprod
    return extract(abar.sqrt(), t, x0) * x0 + extract((1.0 - abar).sqrt(), t, x0) * noise


def predict_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 implied by a noise prediction: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    abar = schedule.alphas_cumprod
    return extract((1.0 / abar).sqrt(), t, x_t) * x_t - extract((1.0 / abar - 1.0).sqrt(), t, x_t) * eps


def predict_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Noise implied by an x0 estimate: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    abar = schedule.alphas_cumprod
    return (x_t - extract(abar.sqrt(), t, x_t) * x0) / extract((1.0 - abar).sqrt(), t, x_t)


def posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor,
              t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and (clipped) log-variance of q(x_{t-1} | x_t, x0), each [B x C x H x W] or broadcastable."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    return (mean, extract(schedule.posterior_variance, t, x_t),
            extract(schedule.posterior_log_variance, t, x_t))


def fractional_timestep(schedule: Schedule, abar: torch.Tensor) -> torch.Tensor:
    """The timestep at which ``alphas_cumprod`` equals ``abar`` [B], interpolated linearly between the
    integer timesteps (``alphas_cumprod`` falls with t): [B] float32 in [0, T - 1]."""
    table = schedule.alphas_cumprod.to(abar.device)
    target = abar.to(table.dtype).clamp(float(table[-1]), float(table[0]))
    hi = torch.searchsorted(-table, -target).clamp(1, len(table) - 1)  # first t with abar_t <= target
    lo_val, hi_val = table[hi - 1], table[hi]
    frac = ((lo_val - target) / (lo_val - hi_val).clamp(min=1e-30)).clamp(0.0, 1.0)
    return (hi - 1 + frac).float()


def pooled_view(schedule: Schedule, pooled: torch.Tensor, t: torch.Tensor,
                factor: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy images x_t average-pooled by ``factor`` (``pooled`` [B x C x H/f x W/f], the GCC image of
    :func:`patchlab.patches.global_context`), as noisy images of the pooled clean images at a lower noise
    level.

    Pooling f x f pixels of unit noise leaves noise of std 1/f: pool(x_t) = sqrt(a) pool(x0) +
    sqrt(1 - a)/f e' with e' = f pool(noise) ~ N(0, I) (the view's unit noise). Scaled by
    c = 1/sqrt(a + (1 - a)/f^2) it is sqrt(a') pool(x0) + sqrt(1 - a') e' with a' = c^2 a >= a: the
    forward process of the pooled image at abar = a', i.e. at the (fractional) timestep t' of
    :func:`fractional_timestep`. Returns (x_view [B x C x H/f x W/f], t' [B] float, a' [B] float64).
    """
    a = schedule.alphas_cumprod.to(pooled.device)[t.to(pooled.device)]
    scale = 1.0 / (a + (1.0 - a) / factor ** 2).sqrt()  # [B] float64
    abar_view = scale ** 2 * a
    view = pooled * scale.to(pooled.dtype).reshape(-1, 1, 1, 1)
    return view, fractional_timestep(schedule, abar_view), abar_view
