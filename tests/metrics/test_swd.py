"""patchlab.metrics.swd: the Laplacian pyramid and the sliced Wasserstein distance."""

import pytest
import torch

from patchlab import metrics as M
from patchlab.runtime import make_generator
from patchlab.metrics.swd import _blur


def test_laplacian_pyramid_reconstructs_the_image(noise):
    x = noise(2, 32)
    levels = M.laplacian_pyramid(x, 3)
    assert [tuple(l.shape[-2:]) for l in levels] == [(32, 32), (16, 16), (8, 8)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        up = torch.zeros(*rebuilt.shape[:2], rebuilt.shape[2] * 2, rebuilt.shape[3] * 2)
        up[..., ::2, ::2] = rebuilt
        rebuilt = band + 4 * _blur(up)
    torch.testing.assert_close(rebuilt, x, atol=1e-5, rtol=0)


def test_swd_ranks_and_is_deterministic(shapes, noise):
    real, other = shapes[0][:64], shapes[1]
    kw = dict(descriptors_per_image=32, directions=128)
    same = M.sliced_wasserstein(real, other, generator=make_generator(5), **kw)
    assert same == M.sliced_wasserstein(real, other, generator=make_generator(5), **kw)
    assert same != M.sliced_wasserstein(real, other, generator=make_generator(6), **kw)
    to_noise = M.sliced_wasserstein(real, noise(64), generator=make_generator(5), **kw)
    shuffled = M.sliced_wasserstein(real, M.shuffle_patches(other, 2), generator=make_generator(5), **kw)
    assert same < shuffled < to_noise
    levels = M.swd_per_level(real, other[:40], **kw)  # sets of different sizes are compared by quantiles
    assert list(levels) == [32, 16] and all(v > 0 for v in levels.values())
    assert list(M.swd_per_level(real[:4, :, :8, :8], other[:4, :, :8, :8], **kw)) == [8]
    with pytest.raises(ValueError, match="differ in shape"):
        M.sliced_wasserstein(real, other[:, :1])
    with pytest.raises(ValueError, match="smaller than"):
        M.sliced_wasserstein(real[:, :, :4, :4], other[:, :, :4, :4])
