"""Stateless samplers: ancestral DDPM and DDIM, running the UNet patch by patch.

All loop state is local; randomness comes only from the ``generator`` passed in, so the same
generator seed gives the same images whatever the execution (it only changes how many patches go
through the UNet per pass and how, never the noise that is drawn). What each step computes is the
tiling's (:mod:`patchlab.tiling`): the fixed grid, or a seam remedy.
"""

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from . import schedule as S
from . import tiling as T
from .execution import Execution
from .model import PatchUNet

SAMPLERS = ("ddpm", "ddim")

# callback(i, t, x_t, x0): step index i (0 first), timestep t (int), the current noisy images
# [n x C x H x W] and the clipped x0 prediction at this step [n x C x H x W].
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def timesteps_for(sampler: str, total: int, steps: int | None) -> list[int]:
    """The timesteps a sampler visits, from noisiest to cleanest.

    ``ddpm`` visits all ``total`` steps; ``ddim`` visits ``steps`` evenly spaced ones (default all).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose 'ddpm' or 'ddim'")
    if sampler == "ddpm":
        if steps not in (None, total):
            raise ValueError(f"ancestral DDPM runs all T={total} steps (got steps={steps}); "
                             f"use sampler='ddim' (eta=1.0 for a stochastic sampler) to take fewer")
        return list(range(total - 1, -1, -1))
    steps = total if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= total:
        raise ValueError(f"DDIM steps must be an integer in [1, T={total}], got {steps!r}")
    # Evenly spaced from T-1 down to 0 (a single step starts, and ends, at T-1).
    grid = torch.linspace(total - 1, 0, steps, dtype=torch.float64).round().long()
    return sorted(set(grid.tolist()), reverse=True)


@torch.no_grad()
def sample(model: PatchUNet, schedule: S.Schedule, n: int, *, sampler: str = "ddpm", steps: int | None = None,
           eta: float = 0.0, tiling: "T.Tiling | str | None" = None, execution: Execution | None = None,
           generator: torch.Generator | None = None, callback: Callback | None = None,
           x_T: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Generate ``n`` images [n x C x H x W] in [-1, 1].

    sampler: ``"ddpm"`` (ancestral, all T steps) or ``"ddim"`` (``steps`` steps, stochasticity
    ``eta``; eta=0 is deterministic). x0 is clipped to [-1, 1] at every step.
    ``tiling``: what each step computes (:mod:`patchlab.tiling`): a :class:`patchlab.tiling.Tiling`, the
    name of one (``"grid"``, the paper's fixed grid; the seam remedies ``"shifted"``, ``"overlap"``,
    ``"global"``), or None: the model's own (:func:`patchlab.tiling.for_model`). ``execution``: how each step
    runs (:class:`patchlab.execution.Execution`: patches per pass, precision, fast path; default one patch
    per pass in fp32); it never changes the images beyond round-off. ``generator`` (on the model's device)
    drives all noise; ``x_T`` replaces the initial noise. ``callback(i, t, x_t, x0)`` sees every step.
    """
    tiling, execution = T.build(model.config, tiling), execution or Execution()
    _check_arguments(n, sampler, eta)
    execution.check("sample", model)
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    ts = timesteps_for(sampler, schedule.timesteps, steps)
    x = _initial_noise(model, n, x_T, generator, device)
    was_training = model.training
    model.eval()
    try:
        for i, t in enumerate(tqdm(ts, desc=f"{sampler} sampling", disable=not progress, leave=False)):
            t_batch = torch.full((n,), t, device=device, dtype=torch.long)
            eps = tiling.predict(model, schedule, x, t_batch, i, execution)
            x0_raw = S.predict_x0(schedule, x, t_batch, eps)
            x0 = x0_raw.clamp(-1.0, 1.0)
            if callback is not None:
                callback(i, t, x, x0)
            if sampler == "ddpm":
                x = ddpm_step(schedule, x, x0, t_batch, generator)
            else:
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                # The noise consistent with the clipped x0, written as a correction of the model's
                # noise that is exactly zero where nothing was clipped (no round-off amplification
                # by 1/sqrt(1 - abar_t) at small t).
                a_t = float(schedule.alphas_cumprod[t])
                eps = eps + (a_t / (1.0 - a_t)) ** 0.5 * (x0_raw - x0)
                x = ddim_step(schedule, x0, eps, t, t_prev, eta, generator)
    finally:
        model.train(was_training)
    return x.clamp_(-1.0, 1.0)


def _check_arguments(n, sampler: str, eta: float) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to DDIM only; ancestral DDPM has its own fixed variance")


def _initial_noise(model: PatchUNet, n: int, x_T: torch.Tensor | None, generator, device) -> torch.Tensor:
    """x_T [n x C x H x W]: drawn from ``generator``, or a float32 copy of the one given."""
    shape = (n, model.channels, model.image_size, model.image_size)
    if x_T is None:
        return torch.randn(shape, generator=generator, device=device)
    if tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {list(shape)}, got {list(x_T.shape)}")
    return x_T.to(device=device, dtype=torch.float32).clone()


def ddpm_step(schedule: S.Schedule, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
    """One ancestral step: sample x_{t-1} ~ q(x_{t-1} | x_t, x0); no noise is added at t = 0."""
    mean, _, log_var = S.posterior(schedule, x0, x, t)
    if int(t[0]) == 0:
        return mean
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return mean + (0.5 * log_var).exp() * noise


def ddim_step(schedule: S.Schedule, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int,
              eta: float, generator: torch.Generator | None) -> torch.Tensor:
    """One DDIM step from t to t_prev (-1: the clean image) given x0 and the noise consistent with it.

    Song et al. (2021), eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
    """
    if t_prev < 0:
        return x0
    abar = schedule.alphas_cumprod
    a_t, a_prev = float(abar[t]), float(abar[t_prev])
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    out = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        out = out + sigma * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return out
