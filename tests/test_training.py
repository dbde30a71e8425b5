import pytest
import torch

import patchlab
from patchlab.config import from_params
from patchlab.execution import Execution
from patchlab.objective import Objective
from patchlab.runs import read_metrics
from patchlab.runtime import make_generator
from patchlab.training import EMA, accumulate_gradients, train
from tiny import tiny_params


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _step_grads(model, sched, x0, mode, loss="l1"):
    model.zero_grad(set_to_none=True)
    value = accumulate_gradients(model, sched, x0, Execution(patch_mode=mode), generator=make_generator(11),
                                 objective=Objective(loss=loss))
    return value, _grads(model)


@pytest.mark.parametrize("n,position,gcc,coords", [(1, True, True, False), (1, False, False, False),
                                                   (2, True, True, False), (2, False, True, False),
                                                   (2, True, False, False), (4, True, True, False),
                                                   (2, True, True, True), (4, True, False, True)])
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_sequential_and_chunked_gradients_equal_batched(n, position, gcc, coords, loss):
    """Exact patch-sequential gradients, also for coords models trained on randomly shifted grids."""
    model, sched = patchlab.build(from_params(**tiny_params(patches=n, position=position, gcc=gcc, coords=coords,
                                                            dim_mults=(1, 2) if n < 4 else (1,))))
    x0 = torch.rand(3, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    ref_loss, ref = _step_grads(model, sched, x0, "batched", loss)
    assert len(ref) == sum(1 for _ in model.parameters())  # every parameter gets a gradient
    for mode in ["sequential", *range(2, n * n)]:
        value, grads = _step_grads(model, sched, x0, mode, loss)
        assert value == pytest.approx(ref_loss, rel=1e-6)
        flat_ref = torch.cat([g.flatten() for g in ref.values()])
        flat = torch.cat([grads[k].flatten() for k in ref])
        assert ((flat - flat_ref).norm() / flat_ref.norm()).item() <= 1e-5, mode
        for k in ref:  # and parameter by parameter
            torch.testing.assert_close(grads[k], ref[k], rtol=1e-4, atol=1e-7)


def _lever_grads(model, sched, x0, **execution):
    model.zero_grad(set_to_none=True)
    value = accumulate_gradients(model, sched, x0, Execution(**execution), generator=make_generator(11))
    return value, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("params", [dict(patches=1), dict(patches=2), dict(patches=4, dim_mults=(1,)),
                                    dict(patches=2, coords=True), dict(patches=2, coords=True, global_view=0.5,
                                                                       dim_mults=(1,))],
                         ids=["N=1", "N=2", "N=4", "coords", "global view"])
def test_micro_batches_and_checkpointing_give_the_one_pass_gradients(params):
    """Images per pass (micro-batches, gradients accumulated) and checkpointed blocks, alone, together and
    with every patch mode, give the gradients of the whole batch in one pass."""
    model, sched = patchlab.build(from_params(**tiny_params(**params)))
    x0 = torch.rand(5, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    ref_loss, ref = _lever_grads(model, sched, x0, patch_mode="batched")
    for lever in [dict(images_per_pass=1), dict(images_per_pass=2), dict(images_per_pass=9),
                  dict(checkpointing="blocks"), dict(images_per_pass=2, checkpointing="blocks"),
                  dict(patch_mode="sequential", images_per_pass=3, checkpointing="blocks")]:
        value, grads = _lever_grads(model, sched, x0, **{"patch_mode": "batched", **lever})
        assert value == pytest.approx(ref_loss, rel=1e-6), lever
        assert ((grads - ref).norm() / ref.norm()).item() <= 1e-5, lever


def test_micro_batches_run_one_pass_per_chunk_of_images():
    """Chunks of images_per_pass images (the last one smaller), each cut as the patch mode says."""
    model, sched = patchlab.build(from_params(**tiny_params(patches=2)))
    x0 = torch.rand(5, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    shapes = []

    def counting(inputs, t, pos):
        shapes.append(inputs.shape[0])
        return model(inputs, t, pos)

    for images, mode, expected in [(2, "batched", [8, 8, 4]), (None, 2, [10, 10]), (4, 2, [8, 8, 2, 2])]:
        shapes.clear()
        accumulate_gradients(model, sched, x0, Execution(patch_mode=mode, images_per_pass=images, unet=counting),
                             generator=make_generator(1))
        assert shapes == expected, (images, mode)
        assert Execution(patch_mode=mode, images_per_pass=images).passes(5, 4) == len(expected)


def test_checkpointing_recomputes_the_blocks_in_backward():
    """With checkpointed blocks, the blocks' forward runs again during backward (and only when training)."""
    model, sched = patchlab.build(from_params(**tiny_params(patches=2)))
    x0 = torch.rand(2, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    calls = []
    handle = model.mid_block1.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        for checkpointing in ("none", "blocks"):
            calls.clear()
            accumulate_gradients(model, sched, x0, Execution(patch_mode="batched", checkpointing=checkpointing),
                                 generator=make_generator(1))
            assert len(calls) == (2 if checkpointing == "blocks" else 1), checkpointing
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="sampling keeps none"):
        Execution(checkpointing="blocks").check("sample")
    with pytest.raises(ValueError, match="fast_path='off'"):
        Execution(checkpointing="blocks", fast_path="compile")
    with pytest.raises(ValueError, match="checkpointing must be one of"):
        Execution(checkpointing="levels-of-doom")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="images_per_pass must be a positive integer"):
            Execution(images_per_pass=bad)


def test_each_checkpointing_setting_has_one_runner():
    from patchlab.execution import CHECKPOINTING
    from patchlab.model import CHECKPOINT_RUNNERS

    assert tuple(CHECKPOINT_RUNNERS) == CHECKPOINTING


def test_three_steps_end_with_the_same_parameters_whatever_the_levers(tmp_path):
    """The issue's check: three steps in one pass, with 2 images per pass and with checkpointed blocks end
    with the same parameters (relative difference <= 1e-5); the levers may change on resume."""
    ends = {}
    for name, lever in [("one pass", {}), ("2 per pass", dict(images_per_pass=2)),
                        ("blocks", dict(checkpointing="blocks"))]:
        train(from_params(**tiny_params(steps=3, patch_mode="batched", **lever)), tmp_path / name, progress=False)
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
        ends[name] = torch.cat([v.flatten().float() for v in state.values()])
    for name, flat in ends.items():
        assert ((flat - ends["one pass"]).norm() / ends["one pass"].norm()).item() <= 1e-5, name
    train(from_params(**tiny_params(steps=5, patch_mode="batched", images_per_pass=1, checkpointing="blocks")),
          tmp_path / "one pass", progress=False)  # a resume with other levers


def test_loss_is_the_mean_l1_of_the_noise_prediction():
    model, sched = patchlab.build(from_params(**tiny_params()))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    t, noise = torch.tensor([3, 15]), torch.randn(2, 3, 16, 16)
    value = accumulate_gradients(model, sched, x0, Execution(patch_mode="sequential"), t=t, noise=noise)
    from patchlab.model import predict_noise
    from patchlab.schedule import q_sample
    with torch.no_grad():
        expected = (predict_noise(model, q_sample(sched, x0, t, noise), t) - noise).abs().mean().item()
    assert value == pytest.approx(expected, rel=1e-5)


def test_gradients_accumulate_without_zeroing():
    model, sched = patchlab.build(from_params(**tiny_params()))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    _, once = _step_grads(model, sched, x0, "batched")
    accumulate_gradients(model, sched, x0, Execution(patch_mode="sequential"), generator=make_generator(11))
    twice = _grads(model)
    for k in once:
        torch.testing.assert_close(twice[k], 2 * once[k], rtol=1e-4, atol=1e-7)


def test_bad_inputs_to_accumulate_gradients():
    model, sched = patchlab.build(from_params(**tiny_params()))
    x0 = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="expected images"):
        accumulate_gradients(model, sched, torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="timesteps"):
        accumulate_gradients(model, sched, x0, t=torch.tensor([0, 20]))
    with pytest.raises(ValueError, match="noise"):
        accumulate_gradients(model, sched, x0, noise=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="loss"):
        accumulate_gradients(model, sched, x0, objective=Objective(loss="huber"))
    with pytest.raises(ValueError, match="bf16 weights are for sampling"):
        accumulate_gradients(model, sched, x0, Execution(precision="bf16-weights"))
    with pytest.raises(ValueError, match="cannot be combined"):
        Execution(runner=model, unet=model)


def test_ema_tracks_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.model.weight.clone()
    ema.update(model, step=1000)
    torch.testing.assert_close(ema.model.weight, 0.9 * before + 0.1 * torch.ones(2, 2))
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10 ** 6) == 0.9
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_train_writes_run_directory(tmp_path):
    cfg = from_params(**tiny_params())
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 4 and sorted(result.losses) == [1, 2, 3, 4]
    root = tmp_path / "run"
    assert (root / "config.json").is_file() and (root / "checkpoint.pt").is_file()
    assert [r["step"] for r in read_metrics(root / "metrics.csv")] == [1, 2, 3, 4]
    assert (root / "samples" / "step_0000004.png").is_file()
    assert patchlab.config.load_json(root / "config.json") == cfg
    assert not list(root.glob(".*.tmp"))  # no temporary files left behind


def test_resume_continues_exactly(tmp_path):
    full = train(from_params(**tiny_params(steps=6)), tmp_path / "full", progress=False)
    first = train(from_params(**tiny_params(steps=3)), tmp_path / "split", progress=False)
    second = train(from_params(**tiny_params(steps=6)), tmp_path / "split", progress=False)
    assert sorted(second.losses) == [4, 5, 6]
    assert {**first.losses, **second.losses} == full.losses  # identical floats, not approximately
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["ema"][k], b["ema"][k])
    assert [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.csv")] == [1, 2, 3, 4, 5, 6]


def test_a_step_broken_by_the_interrupt_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """Ctrl-C reaches a compiler's workers too, so the step under way fails (CppCompileError): the run
    reports the interrupt in one line, keeps the last checkpoint and resumes to the uninterrupted losses."""
    import os
    import signal

    import patchlab.training as T

    cfg = from_params(**tiny_params(steps=5, checkpoint_every=2))
    full = train(cfg, tmp_path / "full", progress=False)
    real = T.accumulate_gradients

    def broken_at_step_4(model, schedule, x0, execution, **kwargs):
        if T._Loop.current_step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler sets the flag; then the "compiler" fails
            raise RuntimeError("C++ compile error\n" + "warning: ...\n" * 1000)
        return real(model, schedule, x0, execution, **kwargs)

    monkeypatch.setattr(T._Loop, "current_step", None, raising=False)
    monkeypatch.setattr(T._Loop, "update", _recording_update(T._Loop.update), raising=True)
    monkeypatch.setattr(T, "accumulate_gradients", broken_at_step_4)
    result = train(cfg, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert result.interrupted and result.signal == "SIGINT" and result.step == 3 and result.saved == 2
    assert out.count("\n") == 1 and "during step 4" in out and "RuntimeError: C++ compile error" in out
    assert "step 2" in out and "warning" not in out
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    again = train(cfg, tmp_path / "run", progress=False)
    assert sorted(again.losses) == [3, 4, 5] and {**result.losses, **again.losses} == full.losses


def _recording_update(update):
    def recorded(self, *args, **kwargs):
        type(self).current_step = self.step
        return update(self, *args, **kwargs)
    return recorded


def test_resume_drops_metrics_rows_past_the_checkpoint(tmp_path):
    cfg = from_params(**tiny_params(steps=3, checkpoint_every=2))
    train(cfg, tmp_path / "r", progress=False)
    # Simulate a crash after step 3's log row but before its checkpoint: put back step 2's checkpoint.
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    run2 = tmp_path / "r2"
    train(cfg.replace(steps=2), run2, progress=False)
    (run2 / "metrics.csv").write_text((tmp_path / "r" / "metrics.csv").read_text())
    result = train(cfg, run2, progress=False)
    assert sorted(result.losses) == [3]
    assert [r["step"] for r in read_metrics(run2 / "metrics.csv")] == [1, 2, 3]


def test_finished_run_is_not_trained_again(tmp_path):
    cfg = from_params(**tiny_params(steps=2))
    train(cfg, tmp_path / "r", progress=False)
    again = train(cfg, tmp_path / "r", progress=False)
    assert again.step == 2 and again.losses == {}


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(from_params(**tiny_params(steps=2)), tmp_path / "r", progress=False)
    with pytest.raises(patchlab.checkpoint.CheckpointError, match="gcc"):
        train(from_params(**tiny_params(steps=4, gcc=False)), tmp_path / "r", progress=False)
    with pytest.raises(patchlab.checkpoint.CheckpointError, match="lr"):
        train(from_params(**tiny_params(steps=4, lr=1e-3)), tmp_path / "r", progress=False)


def test_training_reduces_the_loss(tmp_path):
    """A few dozen steps on the shapes data must bring the noise-prediction loss down."""
    cfg = from_params(**tiny_params(steps=40, batch_size=8, lr=2e-3, log_every=10, checkpoint_every=40,
                                    timesteps=100, dim=32, attn_heads=4, attn_dim_head=32, dim_mults=(1, 2)))
    losses = train(cfg, tmp_path / "r", progress=False).losses
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(36, 41)) / 5
    assert last < 0.9 * first


def test_seed_changes_the_run(tmp_path):
    a = train(from_params(**tiny_params(steps=2)), tmp_path / "a", progress=False).losses
    b = train(from_params(**tiny_params(steps=2, seed=5)), tmp_path / "b", progress=False).losses
    c = train(from_params(**tiny_params(steps=2)), tmp_path / "c", progress=False).losses
    assert a == c and a != b


def test_bf16_training_gives_the_fp32_losses_within_bf16_precision(tmp_path):
    """bf16 autocast changes the UNet's arithmetic, not what is trained: its losses are fp32's within
    bf16's round-off (~1%), far closer than those of another seed."""
    losses = {name: train(from_params(**tiny_params(steps=3, **kw)), tmp_path / name, progress=False).losses
              for name, kw in (("fp32", {}), ("bf16", {"precision": "bf16"}), ("seed", {"seed": 3}))}
    for step, fp32 in losses["fp32"].items():
        assert losses["bf16"][step] != fp32 and losses["bf16"][step] == pytest.approx(fp32, rel=0.02)
    assert max(abs(losses["seed"][s] - losses["fp32"][s]) for s in losses["fp32"]) > 0.02 * losses["fp32"][1]


def test_a_coords_model_learns_from_shifted_windows():
    """The loss of a coords model is the mean over every pixel, whatever the random shift of its windows."""
    from patchlab.model import predict_noise
    from patchlab.schedule import q_sample

    model, sched = patchlab.build(from_params(**tiny_params(coords=True)))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    t, noise = torch.tensor([3, 15]), torch.randn(2, 3, 16, 16)
    value = accumulate_gradients(model, sched, x0, Execution(patch_mode="sequential"), t=t, noise=noise,
                                 generator=make_generator(4))
    shift = torch.randint(0, 8, (2, 2), generator=make_generator(4))  # what the step drew after t and noise
    with torch.no_grad():
        x_t = q_sample(sched, x0, t, noise)
        pred = torch.stack([predict_noise(model, x_t[i:i + 1], t[i:i + 1],
                                          windows=patchlab.patches.grid_origins(16, 2, shift[i].tolist()))[0]
                            for i in range(2)])
    assert value == pytest.approx((pred - noise).abs().mean().item(), rel=1e-5)


@pytest.mark.slow
def test_fast_training_gives_the_plain_run_and_resumes_either_way(tmp_path, monkeypatch):
    import patchlab.accel
    monkeypatch.setattr(patchlab.accel, "COMPILE_BACKEND", "aot_eager")  # inductor's C++ build takes minutes
    plain = train(from_params(**tiny_params(steps=3)), tmp_path / "plain", progress=False)
    fast = train(from_params(**tiny_params(steps=2, fast_path="compile")), tmp_path / "fast", progress=False)
    resumed = train(from_params(**tiny_params(steps=3)), tmp_path / "fast", progress=False)  # fast is not trained
    losses = {**fast.losses, **resumed.losses}
    assert sorted(losses) == [1, 2, 3] and all(losses[s] == pytest.approx(plain.losses[s], rel=1e-5) for s in losses)
    with pytest.raises(ValueError, match="CUDA device"):
        train(from_params(**tiny_params(fast_path="graphs")), tmp_path / "graphs", progress=False)
    with pytest.raises(ValueError, match="fast_path"):
        from_params(**tiny_params(fast_path="jit"))


# --- the global view (the coarse-to-fine remedy's model) ----------------------------------------------------


@pytest.mark.parametrize("n,gcc", [(2, True), (4, False)])
def test_global_view_training_keeps_exact_gradients(n, gcc):
    """Some images are denoised as their global view, the others as windows: every patch mode gives the
    batched step's gradients, and both kinds of pass run."""
    model, sched = patchlab.build(from_params(**tiny_params(patches=n, gcc=gcc, coords=True, global_view=0.5,
                                                            dim_mults=(1,))))
    x0 = torch.rand(6, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    seen = []

    def counting(inputs, t, pos):
        seen.append(bool(pos[0, -1]))
        return model(inputs, t, pos)

    model.zero_grad(set_to_none=True)
    ref_loss = accumulate_gradients(model, sched, x0, Execution(patch_mode="batched", unet=counting),
                                    generator=make_generator(11))
    ref = _grads(model)
    assert seen.count(True) == 1 and seen.count(False) == 1  # one global pass, one pass of the windows
    assert len(ref) == sum(1 for _ in model.parameters())
    for mode in ["sequential", 3]:
        value, grads = _step_grads(model, sched, x0, mode)
        assert value == pytest.approx(ref_loss, rel=1e-6)
        for k in ref:
            torch.testing.assert_close(grads[k], ref[k], rtol=1e-4, atol=1e-7)


def test_global_view_loss_is_the_pooled_noise_error_counted_per_image():
    """Half of the images (a random permutation's first) are global views; the loss is (N*N x the views' L1
    sum + the windows' L1 sum) over the batch's size: each image counts the same whichever way it is denoised."""
    from patchlab import patches as P
    from patchlab.model import global_batch, window_batch
    from patchlab.schedule import pooled_view, q_sample

    model, sched = patchlab.build(from_params(**tiny_params(coords=True, global_view=0.5, dim_mults=(1,))))
    x0 = torch.rand(4, 3, 16, 16, generator=make_generator(3)) * 2 - 1
    t, noise = torch.tensor([1, 5, 9, 17]), torch.randn(4, 3, 16, 16, generator=make_generator(4))
    g = make_generator(5)
    value = accumulate_gradients(model, sched, x0, Execution(patch_mode="sequential"), t=t, noise=noise, generator=g)
    g = make_generator(5)  # the draws after t and noise: the shifts, then which images are views
    shift = torch.randint(0, 8, (4, 2), generator=g)
    order = torch.randperm(4, generator=g)
    views = torch.zeros(4, dtype=torch.bool)
    views[order[:2]] = True  # round(0.5 * 4) images
    x_t = q_sample(sched, x0, t, noise)
    with torch.no_grad():
        view, t_view, _ = pooled_view(sched, P.global_context(x_t[views], 2), t[views], 2)
        err = (model(*global_batch(model, view, t_view)) - 2 * P.global_context(noise[views], 2)).abs().sum() * 4
        keep = ~views
        origins = ((P.grid_origins(16, 2)[:, None] + shift) % 16)[:, keep]
        context = P.global_context(x_t[keep], 2)
        pred = model(*window_batch(model, x_t[keep], t[keep], origins, context))
        err += (pred - P.gather_windows(noise[keep], origins, 8)).abs().sum()
    assert value == pytest.approx((err / x0.numel()).item(), rel=1e-5)


def test_windows_learn_only_the_fine_steps_below_windows_below():
    """With windows_below = 0.1 the windows' passes see t * m // T (m = 0.1 T) and x_t drawn again from the
    same noise at that t; the global view keeps its t; gradients stay exact in every patch mode."""
    from patchlab import patches as P
    from patchlab.model import window_batch
    from patchlab.schedule import q_sample

    cfg = from_params(**tiny_params(coords=True, global_view=0.5, windows_below=0.1, dim_mults=(1,), timesteps=1000))
    model, sched = patchlab.build(cfg)
    x0 = torch.rand(4, 3, 16, 16, generator=make_generator(3)) * 2 - 1
    t, noise = torch.tensor([999, 500, 250, 37]), torch.randn(4, 3, 16, 16, generator=make_generator(4))
    seen = []

    def recording(inputs, t_pass, pos):
        seen.append((bool(pos[0, -1]), t_pass.tolist(), inputs[:, :3].clone()))
        return model(inputs, t_pass, pos)

    value = accumulate_gradients(model, sched, x0, Execution(patch_mode="batched", unet=recording), t=t, noise=noise,
                                 generator=make_generator(5))
    g = make_generator(5)  # the draws after t and noise: the shifts, then which images are views
    shift = torch.randint(0, 8, (4, 2), generator=g)
    order = torch.randperm(4, generator=g)
    keep = order[2:].sort().values
    (flag_v, t_v, _), (flag_w, t_w, inputs) = seen
    assert flag_v and not flag_w
    assert t_v[0] < 1000 and len(t_v) == 2  # the views' own (lower) noise levels of their original t
    fine = t[keep] * 100 // 1000
    assert t_w == fine.repeat(4).tolist()  # every window of an image at its scaled t, all below 100
    origins = ((P.grid_origins(16, 2)[:, None] + shift) % 16)[:, keep]
    x_t = q_sample(sched, x0[keep], fine, noise[keep])
    expected = window_batch(model, x_t, fine, origins, P.global_context(x_t, 2))[0][:, :3]
    torch.testing.assert_close(inputs, expected)
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, sched, x0, Execution(patch_mode="batched"), t=t, noise=noise,
                         generator=make_generator(5))
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    again = accumulate_gradients(model, sched, x0, Execution(patch_mode="sequential"), t=t, noise=noise,
                                 generator=make_generator(5))
    assert again == pytest.approx(value, rel=1e-6)
    for k, grad in _grads(model).items():
        torch.testing.assert_close(grad, ref[k], rtol=1e-4, atol=1e-7)


def test_global_view_training_refuses_a_data_parallel_runner():
    model, sched = patchlab.build(from_params(**tiny_params(coords=True, global_view=0.5, dim_mults=(1,))))
    for kw in ({"runner": model}, {"part": (0, 2)}):
        with pytest.raises(ValueError, match="data-parallel"):
            accumulate_gradients(model, sched, torch.zeros(2, 3, 16, 16), Execution(**kw), generator=make_generator(0))


def test_global_view_training_with_one_image_and_in_an_estimate():
    """One image at share 0.5 is a global view only; the training step's memory can be estimated."""
    from patchlab import memory as MP

    cfg = from_params(**tiny_params(coords=True, global_view=0.5, dim_mults=(1,)))
    model, sched = patchlab.build(cfg)
    value = accumulate_gradients(model, sched, torch.zeros(1, 3, 16, 16), generator=make_generator(0))
    assert value > 0 and all(p.grad is not None for p in model.parameters())
    fake = MP.profile_step(cfg, "train", batch=4, execution=Execution(patch_mode="sequential"), estimate=True)
    real = MP.profile_step(cfg, "train", batch=4, execution=Execution(patch_mode="sequential"), device="cpu", repeats=0)
    assert fake.report.peak_bytes == pytest.approx(real.report.peak_bytes, rel=0.05)


def test_a_global_view_share_that_starves_one_kind_of_pass_is_refused_before_any_work(tmp_path):
    """round(global_view x batch) must leave at least one image for the global view and one for the windows."""
    from patchlab.training import check_job

    for batch, share in ((4, 0.1), (1, 0.5), (2, 0.9)):
        cfg = from_params(**tiny_params(coords=True, global_view=share, batch_size=batch, dim_mults=(1,)))
        with pytest.raises(ValueError, match="would never train"):
            train(cfg, tmp_path / f"r{batch}", progress=False)
        assert not (tmp_path / f"r{batch}").exists()  # refused before the run directory was made
    check_job(from_params(**tiny_params(coords=True, global_view=0.5, batch_size=2, dim_mults=(1,))))
    with pytest.raises(ValueError, match="data-parallel"):
        check_job(from_params(**tiny_params(coords=True, global_view=0.5, dim_mults=(1,))), 2)


def test_a_run_written_with_the_old_key_names_resumes(tmp_path):
    """window_until was renamed windows_below: a run whose config.json and checkpoint say window_until
    resumes under the new name, and keeps its identity (its run directory in a study)."""
    import json

    params = tiny_params(coords=True, global_view=0.5, windows_below=0.1, dim_mults=(1,), steps=2, timesteps=100)
    run = tmp_path / "run"
    train(from_params(**params), run, progress=False)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["model"]["window_until"] = state["config"]["model"].pop("windows_below")
    torch.save(state, run / "checkpoint.pt")
    old = json.loads((run / "config.json").read_text())
    old["model"]["window_until"] = old["model"].pop("windows_below")
    (run / "config.json").write_text(json.dumps(old))
    assert patchlab.config.load_json(run / "config.json") == from_params(**params)
    renamed = {**{k: v for k, v in params.items() if k != "windows_below"}, "window_until": 0.1}
    assert from_params(**renamed) == from_params(**params)
    result = train(from_params(**{**renamed, "steps": 3}), run, progress=False)
    assert sorted(result.losses) == [3]
    identity = from_params(**params).identity()
    assert identity["window_until"] == 0.1 and "windows_below" not in identity  # the published name
    with pytest.raises(patchlab.config.ConfigError, match="old and the new name"):
        from_params(**{**params, "window_until": 0.1})


def test_the_patch_mode_may_change_on_resume(tmp_path):
    """How a step runs is not what it trains: a run resumes in another patch mode (the same gradients)."""
    first = train(from_params(**tiny_params(steps=2, patch_mode="batched")), tmp_path / "r", progress=False)
    second = train(from_params(**tiny_params(steps=4, patch_mode="sequential")), tmp_path / "r", progress=False)
    whole = train(from_params(**tiny_params(steps=4, patch_mode="batched")), tmp_path / "whole", progress=False)
    losses = {**first.losses, **second.losses}
    assert all(losses[s] == pytest.approx(whole.losses[s], rel=1e-5) for s in whole.losses)
