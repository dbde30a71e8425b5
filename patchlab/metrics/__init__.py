"""Image-quality metrics for patch-based generation, all batched, deterministic and free of global RNG.

Images go in as [B x C x H x W] tensors in [-1, 1] (C = 1 or 3), on any device; the metrics are
computed on the CPU (they are cheap), the feature extractors of FID / KID on their own device.
One module per metric:

- :mod:`.seams`: :func:`seam_score` / :func:`seam_scores`, how much stronger the image changes across
  patch borders than next to them inside the patches (real images: about 1.0); and the synthetic
  artefacts :func:`shuffle_patches` / :func:`offset_patches` that calibrate it.
- :mod:`.swd`: :func:`sliced_wasserstein` / :func:`swd_per_level`, SWD of Laplacian-pyramid 7 x 7
  descriptors (Karras et al. 2018, Progressive GAN), x 1e3.
- :mod:`.features`: the feature extractors of FID / KID (:func:`feature_extractor`): the standard
  Inception-v3 when its weights are available offline, else an offline extractor whose name says that
  the numbers are not comparable to published ones.
- :mod:`.fid_kid`: :func:`fid` / :func:`kid` and their forms on features.
- :mod:`.shape_coherence`: :func:`coherence` / :func:`coherence_details`, global coherence for the
  procedural ``shapes`` dataset (one object, one colour, across all patches).
- :mod:`.uncertainty`: the 95% intervals of all of the above (Wilson for shares, resampling the samples for
  the rest) and ties.
- :mod:`.evaluate`: a trained run -> all of the above (the ``evaluate`` command).
"""

from .features import (FEATURE_KINDS, INCEPTION_ENV, INCEPTION_FILES, FeatureExtractor,  # noqa: F401
                       InceptionFeatures, InceptionUnavailableError, OfflineFeaturesWarning, RandomCNNFeatures,
                       describe, feature_extractor, find_inception_weights)
from . import inception_weights  # noqa: F401
from .fid_kid import fid, fid_from_features, kid, kid_from_features, mmd2_polynomial  # noqa: F401
from .seams import SeamScores, offset_patches, seam_score, seam_scores, shuffle_patches  # noqa: F401
from .shape_coherence import CoherenceResult, coherence, coherence_details  # noqa: F401
from .swd import laplacian_pyramid, sliced_wasserstein, swd_per_level  # noqa: F401
from . import curves, evaluate  # noqa: F401,E402  (they use the names above)
