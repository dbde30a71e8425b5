import pytest
import torch

import patchlab
from patchlab.execution import Execution
from patchlab import patches as P
from patchlab.config import from_params
from patchlab.model import PatchUNet, count_parameters, predict_noise
from tiny import tiny_params


def test_parameter_count_matches_official_model():
    """The paper's model (128 px, N=4, dim 128, mults 1,2,4,8): the official code's 126,851,919 parameters
    (126.85 M) less the decoder's Linear(128, 512) that it never calls (66,048)."""
    cfg = from_params(image_size=128, patches=4, dim=128, dim_mults=(1, 2, 4, 8))
    with torch.device("meta"):
        model = PatchUNet(cfg.model)
    assert count_parameters(model) == 126_785_871 == 126_851_919 - (128 * 512 + 512)


@pytest.mark.parametrize("layout", ["official", "standard"])
@pytest.mark.parametrize("n,position,gcc", [(1, False, False), (2, True, True), (4, True, False), (2, False, True)])
def test_forward_shapes(layout, n, position, gcc):
    cfg = from_params(**tiny_params(patches=n, position=position, gcc=gcc, layout=layout,
                                    dim_mults=(1, 2) if n < 4 else (1,)))
    model, _ = patchlab.build(cfg)
    h = 16 // n
    x = torch.randn(3, (2 if gcc else 1) * 3, h, h)
    out = model(x, torch.tensor([0, 5, 19]), P.positions(n, [0], 3) if position else None)
    assert out.shape == (3, 3, h, h)


def test_plain_ddpm_when_n1_and_switches_off():
    cfg = from_params(**tiny_params(patches=1, position=False, gcc=False))
    model, _ = patchlab.build(cfg)
    assert model.in_channels == 3 and model.embedding.position is None
    assert model.init_conv.in_channels == 3


def test_switches_change_the_architecture():
    on, _ = patchlab.build(from_params(**tiny_params()))
    off, _ = patchlab.build(from_params(**tiny_params(position=False, gcc=False)))
    assert on.init_conv.in_channels == 6 and off.init_conv.in_channels == 3
    assert on.embedding.mapping.in_features == 2 * 16 and off.embedding.mapping.in_features == 16


def test_position_changes_the_output():
    model, _ = patchlab.build(from_params(**tiny_params()))
    x, t = torch.randn(1, 6, 8, 8), torch.tensor([3])
    with torch.no_grad():
        a = model(x, t, P.positions(2, [0], 1))
        b = model(x, t, P.positions(2, [3], 1))
    assert (a - b).abs().max() > 1e-6


def test_gcc_makes_each_patch_depend_on_the_whole_image():
    model, _ = patchlab.build(from_params(**tiny_params()))
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[..., 8:, 8:] += 1.0  # change only patch 3
    t = torch.tensor([5])
    with torch.no_grad():
        ex, ey = predict_noise(model, x, t), predict_noise(model, y, t)
    assert (ex[..., :8, :8] - ey[..., :8, :8]).abs().max() > 1e-6  # patch 0 sees it through GCC
    model_nogcc, _ = patchlab.build(from_params(**tiny_params(gcc=False)))
    with torch.no_grad():
        ex, ey = predict_noise(model_nogcc, x, t), predict_noise(model_nogcc, y, t)
    assert torch.equal(ex[..., :8, :8], ey[..., :8, :8])  # without GCC it cannot


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = patchlab.build(from_params(**tiny_params()))
    after = torch.rand(1)
    b, _ = patchlab.build(from_params(**tiny_params()))
    c, _ = patchlab.build(from_params(**tiny_params(seed=1)))
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_bad_shapes_are_refused():
    model, _ = patchlab.build(from_params(**tiny_params()))
    with pytest.raises(ValueError, match="expected images"):
        predict_noise(model, torch.randn(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="expected patches"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1]), P.positions(2, [0], 1))
    with pytest.raises(ValueError, match="position"):
        model(torch.randn(1, 6, 8, 8), torch.tensor([1]), None)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_predict_noise_modes_agree(n):
    model, _ = patchlab.build(from_params(**tiny_params(patches=n, dim_mults=(1,))))
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 7, 19])
    with torch.no_grad():
        ref = predict_noise(model, x, t, Execution(patch_mode="batched"))
        for mode in ["sequential", *range(1, n * n + 1)]:
            assert (predict_noise(model, x, t, Execution(patch_mode=mode)) - ref).abs().max() <= 1e-5


def test_coords_models_take_window_coordinates():
    from patchlab import patches as P

    cfg = from_params(image_size=16, patches=2, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, coords=True)
    model = PatchUNet(cfg.model)
    assert model.embedding.position[0].in_features == 4 * len(P.COORD_FREQUENCIES)
    plain = PatchUNet(cfg.replace(coords=False).model)
    assert count_parameters(model) - count_parameters(plain) == (4 * len(P.COORD_FREQUENCIES) - 4) * 16
    with pytest.raises(ValueError, match="coords"):
        from_params(patches=2, coords=True, position=False)
    with pytest.raises(ValueError, match="coords"):
        from_params(patches=1, coords=True, dim_mults=(1, 2))
    assert "coords" not in cfg.replace(coords=False).trained_params()  # older runs keep their identity
    assert cfg.trained_params()["coords"] is True


# --- the global view (the coarse-to-fine remedy) ----------------------------------------------------------


def _global_model(n=2, **kw):
    cfg = from_params(**tiny_params(patches=n, coords=True, global_view=0.5, dim_mults=(1,), timesteps=1000, **kw))
    return patchlab.build(cfg)


def test_global_view_models_flag_their_passes():
    from patchlab.model import global_batch, window_batch
    from patchlab.schedule import pooled_view

    model, sched = _global_model()
    features = 4 * len(P.COORD_FREQUENCIES)
    assert model.embedding.position[0].in_features == features + 1  # the flag beside the coordinates
    x, t = torch.rand(3, 3, 16, 16) * 2 - 1, torch.tensor([5, 500, 999])
    _, _, pos = window_batch(model, x, t, P.grid_origins(16, 2), None)
    assert pos.shape == (12, features + 1) and torch.all(pos[:, -1] == 0)
    view, t_view, _ = pooled_view(sched, P.global_context(x, 2), t, 2)
    inputs, tt, pos = global_batch(model, view, t_view)
    assert inputs.shape == (3, 6, 8, 8) and torch.equal(inputs[:, :3], inputs[:, 3:])  # the GCC channels: the view
    assert torch.all(pos[:, :-1] == 0) and torch.all(pos[:, -1] == 1) and tt.dtype == torch.float32
    assert model(inputs, tt, pos).shape == (3, 3, 8, 8)
    plain, _ = _model_with(coords=True)
    with pytest.raises(ValueError, match="global_view > 0"):
        global_batch(plain, view, t_view)


def _model_with(**kw):
    return patchlab.build(from_params(**tiny_params(**kw)))


@pytest.mark.parametrize("n", [2, 4])
def test_predict_noise_global_recovers_the_noise_of_a_flat_image(n):
    """An oracle that predicts the view's true unit noise gives the clean view; upsampled it is the image
    itself when the image is flat on each pooled block, so the noise returned is the true noise."""
    from patchlab.model import predict_noise_global
    from patchlab.schedule import q_sample

    model, sched = _global_model(n)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 1, 1, generator=g).expand(2, 3, 16, 16) * 1.6 - 0.8  # one colour per image
    noise = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([100, 600])
    x_t = q_sample(sched, x0, t, noise)
    calls = []

    def oracle(inputs, t_view, pos):
        calls.append(inputs.shape)
        return n * P.global_context(noise, n)

    eps = predict_noise_global(model, sched, x_t, t, Execution(unet=oracle))
    assert calls == [(2, 6, 16 // n, 16 // n)]  # one pass of one patch's size
    torch.testing.assert_close(eps, noise, atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="expected images"):
        predict_noise_global(model, sched, x_t[:, :, :8], t, Execution(unet=oracle))


def test_global_view_config_is_checked_and_keeps_older_identities():
    with pytest.raises(ValueError, match="coords=True"):
        from_params(**tiny_params(global_view=0.5))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="global_view"):
            from_params(**tiny_params(coords=True, global_view=bad))
    cfg = from_params(**tiny_params(coords=True))
    assert "global_view" not in cfg.trained_params()  # the older coords runs keep their directories
    assert cfg.replace(global_view=0.5).trained_params()["global_view"] == 0.5


def test_windows_below_config_is_checked_and_keeps_older_identities():
    with pytest.raises(ValueError, match="global_view must be > 0"):
        from_params(**tiny_params(coords=True, windows_below=0.5))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="windows_below"):
            from_params(**tiny_params(coords=True, global_view=0.5, windows_below=bad))
    cfg = from_params(**tiny_params(coords=True, global_view=0.5))
    assert cfg.model.windows_below == 1.0 and "windows_below" not in cfg.trained_params()  # older runs keep theirs
    assert cfg.replace(windows_below=0.1).trained_params()["windows_below"] == 0.1
