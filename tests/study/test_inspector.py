"""patchlab.study.inspector: the seam inspector's views and widgets, on synthetic trajectories (no training)."""

import numpy as np
import pytest
import torch

from patchlab import metrics as M
from patchlab import tiling as T
from patchlab.config import from_params
from patchlab.study.inspector import MODELS, SeamInspector
from patchlab.runtime import make_generator
from patchlab.trajectory import Trajectory


def _trajectory(seed, frames=4, n=3, size=16):
    g = make_generator(seed)
    x = torch.rand(frames, n, 3, size, size, generator=g) * 2 - 1
    return Trajectory(x, x.flip(0), tuple(range(frames - 1, 0, -1)) + (-1,))


@pytest.fixture
def inspector():
    return SeamInspector({label: _trajectory(i) for i, label in enumerate(MODELS.values())}, 2)


def test_view_shows_the_chosen_frame_sample_and_border(inspector):
    v = inspector.view()
    assert v.label == "N=2" and v.frame == 3 and v.timestep == -1
    assert v.image.dtype == np.uint8 and v.image.shape == (256, 256, 3)
    image = inspector.trajectories["N=2"].x_t[3, :1]
    assert v.seam_sample == pytest.approx(M.seam_score(image, 2))
    assert v.seam_line == pytest.approx(M.seam_scores(image, 2).borders["v8"])
    assert v.profile.shape == (3, 16) and v.border_at == 8
    other = inspector.view(frame=0, sample=2, border="h8", along=3, show="predicted x0")
    assert other.seam_sample != v.seam_sample and not np.array_equal(other.image, v.image)
    assert inspector.state["frame"] == 3  # views do not change the state
    plain = inspector.view(overlay=False)
    assert not np.array_equal(plain.image, v.image)


def test_widgets_update_picture_and_score(inspector):
    inspector.widget  # builds the widgets
    c = inspector.controls
    before = (inspector.image.value, inspector.score.value, inspector.profile.value)
    c["frame"].value = 0
    assert inspector.state["frame"] == 0 and "step 0 of 3" in inspector.score.value
    after = (inspector.image.value, inspector.score.value, inspector.profile.value)
    assert all(a != b for a, b in zip(before, after))
    c["gcc"].value = False
    assert inspector.state["label"] == "N=2 no GCC" and "N=2 no GCC" in inspector.score.value
    c["position"].value = False
    assert inspector.state["label"] == "N=2 neither"


def test_a_model_without_a_run_is_reported_not_shown():
    only = SeamInspector({"N=2": _trajectory(0)}, 2)
    only.widget
    only.controls["gcc"].value = False
    assert only.state["label"] == "N=2" and "no run for N=2 no GCC" in only.score.value


def test_save_writes_a_figure(inspector, tmp_path):
    inspector.save(tmp_path / "view.png", frame=1)
    assert (tmp_path / "view.png").stat().st_size > 1000


def test_needs_patches_with_borders():
    with pytest.raises(ValueError, match="N >= 2"):
        SeamInspector({"N=1": _trajectory(0)}, 1)


def _model(**kw):
    return from_params(image_size=16, patches=2, dim=16, dim_mults=(1,), coords=True, **kw).model


def test_a_remedy_shows_the_moving_borders_and_scores_every_line():
    trajectories = {"N=2": _trajectory(0), "N=2 shifted": _trajectory(1)}
    inspector = SeamInspector(trajectories, 2, tilings={"N=2 shifted": T.Shifted(_model())})
    assert inspector.borders == ["v4", "v8", "v12", "h4", "h8", "h12"]  # where any window border fell
    scale = inspector.scale
    diff0 = (inspector.view(label="N=2 shifted", frame=0).image
             != inspector.view(label="N=2 shifted", frame=0, overlay=False).image).any(axis=2)
    diff1 = (inspector.view(label="N=2 shifted", frame=1).image
             != inspector.view(label="N=2 shifted", frame=1, overlay=False).image).any(axis=2)
    cols0 = sorted({c // scale for c in np.argwhere(diff0.mean(axis=0) > 0.8).flatten()})
    cols1 = sorted({c // scale for c in np.argwhere(diff1.mean(axis=0) > 0.8).flatten()})
    assert cols0 == [8] and cols1 == [4, 12]  # step 0 on the grid, step 1 moved by half a patch
    image = trajectories["N=2 shifted"].x_t[3, :1]
    assert inspector.view(label="N=2 shifted").seam_sample == pytest.approx(M.seam_score(image, 2, lines=[4, 8, 12]))
    assert inspector.view(label="N=2").seam_sample == pytest.approx(M.seam_score(trajectories["N=2"].x_t[3, :1], 2))
    inspector.widget
    inspector.controls["windows"].value = "shifted"
    assert inspector.state["label"] == "N=2 shifted"


def test_the_global_remedy_shows_no_border_while_the_global_view_denoises():
    trajectories = {"N=2": _trajectory(0), "N=2 global": _trajectory(1)}
    assert trajectories["N=2 global"].timesteps == (3, 2, 1, -1)
    inspector = SeamInspector(trajectories, 2, tilings={"N=2 global": T.CoarseToFine(_model(global_view=0.5))},
                              timesteps=40)  # 0.05 T = 2
    for frame in (0, 1):  # t = 3, 2: the global view, no border
        assert (inspector.view(label="N=2 global", frame=frame).image
                == inspector.view(label="N=2 global", frame=frame, overlay=False).image).all()
    last = 2  # t = 1: overlapping windows, borders drawn
    assert (inspector.view(label="N=2 global", frame=last).image
            != inspector.view(label="N=2 global", frame=last, overlay=False).image).any()
    inspector.widget
    inspector.controls["windows"].value = "global"
    assert inspector.state["label"] == "N=2 global"
