"""Image grids and patch-border overlays, written as PNG."""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import patches as P


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B x C x H x W] in [-1, 1] -> uint8 array [B x H x W x 3] (grayscale repeated)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy()


def overlay_borders(images: np.ndarray, n: int, color=(255, 0, 0), alpha: float = 0.5) -> np.ndarray:
    """Blend a line along every patch border of uint8 images [B x H x W x 3] (first row/col of each patch)."""
    return overlay_lines(images, P.border_coordinates(images.shape[1], n), P.border_coordinates(images.shape[2], n),
                         color=color, alpha=alpha)


def overlay_lines(images: np.ndarray, rows, cols, color=(255, 0, 0), alpha: float = 0.5) -> np.ndarray:
    """Blend a line along pixel rows ``rows`` and columns ``cols`` of uint8 images [B x H x W x 3]
    (e.g. where the windows of a seam remedy start, :func:`patchlab.patches.window_lines`)."""
    out = images.astype(np.float32).copy()
    c = np.array(color, dtype=np.float32)
    for pos in rows:
        out[:, pos, :, :] = (1 - alpha) * out[:, pos, :, :] + alpha * c
    for pos in cols:
        out[:, :, pos, :] = (1 - alpha) * out[:, :, pos, :] + alpha * c
    return out.round().astype(np.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, patches: int | None = None,
              scale: int = 1, lines=None) -> np.ndarray:
    """Tile [B x C x H x W] images in [-1, 1] into one uint8 picture [rows*(H+pad)+pad x ... x 3].

    ``patches``: draw the N x N patch borders; ``lines``: draw these rows and columns instead (e.g. every
    line where a seam remedy's windows had a border); ``scale``: nearest-neighbour upscaling (small images).
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty image batch [B x C x H x W], got {list(images.shape)}")
    tiles = to_uint8(images)
    if lines is not None:
        tiles = overlay_lines(tiles, lines, lines)
    elif patches is not None and patches > 1:
        tiles = overlay_borders(tiles, patches)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    b, h, w, _ = tiles.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(b):
        r, c = divmod(k, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tiles[k]
    return grid


def save_grid(images: torch.Tensor, path, **kwargs) -> Path:
    """Write :func:`make_grid` of ``images`` to ``path`` (PNG); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, **kwargs)).save(path)
    return path
