"""Image-quality metrics for patch-based generation, all batched, deterministic and free of global RNG.

Images go in as [B x C x H x W] tensors in [-1, 1] (C = 1 or 3), on any device; the metrics are
computed on the CPU (they are cheap), the feature extractors of FID / KID on their own device.

- :func:`seam_score` / :func:`seam_scores`: how much stronger the image changes across patch borders
  than next to them inside the patches (real images: about 1.0).
- :func:`sliced_wasserstein` / :func:`swd_per_level`: SWD of Laplacian-pyramid 7 x 7 descriptors
  (Karras et al. 2018, Progressive GAN), x 1e3.
- :func:`fid` / :func:`kid`: Fréchet and kernel Inception distances, computed here from features of a
  :class:`FeatureExtractor`: the standard Inception-v3 when its weights are available offline, else an
  offline extractor whose name says that the numbers are not comparable to published ones.
- :func:`coherence` / :func:`coherence_details`: global coherence for the procedural ``shapes``
  dataset (one object, one colour, across all patches).
- :func:`shuffle_patches` / :func:`offset_patches`: synthetic seam artefacts that calibrate the above.
"""

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import patches as P
from .runtime import make_generator

# --- checks ----------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor, what: str = "images", *, cpu: bool = True) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a tensor [B x C x H x W] with C = 1 or 3, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch")
    return images.detach().float().cpu() if cpu else images.detach()


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = _check_images(real, "real"), _check_images(fake, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake images differ in shape: {list(real.shape[1:])} vs {list(fake.shape[1:])}")
    return real, fake


# --- seam score ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeamScores:
    """Result of :func:`seam_scores`."""

    overall: float  # across / inside, pooled over every border line of both orientations
    across: float  # mean |difference| between the two pixel lines on either side of a border
    inside: float  # the same, predicted from the neighbouring line pairs inside the patches
    borders: dict[str, float]  # per border line: "v16" = vertical border at column 16, "h8" = row 8
    per_image: torch.Tensor  # [B]: the pooled ratio of each image on its own (noisy for single images)
    patches: int  # N


def seam_scores(images: torch.Tensor, patches: int, *, eps: float = 1e-4, batch_size: int = 256) -> SeamScores:
    """Seam strength of ``images`` [B x C x H x W] cut into ``patches`` x ``patches`` patches.

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
    ``per_image`` each image's on its own). A real image cut anywhere scores about 1.0 (at 32 px, on
    256 shapes images or the 100 LFW faces: 0.90 to 0.97 for N = 2 and 4, see
    benchmarks/metrics_separation.py; small batches spread more, e.g. a standard deviation of about
    0.08 over batches of 64 shapes images at N = 4); patches that disagree in colour, brightness or outline
    raise it. A patch model's artefacts *inside* the patches next to the border raise the reference
    too, so the score measures the jump at the border beyond its surroundings. ``eps`` keeps flat
    images at 1.

    Raises ``ValueError`` for ``patches < 2`` (no borders), sizes not divisible by ``patches``, or
    patches smaller than 3 pixels.
    """
    x = _check_images(images)
    if not isinstance(patches, int) or isinstance(patches, bool) or patches < 2:
        raise ValueError(f"a seam score needs at least 2 x 2 patches (there are no borders otherwise), got {patches!r}")
    height, width = x.shape[-2:]
    if min(P.patch_size(height, patches), P.patch_size(width, patches)) < 3:
        raise ValueError(f"patches of {P.patch_size(height, patches)} x {P.patch_size(width, patches)} pixels are "
                         f"too small for a seam score (at least 3 pixels per side are needed)")
    # Per image, mean |difference| of neighbouring columns [B x W-1] and rows [B x H-1].
    dx = torch.cat([(c[..., :, 1:] - c[..., :, :-1]).abs().mean(dim=(1, 2)) for c in x.split(batch_size)])
    dy = torch.cat([(c[..., 1:, :] - c[..., :-1, :]).abs().mean(dim=(1, 3)) for c in x.split(batch_size)])
    across, near, names = [], [], []
    for axis, diffs, size in (("v", dx, width), ("h", dy, height)):
        for b in P.border_coordinates(size, patches):
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
        per_image=per_image, patches=patches)


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
    x = _check_images(images)
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
    x = _check_images(images)
    parts = P.split(x, patches)
    shift = (torch.rand(parts.shape[:2], generator=generator or make_generator(0)) * 2 - 1) * amount
    return P.merge(parts + shift[:, :, None, None, None], patches).clamp(-1.0, 1.0)


# --- sliced Wasserstein distance ------------------------------------------------------------------

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
    """Random ``patch`` x ``patch`` neighbourhoods of every pyramid level: per level [B*per_image x C*patch*patch]."""
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
    out = []
    for parts in chunks:
        desc = torch.cat(parts)  # [n x patch x patch x C]
        # Normalised per channel by the set's own mean and std, as in the reference implementation.
        desc = (desc - desc.mean(dim=(0, 1, 2))) / desc.std(dim=(0, 1, 2), unbiased=False).clamp_min(1e-8)
        out.append(desc.permute(0, 3, 1, 2).reshape(desc.shape[0], -1))
    return out


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
    real, fake = _check_pair(real, fake)
    if min(real.shape[-2:]) < patch:
        raise ValueError(f"images of {list(real.shape[-2:])} pixels are smaller than the {patch} x {patch} descriptors")
    generator = generator or make_generator(0)
    resolutions = _resolutions(min(real.shape[-2:]), min_resolution)
    desc_real = _descriptors(real, len(resolutions), descriptors_per_image, patch, generator, batch_size, progress)
    desc_fake = _descriptors(fake, len(resolutions), descriptors_per_image, patch, generator, batch_size, progress)
    return {res: 1e3 * _sliced_distance(a, b, directions, generator)
            for res, a, b in zip(resolutions, desc_real, desc_fake)}


def sliced_wasserstein(real: torch.Tensor, fake: torch.Tensor, *, generator: torch.Generator | None = None,
                       **kwargs) -> float:
    """SWD x 1e3 averaged over pyramid levels (the paper's "SWD avg"); see :func:`swd_per_level`."""
    levels = swd_per_level(real, fake, generator=generator, **kwargs)
    return sum(levels.values()) / len(levels)


# --- feature extractors for FID / KID -----------------------------------------------------------

INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid's name
                   "weights-inception-2015-12-05-6726825d.pth")  # torch-fidelity's (and torchmetrics') name
INCEPTION_ENV = "PATCHLAB_INCEPTION_WEIGHTS"
FEATURE_KINDS = ("auto", "inception", "offline")


class InceptionUnavailableError(RuntimeError):
    """The standard Inception-v3 FID network cannot be loaded (weights or torch-fidelity missing)."""


class OfflineFeaturesWarning(UserWarning):
    """FID/KID fell back to the offline feature extractor: numbers not comparable to published ones."""


class FeatureExtractor:
    """Maps images [B x C x H x W] in [-1, 1] to features [B x D] (float64), in batches.

    ``name`` says what the features are, for tables; ``standard`` is True only for the Inception-v3
    network whose FID/KID can be compared with published numbers.
    """

    name: str = ""
    standard: bool = False
    dim: int = 0

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        x = _check_images(images, cpu=False)
        out = [self._forward(b.to(self.device)).double().cpu()
               for b in tqdm(x.split(batch_size), desc=f"features ({self.short_name})", disable=not progress,
                             leave=False)]
        return torch.cat(out)

    @property
    def short_name(self) -> str:
        return "inception" if self.standard else "offline"

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class InceptionFeatures(FeatureExtractor):
    """The standard FID network: Inception-v3 pool3 (2048-d) with the TensorFlow FID weights.

    Uses torch-fidelity's re-implementation (bit-exact with TF's resize to 299 px), fed uint8 RGB
    (grayscale repeated). ``weights``: the ``*inception-2015-12-05-6726825d.pth`` file (pytorch-fid
    and torch-fidelity distribute it under two names; loaded with a strict key check, so a wrong file
    fails loudly).
    """

    NAME = "inception-v3 pool3 2048-d (standard FID weights)"
    standard = True
    dim = 2048

    def __init__(self, weights, device="cpu"):
        super().__init__(device)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:
            raise InceptionUnavailableError("standard FID/KID features need torch-fidelity: "
                                            "pip install torch-fidelity") from exc
        self.weights = Path(weights)
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(self.weights))
        except Exception as exc:  # unreadable file, wrong keys or shapes
            raise InceptionUnavailableError(f"cannot load Inception-v3 FID weights from {self.weights}: {exc}") from exc
        self.net.to(self.device)
        self.name = self.NAME

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net(x)[0]


class RandomCNNFeatures(FeatureExtractor):
    """Offline features: a fixed-seed, randomly initialised CNN (no download, no training).

    Images are repeated to 3 channels and resized to 64 x 64 (bilinear, antialiased), then pass four
    stages of ``conv3x3 -> ReLU -> avgpool 2`` with (32, 64, 128, 256) channels; the feature vector
    (480-d) is the spatial mean of every stage's output, i.e. colour and texture statistics at four
    scales (receptive fields of 3 to about 45 pixels at 64 px). Weights are He-scaled Gaussians and
    biases small Gaussians drawn from ``torch.Generator`` seed ``seed`` on the CPU, so the network is
    the same on every machine and torch version.

    Why: random convolutional features are a known, download-free embedding that separates image
    distributions (Naeem et al. 2020 used randomly initialised networks as a baseline embedding for
    fidelity/diversity metrics); they respond to colour, edges, texture and their spatial statistics,
    which is what separates samples from real images here. They are *not* trained on natural images,
    so FID/KID values on them are only comparable between runs evaluated with the same extractor
    (the ``name`` carries its version) and never with published numbers.
    """

    standard = False
    CHANNELS = (32, 64, 128, 256)
    RESOLUTION = 64

    def __init__(self, seed: int = 0, device="cpu"):
        super().__init__(device)
        g = make_generator(seed)
        self.weights, self.biases, c_in = [], [], 3
        for c_out in self.CHANNELS:
            w = torch.randn(c_out, c_in, 3, 3, generator=g) * math.sqrt(2.0 / (c_in * 9))
            self.weights.append(w.to(self.device))
            self.biases.append((0.1 * torch.randn(c_out, generator=g)).to(self.device))
            c_in = c_out
        self.dim = sum(self.CHANNELS)
        self.seed = seed
        self.name = self.label(seed)

    @classmethod
    def label(cls, seed: int = 0) -> str:
        return (f"offline: fixed-seed random CNN (randcnn-v1, seed {seed}, {sum(cls.CHANNELS)}-d); "
                f"NOT comparable to published FID/KID")

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float().clamp(-1, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(self.RESOLUTION, self.RESOLUTION), mode="bilinear", align_corners=False,
                          antialias=True)
        feats = []
        for w, b in zip(self.weights, self.biases):
            x = F.avg_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2)
            feats.append(x.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)


def find_inception_weights(path=None) -> Path | None:
    """The Inception FID weights file: ``path``, else ``$PATCHLAB_INCEPTION_WEIGHTS``, else the torch hub cache.

    The cache is ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``), where pytorch-fid, torch-fidelity and torchmetrics keep it
    under one of :data:`INCEPTION_FILES`. A ``path`` or environment variable that names a missing file
    raises :class:`InceptionUnavailableError` (a typo should not silently change the metric); returns
    None when nothing is found in the cache.
    """
    for given, origin in ((path, "the given path"), (os.environ.get(INCEPTION_ENV), f"${INCEPTION_ENV}")):
        if given:
            given = Path(given).expanduser()
            if not given.is_file():
                raise InceptionUnavailableError(f"Inception weights file {given} (from {origin}) does not exist")
            return given
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return next((folder / name for name in INCEPTION_FILES if (folder / name).is_file()), None)


def _inception_missing_message() -> str:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return ("standard FID/KID need the Inception-v3 FID weights, which cannot be downloaded on this machine. "
            f"Copy {INCEPTION_FILES[0]} (pytorch-fid's release) or {INCEPTION_FILES[1]} (torch-fidelity's) "
            f"into {folder}, or set {INCEPTION_ENV}=/path/to/the/file, or pass inception_weights=... "
            "(CLI: --inception-weights). Or use features='offline' (not comparable to published numbers).")


def feature_extractor(kind: str = "auto", *, weights=None, device="cpu", seed: int = 0) -> FeatureExtractor:
    """The extractor for ``kind``: ``"inception"`` (standard; raises :class:`InceptionUnavailableError`
    with instructions when the weights or torch-fidelity are missing), ``"offline"``
    (:class:`RandomCNNFeatures`), or ``"auto"`` (Inception when available, else offline with an
    :class:`OfflineFeaturesWarning`). Check ``.name`` / ``.standard`` to label results."""
    if isinstance(kind, FeatureExtractor):
        return kind
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    if kind == "offline":
        return RandomCNNFeatures(seed=seed, device=device)
    found = find_inception_weights(weights)
    if found is not None:
        try:
            return InceptionFeatures(found, device=device)
        except InceptionUnavailableError:
            if kind == "inception":
                raise
    elif kind == "inception":
        raise InceptionUnavailableError(_inception_missing_message())
    extractor = RandomCNNFeatures(seed=seed, device=device)
    warnings.warn(f"standard Inception features are not available here; FID/KID use {extractor.name}",
                  OfflineFeaturesWarning, stacklevel=2)
    return extractor


def describe(features="auto", *, weights=None, seed: int = 0) -> str:
    """The name of the features that ``features`` resolves to here, without loading any network."""
    if isinstance(features, FeatureExtractor):
        return features.name
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {features!r}")
    if features != "offline":
        if find_inception_weights(weights) is not None:
            return InceptionFeatures.NAME
        if features == "inception":
            raise InceptionUnavailableError(_inception_missing_message())
    return RandomCNNFeatures.label(seed)


# --- FID and KID from features ----------------------------------------------------------------------


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features [n x D] and [m x D] (n, m >= 2).

    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^1/2)``, with unbiased covariances and
    ``tr((S_r S_f)^1/2) = sum sqrt(eig(S_r^1/2 S_f S_r^1/2))`` (a symmetric PSD matrix, so a stable
    ``eigh`` in float64 replaces ``scipy.linalg.sqrtm``).
    """
    a, b = real.double(), fake.double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"FID needs two feature sets [n x D] with n >= 2, got {list(a.shape)} and {list(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return float(value.clamp_min(0))


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel Inception distance from features [n x D], [m x D]: (mean, standard error) over subsets.

    Binkowski et al. (2018): the unbiased MMD^2 with the cubic polynomial kernel
    ``k(x, y) = (x.y / D + 1)^3``, averaged over ``subsets`` random subsets drawn from each set
    (without replacement within a subset, from ``generator``, default seed 0), as torch-fidelity
    computes it. A subset holds ``min(subset_size, half the smaller set)`` features (1000 as usual for
    sets of 2000 or more; for smaller sets, half, so that subsets differ: the estimator is unbiased
    whatever the subset size). The standard error is the subsets' standard deviation over
    sqrt(subsets); subsets overlap, so it understates the uncertainty for small sets.
    """
    a, b = real.double(), fake.double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two feature sets [n x D] of the same D, got {list(a.shape)} and {list(b.shape)}")
    if min(a.shape[0], b.shape[0]) < 4:
        raise ValueError(f"KID needs at least 4 images in each set, got {a.shape[0]} and {b.shape[0]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets must be >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, min(a.shape[0], b.shape[0]) // 2)
    generator = generator or make_generator(0)
    dim = a.shape[1]
    values = []
    for _ in range(subsets):
        x = b[torch.randperm(b.shape[0], generator=generator)[:m]]
        y = a[torch.randperm(a.shape[0], generator=generator)[:m]]
        kxx, kyy, kxy = (x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values.append(within - 2 * kxy.sum() / (m * m))
    values_t = torch.stack(values)
    stderr = values_t.std() / math.sqrt(subsets) if subsets > 1 else torch.tensor(float("nan"))
    return float(values_t.mean()), float(stderr)


def fid(real: torch.Tensor, fake: torch.Tensor, *, features="auto", extractor: FeatureExtractor | None = None,
        inception_weights=None, batch_size: int = 64, device="cpu", progress: bool = False) -> float:
    """FID between ``real`` and ``fake`` [B x C x H x W] in [-1, 1] (B >= 2; thousands for a stable value).

    ``extractor`` (or else ``features``: "auto", "inception", "offline", see :func:`feature_extractor`)
    says which features; with "auto" and no Inception weights an :class:`OfflineFeaturesWarning` is
    issued and the value is not comparable to published FIDs. FID is biased upward for small sets.
    """
    real, fake = _check_pair(real, fake)
    ext = extractor or feature_extractor(features, weights=inception_weights, device=device)
    return fid_from_features(ext(real, batch_size=batch_size, progress=progress),
                             ext(fake, batch_size=batch_size, progress=progress))


def kid(real: torch.Tensor, fake: torch.Tensor, *, features="auto", extractor: FeatureExtractor | None = None,
        subsets: int = 100, subset_size: int = 1000, generator: torch.Generator | None = None,
        inception_weights=None, batch_size: int = 64, device="cpu", progress: bool = False) -> tuple[float, float]:
    """KID (mean, standard error) between ``real`` and ``fake`` [B x C x H x W] in [-1, 1].

    Features as in :func:`fid`; the estimate as in :func:`kid_from_features` (unbiased, so it can be
    slightly negative for matching sets).
    """
    real, fake = _check_pair(real, fake)
    ext = extractor or feature_extractor(features, weights=inception_weights, device=device)
    return kid_from_features(ext(real, batch_size=batch_size, progress=progress),
                             ext(fake, batch_size=batch_size, progress=progress),
                             subsets=subsets, subset_size=subset_size, generator=generator)


# --- global coherence on the shapes dataset ------------------------------------------------------


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
    x = _check_images(images)
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
    batch, height, width = mask.shape
    fg = mask[:, None].float()
    labels = (torch.arange(1, height * width + 1, dtype=torch.float32).reshape(1, 1, height, width) * fg)
    while True:  # propagate the largest label through each region
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        if torch.equal(grown, labels):
            break
        labels = grown
    counts = torch.zeros(batch, dtype=torch.long)
    for i in range(batch):
        values, sizes = labels[i].flatten().unique(return_counts=True)
        counts[i] = int(((values > 0) & (sizes >= min_pixels)).sum())
    return counts
