"""patchlab.metrics.shape_coherence: one object of one colour across the patches."""

import pytest
import torch

from patchlab import metrics as M
from patchlab.data import load_images, make_dataset


@pytest.mark.parametrize("n", [2, 4])
def test_coherence_high_on_real_shapes_low_on_shuffled_and_noise(shapes, n, noise):
    real = shapes[0][:64]
    assert M.coherence(real, n) == 1.0
    assert M.coherence(M.shuffle_patches(real, n), n) <= 0.2
    assert M.coherence(noise(16), n) == 0.0
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
