"""Global coherence of images of the procedural ``shapes`` dataset: one object of one colour across all
patches."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import patches as P
from .images import check_images

@dataclass(frozen=True)
class CoherenceResult:
    """Result of :func:`coherence_details`; tensors are per image [B]."""

    score: float  # fraction of coherent images
    coherent: torch.Tensor  # bool: one object of one colour
    components: torch.Tensor  # int: connected foreground regions of at least min_pixels pixels
    color_spread: torch.Tensor  # float: largest RGB distance between the object colours of two patches
    purity: torch.Tensor  # float: fraction of the object's inner pixels within tolerance of its colour
    foreground: torch.Tensor  # float: fraction of pixels in the foreground


def coherence_details(images: torch.Tensor, patches: int, *, threshold: float = 0.575, tolerance: float = 0.15,
                      min_purity: float = 0.9, min_pixels: int | None = None) -> CoherenceResult:
    """Global coherence of ``shapes`` images [B x 3 x H x W] in [-1, 1] cut into ``patches`` x ``patches``.

    A shapes image holds one object of one saturated, bright colour (brightest RGB channel >= 0.75)
    on a dark background (<= 0.4), large and near the centre so that it crosses patch borders. With
    colours in [0, 1], the *foreground* is the pixels whose brightest channel exceeds ``threshold``
    and the *inner* pixels are those whose 3 x 3 neighbourhood is all foreground (no anti-aliased edge
    pixels). An image is *coherent* when

    1. one object: the foreground forms exactly one 8-connected region of at least ``min_pixels``
       pixels (smaller specks are ignored; default H*W/256, at least 2);
    2. one colour across patches: in every patch holding at least ``min_pixels`` inner pixels the
       per-channel median colour of those pixels is taken; the largest Euclidean distance between two
       patches' colours (``color_spread``) is at most ``tolerance``;
    3. a flat colour: at least ``min_purity`` of the inner pixels lie within ``tolerance`` of the
       object's median colour (``purity``; rules out noise and textured blobs).

    A patch model whose patches disagree (no GCC, no position) draws objects whose parts differ in
    colour or do not join; an image with no object is not coherent either. Real shapes images are all
    coherent. Only meaningful for the ``shapes`` dataset (RGB).
    """
    x = check_images(images)
    if x.shape[1] != 3:
        raise ValueError("coherence needs RGB (3-channel) images of the shapes dataset")
    height, width = x.shape[-2:]
    for side in (height, width):
        P.patch_size(side, patches)  # raises for sizes not divisible by N
    min_pixels = max(2, height * width // 256) if min_pixels is None else min_pixels
    rgb = (x.clamp(-1, 1) + 1) / 2  # [B x 3 x H x W] in [0, 1]
    mask = rgb.amax(dim=1, keepdim=True) > threshold  # [B x 1 x H x W]
    inner = -F.max_pool2d(-mask.float(), 3, stride=1, padding=1) > 0.5  # eroded foreground
    components = _count_components(mask[:, 0], min_pixels)
    parts, part_inner = P.split(rgb, patches), P.split(inner.float(), patches)[:, :, 0] > 0.5
    batch = x.shape[0]
    spread, purity = torch.zeros(batch), torch.zeros(batch)
    for i in range(batch):
        colors = [parts[i, k][:, part_inner[i, k]].median(dim=1).values
                  for k in range(patches * patches) if int(part_inner[i, k].sum()) >= min_pixels]
        if len(colors) > 1:
            spread[i] = torch.cdist(torch.stack(colors), torch.stack(colors)).max()
        pixels = rgb[i][:, inner[i, 0]]  # [3 x inner pixels]
        if pixels.shape[1] > 0:
            distance = (pixels - pixels.median(dim=1, keepdim=True).values).norm(dim=0)
            purity[i] = (distance <= tolerance).float().mean()
    coherent = (components == 1) & (spread <= tolerance) & (purity >= min_purity)
    return CoherenceResult(score=float(coherent.float().mean()), coherent=coherent, components=components,
                           color_spread=spread, purity=purity, foreground=mask.float().mean(dim=(1, 2, 3)))


def coherence(images: torch.Tensor, patches: int, **kwargs) -> float:
    """Fraction of coherent ``shapes`` images (one object, one colour across patches); see :func:`coherence_details`."""
    return coherence_details(images, patches, **kwargs).score


def _count_components(mask: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Number of 8-connected regions of at least ``min_pixels`` pixels in each mask [B x H x W] -> [B]."""
    try:
        from skimage.measure import label
    except ImportError as exc:
        raise ImportError("the shapes coherence score needs scikit-image: pip install scikit-image") from exc
    counts = torch.zeros(mask.shape[0], dtype=torch.long)
    for i, image in enumerate(mask.numpy()):
        sizes = np.bincount(label(image, connectivity=2).ravel())[1:]  # pixels per region (0 = background)
        counts[i] = int((sizes >= min_pixels).sum())
    return counts
