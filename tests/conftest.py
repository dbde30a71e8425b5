"""Test-wide settings; the tiny configuration is in tiny.py, the subprocess launcher and free ports in support.py.

The suite runs one test process per core (pytest-xdist, ``-n auto --dist loadfile`` in pyproject.toml),
each with one PyTorch thread: tiny models are fastest so, and a second thread per process would only
compete for the same cores. Each test file stays on one process, so its module fixtures are built once;
the tests that use the session's smoke reproduction are in one file (tests/study/test_notebooks.py).
"""

import os

import torch

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses and kernels the tests start
torch.set_num_threads(1)
