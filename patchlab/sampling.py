"""Stateless samplers over a denoiser: ancestral DDPM, DDIM, Heun (EDM) and DPM-Solver++(2M).

Every sampler is one function of one signature (k-diffusion's style)::

    x = heun(denoise, x_T, timesteps, schedule, generator=g, callback=cb)

``denoise(x_t, t)`` -> :class:`Denoised` (the clipped x0 and the noise consistent with it) hides what the
model predicts (:mod:`patchlab.objective`), what a step computes (the tiling, :mod:`patchlab.tiling`: the
fixed grid or a seam remedy) and how it runs (the execution: patches per pass, precision, fast path), so a
new sampler is one function that works with all of them. All loop state is local; randomness comes only
from the ``generator`` passed in, so the same seed gives the same images whatever the execution.
:func:`sample` builds the denoiser for a model and runs a sampler chosen by name (:data:`SAMPLERS`).
"""

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import schedule as S
from . import tiling as T
from .execution import Execution
from .model import PatchUNet

# callback(i, t, x_t, x0): step index i (0 first), timestep t (int), the current noisy images
# [n x C x H x W] and the clipped x0 prediction at this step [n x C x H x W].
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Denoised:
    """What a denoiser says about x_t [n x C x H x W] at one timestep: ``x0`` clipped to [-1, 1] and ``eps``,
    the noise consistent with that clipped x0 (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps)."""

    x0: torch.Tensor
    eps: torch.Tensor


Denoiser = Callable[[torch.Tensor, int], Denoised]


def _abar(schedule: S.Schedule, t: int) -> float:
    """alpha-bar at timestep t (-1: the clean image, 1)."""
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def _toward(x0: torch.Tensor, eps: torch.Tensor, a_prev: float) -> torch.Tensor:
    """sqrt(a') x0 + sqrt(1 - a') eps: the deterministic (DDIM) step to alpha-bar a'."""
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def _steps(ts: list[int]):
    """(i, t, t_prev) along the visited timesteps; t_prev = -1 after the last (the clean image)."""
    return ((i, t, ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts))


def ddpm(denoise: Denoiser, x: torch.Tensor, ts: list[int], schedule: S.Schedule, *,
         generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al., 2020): x_{t-1} ~ q(x_{t-1} | x_t, x0) at every one of the T steps."""
    for i, t, _ in _steps(ts):
        d = denoise(x, t)
        if callback is not None:
            callback(i, t, x, d.x0)
        x = ddpm_step(schedule, x, d.x0, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), generator)
    return x


def ddim(denoise: Denoiser, x: torch.Tensor, ts: list[int], schedule: S.Schedule, *,
         generator: torch.Generator | None = None, callback: Callback | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al., 2021) over the visited timesteps; ``eta`` = 0 deterministic, 1 DDPM-like noise."""
    for i, t, t_prev in _steps(ts):
        d = denoise(x, t)
        if callback is not None:
            callback(i, t, x, d.x0)
        x = ddim_step(schedule, d.x0, d.eps, t, t_prev, eta, generator)
    return x


def heun(denoise: Denoiser, x: torch.Tensor, ts: list[int], schedule: S.Schedule, *,
         generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al., 2022, Algorithm 1 without churn) on the probability-flow ODE,
    written for the clean-image prediction D in the exponential-integrator form (Lu et al., 2022): with
    x~ = x / sqrt(abar), sigma = sqrt((1 - abar) / abar) and h = log(sigma / sigma'), exactly
    x~' = (sigma'/sigma) x~ + integral of D, here with D linear between its values at both ends of the step.
    The predictor is DDIM's step; its end's D corrects it, except into the clean image (2 steps - 1
    evaluations). (EDM's trapezoid on the slope eps in sigma diverges across this schedule's sigma range,
    about 2e4 down to 0.006; this form keeps every coefficient in [0, 1].)"""
    for i, t, t_prev in _steps(ts):
        d = denoise(x, t)
        if callback is not None:
            callback(i, t, x, d.x0)
        a, a_prev = _abar(schedule, t), _abar(schedule, t_prev)
        euler = _toward(d.x0, d.eps, a_prev)
        if t_prev < 0:
            x = euler
            continue
        ratio = ((1 - a_prev) * a / ((1 - a) * a_prev)) ** 0.5  # sigma' / sigma = exp(-h)
        weight = 1 - (1 - ratio) / -math.log(ratio)  # of D' - D: the integral of a linear D
        x = euler + a_prev ** 0.5 * weight * (denoise(euler, t_prev).x0 - d.x0)
    return x


def dpmpp_2m(denoise: Denoiser, x: torch.Tensor, ts: list[int], schedule: S.Schedule, *,
             generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022): a DDIM step whose x0 is extrapolated linearly in the log-SNR
    lambda = log(sqrt(abar / (1 - abar))) from this step's and the previous step's x0 (the first step, and
    the last into the clean image, are DDIM's). One evaluation per step."""
    previous = None  # (x0, lambda) of the previous step
    for i, t, t_prev in _steps(ts):
        d = denoise(x, t)
        if callback is not None:
            callback(i, t, x, d.x0)
        a, a_prev = _abar(schedule, t), _abar(schedule, t_prev)
        lam = 0.5 * math.log(a / (1 - a))
        x0 = d.x0
        if previous is not None and t_prev >= 0:
            h = 0.5 * math.log(a_prev / (1 - a_prev)) - lam
            r = (lam - previous[1]) / h
            x0 = (1 + 1 / (2 * r)) * d.x0 - (1 / (2 * r)) * previous[0]
        previous = (d.x0, lam)
        x = x0 if t_prev < 0 else _toward(x0, (x - a ** 0.5 * x0) / (1 - a) ** 0.5, a_prev)
    return x


@dataclass(frozen=True)
class Sampler:
    """A sampler by name: its function, whether it visits all T steps (ancestral DDPM) or takes ``eta``, and
    how many denoiser evaluations a run of ``steps`` steps makes."""

    name: str
    run: Callable
    doc: str
    all_steps: bool = False
    takes_eta: bool = False
    second_order: bool = False

    def evaluations(self, steps: int) -> int:
        """Denoiser (UNet) evaluations per image for ``steps`` visited timesteps."""
        return 2 * steps - 1 if self.second_order else steps


_SAMPLERS = {s.name: s for s in (
    Sampler("ddpm", ddpm, "ancestral DDPM, all T steps", all_steps=True),
    Sampler("ddim", ddim, "DDIM (eta: stochasticity, 0 deterministic)", takes_eta=True),
    Sampler("heun", heun, "Heun, second order (2 x steps - 1 evaluations)", second_order=True),
    Sampler("dpmpp_2m", dpmpp_2m, "DPM-Solver++(2M), second order, one evaluation per step"),
)}
SAMPLERS = tuple(_SAMPLERS)  # the choices of --sampler


def get_sampler(name: "str | Sampler") -> Sampler:
    """The :class:`Sampler` called ``name`` (one of :data:`SAMPLERS`)."""
    if isinstance(name, Sampler):
        return name
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(map(repr, SAMPLERS))}")
    return _SAMPLERS[name]


def _uniform(total: int, steps: int) -> torch.Tensor:
    return torch.linspace(total - 1, 0, steps, dtype=torch.float64)


def _quadratic(total: int, steps: int) -> torch.Tensor:
    return torch.linspace(1, 0, steps, dtype=torch.float64) ** 2 * (total - 1)


# How the visited timesteps are spaced from T-1 down to 0: evenly (DDIM's, the default), or quadratically (Song
# et al.'s "quad": denser at the clean end, where this schedule's log-SNR moves fastest).
SPACINGS = {"uniform": _uniform, "quadratic": _quadratic}


def timesteps_for(sampler: "str | Sampler", total: int, steps: int | None, spacing: str = "uniform") -> list[int]:
    """The timesteps a sampler visits, from noisiest to cleanest.

    ``ddpm`` visits all ``total`` steps; the others ``steps`` ones (default all) spaced as ``spacing`` says
    (:data:`SPACINGS`: ``"uniform"``, DDIM's, or ``"quadratic"``), rounded (steps that round to the same
    timestep are visited once).
    """
    sampler = get_sampler(sampler)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(map(repr, SPACINGS))}")
    if sampler.all_steps:
        if steps not in (None, total):
            raise ValueError(f"ancestral DDPM runs all T={total} steps (got steps={steps}); "
                             f"use sampler='ddim' (eta=1.0 for a stochastic sampler) to take fewer")
        return list(range(total - 1, -1, -1))
    steps = total if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= total:
        raise ValueError(f"{sampler.name} steps must be an integer in [1, T={total}], got {steps!r}")
    # From T-1 down to 0 (a single step starts, and ends, at T-1).
    grid = SPACINGS[spacing](total, steps).round().long() if steps > 1 else torch.tensor([total - 1])
    return sorted(set(grid.tolist()), reverse=True)


def denoiser(model: PatchUNet, schedule: S.Schedule, tiling: T.Tiling, execution: Execution) -> Denoiser:
    """The denoiser of ``model`` for one sampling run: each call runs one step of ``tiling`` (its k-th call is
    the tiling's step k) as ``execution`` says, turns the model's output into noise and clips x0 to [-1, 1]."""
    calls = itertools.count()

    def denoise(x: torch.Tensor, t: int) -> Denoised:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = tiling.predict(model, schedule, x, t_batch, next(calls), execution)
        x0_raw = S.predict_x0(schedule, x, t_batch, eps)
        x0 = x0_raw.clamp(-1.0, 1.0)
        # The noise consistent with the clipped x0, written as a correction of the model's noise that is
        # exactly zero where nothing was clipped (no round-off amplification by 1/sqrt(1 - abar_t) at small t).
        a_t = float(schedule.alphas_cumprod[t])
        return Denoised(x0, eps + (a_t / (1.0 - a_t)) ** 0.5 * (x0_raw - x0))

    return denoise


@torch.no_grad()
def sample(model: PatchUNet, schedule: S.Schedule, n: int, *, sampler: "str | Sampler" = "ddpm",
           steps: int | None = None, eta: float = 0.0, spacing: str = "uniform", tiling: "T.Tiling | str | None" = None,
           execution: Execution | None = None, generator: torch.Generator | None = None,
           callback: Callback | None = None, x_T: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Generate ``n`` images [n x C x H x W] in [-1, 1].

    sampler: one of :data:`SAMPLERS`: ``"ddpm"`` (ancestral, all T steps), ``"ddim"`` (``steps`` steps,
    stochasticity ``eta``; eta=0 is deterministic), ``"heun"`` or ``"dpmpp_2m"`` (second order, ``steps``
    steps), the timesteps spaced as ``spacing`` says (:func:`timesteps_for`). x0 is clipped to [-1, 1] at every
    evaluation. Whatever the model predicts (its ``prediction``)
    the samplers see its noise and x0.
    ``tiling``: what each step computes (:mod:`patchlab.tiling`): a :class:`patchlab.tiling.Tiling`, the
    name of one (``"grid"``, the paper's fixed grid; the seam remedies ``"shifted"``, ``"overlap"``,
    ``"global"``), or None: the model's own (:func:`patchlab.tiling.for_model`). ``execution``: how each step
    runs (:class:`patchlab.execution.Execution`: patches per pass, precision, fast path; default one patch
    per pass in fp32); it never changes the images beyond round-off. ``generator`` (on the model's device)
    drives all noise; ``x_T`` replaces the initial noise. ``callback(i, t, x_t, x0)`` sees every step.
    """
    tiling, execution, chosen = T.build(model.config, tiling), execution or Execution(), get_sampler(sampler)
    _check_arguments(n, chosen, eta)
    execution.check("sample", model)
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    ts = timesteps_for(chosen, schedule.timesteps, steps, spacing)
    x = _initial_noise(model, n, x_T, generator, device)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(ts), desc=f"{chosen.name} sampling", disable=not progress, leave=False)

    def observe(i, t, x_t, x0):
        bar.update(1)
        if callback is not None:
            callback(i, t, x_t, x0)

    try:
        options = {"eta": eta} if chosen.takes_eta else {}
        x = chosen.run(denoiser(model, schedule, tiling, execution), x, ts, schedule, generator=generator,
                       callback=observe, **options)
    finally:
        bar.close()
        model.train(was_training)
    return x.clamp_(-1.0, 1.0)


def _check_arguments(n, sampler: Sampler, eta: float) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if not sampler.takes_eta and eta != 0.0:
        raise ValueError(f"eta applies to DDIM only; {sampler.doc} has no eta")


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
