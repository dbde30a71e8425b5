"""Real and noise images shared by the metric tests."""

import pytest
import torch

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


@pytest.fixture
def noise():
    """``noise(n, size=32, seed=3)``: uniform noise images [n x 3 x size x size] in [-1, 1]."""
    def make(n, size=32, seed=3):
        return torch.rand(n, 3, size, size, generator=make_generator(seed)) * 2 - 1
    return make
