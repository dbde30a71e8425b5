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
        for key in ("seam", "kid", "swd", "coherence"):  # the samples' scores with their 95% intervals
            assert point[f"{key}_lo"] <= point[key] <= point[f"{key}_hi"], key
    _curve(tmp_path / "split", 3)
    again = _curve(tmp_path / "split", 5)  # resumed from the checkpoint of step 2: points 3.. redone
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in whole]
    assert [{k: v for k, v in p.items() if k != "seconds"} for p in again] == strip


def test_a_curve_written_before_intervals_reads_and_resumes(tmp_path):
    """curve.csv files recorded before intervals lack their columns: they read as they are, and a run resumed
    over one keeps its points (their intervals empty) under the new header."""
    cfg = from_params(**tiny_params(steps=4))
    path = RunPaths(tmp_path).curve
    path.write_text("step,seam,seam_real,kid,kid_stderr,swd,coherence,mean,mean_real,seconds\n"
                    "2,1.5,1.0,0.01,0.001,40.0,0.5,-0.2,-0.1,1.0\n")
    assert curves.read_curve(path) == [{"step": 2, "seam": 1.5, "seam_real": 1.0, "kid": 0.01, "kid_stderr": 0.001,
                                        "swd": 40.0, "coherence": 0.5, "mean": -0.2, "mean_real": -0.1,
                                        "seconds": 1.0}]
    curves.LearningCurve(cfg, tmp_path, every=2, n=4)._start(3)
    (point,) = curves.read_curve(path)
    assert point["swd"] == 40.0 and point["swd_lo"] is None and list(point) == list(curves.fields("shapes"))


def test_no_curve_when_off_and_bad_settings(tmp_path):
    cfg = from_params(**tiny_params())
    assert curves.evaluator_for(cfg, tmp_path, every=0) is None
    with pytest.raises(ValueError, match="every >= 1, n >= 4"):
        curves.LearningCurve(cfg, tmp_path, every=2, n=2)
    assert curves.read_curve(tmp_path / "missing.csv") == []


def test_a_remedy_s_curve_scores_the_lines_its_windows_bordered(tmp_path):
    """One recipe (patchlab.metrics.sample_set.score_samples) for evaluation and curves: a coarse-to-fine
    model's curve scores the overlapping windows' lines, not only the fixed grid's."""
    import torch

    from patchlab import build
    from patchlab import tiling as T
    from patchlab.execution import Execution
    from patchlab.metrics import seam_score
    from patchlab.metrics.evaluate import generate
    from patchlab.runtime import Stream, derived_seed

    cfg = from_params(**tiny_params(coords=True, global_view=0.5, windows_below=0.5, dim_mults=(1,)))
    model, schedule = build(cfg)
    curve = curves.LearningCurve(cfg, tmp_path, every=1, n=8, steps=3)
    assert curve.tiling == T.CoarseToFine(cfg.model, 0.05)
    row = curve.measure(model, schedule)
    fake = generate(model, schedule, 8, steps=3, seed=derived_seed(cfg.train.seed, Stream.CURVE),
                    tiling=curve.tiling, execution=Execution(patch_mode=cfg.train.patch_mode), batch_size=8)
    assert row["seam"] == seam_score(fake, 2, lines=[4, 8, 12]) != seam_score(fake, 2)
    assert row["mean"] == float(fake.mean()) and torch.isfinite(torch.tensor(row["kid"]))


def test_a_curve_can_score_the_raw_weights_beside_the_ema(tmp_path):
    """raw=True: the raw weights' scores in raw_ columns, from the same noise (equal to the EMA's when the EMA
    is the weights: decay 0)."""
    cfg = from_params(**tiny_params(steps=2, ema_decay=0.0))
    train(cfg, tmp_path, progress=False, evaluator=curves.evaluator_for(cfg, tmp_path, every=2, n=8, steps=3, raw=True))
    (point,) = curves.read_curve(RunPaths(tmp_path).curve)
    assert list(point) == list(curves.fields("shapes", raw=True))
    for key in ("seam", "swd", "coherence", "mean"):
        assert point[f"raw_{key}"] == pytest.approx(point[key]), key
    with pytest.raises(ValueError, match="raw="):
        curves.LearningCurve(cfg, tmp_path / "b", every=1, n=4, raw=True)(1, None, None)
