"""patchlab.metrics.curves: learning curves recorded while a run trains, resumable like the run."""

import math

import pytest

from patchlab.config import from_params
from patchlab.metrics import curves
from patchlab.runs import RunPaths
from patchlab.training import train
from tiny import tiny_params


def _curve(run, steps, every=2):
    cfg = from_params(**tiny_params(steps=steps, checkpoint_every=2))
    train(cfg, run, progress=False, evaluator=curves.evaluator_for(cfg, run, every=every, n=8, steps=3))
    return curves.read_curve(RunPaths(run).curve)


def test_the_curve_has_a_point_every_few_steps_and_resumes_exactly(tmp_path):
    whole = _curve(tmp_path / "whole", 5)
    assert [p["step"] for p in whole] == [2, 4, 5]  # every 2 steps and the last one
    for point in whole:
        for key in ("seam", "seam_real", "kid", "kid_stderr", "swd", "coherence"):
            assert math.isfinite(point[key]), key
    _curve(tmp_path / "split", 3)
    again = _curve(tmp_path / "split", 5)  # resumed from the checkpoint of step 2: points 3.. redone
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in whole]
    assert [{k: v for k, v in p.items() if k != "seconds"} for p in again] == strip


def test_no_curve_when_off_and_bad_settings(tmp_path):
    cfg = from_params(**tiny_params())
    assert curves.evaluator_for(cfg, tmp_path, every=0) is None
    with pytest.raises(ValueError, match="every >= 1, n >= 4"):
        curves.LearningCurve(cfg, tmp_path, every=2, n=2)
    assert curves.read_curve(tmp_path / "missing.csv") == []
