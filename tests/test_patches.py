import pytest
import torch

from patchlab import patches as P


@pytest.mark.parametrize("n", [1, 2, 4])
def test_split_merge_round_trip(n):
    x = torch.randn(3, 2, 16, 16)
    parts = P.split(x, n)
    assert parts.shape == (3, n * n, 2, 16 // n, 16 // n)
    assert torch.equal(P.merge(parts, n), x)


def test_split_is_row_major():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    parts = P.split(x, 2)
    assert parts[0, 0, 0].tolist() == [[0, 1], [4, 5]]
    assert parts[0, 1, 0].tolist() == [[2, 3], [6, 7]]  # k = 0*2 + 1: top right
    assert parts[0, 2, 0].tolist() == [[8, 9], [12, 13]]  # k = 1*2 + 0: bottom left


def test_gather_is_patch_major_and_scatter_inverts_it():
    x = torch.randn(2, 3, 8, 8)
    g = P.gather(x, 2, [3, 1])
    assert torch.equal(g[:2], P.split(x, 2)[:, 3]) and torch.equal(g[2:], P.split(x, 2)[:, 1])
    out = torch.zeros_like(x)
    P.scatter(out, g, 2, [3, 1])
    assert torch.equal(P.split(out, 2)[:, 3], P.split(x, 2)[:, 3])
    assert P.split(out, 2)[:, 0].abs().sum() == 0


def test_positions_one_hot_patch_major():
    pos = P.positions(2, [1, 3], batch=2)
    assert pos.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]


def test_global_context_is_average_pool_to_patch_size():
    x = torch.randn(2, 3, 16, 16)
    g = P.global_context(x, 4)
    assert g.shape == (2, 3, 4, 4)
    assert torch.allclose(g[:, :, 0, 0], x[:, :, :4, :4].mean(dim=(-1, -2)), atol=1e-6)
    assert torch.equal(P.global_context(x, 1), x)


def test_model_inputs_concatenate_context_per_patch():
    x = torch.randn(2, 3, 8, 8)
    ctx = P.global_context(x, 2)
    inp = P.model_inputs(x, 2, [0, 2], ctx)
    assert inp.shape == (4, 6, 4, 4)
    assert torch.equal(inp[2:, :3], P.split(x, 2)[:, 2]) and torch.equal(inp[2:, 3:], ctx)
    assert P.model_inputs(x, 2, [0], None).shape == (2, 3, 4, 4)


def test_not_divisible_raises_clear_value_error():
    with pytest.raises(ValueError, match="image size 10 is not divisible by N=4"):
        P.split(torch.zeros(1, 1, 10, 10), 4)
    with pytest.raises(ValueError):
        P.patch_size(16, 0)


@pytest.mark.parametrize("mode,expected", [("batched", [[0, 1, 2, 3]]), ("sequential", [[0], [1], [2], [3]]),
                                           (3, [[0, 1, 2], [3]]), (4, [[0, 1, 2, 3]])])
def test_chunks(mode, expected):
    assert P.chunks(4, mode) == expected


@pytest.mark.parametrize("mode", ["parallel", 0, -1, True, 1.5, 5])
def test_bad_patch_modes(mode):
    with pytest.raises(ValueError):
        P.chunks(4, mode)


def test_border_coordinates():
    assert P.border_coordinates(32, 4) == [8, 16, 24]
    assert P.border_coordinates(32, 1) == []


# --- windows ---------------------------------------------------------------------------------------------


def test_the_unshifted_window_grid_is_the_patch_grid():
    x = torch.randn(3, 2, 16, 16)
    origins = P.grid_origins(16, 2)
    assert origins.tolist() == [[0, 0], [0, 8], [8, 0], [8, 8]]
    assert torch.equal(P.gather_windows(x, origins, 8), P.gather(x, 2, range(4)))


@pytest.mark.parametrize("shift", [(4, 4), (3, 7), (0, 5)])
def test_a_shifted_grid_tiles_the_torus(shift):
    x = torch.randn(2, 3, 16, 16)
    origins = P.grid_origins(16, 2, shift)
    out = P.scatter_add_windows(torch.zeros_like(x), P.gather_windows(x, origins, 8), origins)
    assert torch.equal(out, x)  # every pixel exactly once
    wrapped = P.gather_windows(x, origins[-1:], 8)[0]  # the last window crosses both edges
    r, c = origins[-1].tolist()
    assert (torch.equal(wrapped[:, 0, 0], x[0, :, r, c])
            and torch.equal(wrapped[:, -1, -1], x[0, :, (r + 7) % 16, (c + 7) % 16]))


def test_per_image_windows():
    x = torch.randn(3, 1, 8, 8)
    origins = torch.stack([P.grid_origins(8, 2, (i, 2 * i)) for i in range(3)], dim=1)  # [K x B x 2]
    windows = P.gather_windows(x, origins, 4)
    assert windows.shape == (12, 1, 4, 4)
    assert torch.equal(windows.reshape(4, 3, 1, 4, 4)[:, 1], P.gather_windows(x[1:2], P.grid_origins(8, 2, (1, 2)), 4))
    assert torch.equal(P.scatter_add_windows(torch.zeros_like(x), windows, origins), x)


def test_overlapping_windows_and_their_weights():
    assert P.overlap_origins(16, 2).tolist() == [[r, c] for r in (0, 4, 8) for c in (0, 4, 8)]
    assert P.overlap_origins(12, 2, stride=4)[:, 0].unique().tolist() == [0, 4, 6]  # the last flush with the edge
    with pytest.raises(ValueError, match="stride"):
        P.overlap_origins(16, 2, stride=9)
    w = P.tent(4)
    assert w.min() > 0 and w[1, 1] == w.max() and torch.equal(w, w.T) and torch.equal(w, w.flip(0))


def test_window_coordinates_are_periodic_and_distinct():
    origins = torch.tensor([[0, 0], [0, 4], [4, 0], [16, 16], [2, 2]])
    feats = P.window_coordinates(origins, 16, 2)
    assert feats.shape == (10, 4 * len(P.COORD_FREQUENCIES))
    torch.testing.assert_close(feats[0], feats[6])  # (16, 16) is (0, 0) on the torus
    assert torch.equal(feats[0], feats[1])  # window-major: both images of window 0
    distinct = P.window_coordinates(P.grid_origins(16, 4), 16)
    assert torch.cdist(distinct, distinct).add(torch.eye(16) * 10).min() > 0.1
