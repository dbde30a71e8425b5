"""Denoising trajectories: every step of a sampling run, recorded through the sampler's callback."""

from dataclasses import dataclass

import torch

from .runtime import make_generator
from .sampling import sample


@dataclass(frozen=True)
class Trajectory:
    """The frames of one sampling run of ``n`` images, noisiest first, the finished images last.

    ``x_t``: [S+1 x n x C x H x W], the noisy images each step starts from, then the result;
    ``x0``: [S+1 x n x C x H x W], the clipped prediction of the clean images at each step, then the
    result; ``timesteps``: S+1 ints (the last one -1, the finished images). All on the CPU, in [-1, 1].
    """

    x_t: torch.Tensor
    x0: torch.Tensor
    timesteps: tuple[int, ...]

    @property
    def frames(self) -> int:
        return self.x_t.shape[0]

    @property
    def images(self) -> torch.Tensor:
        """The finished images [n x C x H x W]."""
        return self.x_t[-1]

    def pick(self, count: int) -> list[int]:
        """``count`` frame indices evenly spaced from the first to the last frame."""
        count = max(1, min(count, self.frames))
        if count == 1:
            return [self.frames - 1]
        return sorted({round(i * (self.frames - 1) / (count - 1)) for i in range(count)})


def record(model, schedule, n: int, *, steps: int, seed: int = 0, eta: float = 0.0, tiling=None,
           execution=None) -> Trajectory:
    """Sample ``n`` images with DDIM (``steps`` steps, ``eta``) from ``make_generator(seed)`` noise
    and keep every step (see :class:`Trajectory`); the same seed gives every model the same noise.
    ``tiling`` and ``execution`` as in :func:`patchlab.sampling.sample` (None: the model's own tiling, one
    patch per pass)."""
    device = next(model.parameters()).device
    xs, x0s, ts = [], [], []

    def keep(i, t, x_t, x0):
        xs.append(x_t.detach().cpu().clone())
        x0s.append(x0.detach().cpu().clone())
        ts.append(int(t))

    final = sample(model, schedule, n, sampler="ddim", steps=min(steps, schedule.timesteps), eta=eta, tiling=tiling,
                   execution=execution, generator=make_generator(seed, device), callback=keep).cpu()
    return Trajectory(torch.stack(xs + [final]), torch.stack(x0s + [final]), tuple(ts + [-1]))
