"""patchlab.metrics.uncertainty: Wilson intervals, the bootstrap and half-samples over samples, ties; and the
intervals of the metrics that use them (seam score, SWD, KID, FID, the content scores)."""

import math

import pytest
import torch

from patchlab import metrics as M
from patchlab.metrics import fid_kid, swd
from patchlab.metrics import uncertainty as U
from patchlab.runtime import make_generator


def test_wilson_interval_at_hand_computed_values():
    # z = 1.959964, z^2 = 3.841459; n = 10: denominator 1 + z^2 / n = 1.3841459
    # 0 / 10: centre = half = (z^2 / 20) / 1.3841459 = 0.1387664 -> [0, 0.2775328]
    assert U.wilson(0, 10).low == 0.0 and U.wilson(0, 10).high == pytest.approx(0.2775328, abs=1e-6)
    # 5 / 10: centre 0.5, half = z sqrt(0.025 + z^2 / 400) / 1.3841459 = 1.959964 x 0.1860206 / 1.3841459
    #       = 0.2634069
    five = U.wilson(5, 10)
    assert (five.low, five.high) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    assert U.wilson(10, 10).low == pytest.approx(1 - 0.2775328, abs=1e-6) and U.wilson(10, 10).high == 1.0
    # the textbook example (Newcombe 1998): 81 of 263 -> [0.2553, 0.3662]
    assert (U.wilson(81, 263).low, U.wilson(81, 263).high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    # narrower with more trials, wider with a higher level; from a boolean tensor the same
    assert U.wilson(50, 100).width < five.width < U.wilson(5, 10, level=0.99).width
    assert U.share_interval(torch.tensor([True] * 5 + [False] * 5)) == five
    for bad in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            U.wilson(*bad)
    with pytest.raises(ValueError, match="level"):
        U.wilson(1, 2, level=1.0)


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    """The percentile bootstrap of the mean of n normal values is about mean +- 1.96 sd / sqrt(n)."""
    n = 400
    x = torch.randn(n, generator=make_generator(0), dtype=torch.float64) * 2 + 3
    indices = U.resample(n, generator=make_generator(1), resamples=1000)
    got = U.bootstrap(lambda idx: x[idx].mean(), indices)
    half = 1.96 * float(x.std()) / math.sqrt(n)
    assert got.contains(float(x.mean()))
    assert got.low == pytest.approx(float(x.mean()) - half, abs=0.15 * half)
    assert got.high == pytest.approx(float(x.mean()) + half, abs=0.15 * half)
    # half-samples without replacement spread a mean as much as the full sample's own sampling does
    halves = U.halves(n, generator=make_generator(1), resamples=1000)
    assert halves.shape == (1000, n // 2) and all(len(set(h.tolist())) == n // 2 for h in halves[:20])
    assert U.bootstrap(lambda idx: x[idx].mean(), halves).width == pytest.approx(2 * half, rel=0.15)


def test_bootstrap_is_deterministic_under_a_seed_and_recentres_on_the_estimate():
    # the share of distinct samples: 1 for the samples themselves, about 0.63 for any resample (biased)
    stat = lambda idx: len(set(idx.tolist())) / 50  # noqa: E731
    one = U.bootstrap(stat, U.resample(50, generator=make_generator(7)))
    assert one == U.bootstrap(stat, U.resample(50, generator=make_generator(7)))
    assert one != U.bootstrap(stat, U.resample(50, generator=make_generator(8)))
    assert 0.5 < one.low < one.high < 0.8
    moved = U.bootstrap(stat, U.resample(50, generator=make_generator(7)), estimate=1.0)
    assert moved.width == pytest.approx(one.width) and moved.low < 1.0 < moved.high
    sets = U.Resamples.draw(50, generator=make_generator(7))
    assert sets.n == 50 and sets.bootstrap.shape == (U.RESAMPLES, 50) and sets.halves.shape == (U.RESAMPLES, 25)
    assert torch.equal(sets.bootstrap, U.resample(50, generator=make_generator(7)))
    assert U.Resamples.draw(3, generator=make_generator(7)).halves is None
    with pytest.raises(ValueError, match="R x n"):
        U.bootstrap(stat, torch.arange(5))
    with pytest.raises(ValueError, match="not defined on 3 of 3"):
        U.bootstrap(lambda idx: float("nan"), U.resample(5, generator=make_generator(0), resamples=3))
    # a resample on which the statistic is not defined is left out (here: all one sample)
    ones = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    spread = lambda idx: float(idx.double().std()) if idx.unique().numel() > 1 else math.nan  # noqa: E731
    assert U.bootstrap(spread, ones) == U.Interval(math.sqrt(0.5), math.sqrt(0.5))


def test_ties_overlap_and_rows_without_intervals_read_as_none():
    a, b, c = U.Interval(1.0, 2.0), U.Interval(1.5, 3.0), U.Interval(2.5, 4.0)
    assert a.overlaps(b) and b.overlaps(a) and b.overlaps(c) and not a.overlaps(c)
    assert U.tie(a, b) is True and U.tie(a, c) is False and U.tie(a, None) is None
    assert U.Interval(1.0, 2.0).overlaps(U.Interval(2.0, 3.0))  # touching counts as a tie
    with pytest.raises(ValueError, match="low <= high"):
        U.Interval(2.0, 1.0)
    assert U.columns("SWD") == ("SWD_lo", "SWD_hi") and (U.LO, U.HI) == ("_lo", "_hi")
    assert a.as_columns("swd") == {"swd_lo": 1.0, "swd_hi": 2.0}
    assert U.as_columns("fid", None) == {"fid_lo": None, "fid_hi": None}
    assert U.read({"swd": 3.0, "swd_lo": "1", "swd_hi": "2.0"}, "swd") == a  # CSV text or numbers
    for row in ({"swd": 3.0}, {"swd_lo": "", "swd_hi": "2"}, {"swd_lo": None, "swd_hi": 2.0},
                {"swd_lo": float("nan"), "swd_hi": 2.0}, None):
        assert U.read(row, "swd") is None


def test_seam_score_interval_resamples_images(shapes):
    images = M.offset_patches(shapes[0][:128], 2, amount=0.1, generator=make_generator(0))
    scores = M.seam_scores(images, 2)
    assert scores.overall_of(torch.arange(128)) == pytest.approx(scores.overall, rel=1e-6)
    assert scores.overall_of(torch.tensor([3])) == pytest.approx(float(scores.per_image[3]), rel=1e-6)
    interval = scores.interval(U.resample(128, generator=make_generator(1)))
    assert interval.contains(scores.overall) and 0 < interval.width < scores.overall / 2
    real = M.seam_scores(shapes[1], 2)
    assert not interval.overlaps(real.interval(U.resample(64, generator=make_generator(1))))  # seams vs none


def test_swd_interval_keeps_the_value_and_separates_sets(shapes, noise):
    real, other = shapes[0][:64], shapes[1]
    kw = dict(descriptors_per_image=32, directions=64)
    indices = U.resample(64, generator=make_generator(2), resamples=100)
    value, interval = swd.sliced_wasserstein_interval(real, other, indices, generator=make_generator(5), **kw)
    assert value == M.sliced_wasserstein(real, other, generator=make_generator(5), **kw)  # the same draws
    assert interval.contains(value) and interval.width > 0
    to_noise, noisy = swd.sliced_wasserstein_interval(real, noise(64), indices, generator=make_generator(5), **kw)
    assert not interval.overlaps(noisy) and noisy.contains(to_noise)
    # a resample of all images in order is the SWD on the bootstrap's directions (per-channel projections)
    levels, desc_real, desc_fake = swd._swd(real, other, generator=make_generator(5), min_resolution=16, patch=7,
                                            batch_size=256, progress=False, **kw)
    level = swd._ResampledLevel(desc_real[0], desc_fake[0], 64, 8, make_generator(9))
    direct = 1e3 * swd._sliced_distance(desc_real[0], swd._normalised(desc_fake[0]), 8, make_generator(9))
    assert level(torch.arange(64)) == pytest.approx(direct, rel=1e-4)


def test_fid_and_kid_intervals_from_features():
    g = make_generator(0)
    real, fake = torch.randn(200, 16, generator=g), torch.randn(120, 16, generator=g) * 1.2 + 0.3
    for d in (16, 300):  # D x D and Gram forms
        r, f = (real, fake) if d == 16 else (torch.randn(200, d, generator=g), torch.randn(120, d, generator=g) + 0.1)
        resampled = fid_kid._ResampledFrechet(r, f)
        assert resampled(torch.arange(120)) == pytest.approx(M.fid_from_features(r, f), rel=1e-6)
        picked = torch.randperm(120, generator=g)[:60]
        assert resampled(picked) == pytest.approx(M.fid_from_features(r, f[picked]), rel=1e-6)
    halves = U.halves(120, generator=make_generator(1), resamples=100)
    interval = fid_kid.fid_interval(real, fake, halves)
    assert interval.contains(M.fid_from_features(real, fake))
    assert not interval.overlaps(fid_kid.fid_interval(real, real[:120] + 0.01, halves))
    assert fid_kid.fid_interval(real, fake, halves[:1].expand(10 ** 9, 60)) is None  # too much work
    kid, _ = M.kid_from_features(real, fake)
    indices = U.resample(120, generator=make_generator(1), resamples=100)
    kid_bounds = fid_kid.kid_interval(real, fake, indices, estimate=kid)
    assert kid_bounds.contains(kid) and kid_bounds.low > 0  # clearly different sets
    # the resample of every sample once is the unbiased MMD^2 of all pairs
    same = fid_kid.kid_interval(real, fake, torch.arange(120).expand(3, 120), estimate=0.0)
    assert same.width == pytest.approx(0.0, abs=1e-12)
