"""Fast per-pass execution: compiled passes and bf16 weights give the plain results (CPU); CUDA-graph replays
of sampling and training passes refuse what they cannot do and, on a GPU, equal the plain pass."""

import pytest
import torch

import patchlab
from tiny import tiny_params
from patchlab import accel
from patchlab import tiling as T
from patchlab.accel import cast_weights, compiled_unet, cuda_graph_unet, fast_unet, graphed_train_unet
from patchlab.execution import Execution
from patchlab.model import predict_noise
from patchlab.runtime import make_generator
from patchlab.sampling import sample
from patchlab.training import accumulate_gradients

QUICK = "aot_eager"  # torch.compile's capture and autograd graphs without inductor's C++ build (minutes on 2 cores)


def _gradients(model, schedule, x, mode, unet=None, precision="fp32"):
    """Loss and flat gradient of one training step on fixed timesteps and noise."""
    model.zero_grad(set_to_none=True)
    g = make_generator(3)
    loss = accumulate_gradients(model, schedule, x, Execution(patch_mode=mode, unet=unet, precision=precision),
                                generator=g)
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.slow
@pytest.mark.parametrize("coords", [False, True])
def test_training_hook_runs_every_pass_and_compiled_passes_give_the_same_gradients(coords):
    cfg = patchlab.config.from_params(**tiny_params(patches=2, coords=coords))
    model, schedule = patchlab.build(cfg)
    x = torch.rand(3, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    loss, plain = _gradients(model, schedule, x, "batched")
    calls = []

    def counting(*args):
        calls.append(args[0].shape[0])
        return model(*args)

    loss_hook, hooked = _gradients(model, schedule, x, "sequential", unet=counting)
    assert calls == [3] * 4  # one call per pass, one patch of each image per pass
    assert loss_hook == pytest.approx(loss, rel=1e-6) and torch.allclose(hooked, plain, atol=1e-6)
    unet = compiled_unet(model, backend=QUICK)
    for mode in ("sequential", 3, "batched"):  # chunks of 3 + 1: two shapes, each compiled once
        loss_c, compiled = _gradients(model, schedule, x, mode, unet=unet)
        assert loss_c == pytest.approx(loss, rel=1e-6) and torch.allclose(compiled, plain, atol=1e-6)


@pytest.mark.slow
def test_compiled_passes_of_a_global_view_model_give_the_same_gradients():
    """Its global view's pass has the shapes of a window pass (sequential, half the images each) but
    fractional timesteps: a pass of its own, not a replay of the other."""
    cfg = patchlab.config.from_params(**tiny_params(patches=2, coords=True, global_view=0.5))
    model, schedule = patchlab.build(cfg)
    x = torch.rand(4, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    loss, plain = _gradients(model, schedule, x, "sequential")
    unet = compiled_unet(model, backend=QUICK)
    for mode in ("sequential", "batched"):
        loss_c, compiled = _gradients(model, schedule, x, mode, unet=unet)
        assert loss_c == pytest.approx(loss, rel=1e-6) and torch.allclose(compiled, plain, atol=1e-6)
    out = sample(model, schedule, 2, sampler="ddim", steps=3, generator=make_generator(1),
                 tiling=T.CoarseToFine(cfg.model, 0.5), execution=Execution(unet=unet))
    ref = sample(model, schedule, 2, sampler="ddim", steps=3, generator=make_generator(1),
                 tiling=T.CoarseToFine(cfg.model, 0.5))
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.slow
def test_compiled_sampling_equals_plain():
    cfg = patchlab.config.from_params(**tiny_params(patches=2))
    model, schedule = patchlab.build(cfg)
    unet = compiled_unet(model, backend=QUICK)
    for mode in ("sequential", 3):
        plain, compiled = (sample(model, schedule, 2, sampler="ddim", steps=3, generator=make_generator(1),
                                  execution=Execution(patch_mode=mode, unet=u)) for u in (None, unet))
        assert torch.allclose(compiled, plain, atol=1e-5)


def test_fast_unet_picks_a_path_and_refuses_what_cannot_run(monkeypatch):
    model, _ = patchlab.build(patchlab.config.from_params(**tiny_params()))
    monkeypatch.setattr(accel, "COMPILE_BACKEND", QUICK)
    assert isinstance(fast_unet(model, "train"), accel.CompiledUNet)  # the CPU's default
    assert not fast_unet(model, "train").freeze and fast_unet(model, "sample").freeze  # sampling's weights stay
    frozen = fast_unet(model, "sample")
    x = torch.rand(1, 3, 16, 16, generator=make_generator(0))
    inputs = patchlab.model.patch_batch(model, x, torch.zeros(1, dtype=torch.long), [0],
                                        patchlab.patches.global_context(x, 2))
    with pytest.raises(RuntimeError, match="inference"):
        frozen(*inputs)
    with torch.no_grad():
        assert torch.allclose(frozen(*inputs), model(*inputs), atol=1e-6)
    with pytest.raises(ValueError, match="CUDA device"):
        fast_unet(model, "train", path="graphs")
    with pytest.raises(ValueError, match="CUDA device"):
        graphed_train_unet(model)
    with pytest.raises(ValueError, match="fast path"):
        fast_unet(model, "sample", path="jit")
    with pytest.raises(ValueError, match="phase"):
        fast_unet(model, "eval")
    assert Execution(fast_path="off").forward(model, "sample") is model  # a fast_path / --fast setting
    assert isinstance(Execution(fast_path="compile").forward(model, "sample"), accel.CompiledUNet)
    with pytest.raises(ValueError, match="fast_path must be one of 'off', 'compile', 'graphs'"):
        Execution(fast_path="auto")


def test_bf16_weights_halve_the_weights_and_patch_modes_agree():
    cfg = patchlab.config.from_params(**tiny_params(patches=2))
    model, schedule = patchlab.build(cfg)
    x = torch.randn(2, 3, 16, 16, generator=make_generator(0))
    t = torch.tensor([3, 15])
    with torch.no_grad():
        fp32 = predict_noise(model, x, t)
    with pytest.raises(ValueError, match="cast_weights"):
        sample(model, schedule, 2, execution=Execution(precision="bf16-weights"))
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    cast_weights(model)
    assert sum(p.numel() * p.element_size() for p in model.parameters()) * 2 == before
    assert all(b.dtype == torch.float32 for b in model.buffers())  # timestep frequencies stay exact
    runs = [sample(model, schedule, 2, sampler="ddim", steps=3, generator=make_generator(1),
                   execution=Execution(patch_mode=mode, precision="bf16-weights"))
            for mode in ("batched", "sequential", 3)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])  # bf16 modes agree with each other
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = predict_noise(model, x, t).float()
    assert (bf16 - fp32).norm() / fp32.norm() < 0.02  # and stay near fp32 (bf16 rounding)
    with pytest.raises(ValueError, match="precision"):
        Execution(precision="fp16")


def test_refuses_a_cpu_model():
    model, _ = patchlab.build(patchlab.config.from_params(**tiny_params()))
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_graph_unet(model)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("mode", ["sequential", 3, "batched"])
def test_replay_equals_plain_pass(mode):
    cfg = patchlab.config.from_params(**tiny_params(patches=2))
    model, schedule = patchlab.build(cfg)
    model.cuda().eval()
    g = make_generator(0, "cuda")
    x = torch.randn(3, 3, 16, 16, generator=g, device="cuda")
    t = torch.randint(0, 20, (3,), generator=g, device="cuda")
    unet = cuda_graph_unet(model)
    with torch.no_grad():
        plain = predict_noise(model, x, t, Execution(patch_mode=mode))
        for _ in range(2):  # first call captures, second replays
            replay = predict_noise(model, x, t, Execution(patch_mode=mode, unet=unet))
            assert (replay - plain).abs().max().item() < 1e-4
    with pytest.raises(RuntimeError, match="no_grad"):
        unet(*patchlab.model.patch_batch(model, x, t, [0], None))
    images = sample(model, schedule, 3, sampler="ddim", steps=3, generator=make_generator(1, "cuda"),
                    execution=Execution(unet=unet))
    assert images.shape == (3, 3, 16, 16)


@cuda
@pytest.mark.parametrize("mode", ["sequential", 3, "batched"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("global_view", [0.0, 0.5])
def test_graphed_training_gives_the_plain_gradients(mode, precision, global_view):
    cfg = patchlab.config.from_params(**tiny_params(patches=2, coords=bool(global_view), global_view=global_view))
    model, schedule = patchlab.build(cfg)
    model.cuda().train()
    x = torch.rand(3, 3, 16, 16, generator=make_generator(0, "cuda"), device="cuda") * 2 - 1
    loss, plain = _gradients(model, schedule, x, mode, precision=precision)
    unet = graphed_train_unet(model)
    for _ in range(2):  # first call captures, second replays
        loss_g, graphed = _gradients(model, schedule, x, mode, unet=unet, precision=precision)
        assert loss_g == pytest.approx(loss, rel=1e-4)
        assert (graphed - plain).abs().max().item() < (1e-4 if precision == "fp32" else 1e-2)
    with torch.no_grad(), pytest.raises(RuntimeError, match="gradients enabled"):
        unet(*patchlab.model.patch_batch(model, x, torch.zeros(3, dtype=torch.long, device="cuda"), [0], None))
