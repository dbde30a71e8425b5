"""Fréchet and kernel Inception distances, from features or from images (through a feature extractor)."""

import math

import torch

from ..runtime import make_generator
from .features import FeatureExtractor, feature_extractor
from .images import check_pair
from .uncertainty import LEVEL, Interval, bootstrap, one_thread

MAX_BOOTSTRAP_WORK = 1e12  # multiply-adds a Fréchet distance's interval may take (a minute or so on 2 CPU cores)


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
    values = []
    for _ in range(subsets):
        x = b[torch.randperm(b.shape[0], generator=generator)[:m]]
        y = a[torch.randperm(a.shape[0], generator=generator)[:m]]
        values.append(mmd2_polynomial(x, y))
    values_t = torch.stack(values)
    stderr = values_t.std() / math.sqrt(subsets) if subsets > 1 else torch.tensor(float("nan"))
    return float(values_t.mean()), float(stderr)


def mmd2_polynomial(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two feature sets [m x D] of the same size with the cubic polynomial kernel
    ``k(a, b) = (a.b / D + 1)^3`` (Binkowski et al. 2018; one subset of :func:`kid_from_features`)."""
    m, dim = x.shape
    kxx, kyy, kxy = (x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.sum() / (m * m)


def fid_interval(real: torch.Tensor, fake: torch.Tensor, indices: torch.Tensor, *,
                 level: float = LEVEL) -> Interval | None:
    """The interval of :func:`fid_from_features` (real [m x D], fake [n x D] features) over the fake index sets
    ``indices`` [R x k] (the half-samples of :func:`patchlab.metrics.uncertainty.halves`: the bootstrap's
    repeated samples overstate a Fréchet distance's spread), re-centred on the Fréchet distance of all fake
    features. The real side's mean, covariance and its root are computed once; a resample recomputes the fake
    mean and covariance from the features (no network runs again), through a k x k Gram matrix when k < D.
    None when that would take more than :data:`MAX_BOOTSTRAP_WORK` multiply-adds (R x k x D x min(k, D): the
    2048-d Inception features of thousands of samples)."""
    n, dim = fake.shape
    k = min(indices.shape[1], dim)
    if indices.shape[0] * (indices.shape[1] * dim * k + k ** 3) > MAX_BOOTSTRAP_WORK:
        return None
    with one_thread():
        distance = _ResampledFrechet(real, fake)
        return bootstrap(distance, indices, level=level, estimate=distance(torch.arange(n)))


class _ResampledFrechet:
    """The Fréchet distance of fixed features ``real`` [m x D] and the rows ``indices`` of ``fake`` [n x D]:
    ``|mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr (R S_f R)^1/2`` with ``R = S_r^1/2``; with ``Y = fake R`` the
    last trace is the sum of the square roots of the eigenvalues of the resample's centred ``Y^T Y / (n - 1)``,
    or of its centred Gram matrix ``Y Y^T / (n - 1)`` (the same nonzero eigenvalues) when n < D."""

    def __init__(self, real: torch.Tensor, fake: torch.Tensor):
        a, self.fake = real.double(), fake.double()
        cov_a = torch.cov(a.T)
        w, v = torch.linalg.eigh(cov_a)
        self.mu_real, self.trace_real = a.mean(0), cov_a.trace()
        self.y = self.fake @ ((v * w.clamp_min(0).sqrt()) @ v.T)  # [n x D]
        self.norms = self.fake.square().sum(dim=1)  # [n]
        self.gram = None  # [n x n], computed when first needed

    def __call__(self, indices: torch.Tensor) -> float:
        n = len(indices)
        mu = self.fake[indices].mean(0)
        trace_fake = (self.norms[indices].sum() - n * mu.square().sum()) / (n - 1)
        if n < self.y.shape[1]:
            if self.gram is None:
                self.gram = self.y @ self.y.T
            g = self.gram[indices][:, indices]
            row = g.mean(dim=1)
            middle = g - row[:, None] - row[None, :] + g.mean()
        else:
            y = self.y[indices]
            y = y - y.mean(0)
            middle = y.T @ y
        trace_root = torch.linalg.eigvalsh(middle / (n - 1)).clamp_min(0).sqrt().sum()
        value = (self.mu_real - mu).square().sum() + self.trace_real + trace_fake - 2 * trace_root
        return float(value.clamp_min(0))


def kid_interval(real: torch.Tensor, fake: torch.Tensor, indices: torch.Tensor, *, estimate: float,
                 level: float = LEVEL) -> Interval:
    """The bootstrap interval of KID (real [m x D], fake [n x D] features) over the fake index sets
    ``indices`` [R x n], re-centred on ``estimate`` (the KID of :func:`kid_from_features`).

    A resample's value is the unbiased MMD^2 of all its samples against all real ones, from the kernel
    matrices computed once: with ``w`` the resample's count of each fake sample,
    ``(w^T K_ff w - sum w^2 diag K_ff) / (n^2 - sum w^2)`` (pairs of one sample with itself left out)
    ``+ mean_{i != j} K_rr - 2 w^T K_fr 1 / (n m)``. Memory: n x n kernel values."""
    a, b = real.double(), fake.double()
    dim, m, n = a.shape[1], a.shape[0], b.shape[0]
    with one_thread():
        k_ff = (b @ b.T / dim + 1) ** 3
        k_rr = (a @ a.T / dim + 1) ** 3
        within_real = (k_rr.sum() - k_rr.diagonal().sum()) / (m * (m - 1))
        cross = ((b @ a.T / dim + 1) ** 3).sum(dim=1) / (n * m)  # [n]
    diag = k_ff.diagonal()

    def mmd2(idx):
        w = torch.bincount(idx, minlength=n).double()
        within_fake = (w @ k_ff @ w - (w.square() * diag).sum()) / (n * n - w.square().sum())
        return float(within_fake + within_real - 2 * (w * cross).sum())

    return bootstrap(mmd2, indices, level=level, estimate=estimate)


def fid(real: torch.Tensor, fake: torch.Tensor, *, features="auto", extractor: FeatureExtractor | None = None,
        inception_weights=None, batch_size: int = 64, device="cpu", progress: bool = False) -> float:
    """FID between ``real`` and ``fake`` [B x C x H x W] in [-1, 1] (B >= 2; thousands for a stable value).

    ``extractor`` (or else ``features``: "auto", "inception", "offline", see :func:`feature_extractor`)
    says which features; with "auto" and no Inception weights an :class:`OfflineFeaturesWarning` is
    issued and the value is not comparable to published FIDs. FID is biased upward for small sets.
    """
    real, fake = check_pair(real, fake)
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
    real, fake = check_pair(real, fake)
    ext = extractor or feature_extractor(features, weights=inception_weights, device=device)
    return kid_from_features(ext(real, batch_size=batch_size, progress=progress),
                             ext(fake, batch_size=batch_size, progress=progress),
                             subsets=subsets, subset_size=subset_size, generator=generator)
