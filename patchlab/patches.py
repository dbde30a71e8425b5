"""Patch geometry: the one place that knows how an image is cut into N x N patches.

An image batch ``x`` of shape [B x C x H x W] is cut into an N x N grid of non-overlapping patches of
[H/N x W/N], indexed row-major: patch ``k = i * N + j`` covers rows ``i*H/N:(i+1)*H/N`` and columns
``j*W/N:(j+1)*W/N``. Everything else in patchlab (model inputs, samplers, training, metrics, figures)
goes through these functions.

When several patches of a batch go through the UNet in one pass they are stacked *patch-major*:
rows ``[p*B:(p+1)*B]`` of the stacked tensor hold patch ``idx[p]`` of every image.
"""

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
