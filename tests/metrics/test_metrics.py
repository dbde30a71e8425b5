import warnings

import pytest
import torch

from patchlab import metrics as M
from patchlab import patches as P
from patchlab.metrics.swd import _blur
from patchlab.data import load_images, make_dataset
from patchlab.runtime import make_generator


@pytest.fixture(scope="module")
def shapes():
    """256 real shapes images at 32 px, and 64 others from the test split."""
    train = load_images(make_dataset("shapes", image_size=32, size=256), range(256))
    test = load_images(make_dataset("shapes", image_size=32, split="test", size=64), range(64))
    return train, test


@pytest.fixture(scope="module")
def faces():
    """All 100 LFW faces at 32 px, unflipped (train then test)."""
    return torch.cat([load_images(make_dataset("faces", image_size=32, split=s, flip=False), range(n))
                      for s, n in (("train", 90), ("test", 10))])


def _noise(n, size=32, seed=3):
    return torch.rand(n, 3, size, size, generator=make_generator(seed)) * 2 - 1


# --- seam score --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_seam_score_is_about_one_on_real_images_and_high_on_seams(shapes, faces, n):
    # 256 shapes / 100 faces: with 64 shapes the score of real images spreads by about +-0.08 (1 sd) at N=4.
    g = make_generator(1)
    for images in (shapes[0], faces):
        real = M.seam_score(images, n)
        assert 0.85 <= real <= 1.15, (n, len(images), real)
        assert M.seam_score(M.shuffle_patches(images, n, generator=g), n) > 2.5 * real
    assert M.seam_score(M.offset_patches(shapes[0], n, amount=0.1, generator=g), n) > 1.5
    assert M.seam_score(M.offset_patches(faces, n, amount=0.2, generator=g), n) > 1.3


def test_seam_scores_golden_values():
    ramp = torch.linspace(-1, 1, 16).expand(2, 3, 16, 16).clone()  # constant horizontal gradient
    result = M.seam_scores(ramp, 2)
    assert result.overall == pytest.approx(1.0, abs=1e-3)
    assert set(result.borders) == {"v8", "h8"} and result.per_image.shape == (2,)
    assert result.borders["h8"] == pytest.approx(1.0)  # no vertical change at all: eps keeps it at 1
    stepped = ramp.clone()
    stepped[..., :, 8:] += 0.5  # a jump of 0.5 at the border on top of a gradient of 2/15 per pixel
    step = 2 / 15
    assert M.seam_scores(stepped, 2).borders["v8"] == pytest.approx((step + 0.5 + 1e-4) / (step + 1e-4), rel=1e-4)
    four = M.seam_scores(stepped, 4)
    assert set(four.borders) == {"v4", "v8", "v12", "h4", "h8", "h12"} and four.borders["v4"] == pytest.approx(1.0)


def test_seam_score_errors():
    x = torch.zeros(2, 3, 16, 16)
    for n, message in ((1, "at least 2 x 2"), (3, "not divisible"), (8, "too small")):
        with pytest.raises(ValueError, match=message):
            M.seam_score(x, n)
    with pytest.raises(ValueError, match=r"\[B x C x H x W\]"):
        M.seam_score(torch.zeros(3, 16, 16), 2)
    with pytest.raises(ValueError, match="empty"):
        M.seam_score(torch.zeros(0, 3, 16, 16), 2)


def test_shuffle_and_offset_patches_geometry():
    x = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 1, 8, 8).clone()  # image i filled with i
    out = M.shuffle_patches(x, 2, generator=make_generator(0))
    sources = P.split(out, 2)[:, :, 0, 0, 0]  # [B x 4]: which image each patch came from
    assert all(len(set(row.tolist())) == 4 for row in sources)  # four different source images
    assert sorted(sources[:, 1].tolist()) == list(range(8))  # each source used once per position
    torch.testing.assert_close(M.shuffle_patches(x, 2, generator=make_generator(0)), out)
    shifted = P.split(M.offset_patches(torch.zeros(2, 3, 8, 8), 2, amount=0.2), 2)
    assert (shifted.flatten(2).std(dim=2) == 0).all() and shifted.abs().max() <= 0.2  # one offset per patch


# --- sliced Wasserstein --------------------------------------------------------------------------------


def test_laplacian_pyramid_reconstructs_the_image():
    x = _noise(2, 32)
    levels = M.laplacian_pyramid(x, 3)
    assert [tuple(l.shape[-2:]) for l in levels] == [(32, 32), (16, 16), (8, 8)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        up = torch.zeros(*rebuilt.shape[:2], rebuilt.shape[2] * 2, rebuilt.shape[3] * 2)
        up[..., ::2, ::2] = rebuilt
        rebuilt = band + 4 * _blur(up)
    torch.testing.assert_close(rebuilt, x, atol=1e-5, rtol=0)


def test_swd_ranks_and_is_deterministic(shapes):
    real, other = shapes[0][:64], shapes[1]
    kw = dict(descriptors_per_image=32, directions=128)
    same = M.sliced_wasserstein(real, other, generator=make_generator(5), **kw)
    assert same == M.sliced_wasserstein(real, other, generator=make_generator(5), **kw)
    assert same != M.sliced_wasserstein(real, other, generator=make_generator(6), **kw)
    noise = M.sliced_wasserstein(real, _noise(64), generator=make_generator(5), **kw)
    shuffled = M.sliced_wasserstein(real, M.shuffle_patches(other, 2), generator=make_generator(5), **kw)
    assert same < shuffled < noise
    levels = M.swd_per_level(real, other[:40], **kw)  # sets of different sizes are compared by quantiles
    assert list(levels) == [32, 16] and all(v > 0 for v in levels.values())
    assert list(M.swd_per_level(real[:4, :, :8, :8], other[:4, :, :8, :8], **kw)) == [8]
    with pytest.raises(ValueError, match="differ in shape"):
        M.sliced_wasserstein(real, other[:, :1])
    with pytest.raises(ValueError, match="smaller than"):
        M.sliced_wasserstein(real[:, :, :4, :4], other[:, :, :4, :4])


# --- FID / KID ------------------------------------------------------------------------------------


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


def test_offline_fid_and_kid_rank_real_above_noise(shapes, faces):
    extractor = M.feature_extractor("offline")
    assert not extractor.standard and "NOT comparable" in extractor.name and extractor.dim == 480
    real, other, noise = shapes[0][:32], shapes[1][:32], _noise(32)
    assert M.fid(real, other, extractor=extractor) < M.fid(real, noise, features="offline") / 5
    kid_same, stderr = M.kid(real, other, extractor=extractor, subsets=10)
    assert kid_same < M.kid(real, noise, extractor=extractor, subsets=10)[0] / 10 and stderr > 0
    a, b, c = extractor(faces[:32]), extractor(faces[50:82]), extractor(_noise(32, seed=4))
    assert M.fid_from_features(a, b) < M.fid_from_features(a, c) / 5
    assert M.kid_from_features(a, b, subsets=10)[0] < M.kid_from_features(a, c, subsets=10)[0] / 10
    gray = shapes[1][:8, :1]
    assert extractor(gray).shape == (8, 480)  # grayscale works (repeated to RGB)
    torch.testing.assert_close(M.feature_extractor("offline")(gray), extractor(gray))  # fixed seed


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_inception_without_weights_is_a_clear_error(no_inception, monkeypatch, tmp_path):
    with pytest.raises(M.InceptionUnavailableError, match="pt_inception-2015-12-05.*PATCHLAB_INCEPTION_WEIGHTS"):
        M.feature_extractor("inception")
    with pytest.raises(M.InceptionUnavailableError, match="cannot be downloaded"):
        M.fid(_noise(4), _noise(4), features="inception")
    with pytest.raises(M.InceptionUnavailableError, match="does not exist"):
        M.feature_extractor("inception", weights=tmp_path / "typo.pth")
    monkeypatch.setenv(M.INCEPTION_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(M.InceptionUnavailableError, match=M.INCEPTION_ENV):
        M.feature_extractor("auto")
    monkeypatch.delenv(M.INCEPTION_ENV)
    with pytest.warns(M.OfflineFeaturesWarning, match="NOT comparable"):
        assert not M.feature_extractor("auto").standard
    assert M.describe("auto").startswith("offline:")
    with pytest.raises(ValueError, match="features must be"):
        M.feature_extractor("clip")


def test_inception_weights_are_found_and_loaded(no_inception, monkeypatch):
    """The loading path with a stand-in weights file of the right layout (random values)."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    net_class = fidelity.FeatureExtractorInceptionV3
    no_inception.mkdir(parents=True)
    empty = no_inception / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:  # build the network without loading anything, to get its layout
        m.setattr(net_class, "load_state_dict", lambda self, state: None)
        state = net_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)).state_dict()
    torch.save(state, no_inception / M.INCEPTION_FILES[0])
    assert M.find_inception_weights() == no_inception / M.INCEPTION_FILES[0]
    assert M.describe("auto") == M.InceptionFeatures.NAME
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.OfflineFeaturesWarning)
        extractor = M.feature_extractor("auto")
    assert extractor.standard and extractor.name == M.InceptionFeatures.NAME
    assert extractor(_noise(2, 16)[:, :1], batch_size=1).shape == (2, 2048)
    with pytest.raises(M.InceptionUnavailableError, match="cannot load"):
        M.feature_extractor("inception", weights=empty)  # a file without the weights: loud, not silent


# --- coherence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_coherence_high_on_real_shapes_low_on_shuffled_and_noise(shapes, n):
    real = shapes[0][:64]
    assert M.coherence(real, n) == 1.0
    assert M.coherence(M.shuffle_patches(real, n), n) <= 0.2
    assert M.coherence(_noise(16), n) == 0.0
    details = M.coherence_details(real, n)
    assert (details.components == 1).all() and details.color_spread.max() <= 0.05 and details.purity.min() > 0.95


def test_coherence_details_on_constructed_images():
    small = load_images(make_dataset("shapes", image_size=16, size=8), range(8))
    assert M.coherence(small, 2) == 1.0  # also at 16 px
    blank = -torch.ones(1, 3, 16, 16)
    assert M.coherence_details(blank, 2).components.tolist() == [0] and M.coherence(blank, 2) == 0.0
    two = blank.clone()
    two[..., 2:6, 2:6] = 1.0
    two[..., 10:14, 10:14] = 1.0  # two objects
    assert M.coherence_details(two, 2).components.tolist() == [2]
    halves = blank.clone()
    halves[:, 0, 4:12, 4:8] = 1.0  # one square, red on the left ...
    halves[:, 2, 4:12, 8:12] = 1.0  # ... and blue on the right: one object, two colours across patches
    details = M.coherence_details(halves, 2)
    assert details.components.tolist() == [1] and details.color_spread[0] > 1.0 and not details.coherent[0]
    with pytest.raises(ValueError, match="RGB"):
        M.coherence(small[:, :1], 2)
