"""One recipe for the metrics of a set of samples against real images, for evaluation, learning curves and
the study alike: the seam score on the lines where the sampler's windows bordered (the tiling's, so a seam
remedy is never scored on the fixed grid alone), SWD, KID (and FID when asked for), the dataset's own
content score (:mod:`patchlab.metrics.content`: coherence for ``shapes``, recognizability for ``digits``) and the
mean pixel value.
"""

import torch

from .fid_kid import fid_from_features, kid_from_features
from .seams import seam_score, seam_scores
from .content import for_dataset
from .swd import sliced_wasserstein


def seam_patches(tiling) -> int:
    """The grid a seam score looks at: the model's N, or 2 x 2 for N = 1 (a baseline for patch models)."""
    return tiling.n if tiling.n > 1 else 2


def score_samples(fake: torch.Tensor, real: torch.Tensor, *, tiling, steps: int, dataset: str, extractor,
                  swd_generator: torch.Generator, kid_generator: torch.Generator,
                  real_features: torch.Tensor | None = None, fid: bool = False, batch_size: int = 64,
                  progress: bool = False) -> dict:
    """The metrics of samples ``fake`` [n x C x H x W] against ``real`` [m x C x H x W] (both in [-1, 1]).

    ``tiling``: the :class:`patchlab.tiling.Tiling` the samples were drawn with, over ``steps`` denoising
    steps (its :meth:`~patchlab.tiling.Tiling.seam_lines` are the lines scored); ``dataset``: the dataset's
    name (its content score's columns are added: :func:`patchlab.metrics.content.for_dataset`); ``extractor``: the FID/KID features (:func:`patchlab.metrics.
    feature_extractor`), ``real_features`` the real images' when already computed; SWD and KID draw from
    their generators. Returns {seam_patches, seam_lines (the lines scored, as text), seam_fake, seam_real,
    seam_ratio, swd, kid, kid_stderr, fid (None unless ``fid``), mean_fake, mean_real} and the content score's
    keys (``coherence_fake``, ``coherence_real`` for shapes; see :mod:`patchlab.metrics.content`).
    """
    n = seam_patches(tiling)
    lines = tiling.seam_lines(steps, patches=n)
    scores = seam_scores(fake, n, lines=lines)
    seam_fake, seam_real = scores.overall, seam_score(real, n, lines=lines)
    swd = sliced_wasserstein(real, fake, generator=swd_generator, progress=progress)
    if real_features is None:
        real_features = extractor(real, batch_size=batch_size, progress=progress)
    fake_features = extractor(fake, batch_size=batch_size, progress=progress)
    kid, kid_stderr = kid_from_features(real_features, fake_features, generator=kid_generator)
    return {"seam_patches": n, "seam_lines": " ".join(str(b) for b in sorted({int(k[1:]) for k in scores.borders})),
            "seam_fake": seam_fake, "seam_real": seam_real, "seam_ratio": seam_fake / seam_real, "swd": swd,
            "kid": kid, "kid_stderr": kid_stderr,
            "fid": fid_from_features(real_features, fake_features) if fid else None,
            "mean_fake": float(fake.mean()), "mean_real": float(real.mean()),
            **for_dataset(dataset).score(fake, real, n)}
