"""Datasets and the deterministic, resumable order in which training reads them.

Built-in, offline: ``"shapes"``, procedural images of one coloured object (disk, square or diamond)
on a smooth background. The object is large and centred near the middle, so it always crosses patch
borders: a patch model can only draw it right if colour and outline agree across patches, which is
what position conditioning and GCC are for. Every image is rendered from its index alone, and
:meth:`ShapesDataset.describe` gives its ground truth (shape, colour, centre, radius).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.data import Dataset, Sampler

from .runtime import derived_seed, make_generator

SHAPES = ("disk", "square", "diamond")
BUILTINS = ("shapes",)


@dataclass(frozen=True)
class ShapeInfo:
    """Ground truth of one procedural image."""

    shape: str
    color: tuple[float, float, float]  # RGB in [0, 1]
    center: tuple[float, float]  # (row, col) in pixels
    radius: float  # in pixels


class ShapesDataset(Dataset):
    """``size`` procedural images [C x H x W] in [-1, 1], rendered on the fly from their index."""

    def __init__(self, *, image_size: int, channels: int = 3, size: int = 10000, seed: int = 0):
        if channels not in (1, 3):
            raise ValueError(f"the shapes dataset renders 1 or 3 channels, got {channels}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels for the shapes dataset, got {image_size}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.image_size, self.channels, self.size, self.seed = image_size, channels, size, seed

    def __len__(self) -> int:
        return self.size

    def _params(self, index: int) -> tuple[ShapeInfo, torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        g = make_generator(derived_seed(self.seed, index))
        u = torch.rand(10, generator=g, dtype=torch.float64).tolist()
        s = self.image_size
        shape = SHAPES[int(u[0] * len(SHAPES)) % len(SHAPES)]
        color = _hsv_to_rgb(u[1], 0.65 + 0.35 * u[2], 0.75 + 0.25 * u[3])
        center = (s * (0.5 + 0.16 * (u[4] - 0.5)), s * (0.5 + 0.16 * (u[5] - 0.5)))
        radius = s * (0.22 + 0.14 * u[6])
        top = torch.tensor(_hsv_to_rgb(u[7], 0.4, 0.15 + 0.25 * u[8]), dtype=torch.float32)
        bottom = top * (0.4 + 0.5 * u[9])
        return ShapeInfo(shape, color, center, radius), top, bottom

    def describe(self, index: int) -> ShapeInfo:
        """Ground truth of image ``index``."""
        return self._params(index)[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        info, top, bottom = self._params(int(index))
        s = self.image_size
        coords = torch.arange(s, dtype=torch.float32) + 0.5
        rows, cols = coords[:, None].expand(s, s), coords[None, :].expand(s, s)
        dy, dx = rows - info.center[0], cols - info.center[1]
        if info.shape == "disk":
            dist = torch.sqrt(dx ** 2 + dy ** 2)
        elif info.shape == "square":
            dist = torch.maximum(dx.abs(), dy.abs()) / 0.85
        else:
            dist = (dx.abs() + dy.abs()) / 1.25
        alpha = ((info.radius - dist) + 0.5).clamp(0.0, 1.0)  # one-pixel anti-aliased edge
        frac = (rows / s)[None]
        background = top[:, None, None] * (1 - frac) + bottom[:, None, None] * frac
        color = torch.tensor(info.color, dtype=torch.float32)[:, None, None]
        image = background * (1 - alpha) + color * alpha  # [3 x s x s] in [0, 1]
        if self.channels == 1:
            image = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        return image * 2.0 - 1.0


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def make_dataset(name: str, root: str | None = None, *, image_size: int, channels: int = 3,
                 split: str = "train", size: int = 10000, seed: int = 0) -> Dataset:
    """A dataset of [C x H x W] tensors in [-1, 1].

    ``name``: a built-in (``"shapes"``; ``size`` images, ``seed`` picks them; ``split="test"`` gives
    images disjoint from ``"train"``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "shapes":
        return ShapesDataset(image_size=image_size, channels=channels, size=size,
                             seed=derived_seed(seed, 0 if split == "train" else 1))
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(BUILTINS)}")


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for steps ``start .. stop-1``, a pure function of (seed, step).

    Each epoch is a fresh permutation drawn from ``seed`` and the epoch number; step ``s`` takes the
    ``batch_size`` indices at positions ``s*batch_size ...`` of the concatenated epochs. A resumed run
    therefore reads exactly the batches an uninterrupted one would, with no state to save.
    """

    def __init__(self, length: int, batch_size: int, *, seed: int, start: int = 0, stop: int):
        if length < 1:
            raise ValueError("cannot sample batches from an empty dataset")
        self.length, self.batch_size, self.seed, self.start, self.stop = length, batch_size, seed, start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.indices(step)

    def indices(self, step: int) -> list[int]:
        out, pos = [], step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos, self.length)
            take = min(self.batch_size - len(out), self.length - offset)
            out.extend(_permutation(self.seed, epoch, self.length)[offset:offset + take])
            pos += take
        return out


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, length: int) -> list[int]:
    return torch.randperm(length, generator=make_generator(derived_seed(seed, 7, epoch))).tolist()
