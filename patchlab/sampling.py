"""Stateless samplers: ancestral DDPM and DDIM, running the UNet patch by patch.

All loop state is local; randomness comes only from the ``generator`` passed in, so the same
generator seed gives the same images whatever the patch mode (the patch mode only changes how many
patches go through the UNet per pass, never the noise that is drawn).
"""

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from . import config as C
from . import patches as P
from . import schedule as S
from .model import PatchUNet, predict_noise, predict_noise_global
from .runtime import autocast

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
def sample(model: PatchUNet, schedule: S.Schedule, n: int, *, sampler: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, patch_mode="sequential",
           generator: torch.Generator | None = None, callback: Callback | None = None,
           x_T: torch.Tensor | None = None, precision: str = "fp32", progress: bool = False,
           unet=None, windows: str | None = None, global_until: float | None = None) -> torch.Tensor:
    """Generate ``n`` images [n x C x H x W] in [-1, 1].

    sampler: ``"ddpm"`` (ancestral, all T steps) or ``"ddim"`` (``steps`` steps, stochasticity
    ``eta``; eta=0 is deterministic). x0 is clipped to [-1, 1] at every step. ``patch_mode`` as in
    :func:`patchlab.model.predict_noise`. ``generator`` (on the model's device) drives all noise;
    ``x_T`` replaces the initial noise. ``precision="bf16"`` runs the UNet under bf16 autocast;
    ``"bf16-weights"`` too, with the model's weights stored in bf16 (:func:`patchlab.accel.cast_weights`,
    or ``load_run(..., precision="bf16-weights")``): half their memory.
    ``unet``: runs each UNet pass instead of ``model`` (e.g. :func:`patchlab.accel.cuda_graph_unet`).
    ``windows``: where the patches are at each step (:func:`patchlab.patches.step_windows`): ``"grid"``,
    the fixed N x N grid (the paper); the seam remedies, for models trained with ``coords=True``:
    ``"shifted"``, the grid moved by half a patch at every other step (so no border stays in place), and
    ``"overlap"``, windows every half patch blended with tent weights (one patch per UNet pass either way);
    and for models trained with ``global_view`` > 0, ``"global"``: coarse to fine, the global view (the
    whole image pooled to one patch, :func:`patchlab.model.predict_noise_global`) denoises every step
    whose timestep is at least ``global_until`` * T (a fraction of T), where the layout is decided, and
    overlapping windows the others, where the details are. A model whose windows learnt only the fine
    steps (``window_until`` < 1) samples with ``"global"`` and ``global_until`` <= its ``window_until``.
    Not given (None): the model's own, :func:`window_options` (the grid; 0.05 T for the hand-over).
    """
    windows, global_until = window_options(model.config, windows, global_until).values()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to DDIM only; ancestral DDPM has its own fixed variance")
    if windows not in P.WINDOW_KINDS:
        raise ValueError(f"windows must be one of {', '.join(map(repr, P.WINDOW_KINDS))}, got {windows!r}")
    if windows != "grid" and not model.coords:
        raise ValueError(f"windows={windows!r} moves the patches off the fixed grid: it needs a model trained with "
                         f"coords=True (continuous window coordinates); this one knows only its N x N grid")
    if windows == "global" and not model.global_view:
        raise ValueError("windows='global' denoises the noisy steps from the global view: it needs a model "
                         "trained with global_view > 0")
    if isinstance(global_until, bool) or not isinstance(global_until, (int, float)) or not 0 <= global_until <= 1:
        raise ValueError(f"global_until is a fraction of the diffusion's T in [0, 1], got {global_until!r}")
    until = model.config.window_until
    if until < 1 and (windows != "global" or global_until > until):
        raise ValueError(f"this model's windows learnt only the fine steps (timesteps below window_until = {until} "
                         f"of T): sample it with windows='global' and global_until <= {until} (the global view "
                         f"denoises the others); got windows={windows!r}, global_until={global_until}")
    device = next(model.parameters()).device
    if precision not in C.SAMPLE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, C.SAMPLE_PRECISIONS))}, got {precision!r}")
    if precision == "bf16-weights" and any(p.dtype != torch.bfloat16 for p in model.parameters()):
        raise ValueError("precision='bf16-weights' samples with weights stored in bf16: cast them first "
                         "(patchlab.accel.cast_weights(model), or load_run(..., precision='bf16-weights'))")
    schedule = schedule.to(device)
    ts = timesteps_for(sampler, schedule.timesteps, steps)
    shape = (n, model.channels, model.image_size, model.image_size)
    if x_T is None:
        x = torch.randn(shape, generator=generator, device=device)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {list(shape)}, got {list(x_T.shape)}")
        x = x_T.to(device=device, dtype=torch.float32).clone()
    was_training = model.training
    model.eval()
    try:
        for i, t in enumerate(tqdm(ts, desc=f"{sampler} sampling", disable=not progress, leave=False)):
            t_batch = torch.full((n,), t, device=device, dtype=torch.long)
            with autocast(precision, device):
                if P.uses_global_view(windows, t, schedule.timesteps, global_until):
                    eps = predict_noise_global(model, schedule, x, t_batch, unet=unet).float()
                else:
                    origins = None if windows == "grid" else P.step_windows(windows, model.image_size,
                                                                            model.patches, i)
                    eps = predict_noise(model, x, t_batch, patch_mode=patch_mode, unet=unet,
                                        windows=origins).float()
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


def window_options(model_cfg: C.ModelConfig, windows: str | None = None, global_until: float | None = None) -> dict:
    """``windows`` and ``global_until`` for :func:`sample`: those given, the others the model's own: the
    fixed grid, or coarse to fine (``"global"``) for a model whose windows learnt only the fine steps
    (``window_until`` < 1); the hand-over at the smaller of :data:`patchlab.patches.GLOBAL_UNTIL` and its
    ``window_until``."""
    until = model_cfg.window_until
    return {"windows": windows or ("global" if until < 1 else "grid"),
            "global_until": min(P.GLOBAL_UNTIL, until) if global_until is None else global_until}


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
