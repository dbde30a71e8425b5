"""Patch geometry: the one place that knows how an image is cut into N x N patches.

An image batch ``x`` of shape [B x C x H x W] is cut into an N x N grid of non-overlapping patches of
[H/N x W/N], indexed row-major: patch ``k = i * N + j`` covers rows ``i*H/N:(i+1)*H/N`` and columns
``j*W/N:(j+1)*W/N``. Everything else in patchlab (model inputs, samplers, training, metrics, figures)
goes through these functions.

When several patches of a batch go through the UNet in one pass they are stacked *patch-major*:
rows ``[p*B:(p+1)*B]`` of the stacked tensor hold patch ``idx[p]`` of every image.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

PATCH_MODES = ("batched", "sequential")


def patch_size(size: int, n: int) -> int:
    """Side of one patch; raises ``ValueError`` when ``size`` is not divisible by ``n``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of patches per side must be a positive integer, got {n!r}")
    if size % n:
        lower, upper = size - size % n, size - size % n + n
        raise ValueError(
            f"image size {size} is not divisible by N={n} patches per side; "
            f"use an image size that is a multiple of {n} (e.g. {lower or upper} or {upper})")
    return size // n


def patch_slices(k: int, n: int, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of patch ``k`` (row-major) in an image of ``height`` x ``width``."""
    if not 0 <= k < n * n:
        raise IndexError(f"patch index {k} out of range for {n} x {n} patches")
    h, w = patch_size(height, n), patch_size(width, n)
    i, j = divmod(k, n)
    return slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w)


def gather(x: torch.Tensor, n: int, idx: Sequence[int]) -> torch.Tensor:
    """Patches ``idx`` of every image, stacked patch-major.

    x: [B x C x H x W] -> [len(idx)*B x C x H/N x W/N]
    """
    height, width = x.shape[-2:]
    parts = []
    for k in idx:
        rows, cols = patch_slices(k, n, height, width)
        parts.append(x[..., rows, cols])
    return torch.cat(parts, dim=0)


def scatter(out: torch.Tensor, values: torch.Tensor, n: int, idx: Sequence[int]) -> torch.Tensor:
    """Write patch-major ``values`` [len(idx)*B x C x h x w] into ``out`` [B x C x H x W] in place."""
    batch = out.shape[0]
    if values.shape[0] != len(idx) * batch:
        raise ValueError(f"expected {len(idx)} x {batch} stacked patches, got {values.shape[0]}")
    height, width = out.shape[-2:]
    for p, k in enumerate(idx):
        rows, cols = patch_slices(k, n, height, width)
        out[..., rows, cols] = values[p * batch:(p + 1) * batch]
    return out


def split(x: torch.Tensor, n: int) -> torch.Tensor:
    """All patches: [B x C x H x W] -> [B x N*N x C x H/N x W/N] (patch axis row-major)."""
    batch = x.shape[0]
    stacked = gather(x, n, range(n * n))
    return stacked.reshape(n * n, batch, *stacked.shape[1:]).transpose(0, 1)


def merge(p: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`split`: [B x N*N x C x h x w] -> [B x C x h*N x w*N]."""
    batch, count, channels, h, w = p.shape
    if count != n * n:
        raise ValueError(f"expected {n * n} patches on axis 1, got {count}")
    out = p.new_empty(batch, channels, h * n, w * n)
    return scatter(out, p.transpose(0, 1).reshape(count * batch, channels, h, w), n, range(count))


def positions(n: int, idx: Sequence[int], batch: int, *, device=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot positions of patches ``idx`` for ``batch`` images, patch-major: [len(idx)*B x N*N]."""
    eye = torch.eye(n * n, device=device, dtype=dtype)
    return eye[list(idx)].repeat_interleave(batch, dim=0)


def global_context(x: torch.Tensor, n: int) -> torch.Tensor:
    """Global Content Conditioning: the whole image average-pooled to patch size.

    x: [B x C x H x W] -> [B x C x H/N x W/N]
    """
    height, width = x.shape[-2:]
    return F.adaptive_avg_pool2d(x, (patch_size(height, n), patch_size(width, n)))


def model_inputs(x: torch.Tensor, n: int, idx: Sequence[int],
                 context: torch.Tensor | None = None) -> torch.Tensor:
    """UNet input for patches ``idx``: each patch, with the GCC image concatenated on channels.

    x: [B x C x H x W]; context: [B x C x h x w] or None -> [len(idx)*B x (2C or C) x h x w]
    """
    patches = gather(x, n, idx)
    if context is None:
        return patches
    return torch.cat([patches, context.repeat(len(idx), 1, 1, 1)], dim=1)


def check_patch_mode(mode) -> str | int:
    """Validate a patch mode: ``"batched"``, ``"sequential"`` or a positive int (patches per pass)."""
    if isinstance(mode, bool) or not (mode in PATCH_MODES or (isinstance(mode, int) and mode >= 1)):
        raise ValueError(
            f"patch_mode must be 'batched', 'sequential' or a positive integer (patches per pass), "
            f"got {mode!r}")
    return mode


def chunks(num_patches: int, mode) -> list[list[int]]:
    """Patch indices per UNet pass for a patch mode.

    ``"batched"``: one pass with all patches (as the official code does); ``"sequential"``: one patch
    per pass (the memory-saving mode); ``k``: ``k`` patches per pass (the last pass may hold fewer).
    """
    check_patch_mode(mode)
    per_pass = {"batched": num_patches, "sequential": 1}.get(mode, mode)
    if per_pass > num_patches:
        raise ValueError(f"patch_mode {mode} asks for more patches per pass than the {num_patches} "
                         f"an image has; use 'batched' or a value <= {num_patches}")
    return [list(range(s, min(s + per_pass, num_patches))) for s in range(0, num_patches, per_pass)]


def per_pass(num_patches: int, mode) -> int:
    """Patches per UNet pass of ``mode`` (as :func:`chunks` cuts them; an int above ``num_patches`` means all)."""
    if isinstance(mode, int) and not isinstance(mode, bool) and mode > num_patches:
        mode = "batched"
    return len(chunks(num_patches, mode)[0])


def mode_name(per_pass: int, num_patches: int):
    """The patch mode that runs ``per_pass`` patches per pass: ``"batched"``, ``"sequential"`` or the int."""
    return "batched" if per_pass >= num_patches else "sequential" if per_pass == 1 else per_pass


def border_coordinates(size: int, n: int) -> list[int]:
    """Pixel offsets where a new patch starts along one axis (the patch borders), e.g. [16] for 32/2."""
    step = patch_size(size, n)
    return [step * i for i in range(1, n)]


# --- windows: patches anywhere on the image ---------------------------------------------------------
#
# The seam remedies (the tilings of patchlab.tiling) move the patches: a *window* is a patch-sized
# square whose top-left corner ``(row, col)`` may be anywhere. The image is treated as a torus, so a
# window that crosses the bottom or the right edge wraps around to the top or the left; a set of windows
# that tiles the torus (a shifted grid) covers every pixel exactly once, as the fixed grid does.
# Origins are an int tensor [K x 2] (the same windows for every image) or [K x B x 2] (per image).
# Which windows a step uses, and when, is the tilings' business; this module only knows where they are.

COORD_FREQUENCIES = (1, 2, 4, 8)  # of the Fourier features of a window's position on the torus


def grid_origins(size: int, n: int, shift=(0, 0)) -> torch.Tensor:
    """The N x N grid moved by ``shift`` = (rows, cols) on the torus, row-major: [N*N x 2].

    ``shift=(0, 0)`` is the fixed grid: window ``k`` is patch ``k`` of :func:`split`."""
    p = patch_size(size, n)
    steps = torch.arange(n) * p
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    origins = torch.stack([rows.flatten() + int(shift[0]), cols.flatten() + int(shift[1])], dim=1)
    return origins % size


def overlap_origins(size: int, n: int, stride: int | None = None) -> torch.Tensor:
    """Windows of the patch size every ``stride`` pixels (default half a patch), inside the image (no
    wrapping), the last flush with the edge: [K x 2], row-major."""
    p = patch_size(size, n)
    stride = stride or max(1, p // 2)
    if not 1 <= stride <= p:
        raise ValueError(f"the overlap stride must be in [1, {p}] (the patch size), got {stride}")
    starts = sorted(set(range(0, size - p + 1, stride)) | {size - p})
    rows, cols = torch.meshgrid(torch.tensor(starts), torch.tensor(starts), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)


def window_lines(origins: torch.Tensor, size: int, n: int) -> list[int]:
    """Where the windows' edges lie inside the image (one axis; the image's own edges left out): the
    first pixel past each window edge, sorted."""
    p = patch_size(size, n)
    flat = origins.reshape(-1, 2)
    edges = torch.cat([flat, flat + p]) % size
    return sorted({int(e) for e in edges.flatten().tolist()} - {0})


def _window_index(origins: torch.Tensor, p: int, size: int, batch: int, device) -> tuple[torch.Tensor, ...]:
    """Index tensors (batch [1 x B x 1 x 1], rows [K x B x p x 1], cols [K x B x 1 x p]) of the windows."""
    origins = origins.to(device)
    if origins.dim() == 2:
        origins = origins[:, None].expand(-1, batch, -1)
    offsets = torch.arange(p, device=device)
    rows = (origins[..., 0, None] + offsets) % size
    cols = (origins[..., 1, None] + offsets) % size
    return torch.arange(batch, device=device)[None, :, None, None], rows[..., :, None], cols[..., None, :]


def gather_windows(x: torch.Tensor, origins: torch.Tensor, p: int) -> torch.Tensor:
    """The windows of side ``p`` at ``origins`` of every image, stacked window-major (as :func:`gather`):
    x [B x C x H x W] -> [K*B x C x p x p]."""
    batch, channels, size = x.shape[0], x.shape[1], x.shape[-1]
    b, rows, cols = _window_index(origins, p, size, batch, x.device)
    return x.permute(0, 2, 3, 1)[b, rows, cols].reshape(-1, p, p, channels).permute(0, 3, 1, 2)


def scatter_add_windows(out: torch.Tensor, values: torch.Tensor, origins: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Add window-major ``values`` [K*B x C x p x p] (times ``weights`` [p x p]) into ``out`` [B x C x H x W]
    at ``origins``, in place; overlapping windows add up."""
    batch, channels, size = out.shape[0], out.shape[1], out.shape[-1]
    p = values.shape[-1]
    b, rows, cols = _window_index(origins, p, size, batch, out.device)
    if weights is not None:
        values = values * weights.to(values)
    count = rows.shape[0]
    source = values.reshape(count, batch, channels, p, p).permute(0, 1, 3, 4, 2)
    view = out.permute(0, 2, 3, 1)
    view.index_put_((b.expand_as(rows + cols), rows.expand(-1, -1, -1, p), cols.expand(-1, -1, p, -1)),
                    source.to(out.dtype), accumulate=True)
    return out


def tent(p: int) -> torch.Tensor:
    """Blending weights [p x p] of overlapping windows: highest in the middle, falling linearly towards
    the edges (never zero), so that a pixel takes most from the windows it is deepest inside (the
    smooth weighting of Mixture of Diffusers, in place of MultiDiffusion's plain average)."""
    ramp = torch.minimum(torch.arange(p) + 1.0, p - torch.arange(p) + 0.0)
    return ramp[:, None] * ramp[None, :]


def window_coordinates(origins: torch.Tensor, size: int, batch: int | None = None, *,
                       dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Continuous positions of windows: Fourier features of the origin's angle on the torus, sin and cos
    at :data:`COORD_FREQUENCIES` for rows and columns: [K*B x 4F], window-major (as the UNet's batch).

    ``origins`` [K x 2] (repeated for ``batch`` images) or [K x B x 2]."""
    origins = origins.to(device)
    if origins.dim() == 2:
        origins = origins[:, None].expand(-1, batch or 1, -1)
    angle = origins.to(torch.float64) * (2 * math.pi / size)  # [K x B x 2]
    freqs = torch.tensor(COORD_FREQUENCIES, dtype=torch.float64, device=origins.device)
    phase = angle[..., None] * freqs  # [K x B x 2 x F]
    feats = torch.cat([phase.sin(), phase.cos()], dim=-1)  # [K x B x 2 x 2F]
    return feats.reshape(-1, 4 * len(COORD_FREQUENCIES)).to(dtype)
