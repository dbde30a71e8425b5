"""One recipe for the metrics of a set of samples against real images, for evaluation, learning curves and
the study alike: the seam score on the lines where the sampler's windows bordered (the tiling's, so a seam
remedy is never scored on the fixed grid alone), SWD, KID (and FID when asked for), the dataset's own
content score (:mod:`patchlab.metrics.content`: coherence for ``shapes``, recognizability for ``digits``) and the
mean pixel value; and the 95% interval of every score of the samples (:mod:`patchlab.metrics.uncertainty`).
"""

import torch

from . import uncertainty as U
from .content import for_dataset
from .fid_kid import fid_from_features, fid_interval, kid_from_features, kid_interval
from .seams import seam_score, seam_scores
from .swd import sliced_wasserstein_interval


def seam_patches(tiling) -> int:
    """The grid a seam score looks at: the model's N, or 2 x 2 for N = 1 (a baseline for patch models)."""
    return tiling.n if tiling.n > 1 else 2


def score_samples(fake: torch.Tensor, real: torch.Tensor, *, tiling, steps: int, dataset: str, extractor,
                  swd_generator: torch.Generator, kid_generator: torch.Generator, resample_generator: torch.Generator,
                  resample_count: int = U.RESAMPLES, real_features: torch.Tensor | None = None, fid: bool = False,
                  batch_size: int = 64, progress: bool = False) -> dict:
    """The metrics of samples ``fake`` [n x C x H x W] against ``real`` [m x C x H x W] (both in [-1, 1]).

    ``tiling``: the :class:`patchlab.tiling.Tiling` the samples were drawn with, over ``steps`` denoising
    steps (its :meth:`~patchlab.tiling.Tiling.seam_lines` are the lines scored); ``dataset``: the dataset's
    name (its content score's columns are added: :func:`patchlab.metrics.content.for_dataset`); ``extractor``: the FID/KID features (:func:`patchlab.metrics.
    feature_extractor`), ``real_features`` the real images' when already computed; SWD and KID draw from
    their generators. Returns {seam_patches, seam_lines (the lines scored, as text), seam_fake, seam_real,
    seam_ratio, swd, kid, kid_stderr, fid (None unless ``fid``), mean_fake, mean_real} and the content score's
    keys (``coherence_fake``, ``coherence_real`` for shapes; see :mod:`patchlab.metrics.content`).

    Intervals (:mod:`patchlab.metrics.uncertainty`): ``seam_fake``, ``swd``, ``kid`` and ``fid`` get
    ``_lo`` / ``_hi`` bounds (``fid``'s None when FID is not computed or too large to resample), the content
    score its own; all over the same ``resample_count`` index sets of the samples, drawn from
    ``resample_generator`` (the real images stay fixed).
    """
    n = seam_patches(tiling)
    sets = U.Resamples.draw(len(fake), generator=resample_generator, resamples=resample_count)
    lines = tiling.seam_lines(steps, patches=n)
    scores = seam_scores(fake, n, lines=lines)
    seam_fake, seam_real = scores.overall, seam_score(real, n, lines=lines)
    swd, swd_interval = sliced_wasserstein_interval(real, fake, sets.bootstrap, generator=swd_generator,
                                                    progress=progress)
    if real_features is None:
        real_features = extractor(real, batch_size=batch_size, progress=progress)
    fake_features = extractor(fake, batch_size=batch_size, progress=progress)
    kid, kid_stderr = kid_from_features(real_features, fake_features, generator=kid_generator)
    fid_value = fid_from_features(real_features, fake_features) if fid else None
    fid_bounds = fid_interval(real_features, fake_features, sets.halves) if fid and sets.halves is not None else None
    return {"seam_patches": n, "seam_lines": " ".join(str(b) for b in sorted({int(k[1:]) for k in scores.borders})),
            "seam_fake": seam_fake, **scores.interval(sets.bootstrap).as_columns("seam_fake"),
            "seam_real": seam_real, "seam_ratio": seam_fake / seam_real,
            "swd": swd, **swd_interval.as_columns("swd"), "kid": kid, "kid_stderr": kid_stderr,
            **kid_interval(real_features, fake_features, sets.bootstrap, estimate=kid).as_columns("kid"),
            "fid": fid_value, **U.as_columns("fid", fid_bounds),
            "mean_fake": float(fake.mean()), "mean_real": float(real.mean()),
            **for_dataset(dataset).score(fake, real, n, resamples=sets)}
