"""Shared fixtures; the tiny configurations are in tiny.py.

The suite runs one test process per core (pytest-xdist, ``-n auto`` in pyproject.toml), each with one
PyTorch thread: tiny models are fastest so, and a second thread per process would only compete for the
same cores. Each test file stays on one worker (its module fixtures are built once); the tests that share
the session's smoke reproduction (tests/study) are kept together.
"""

import os

import pytest
import torch

from patchlab.config import from_params
from tiny import tiny_params

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses and kernels the tests start
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path.as_posix()
        group = "smoke" if "/study/test_notebooks" in path or "/study/test_browser" in path else path
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def tiny_cfg():
    return from_params(**tiny_params())
