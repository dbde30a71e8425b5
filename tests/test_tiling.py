"""patchlab.tiling: what a step computes (the fixed grid and the seam remedies), checked against the model,
and how a model's training step cuts its images."""

import pytest
import torch

from patchlab import patches as P
from patchlab import tiling as T
from patchlab.config import from_params
from patchlab.sampling import timesteps_for
from tiny import tiny_params


def _model(**kw):
    return from_params(**tiny_params(dim_mults=(1,), **kw)).model


GRID, COORDS, GLOBAL = _model(), _model(coords=True), _model(coords=True, global_view=0.5)
FINE = _model(coords=True, global_view=0.5, windows_below=0.1)


def test_each_tiling_is_one_class_found_by_its_name():
    assert T.NAMES == ("grid", "shifted", "overlap", "global")
    for name in T.NAMES:
        tiling = T.build(GLOBAL, name)
        assert type(tiling) is T.TILINGS[name] and tiling.settings()["windows"] == name
    assert [T.TILINGS[n].moves for n in T.NAMES] == [False, True, True, True]
    with pytest.raises(ValueError, match="windows must be one of"):
        T.build(GLOBAL, "random")


def test_the_grid_and_the_remedies_choose_their_windows_per_step():
    grid, shifted, overlap = (T.build(COORDS, name) for name in ("grid", "shifted", "overlap"))
    assert grid.plan(1, 5, 20).origins is None and grid.plan(1, 5, 20).windows == 4  # the model's own grid
    assert torch.equal(shifted.plan(0, 5, 20).origins, P.grid_origins(16, 2))
    assert torch.equal(shifted.plan(1, 5, 20).origins, P.grid_origins(16, 2, (4, 4)))  # half a patch, every other step
    assert shifted.plan(1, 5, 20).windows == 4
    assert torch.equal(overlap.plan(3, 5, 20).origins, P.overlap_origins(16, 2)) and overlap.plan(3, 5, 20).windows == 9


def test_the_lines_a_seam_score_must_look_at():
    assert T.build(GRID).seam_lines(25) == [8]
    assert T.build(_model(patches=1)).seam_lines(25, patches=2) == [8]  # N = 1 is scored at the 2 x 2 borders
    assert T.build(COORDS, "shifted").seam_lines(25) == [4, 8, 12] == T.build(COORDS, "overlap").seam_lines(25)
    assert T.build(COORDS, "shifted").seam_lines(1) == [8]  # a single step never moves the grid
    assert T.build(GLOBAL, "global").seam_lines(25) == T.build(GLOBAL, "overlap").seam_lines(25)
    assert T.GlobalView().lines(16, 2) == [] and T.build(COORDS, "shifted").plan(1, 0, 20).lines(16, 2) == [4, 12]


def test_coarse_to_fine_hands_over_from_the_global_view_at_global_from():
    tiling = T.build(GLOBAL, "global")
    assert tiling.global_from == T.GLOBAL_FROM == 0.05
    assert tiling.uses_global_view(50, 1000) and not tiling.uses_global_view(49, 1000)
    assert isinstance(tiling.plan(0, 999, 1000), T.GlobalView) and tiling.plan(0, 999, 1000).windows == 1
    assert torch.equal(tiling.plan(2, 10, 1000).origins, P.overlap_origins(16, 2))
    assert (T.CoarseToFine(GLOBAL, 0.0).uses_global_view(0, 1000)
            and not T.CoarseToFine(GLOBAL, 1.0).uses_global_view(999, 1000))
    plans = tiling.plans(timesteps_for("ddim", 1000, 25), 1000)
    assert [type(p).__name__ for p, _ in plans] == ["GlobalView", "Windows"] and [c for _, c in plans] == [23, 2]
    assert T.build(GLOBAL, "global", global_from=0.3).settings() == {"windows": "global", "global_from": 0.3}


def test_a_tiling_refuses_a_model_not_trained_for_it():
    for name in ("shifted", "overlap", "global"):
        with pytest.raises(ValueError, match="coords=True|global_view > 0"):
            T.build(GRID, name)
    with pytest.raises(ValueError, match="global_view > 0"):
        T.build(COORDS, "global")
    for name in ("grid", "shifted", "overlap"):  # windows that learnt only the fine steps
        with pytest.raises(ValueError, match="windows_below = 0.1"):
            T.build(FINE, name)
    with pytest.raises(ValueError, match="global_from <= 0.1"):
        T.build(FINE, "global", global_from=0.2)
    with pytest.raises(ValueError, match="applies to windows='global' only"):
        T.build(COORDS, "overlap", global_from=0.2)


def test_the_model_s_own_tiling():
    assert T.for_model(GRID) == T.Grid(GRID) and T.for_model(GLOBAL) == T.Grid(GLOBAL)
    assert T.for_model(FINE) == T.CoarseToFine(FINE, 0.05) and T.build(FINE) == T.for_model(FINE)
    assert T.for_model(_model(coords=True, global_view=0.5, windows_below=0.02)).global_from == 0.02
    built = T.build(COORDS, "overlap")
    assert T.build(COORDS, built) is built  # a tiling built for the model is taken as it is
    other = _model(coords=True, position=True, gcc=False)
    assert T.build(other, built).model == other and T.build(other, built) == T.Overlap(other)


def test_training_tilings_follow_the_model():
    assert type(T.training_tiling(GRID)) is T.TrainOnGrid
    assert type(T.training_tiling(COORDS)) is T.TrainOnShiftedGrids
    assert type(T.training_tiling(GLOBAL)) is T.TrainWithGlobalView


@pytest.mark.parametrize("below,steps", [(0.1, 1000), (0.05, 1000), (0.12, 20), (0.03, 20), (0.07, 100), (1.0, 20)])
def test_windows_trained_below_windows_below_cover_every_step_the_sampler_gives_them(below, steps):
    """The sampler hands the windows the timesteps t < global_from * T with global_from <= windows_below:
    the windows must have learnt every one of them, and no more."""
    model = _model(coords=True, global_view=0.5, windows_below=below)
    m = T.training_tiling(model).fine_timesteps(steps)
    given = [t for t in range(steps) if not T.CoarseToFine(model, below).uses_global_view(t, steps)]
    assert given == list(range(m)) or (not given and m == 1)


def test_the_global_view_share_of_a_training_batch():
    tiling = T.training_tiling(GLOBAL)
    assert [tiling.share(b) for b in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]  # round half up
    tiling.check_batch(2)
    for batch in (1,):
        with pytest.raises(ValueError, match="the windows would never train"):
            tiling.check_batch(batch)
    with pytest.raises(ValueError, match="the global view would never train; use batch_size >= 5"):
        T.training_tiling(_model(coords=True, global_view=0.1)).check_batch(4)
