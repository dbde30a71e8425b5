"""Seam score: how much stronger an image changes across patch borders than next to them inside the
patches; and synthetic seam artefacts (shuffled, offset patches) that calibrate it."""

from dataclasses import dataclass

import torch

from .. import patches as P
from ..runtime import make_generator
from .images import check_images
from .uncertainty import LEVEL, Interval, bootstrap


@dataclass(frozen=True)
class SeamScores:
    """Result of :func:`seam_scores`."""

    overall: float  # across / inside, pooled over every border line of both orientations
    across: float  # mean |difference| between the two pixel lines on either side of a border
    inside: float  # the same, predicted from the neighbouring line pairs inside the patches
    borders: dict[str, float]  # per border line: "v16" = vertical border at column 16, "h8" = row 8
    per_image: torch.Tensor  # [B]: the pooled ratio of each image on its own (noisy for single images)
    patches: int  # N
    across_images: torch.Tensor  # [B x L]: each image's across value at each of the L border lines
    near_images: torch.Tensor  # [B x L x 4]: each image's D(b-3), D(b-2), D(b), D(b+1) at each line
    eps: float = 1e-4

    def overall_of(self, indices: torch.Tensor) -> float:
        """:attr:`overall` of the images ``indices`` [n] (with repeats: a bootstrap resample), pooled the same way."""
        across = self.across_images[indices].mean(dim=0)
        inside = _predict_border(self.near_images[indices].mean(dim=0))
        return float((across.mean() + self.eps) / (inside.mean() + self.eps))

    def interval(self, indices: torch.Tensor, *, level: float = LEVEL) -> Interval:
        """The bootstrap interval of :attr:`overall` over the image index sets ``indices`` [R x B]
        (:func:`patchlab.metrics.uncertainty.resample`), re-centred on it."""
        return bootstrap(self.overall_of, indices, level=level, estimate=self.overall)


def seam_scores(images: torch.Tensor, patches: int, *, lines=None, eps: float = 1e-4,
                batch_size: int = 256) -> SeamScores:
    """Seam strength of ``images`` [B x C x H x W] cut into ``patches`` x ``patches`` patches.

    ``lines``: score these border lines instead of the fixed grid's (the same for rows and columns, e.g.
    the ``seam_lines`` of a tiling whose windows move: every line where a window
    border fell during sampling). A line needs three pixels on one side and two on the other for its
    reference, so lines closer than that to the image's edge are left out (``borders`` names the ones
    scored).

    Let ``D(c) = mean |x[..., c+1] - x[..., c]|`` over channels and rows: the mean absolute difference
    of the pixel-column pair (c, c+1). For a vertical border at column ``b`` (from
    :func:`patchlab.patches.border_coordinates`)::

        across(b) = D(b - 1)          # the pair (b-1, b) straddles the border
        inside(b) = max((4 D(b-2) + 4 D(b) - D(b-3) - D(b+1)) / 6, min(D(b-3), D(b-2), D(b), D(b+1)))
        score     = (mean across + eps) / (mean inside + eps)

    ``inside(b)`` predicts the border pair from the two pairs on each side that lie inside the two
    patches: the cubic through the four, evaluated at the border (exact when the gradient profile is
    locally a cubic, so centred faces or objects, whose gradient statistics vary with position, do not
    bias it); the floor keeps it positive for pathological profiles. Horizontal borders likewise on
    rows. ``D`` is averaged over the images before the prediction; ``across`` and ``inside`` are then
    averaged over all border lines of both orientations (``borders`` gives each line's ratio,
    ``per_image`` each image's on its own). A real image cut anywhere scores about 1.0 (tested on the
    built-in data; benchmarks/metrics_separation.py measures the spread, which grows for small batches);
    patches that disagree in colour, brightness or outline raise it. A patch model's artefacts *inside* the
    patches next to the border raise the reference
    too, so the score measures the jump at the border beyond its surroundings. ``eps`` keeps flat
    images at 1.

    Raises ``ValueError`` for ``patches < 2`` (no borders), sizes not divisible by ``patches``, or
    patches smaller than 3 pixels.
    """
    x = check_images(images)
    if not isinstance(patches, int) or isinstance(patches, bool) or patches < 2:
        raise ValueError(f"a seam score needs at least 2 x 2 patches (there are no borders otherwise), got {patches!r}")
    height, width = x.shape[-2:]
    if lines is None and min(P.patch_size(height, patches), P.patch_size(width, patches)) < 3:
        raise ValueError(f"patches of {P.patch_size(height, patches)} x {P.patch_size(width, patches)} pixels are "
                         f"too small for a seam score (at least 3 pixels per side are needed)")
    if lines is not None:
        lines = sorted({int(b) for b in lines if 3 <= int(b) <= min(height, width) - 3})
        if not lines:
            raise ValueError(f"none of the lines is at least 3 pixels from the edge of {height} x {width} images")
    # Per image, mean |difference| of neighbouring columns [B x W-1] and rows [B x H-1].
    dx = torch.cat([(c[..., :, 1:] - c[..., :, :-1]).abs().mean(dim=(1, 2)) for c in x.split(batch_size)])
    dy = torch.cat([(c[..., 1:, :] - c[..., :-1, :]).abs().mean(dim=(1, 3)) for c in x.split(batch_size)])
    across, near, names = [], [], []
    for axis, diffs, size in (("v", dx, width), ("h", dy, height)):
        for b in (P.border_coordinates(size, patches) if lines is None else lines):
            across.append(diffs[:, b - 1])
            near.append(diffs[:, [b - 3, b - 2, b, b + 1]])  # two pairs inside each of the two patches
            names.append(f"{axis}{b}")
    across_t, near_t = torch.stack(across, dim=1), torch.stack(near, dim=1)  # [B x L], [B x L x 4]
    a_line, i_line = across_t.mean(dim=0), _predict_border(near_t.mean(dim=0))  # pooled over images: [L]
    per_image = (across_t.mean(dim=1) + eps) / (_predict_border(near_t).mean(dim=1) + eps)
    return SeamScores(
        overall=float((a_line.mean() + eps) / (i_line.mean() + eps)),
        across=float(a_line.mean()), inside=float(i_line.mean()),
        borders={name: float((a + eps) / (i + eps)) for name, a, i in zip(names, a_line, i_line)},
        per_image=per_image, patches=patches, across_images=across_t, near_images=near_t, eps=eps)


def _predict_border(near: torch.Tensor) -> torch.Tensor:
    """D(b-1) predicted from [..., 4] = D(b-3), D(b-2), D(b), D(b+1): the cubic, floored at their minimum."""
    cubic = (4 * (near[..., 1] + near[..., 2]) - (near[..., 0] + near[..., 3])) / 6
    return torch.maximum(cubic, near.amin(dim=-1))


def seam_score(images: torch.Tensor, patches: int, **kwargs) -> float:
    """The overall seam score of :func:`seam_scores`: about 1.0 for real images, higher with seams."""
    return seam_scores(images, patches, **kwargs).overall


# --- synthetic seam artefacts -----------------------------------------------------------------------


def shuffle_patches(images: torch.Tensor, patches: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images assembled from patches of *different* images, each patch kept at its position.

    After a random permutation ``order`` of the batch, patch ``k`` of image ``order[i]`` is taken from
    image ``order[(i + k) % B]``, so with B >= N*N every patch of an output image comes from another
    source image. [B x C x H x W] -> [B x C x H x W].
    """
    x = check_images(images)
    batch = x.shape[0]
    parts = P.split(x, patches)  # [B x N*N x C x h x w]
    order = torch.randperm(batch, generator=generator or make_generator(0))
    out = torch.empty_like(parts)
    for k in range(patches * patches):
        out[order, k] = parts[order.roll(-k), k]
    return P.merge(out, patches)


def offset_patches(images: torch.Tensor, patches: int, *, amount: float = 0.1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Each patch of each image shifted in brightness by its own offset, uniform in [-amount, amount].

    Simulates patches generated without a shared global context (no GCC): each is plausible alone,
    but their tones disagree. The result is clipped to [-1, 1]. [B x C x H x W] -> [B x C x H x W].
    """
    x = check_images(images)
    parts = P.split(x, patches)
    shift = (torch.rand(parts.shape[:2], generator=generator or make_generator(0)) * 2 - 1) * amount
    return P.merge(parts + shift[:, :, None, None, None], patches).clamp(-1.0, 1.0)
