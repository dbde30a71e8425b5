"""patchlab.metrics.seams: the seam score and the synthetic artefacts that calibrate it."""

import pytest
import torch

from patchlab import metrics as M
from patchlab.runtime import make_generator
from patchlab import patches as P


@pytest.mark.parametrize("n", [2, 4])
def test_seam_score_is_about_one_on_real_images_and_high_on_seams(shapes, faces, n):
    # 256 shapes / 100 faces: with 64 shapes the score of real images spreads by about +-0.08 (1 sd) at N=4.
    g = make_generator(1)
    for images in (shapes[0], faces):
        real = M.seam_score(images, n)
        assert 0.85 <= real <= 1.15, (n, len(images), real)
        assert M.seam_score(M.shuffle_patches(images, n, generator=g), n) > 2.5 * real
    assert M.seam_score(M.offset_patches(shapes[0], n, amount=0.1, generator=g), n) > 1.5
    assert M.seam_score(M.offset_patches(faces, n, amount=0.2, generator=g), n) > 1.3


def test_seam_scores_golden_values():
    ramp = torch.linspace(-1, 1, 16).expand(2, 3, 16, 16).clone()  # constant horizontal gradient
    result = M.seam_scores(ramp, 2)
    assert result.overall == pytest.approx(1.0, abs=1e-3)
    assert set(result.borders) == {"v8", "h8"} and result.per_image.shape == (2,)
    assert result.borders["h8"] == pytest.approx(1.0)  # no vertical change at all: eps keeps it at 1
    stepped = ramp.clone()
    stepped[..., :, 8:] += 0.5  # a jump of 0.5 at the border on top of a gradient of 2/15 per pixel
    step = 2 / 15
    assert M.seam_scores(stepped, 2).borders["v8"] == pytest.approx((step + 0.5 + 1e-4) / (step + 1e-4), rel=1e-4)
    four = M.seam_scores(stepped, 4)
    assert set(four.borders) == {"v4", "v8", "v12", "h4", "h8", "h12"} and four.borders["v4"] == pytest.approx(1.0)


def test_seam_score_errors():
    x = torch.zeros(2, 3, 16, 16)
    for n, message in ((1, "at least 2 x 2"), (3, "not divisible"), (8, "too small")):
        with pytest.raises(ValueError, match=message):
            M.seam_score(x, n)
    with pytest.raises(ValueError, match=r"\[B x C x H x W\]"):
        M.seam_score(torch.zeros(3, 16, 16), 2)
    with pytest.raises(ValueError, match="empty"):
        M.seam_score(torch.zeros(0, 3, 16, 16), 2)


def test_shuffle_and_offset_patches_geometry():
    x = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 1, 8, 8).clone()  # image i filled with i
    out = M.shuffle_patches(x, 2, generator=make_generator(0))
    sources = P.split(out, 2)[:, :, 0, 0, 0]  # [B x 4]: which image each patch came from
    assert all(len(set(row.tolist())) == 4 for row in sources)  # four different source images
    assert sorted(sources[:, 1].tolist()) == list(range(8))  # each source used once per position
    torch.testing.assert_close(M.shuffle_patches(x, 2, generator=make_generator(0)), out)
    shifted = P.split(M.offset_patches(torch.zeros(2, 3, 8, 8), 2, amount=0.2), 2)
    assert (shifted.flatten(2).std(dim=2) == 0).all() and shifted.abs().max() <= 0.2  # one offset per patch


def test_seam_scores_on_chosen_lines(shapes):
    real = shapes[0][:64]
    scores = M.seam_scores(real, 2, lines=[4, 8, 12, 1, 31])  # 1 and 31 have no reference: left out
    assert sorted(scores.borders) == sorted(f"{a}{b}" for a in "vh" for b in (4, 8, 12))
    assert 0.8 < scores.overall < 1.25
    assert M.seam_scores(real, 2, lines=[16]).overall == M.seam_scores(real, 2).overall  # the grid's own line
    seamed = real.clone()
    seamed[..., 12:] = (seamed[..., 12:] + 0.3).clamp(-1, 1)  # a jump at column 12, off the 2 x 2 grid
    assert M.seam_scores(seamed, 2, lines=[12]).borders["v12"] > 2 * M.seam_scores(real, 2, lines=[12]).borders["v12"]
    with pytest.raises(ValueError, match="at least 3 pixels from the edge"):
        M.seam_scores(real, 2, lines=[1])
