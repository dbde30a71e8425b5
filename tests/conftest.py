"""Test-wide settings; the tiny configuration is in tiny.py, the subprocess launcher and free ports in support.py.

The suite runs one test process per core (pytest-xdist, ``-n auto --dist loadfile`` in pyproject.toml),
each with one PyTorch thread: tiny models are fastest so, and a second thread per process would only
compete for the same cores. Each test file stays on one process, so its module fixtures are built once;
the tests that use the session's smoke reproduction are in one file (tests/study/test_notebooks.py).
"""

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses and kernels the tests start
# The digit classifier (patchlab.metrics.digits) is trained once for all test processes and runs (a file lock
# makes the others wait), in a cache of the tests' own, not the user's ~/.cache/patchlab.
os.environ.setdefault("PATCHLAB_CACHE", str(Path(tempfile.gettempdir()) / "patchlab-tests-cache"))
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_plan_estimates():
    """Each test plans with an empty estimate cache (patchlab.memory.planner keeps the process's estimates): a
    test that patches the model or the profiler sees its own estimates, not an earlier test's."""
    from patchlab.memory import planner

    planner.forget_estimates()
    yield
