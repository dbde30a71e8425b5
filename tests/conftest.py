"""Shared fixtures; the tiny configurations are in tiny.py."""

import pytest
import torch

from patchlab.config import from_params
from tiny import tiny_params

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_cfg():
    return from_params(**tiny_params())
