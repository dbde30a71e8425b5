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
