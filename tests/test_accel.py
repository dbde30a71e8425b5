"""CUDA-graph replay of the UNet pass: refuses what it cannot do; on a GPU, equals the plain pass."""

import pytest
import torch

import patchlab
from tiny import tiny_params
from patchlab.accel import cuda_graph_unet
from patchlab.model import predict_noise
from patchlab.runtime import make_generator
from patchlab.sampling import sample


def test_refuses_a_cpu_model():
    model, _ = patchlab.build(patchlab.config.from_params(**tiny_params()))
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_graph_unet(model)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("mode", ["sequential", 3, "batched"])
def test_replay_equals_plain_pass(mode):
    cfg = patchlab.config.from_params(**tiny_params(patches=2))
    model, schedule = patchlab.build(cfg)
    model.cuda().eval()
    g = make_generator(0, "cuda")
    x = torch.randn(3, 3, 16, 16, generator=g, device="cuda")
    t = torch.randint(0, 20, (3,), generator=g, device="cuda")
    unet = cuda_graph_unet(model)
    with torch.no_grad():
        plain = predict_noise(model, x, t, patch_mode=mode)
        for _ in range(2):  # first call captures, second replays
            replay = predict_noise(model, x, t, patch_mode=mode, unet=unet)
            assert (replay - plain).abs().max().item() < 1e-4
    with pytest.raises(RuntimeError, match="no_grad"):
        unet(*patchlab.model.patch_batch(model, x, t, [0], None))
    images = sample(model, schedule, 3, sampler="ddim", steps=3, generator=make_generator(1, "cuda"), unet=unet)
    assert images.shape == (3, 3, 16, 16)
