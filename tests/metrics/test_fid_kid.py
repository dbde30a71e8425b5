"""patchlab.metrics.fid_kid: FID and KID, cross-checked against torch-fidelity on the same features."""

import pytest
import torch

from patchlab import metrics as M
from patchlab.runtime import make_generator


def test_fid_from_features_golden():
    a = torch.randn(200, 5, generator=make_generator(0), dtype=torch.float64)
    a = a - a.mean(dim=0)
    assert M.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert M.fid_from_features(a, a + shift) == pytest.approx(5.0, rel=1e-8)  # same covariance: |shift|^2
    assert M.fid_from_features(a, 2 * a) == pytest.approx(float(torch.cov(a.T).trace()), rel=1e-6)  # tr(S) (1-2)^2
    with pytest.raises(ValueError, match="n >= 2"):
        M.fid_from_features(a[:1], a)


def test_kid_from_features():
    a = torch.randn(100, 8, generator=make_generator(0), dtype=torch.float64)
    b = torch.randn(100, 8, generator=make_generator(1), dtype=torch.float64)
    mean, stderr = M.kid_from_features(a, b, subsets=20, generator=make_generator(2))
    assert (mean, stderr) == M.kid_from_features(a, b, subsets=20, generator=make_generator(2))
    assert abs(mean) < 3 * stderr + 1e-3 and stderr > 0
    far, _ = M.kid_from_features(a, b + 1, subsets=20)
    assert far > 10 * abs(mean)
    with pytest.raises(ValueError, match="at least 4"):
        M.kid_from_features(a[:3], b)


# --- the same numbers as torch-fidelity on the same features ------------------------------------------


def _features(n, d=16, seed=0, shift=0.0):
    return torch.randn(n, d, generator=make_generator(seed), dtype=torch.float64) + shift


def test_fid_equals_torch_fidelity():
    fidelity = pytest.importorskip("torch_fidelity.metric_fid")
    for a, b in ((_features(300), _features(300, seed=1, shift=0.3)), (_features(50), 1.5 * _features(80, seed=2))):
        theirs = fidelity.fid_statistics_to_metric(fidelity.fid_features_to_statistics(a),
                                                   fidelity.fid_features_to_statistics(b),
                                                   verbose=False)["frechet_inception_distance"]
        assert M.fid_from_features(a, b) == pytest.approx(theirs, rel=1e-6)


def test_kid_equals_torch_fidelity():
    fidelity = pytest.importorskip("torch_fidelity.metric_kid")
    a, b = _features(120), _features(120, seed=1, shift=0.2)
    kernel = {"kid_kernel": "poly", "kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None,
              "kid_kernel_poly_coef0": 1}
    # one subset: the unbiased MMD^2 itself, to round-off
    mine = float(M.mmd2_polynomial(b, a))
    assert mine == pytest.approx(float(fidelity.kernel_mmd(b.numpy(), a.numpy(), **kernel)), rel=1e-10)
    # the subset average: the same estimator, so the means agree within their standard errors
    m = 60
    ours, our_se = M.kid_from_features(a, b, subsets=400, subset_size=m, generator=make_generator(3))
    theirs = fidelity.kid_features_to_metric(a, b, kid_subsets=400, kid_subset_size=m, rng_seed=3, verbose=False,
                                             **kernel)
    their_se = theirs["kernel_inception_distance_std"] / 400 ** 0.5
    assert abs(ours - theirs["kernel_inception_distance_mean"]) < 4 * (our_se ** 2 + their_se ** 2) ** 0.5
