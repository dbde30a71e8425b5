"""The patch UNet of Arakawa et al. (2023) and the function that applies it to whole images.

:class:`PatchUNet` denoises *patches*: its input is a stack of patches [B' x 2C x h x w] (each patch
with the GCC image concatenated on channels, or [B' x C x h x w] with GCC off), the timesteps [B'] and
the one-hot positions [B' x N*N]. :func:`predict_noise` cuts whole images into patches, runs the UNet
on them in the chosen patch mode (all at once, one at a time, or k at a time) and puts the predicted
noise back together.
"""

import math
from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from . import config as C
from . import objective as O
from . import patches as P
from . import schedule as S
from .config import ModelConfig
from .execution import Execution
from .schedule import Schedule, make_schedule


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of timesteps: [B] -> [B x dim]."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"sinusoidal embedding needs an even dim >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Embedding(nn.Module):
    """Time embedding fused with the patch position.

    time: sinusoidal(dim) -> Linear(dim, dim) -> GELU; position: Linear(P, dim) -> GELU, where the
    position is the one-hot of the patch (P = N*N) or, for ``coords`` models, the Fourier features of
    the window's place (P = 4 * len(patchlab.patches.COORD_FREQUENCIES)); the two are concatenated and
    mapped by Linear(2*dim, 4*dim). Without position (``position_features`` None): Linear(dim, 4*dim).
    t: [B], pos: [B x P] or None -> [B x 4*dim]
    """

    def __init__(self, dim: int, position_features: int | None):
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim), nn.GELU())
        self.position = nn.Sequential(nn.Linear(position_features, dim), nn.GELU()) if position_features else None
        self.mapping = nn.Linear(2 * dim if position_features else dim, 4 * dim)

    def forward(self, t: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(t)
        if self.position is not None:
            if pos is None:
                raise ValueError("this model is conditioned on patch position: pass the one-hot positions")
            emb = torch.cat([emb, self.position(pos.to(emb.dtype))], dim=-1)
        return self.mapping(emb)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel, with gain and bias: [B x C x H x W] -> same."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g + self.b


class Block(nn.Module):
    """conv3x3 -> GroupNorm -> optional x*(scale+1)+shift -> SiLU."""

    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = torch.addcmul(shift, x, scale + 1.0)
        return F.silu(x)


class ResnetBlock(nn.Module):
    """Two conv blocks with the embedding as scale/shift after the first GroupNorm, plus a residual.

    x: [B x dim_in x H x W], emb: [B x emb_dim] (or None when ``emb_dim`` is None) -> [B x dim_out x H x W]
    """

    def __init__(self, dim_in: int, dim_out: int, *, emb_dim: int | None, groups: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * dim_out)) if emb_dim else None
        self.block1 = Block(dim_in, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        scale_shift = None
        if self.mlp is not None:
            if emb is None:
                raise ValueError("this block needs the time/position embedding")
            scale_shift = self.mlp(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear attention (softmax over features for q, over positions for k); output conv + LayerNorm."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.matmul(k, v.transpose(-1, -2))  # [b, heads, d, e]
        out = torch.matmul(context.transpose(-1, -2), q)  # [b, heads, e, n]
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full multi-head self-attention over pixels (scaled dot product)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2)
                   for t in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # [b, heads, n, d]
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class PreNormResidual(nn.Module):
    """x + fn(ChannelLayerNorm(x))."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x))


class Level(nn.Module):
    """One UNet level: two ResNet blocks, residual linear attention, then a resampling layer."""

    def __init__(self, dim_in: int, dim_out: int, resample: nn.Module, cfg: ModelConfig, emb_dim: int):
        super().__init__()
        self.block1 = ResnetBlock(dim_in, dim_out, emb_dim=emb_dim, groups=cfg.groups)
        self.block2 = ResnetBlock(dim_out, dim_out, emb_dim=emb_dim, groups=cfg.groups)
        self.attn = PreNormResidual(dim_out, LinearAttention(dim_out, cfg.attn_heads, cfg.attn_dim_head))
        self.resample = resample

    def features(self, x: torch.Tensor, emb: torch.Tensor, run: Callable | None = None) -> torch.Tensor:
        """The level's output before resampling (the skip connection of encoder levels); ``run(block, *args)``
        calls each block (:func:`_checkpointed`: recomputed in backward)."""
        run = run or _direct
        return run(self.attn, run(self.block2, run(self.block1, x, emb), emb))


def _direct(block: nn.Module, *args):
    return block(*args)


def _checkpointed(block: nn.Module, *args):
    """``block(*args)`` whose activations are recomputed in backward instead of kept (non-reentrant
    :func:`torch.utils.checkpoint.checkpoint`; the blocks draw no random numbers, so no RNG state is saved)."""
    return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False)


CHECKPOINT_RUNNERS = {"none": _direct, "blocks": _checkpointed}  # one per patchlab.execution.CHECKPOINTING


class PatchUNet(nn.Module):
    """UNet that denoises patches, conditioned on time, patch position and global content.

    forward(x, t, pos): x [B x in_channels x h x w] (patch, then GCC channels when ``gcc``),
    t [B] timesteps (integer; fractional for the global view), pos [B x N*N] one-hot positions, or for
    ``coords`` models [B x 4F] window coordinates (:func:`patchlab.patches.window_coordinates`), with a
    last column more, the global view's flag, when the model is trained on the global view
    (:func:`window_batch`, :func:`global_batch`); ignored when ``position`` is off
    -> predicted noise [B x C x h x w].

    ``layout="official"`` reproduces the released model (its decoder has one level fewer than the
    encoder and never uses the first skip; it leaves out the official decoder's one ``Linear(dim, 4*dim)``
    that is never called, so the count is 66,048 below the official code's at dim 128);
    ``layout="standard"`` uses every skip.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.patches, self.channels = cfg.patches, cfg.channels
        self.image_size, self.patch_size = cfg.image_size, cfg.patch_size
        self.position, self.gcc, self.coords = cfg.position, cfg.gcc, cfg.coords
        self.global_view = cfg.global_view > 0  # trained on the global view too (a flag beside the coordinates)
        dim, emb_dim = cfg.dim, 4 * cfg.dim
        dims = [cfg.resolved_init_dim] + [dim * m for m in cfg.dim_mults]
        levels = list(zip(dims[:-1], dims[1:]))

        features = 4 * len(P.COORD_FREQUENCIES) + self.global_view if cfg.coords else cfg.num_patches
        self.embedding = Embedding(dim, features if cfg.position else None)
        self.init_conv = nn.Conv2d(self.in_channels, dims[0], 7, padding=3)
        self.downs = nn.ModuleList(
            Level(d_in, d_out, nn.Conv2d(d_out, d_out, 4, 2, 1) if i < len(levels) - 1 else nn.Identity(),
                  cfg, emb_dim)
            for i, (d_in, d_out) in enumerate(levels))

        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, emb_dim=emb_dim, groups=cfg.groups)
        self.mid_attn = PreNormResidual(mid, Attention(mid, cfg.attn_heads, cfg.attn_dim_head))
        self.mid_block2 = ResnetBlock(mid, mid, emb_dim=emb_dim, groups=cfg.groups)

        if cfg.layout == "official":
            # Levels (d_in, d_out) from the deepest to the second: concat skip -> d_in, upsample always.
            self.ups = nn.ModuleList(
                Level(2 * d_out, d_in, nn.ConvTranspose2d(d_in, d_in, 4, 2, 1), cfg, emb_dim)
                for d_in, d_out in reversed(levels[1:]))
            self.skips_used = len(levels) - 1
        else:
            # Every level from the deepest to the first: concat skip -> d_out, upsample to d_in but last.
            self.ups = nn.ModuleList(
                Level(2 * d_out, d_out, nn.ConvTranspose2d(d_out, d_in, 4, 2, 1) if i > 0 else nn.Identity(),
                      cfg, emb_dim)
                for i, (d_in, d_out) in reversed(list(enumerate(levels))))
            self.skips_used = len(levels)
        self.final_block = ResnetBlock(dim, dim, emb_dim=None, groups=cfg.groups)
        self.final_conv = nn.Conv2d(dim, cfg.channels, 1)

    @property
    def in_channels(self) -> int:
        return 2 * self.channels if self.gcc else self.channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor | None = None, *,
                checkpointing: str = "none") -> torch.Tensor:
        """``checkpointing="blocks"`` (with gradients enabled): keep only each ResNet block's and attention
        layer's input, recomputing the block in backward (less activation memory, one more forward per
        block; the same result)."""
        expected = (self.in_channels, self.patch_size, self.patch_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected patches of shape [B x {' x '.join(map(str, expected))}], "
                             f"got {list(x.shape)}")
        if checkpointing not in CHECKPOINT_RUNNERS:
            raise ValueError(f"checkpointing must be one of {', '.join(map(repr, CHECKPOINT_RUNNERS))}, "
                             f"got {checkpointing!r}")
        run = CHECKPOINT_RUNNERS[checkpointing] if torch.is_grad_enabled() else _direct
        emb = self.embedding(t, pos)
        x = self.init_conv(x)
        skips = []
        first_kept = len(self.downs) - self.skips_used
        for i, level in enumerate(self.downs):
            x = level.features(x, emb, run)
            if i >= first_kept:
                skips.append(x)
            x = level.resample(x)
        x = run(self.mid_block2, run(self.mid_attn, run(self.mid_block1, x, emb)), emb)
        for level in self.ups:
            x = level.resample(level.features(torch.cat([x, skips.pop()], dim=1), emb, run))
        return self.final_conv(run(self.final_block, x))


def predict_noise(model: PatchUNet, x_t: torch.Tensor, t: torch.Tensor, execution: Execution | None = None, *,
                  windows: torch.Tensor | None = None, schedule: Schedule | None = None) -> torch.Tensor:
    """Noise prediction for whole images, running the UNet window by window.

    x_t: [B x C x H x W], t: [B] -> [B x C x H x W]. ``execution`` (:class:`patchlab.execution.Execution`,
    default: one patch per pass) says how the passes run: all N*N patches in one pass (like the official
    code), one at a time (the activations of a single patch), k at a time, with a fast path or a custom
    ``unet``; every execution gives the same result. Precision is applied by the caller (the tiling).
    ``windows`` (``coords`` models): the origins [K x 2] of the patch-sized windows to denoise instead of
    the fixed grid (see :mod:`patchlab.patches`); windows that overlap are blended with
    :func:`patchlab.patches.tent` weights, a tiling (a shifted grid) is put together as it is.
    A model that predicts something else than the noise (its ``prediction``, :mod:`patchlab.objective`) needs
    the ``schedule``: its windows' outputs are put together as they are (the noise they imply is affine in
    them, with one coefficient per image) and turned into noise.
    """
    target = O.target_of(model.config)
    if schedule is None and not isinstance(target, O.Epsilon):
        raise ValueError(f"this model predicts {model.config.prediction!r}: give the schedule to turn its outputs "
                         f"into noise")
    out = _predict_outputs(model, x_t, t, execution or Execution(), windows)
    if isinstance(target, O.Epsilon):
        return out
    return target.to_eps(out, x_t, schedule.alphas_cumprod.to(x_t.device)[t.to(x_t.device)])


def _predict_outputs(model: PatchUNet, x_t: torch.Tensor, t: torch.Tensor, execution: Execution,
                     windows: torch.Tensor | None) -> torch.Tensor:
    """The UNet's outputs over whole images [B x C x H x W] (:func:`predict_noise` before they become noise)."""
    n = model.patches
    check_image(model, x_t)
    context = P.global_context(x_t, n) if model.gcc else None
    run = execution.forward(model, "sample")
    if windows is None and not model.coords:  # the paper's fixed grid
        out = torch.empty_like(x_t)
        for idx in execution.chunks(n * n):
            pred = run(*patch_batch(model, x_t, t, idx, context))
            P.scatter(out, pred.to(out.dtype), n, idx)
        return out
    if not model.coords:
        raise ValueError("denoising windows off the fixed grid needs a model trained with coords=True "
                         "(continuous window coordinates); this one knows only its N x N grid")
    size, p = model.image_size, model.patch_size
    origins = P.grid_origins(size, n) if windows is None else windows
    cover = P.scatter_add_windows(x_t.new_zeros(1, 1, size, size), x_t.new_ones(len(origins), 1, p, p), origins)
    weights = P.tent(p).to(x_t) if cover.max() > 1 else None  # overlapping windows are blended
    out = torch.zeros_like(x_t)
    for idx in execution.chunks(len(origins)):
        pred = run(*window_batch(model, x_t, t, origins[idx], context))
        P.scatter_add_windows(out, pred.to(out.dtype), origins[idx], weights)
    if weights is None:
        return out
    total = P.scatter_add_windows(x_t.new_zeros(1, 1, size, size), weights.expand(len(origins), 1, p, p), origins)
    return out / total


def patch_batch(model: PatchUNet, x_t: torch.Tensor, t: torch.Tensor, idx: Sequence[int],
                context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The UNet's arguments (inputs, timesteps, positions) for patches ``idx`` of ``x_t``, patch-major."""
    n, batch = model.patches, x_t.shape[0]
    inputs = P.model_inputs(x_t, n, idx, context)
    pos = P.positions(n, idx, batch, device=x_t.device, dtype=x_t.dtype) if model.position else None
    return inputs, t.repeat(len(idx)), pos


def window_batch(model: PatchUNet, x_t: torch.Tensor, t: torch.Tensor, origins: torch.Tensor,
                 context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet's arguments (inputs, timesteps, window coordinates) of a ``coords`` model for the windows at
    ``origins`` ([K x 2], or [K x B x 2] per image), window-major."""
    batch, count = x_t.shape[0], origins.shape[0]
    inputs = P.gather_windows(x_t, origins, model.patch_size)
    if context is not None:
        inputs = torch.cat([inputs, context.repeat(count, 1, 1, 1)], dim=1)
    pos = P.window_coordinates(origins, model.image_size, batch, dtype=x_t.dtype, device=x_t.device)
    if model.global_view:  # the global view's flag: off for windows
        pos = torch.cat([pos, pos.new_zeros(len(pos), 1)], dim=1)
    return inputs, t.repeat(count), pos


def global_batch(model: PatchUNet, view: torch.Tensor,
                 t_view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet's arguments (inputs, timesteps, flagged coordinates) for *global views* [B x C x p x p] at
    their fractional timesteps ``t_view`` [B] (:func:`patchlab.schedule.pooled_view`: the whole image
    average-pooled to one patch, a noisy image of the pooled clean image at its own, lower noise level);
    the GCC channels, when the model has them, get the same view. The UNet predicts the view's unit noise
    (``N`` times the GCC-pooled noise). -> inputs [B x in_channels x p x p], t' [B], pos [B x 4F+1]."""
    if not model.global_view:
        raise ValueError("this model was not trained on the global view (train it with global_view > 0)")
    inputs = torch.cat([view, view], dim=1) if model.gcc else view
    pos = view.new_zeros(view.shape[0], 4 * len(P.COORD_FREQUENCIES) + 1)
    pos[:, -1] = 1.0
    return inputs, t_view.to(view.device), pos


def predict_noise_global(model: PatchUNet, schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
                         execution: Execution | None = None) -> torch.Tensor:
    """Noise prediction for whole images from their global view, in one UNet pass of one patch's size.

    x_t: [B x C x H x W], t: [B] -> [B x C x H x W]. The view's clean estimate (clipped to [-1, 1]) is
    upsampled bilinearly to the full size, and the noise returned is the one consistent with it at t: the
    image's layout comes from one pass that sees all of it, the details it cannot hold are left to later
    steps (:class:`patchlab.tiling.CoarseToFine`). ``execution`` as in :func:`predict_noise`."""
    check_image(model, x_t)
    view, t_view, abar_view = S.pooled_view(schedule, P.global_context(x_t, model.patches), t, model.patches)
    run = (execution or Execution()).forward(model, "sample")
    out_view = run(*global_batch(model, view, t_view)).to(x_t.dtype)
    eps_view = O.target_of(model.config).to_eps(out_view, view, abar_view)
    a = abar_view.to(x_t.dtype).reshape(-1, 1, 1, 1)
    x0_view = ((view - (1 - a).sqrt() * eps_view) / a.sqrt()).clamp(-1.0, 1.0)
    x0 = F.interpolate(x0_view, scale_factor=model.patches, mode="bilinear", align_corners=False)
    return S.predict_eps(schedule, x_t, t, x0.clamp(-1.0, 1.0))


def check_image(model: PatchUNet, x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is [B x C x H x W] with the model's channels and size."""
    expected = (model.channels, model.image_size, model.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"expected images of shape [B x {' x '.join(map(str, expected))}], got {list(x.shape)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(cfg: C.Config) -> tuple[PatchUNet, Schedule]:
    """The UNet (on CPU, float32, initialised from ``cfg.train.seed``) and the noise schedule of ``cfg``.

    The caller's global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = PatchUNet(cfg.model)
    return model, make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
