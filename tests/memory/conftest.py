"""The tiny configurations the memory tests profile: ``cfg`` at N = 4, ``cfg2`` at N = 2 (16 px, mults 1,2)."""

import pytest

from tiny import tiny_params
from patchlab.config import from_params


@pytest.fixture(scope="module")
def cfg():
    return from_params(**tiny_params(patches=4, image_size=16, dim_mults=(1, 2)))


@pytest.fixture(scope="module")
def cfg2():
    return from_params(**tiny_params(patches=2, image_size=16, dim_mults=(1, 2)))
