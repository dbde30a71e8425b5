"""Sliced Wasserstein distance of Laplacian-pyramid descriptors (Karras et al. 2018, Progressive GAN)."""

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..runtime import make_generator
from .images import check_pair
from .uncertainty import LEVEL, Interval, bootstrap, one_thread

BOOTSTRAP_PROJECTIONS = 16 * 256 * 128  # directions x descriptors one resample of an SWD interval projects
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
_GAUSS = (_BINOMIAL[:, None] * _BINOMIAL[None, :] / 256.0).float()  # 5 x 5, sums to 1


def _blur(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    kernel = _GAUSS.to(x)[None, None].expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=channels)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid as in Karras et al.'s SWD code (cv2.pyrDown/pyrUp with a 5x5 binomial filter).

    [B x C x H x W] -> ``levels`` tensors [B x C x H/2^l x W/2^l]; the last one is the coarsest
    Gaussian level, the others are band-pass differences.
    """
    out = [images.float()]
    for _ in range(1, levels):
        down = _blur(out[-1])[..., ::2, ::2]
        up = torch.zeros(*down.shape[:2], down.shape[2] * 2, down.shape[3] * 2, dtype=down.dtype, device=down.device)
        up[..., ::2, ::2] = down
        out[-1] = out[-1] - 4.0 * _blur(up)[..., :out[-1].shape[2], :out[-1].shape[3]]
        out.append(down)
    return out


def _resolutions(size: int, min_resolution: int) -> list[int]:
    out, r = [], size
    while r >= min_resolution:
        out.append(r)
        r //= 2
    return out or [size]


def _descriptors(images: torch.Tensor, levels: int, per_image: int, patch: int, generator: torch.Generator,
                 batch_size: int, progress: bool) -> list[torch.Tensor]:
    """Random ``patch`` x ``patch`` neighbourhoods of every pyramid level, not yet normalised: per level
    [B*per_image x patch x patch x C], the rows of image i at i*per_image .. (i+1)*per_image - 1."""
    chunks: list[list[torch.Tensor]] = [[] for _ in range(levels)]
    ar = torch.arange(patch)
    for batch in tqdm(images.split(batch_size), desc="SWD descriptors", disable=not progress, leave=False):
        for level, band in enumerate(laplacian_pyramid(batch, levels)):
            b, c, h, w = band.shape
            rows = torch.randint(0, h - patch + 1, (b, per_image), generator=generator)
            cols = torch.randint(0, w - patch + 1, (b, per_image), generator=generator)
            idx_b = torch.arange(b)[:, None, None, None]
            idx_r = (rows[:, :, None, None] + ar[None, None, :, None])
            idx_c = (cols[:, :, None, None] + ar[None, None, None, :])
            desc = band.permute(0, 2, 3, 1)[idx_b, idx_r, idx_c]  # [b x per_image x patch x patch x C]
            chunks[level].append(desc.reshape(b * per_image, patch, patch, c))
    return [torch.cat(parts) for parts in chunks]


def _normalised(desc: torch.Tensor) -> torch.Tensor:
    """Descriptors [n x patch x patch x C] normalised per channel by the set's own mean and std, as in the
    reference implementation, and flattened channel first: [n x C*patch*patch]."""
    desc = (desc - desc.mean(dim=(0, 1, 2))) / desc.std(dim=(0, 1, 2), unbiased=False).clamp_min(1e-8)
    return desc.permute(0, 3, 1, 2).reshape(desc.shape[0], -1)


def _quantiles(sorted_values: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced quantiles (linear interpolation) of rows sorted along dim 1."""
    n = sorted_values.shape[1]
    if n == count:
        return sorted_values
    pos = ((torch.arange(count, dtype=torch.float64) + 0.5) / count * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo).to(sorted_values.dtype)
    return sorted_values[:, lo] * (1 - frac) + sorted_values[:, hi] * frac


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """``x.sort(dim=1).values`` of a CPU tensor, through NumPy (about 3x faster than torch's CPU sort)."""
    return torch.from_numpy(np.sort(x.numpy(), axis=1))


def _sliced_distance(a: torch.Tensor, b: torch.Tensor, directions: int, generator: torch.Generator,
                     chunk: int = 128) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections of a and b."""
    dim, count, total, done = a.shape[1], min(a.shape[0], b.shape[0]), 0.0, 0
    while done < directions:
        k = min(chunk, directions - done)
        dirs = torch.randn(k, dim, generator=generator)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        pa = _quantiles(_sort_rows(dirs @ a.T), count)  # [k x count]
        pb = _quantiles(_sort_rows(dirs @ b.T), count)
        total += float((pa - pb).abs().mean(dim=1).sum())
        done += k
    return total / directions


def swd_per_level(real: torch.Tensor, fake: torch.Tensor, *, generator: torch.Generator | None = None,
                  descriptors_per_image: int = 128, directions: int = 512, min_resolution: int = 16,
                  patch: int = 7, batch_size: int = 256, progress: bool = False) -> dict[int, float]:
    """Sliced Wasserstein distance x 1e3 per Laplacian-pyramid level: {resolution: SWD}.

    Karras et al. (2018), Progressive GAN, appendix D: a Laplacian pyramid of each image down to
    ``min_resolution`` pixels (16; images smaller than that form a single level at their own size);
    ``descriptors_per_image`` random ``patch`` x ``patch`` neighbourhoods per image and level; each
    set normalised per channel by its own mean and standard deviation; projected on ``directions``
    random unit directions; the projections sorted and the mean absolute difference averaged over
    directions. Sets of different size are compared at evenly spaced quantiles. Multiplied by 1e3,
    as the paper reports it. All randomness comes from ``generator`` (default: seed 0), drawn in a
    fixed order (real descriptors, fake descriptors, directions), so the result is a function of it.
    ``real`` and ``fake``: [B x C x H x W] in [-1, 1] of the same C, H, W.
    """
    return _swd(real, fake, generator=generator or make_generator(0), descriptors_per_image=descriptors_per_image,
                directions=directions, min_resolution=min_resolution, patch=patch, batch_size=batch_size,
                progress=progress)[0]


def _swd(real, fake, *, generator, descriptors_per_image, directions, min_resolution, patch, batch_size, progress):
    """({resolution: SWD x 1e3}, the raw fake descriptors per level) of :func:`swd_per_level`."""
    real, fake = check_pair(real, fake)
    if min(real.shape[-2:]) < patch:
        raise ValueError(f"images of {list(real.shape[-2:])} pixels are smaller than the {patch} x {patch} descriptors")
    resolutions = _resolutions(min(real.shape[-2:]), min_resolution)
    desc_real = _descriptors(real, len(resolutions), descriptors_per_image, patch, generator, batch_size, progress)
    desc_fake = _descriptors(fake, len(resolutions), descriptors_per_image, patch, generator, batch_size, progress)
    desc_real = [_normalised(a) for a in desc_real]
    levels = {res: 1e3 * _sliced_distance(a, _normalised(b), directions, generator)
              for res, a, b in zip(resolutions, desc_real, desc_fake)}
    return levels, desc_real, desc_fake


def sliced_wasserstein(real: torch.Tensor, fake: torch.Tensor, *, generator: torch.Generator | None = None,
                       **kwargs) -> float:
    """SWD x 1e3 averaged over pyramid levels (the paper's "SWD avg"); see :func:`swd_per_level`."""
    levels = swd_per_level(real, fake, generator=generator, **kwargs)
    return sum(levels.values()) / len(levels)


def sliced_wasserstein_interval(real: torch.Tensor, fake: torch.Tensor, indices: torch.Tensor, *,
                                generator: torch.Generator | None = None, level: float = LEVEL,
                                bootstrap_directions: int | None = None, descriptors_per_image: int = 128,
                                directions: int = 512, min_resolution: int = 16, patch: int = 7,
                                batch_size: int = 256, progress: bool = False) -> tuple[float, Interval]:
    """(:func:`sliced_wasserstein`, its bootstrap interval over the fake images): the same value from the same
    ``generator`` draws, then the interval over the image index sets ``indices`` [R x B_fake]
    (:func:`patchlab.metrics.uncertainty.resample`).

    A resample takes every descriptor of each image it draws (with repeats), normalises the set by its own
    mean and std again, and measures its SWD against the fixed real descriptors on ``bootstrap_directions``
    directions (drawn from ``generator`` after the value's own draws) instead of ``directions``: a resample
    re-sorts every projection, so this keeps R resamples within seconds. By default as many directions as
    project :data:`BOOTSTRAP_PROJECTIONS` descriptors, between 4 and 16 (16 for 256 images): the width of
    the interval hardly depends on them (the images' spread dominates). The interval is the re-centred
    percentile interval (:func:`patchlab.metrics.uncertainty.bootstrap`), so the fewer directions set its
    width, not its place.
    """
    generator = generator or make_generator(0)
    levels, desc_real, desc_fake = _swd(real, fake, generator=generator, descriptors_per_image=descriptors_per_image,
                                        directions=directions, min_resolution=min_resolution, patch=patch,
                                        batch_size=batch_size, progress=progress)
    value = sum(levels.values()) / len(levels)
    if bootstrap_directions is None:
        bootstrap_directions = min(16, max(4, BOOTSTRAP_PROJECTIONS // desc_fake[0].shape[0]))
    with one_thread():
        parts = [_ResampledLevel(a, b, fake.shape[0], bootstrap_directions, generator)
                 for a, b in zip(desc_real, desc_fake)]
    interval = bootstrap(lambda idx: sum(p(idx) for p in parts) / len(parts), indices, level=level, estimate=value)
    return value, interval


class _ResampledLevel:
    """One pyramid level's SWD x 1e3 of resampled fake images against the fixed real descriptors, on
    ``directions`` random unit directions. The projections are computed once per channel, so that a resample
    only gathers rows: for the descriptors ``x`` of a channel c, normalised by the resample's mean ``m_c``
    and std ``s_c``, ``u . (x - m_c) / s_c = (u . x - m_c sum(u)) / s_c``. A resample runs in NumPy (one
    thread: many small steps, which torch's thread pool slows down on a busy machine)."""

    def __init__(self, real: torch.Tensor, fake: torch.Tensor, images: int, directions: int,
                 generator: torch.Generator):
        n, patch, _, channels = fake.shape  # raw descriptors [B*per_image x patch x patch x C]
        self.per_image, self.count = n // images, min(real.shape[0], n)
        dirs = torch.randn(directions, real.shape[1], generator=generator)
        dirs = (dirs / dirs.norm(dim=1, keepdim=True)).view(directions, channels, patch * patch)
        x = fake.permute(0, 3, 1, 2).reshape(n, channels, patch * patch)  # channel first, as _normalised
        self.real = _quantiles(_sort_rows(dirs.flatten(1) @ real.T), self.count).numpy()  # [D x count]
        self.projected = torch.einsum("dcq,ncq->cdn", dirs, x).numpy()  # [C x D x n]
        self.dir_sums = dirs.sum(dim=2).T[:, :, None].numpy()  # [C x D x 1]
        per_channel = x.double().view(images, self.per_image, channels, -1)
        self.sums = per_channel.sum(dim=(1, 3)).numpy()  # [B x C]: each image's descriptor sum per channel
        self.squares = per_channel.square().sum(dim=(1, 3)).numpy()
        self.values_per_image = self.per_image * patch * patch

    def __call__(self, indices: torch.Tensor) -> float:
        idx = indices.numpy()
        rows = (idx[:, None] * self.per_image + np.arange(self.per_image)).ravel()
        total = len(idx) * self.values_per_image
        mean = self.sums[idx].sum(axis=0) / total  # [C]
        std = np.maximum(np.sqrt(np.maximum(self.squares[idx].sum(axis=0) / total - mean ** 2, 0)), 1e-8)
        proj = self.projected[:, :, rows]  # [C x D x n]
        proj = ((proj - (mean[:, None, None] * self.dir_sums).astype(np.float32))
                * (1 / std).astype(np.float32)[:, None, None]).sum(axis=0)
        proj.sort(axis=1)
        fake = _quantiles(torch.from_numpy(proj), self.count).numpy()
        return 1e3 * float(np.abs(fake - self.real).mean())
