"""The smoke reproductions, run once per test session: ``smoke`` (shapes) shared by the notebook and browser
tests, ``digits_smoke`` by the digits study's tests."""

import contextlib
import io
import os

import pytest

from patchlab.study import reproduce


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """``reproduce --profile smoke`` in a fresh root: (root, report folder, what it printed)."""
    return _reproduce("smoke", tmp_path_factory)


@pytest.fixture(scope="session")
def digits_smoke(tmp_path_factory):
    """``reproduce --profile digits_smoke`` in a fresh root: (root, report folder, what it printed)."""
    return _reproduce("digits_smoke", tmp_path_factory)


def _reproduce(profile: str, tmp_path_factory):
    """Kernels run with one thread (OMP_NUM_THREADS=1): tiny models are fastest so, and it keeps the
    timings sane when other processes share the cores."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernels papermill starts
    root = tmp_path_factory.mktemp(profile)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            reports = reproduce.reproduce(profile, root=str(root), progress=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return root, reports, printed.getvalue()
