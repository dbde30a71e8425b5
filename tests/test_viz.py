import numpy as np
import pytest
import torch
from PIL import Image

from patchlab import viz


def test_grid_layout_and_values(tmp_path):
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    grid = viz.make_grid(images, nrow=2, pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 128).all() and (grid[6:10, 1:5] == 255).all()
    path = viz.save_grid(images, tmp_path / "g" / "grid.png", nrow=2)
    assert Image.open(path).size == (2 * 6 + 2, 2 * 6 + 2)  # pad 2 by default


def test_grayscale_is_repeated_and_scale_upsamples():
    gray = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    grid = viz.make_grid(gray, pad=0, scale=3)
    assert grid.shape == (12, 12, 3)
    assert (grid[..., 0] == grid[..., 1]).all() and (grid[..., 1] == grid[..., 2]).all()  # gray in every channel
    assert grid[0, 0, 0] == 0 and grid[-1, -1, 0] == 255
    assert (grid[:3, :3] == grid[0, 0]).all() and grid[0, 3, 0] > grid[0, 2, 0]  # 3 x 3 blocks per pixel


def test_borders_are_drawn_on_patch_edges():
    img = torch.zeros(1, 3, 8, 8)
    plain = viz.make_grid(img, pad=0)
    marked = viz.make_grid(img, pad=0, patches=2)
    diff = (plain != marked).any(axis=2)
    assert diff[4, :].all() and diff[:, 4].all() and not diff[0, 0] and not diff[1, 1]


def test_empty_batch_is_refused():
    with pytest.raises(ValueError):
        viz.make_grid(torch.zeros(0, 3, 4, 4))
