"""Shared fixtures; the tiny configurations are in tiny.py.

The suite runs one test process per core (pytest-xdist, ``-n auto --dist loadfile`` in pyproject.toml),
each with one PyTorch thread: tiny models are fastest so, and a second thread per process would only
compete for the same cores. Each test file stays on one process, so its module fixtures are built once;
the tests that use the session's smoke reproduction are in one file (tests/study/test_notebooks.py).
"""

import os

import pytest
import torch

from patchlab.config import from_params
from tiny import tiny_params

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses and kernels the tests start
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    return from_params(**tiny_params())
