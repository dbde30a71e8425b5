import math

import pytest
import torch

import patchlab
from patchlab import objective as O
from patchlab.config import from_dict, from_params
from patchlab.execution import Execution
from patchlab.model import predict_noise
from patchlab.runtime import make_generator
from patchlab.training import accumulate_gradients
from tiny import tiny_params


def _gaussian_batch(count=6, seed=0):
    """Clean images of a Gaussian data set, noise and alpha-bars spanning the schedule, all float64."""
    g = make_generator(seed)
    x0 = 0.2 + 0.3 * torch.randn(count, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(count, 1, 4, 4, generator=g, dtype=torch.float64)
    a = torch.tensor([1e-4, 0.01, 0.2, 0.5, 0.9, 0.9999], dtype=torch.float64)[:count]
    return x0, eps, a


def _x_t(x0, eps, a):
    a = a.reshape(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


@pytest.mark.parametrize("name", O.PREDICTIONS)
def test_each_target_turns_back_into_its_noise(name):
    """to_eps inverts target: the noise a perfect prediction implies is the noise that was drawn."""
    target, (x0, eps, a) = O.TARGETS[name], _gaussian_batch()
    torch.testing.assert_close(target.to_eps(target.target(x0, eps, a), _x_t(x0, eps, a), a), eps)


@pytest.mark.parametrize("name", O.PREDICTIONS)
def test_x0_scale_is_the_squared_sensitivity_of_x0_to_the_output(name):
    """An error e in the output is an error sqrt(x0_scale) e in the x0 it implies."""
    target, (x0, eps, a) = O.TARGETS[name], _gaussian_batch()
    x_t, out = _x_t(x0, eps, a), target.target(x0, eps, a)
    a4 = a.reshape(-1, 1, 1, 1)

    def x0_of(output):
        return (x_t - (1 - a4).sqrt() * target.to_eps(output, x_t, a)) / a4.sqrt()

    delta = 1e-3
    change = (x0_of(out + delta) - x0_of(out)).abs().flatten(1).mean(1) / delta
    torch.testing.assert_close(change ** 2, target.x0_scale(a), rtol=1e-5, atol=1e-9)


def test_closed_forms_of_the_targets():
    x0, eps, a = _gaussian_batch()
    a4 = a.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(O.TARGETS["v"].target(x0, eps, a), a4.sqrt() * eps - (1 - a4).sqrt() * x0)
    torch.testing.assert_close(O.TARGETS["x0"].target(x0, eps, a), x0)
    torch.testing.assert_close(O.TARGETS["eps"].target(x0, eps, a), eps)
    # EDM with sigma_data = 1 predicts -v; c_skip = 1 / (sigma^2 + 1) = a on the VP input
    torch.testing.assert_close(O.EDM(sigma_data=1.0).target(x0, eps, a), -O.TARGETS["v"].target(x0, eps, a))
    torch.testing.assert_close(O.EDM(sigma_data=1.0).x0_scale(a), O.TARGETS["v"].x0_scale(a))


def test_min_snr_weights_at_known_snrs():
    """Hang et al.: min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0."""
    snr = torch.tensor([10.0, 5.0, 1.0, 0.1], dtype=torch.float64)
    a = snr / (1 + snr)
    w = O.MinSNR(5.0)
    torch.testing.assert_close(w.weights(O.TARGETS["eps"], a), torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(w.weights(O.TARGETS["v"], a),
                               torch.tensor([5 / 11, 5 / 6, 0.5, 0.1 / 1.1], dtype=torch.float64))
    torch.testing.assert_close(w.weights(O.TARGETS["x0"], a), torch.tensor([5.0, 5.0, 1.0, 0.1], dtype=torch.float64))
    assert O.Uniform().weights(O.TARGETS["v"], a) is None
    with pytest.raises(ValueError, match="snr_gamma"):
        O.MinSNR(0.0)


@pytest.mark.parametrize("name", O.PREDICTIONS)
@pytest.mark.parametrize("weighting", [O.Uniform(), O.MinSNR(5.0)])
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_a_perfect_prediction_has_zero_loss_and_errors_weigh_as_the_weighting_says(name, weighting, loss):
    x0, eps, a = _gaussian_batch()
    objective = O.Objective(O.TARGETS[name], loss, weighting)
    perfect = objective.target.target(x0, eps, a)
    assert float(objective.loss_sum(perfect, x0, eps, a)) == 0.0
    off = perfect + 0.5  # every element off by 0.5: each image contributes weight x 16 x (0.5 or 0.25)
    per_element = 0.5 if loss == "l1" else 0.25
    weights = weighting.weights(objective.target, a)
    expected = 16 * per_element * (len(a) if weights is None else float(weights.sum()))
    assert float(objective.loss_sum(off, x0, eps, a)) == pytest.approx(expected, rel=1e-9)


def test_noise_level_draws():
    abar = patchlab.schedule.make_schedule("cosine", 1000).alphas_cumprod
    t = O.NOISE_LEVELS["uniform"].draw(abar, 50, make_generator(3), "cpu")
    assert torch.equal(t, torch.randint(0, 1000, (50,), generator=make_generator(3)))  # as before objectives
    t = O.NOISE_LEVELS["lognormal"].draw(abar, 20000, make_generator(0), "cpu")
    log_sigma = 0.5 * torch.log((1 - abar[t]) / abar[t])
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.03)
    t = O.NOISE_LEVELS["logit_normal"].draw(abar, 20000, make_generator(0), "cpu").double()
    assert float(t.mean()) == pytest.approx(499.5, abs=5)
    assert 0.30 < float(((t > 400) & (t < 600)).double().mean()) < 0.33  # P(|N(0,1)| < logit(0.6)) = 0.315
    for levels in O.NOISE_LEVELS.values():
        drawn = levels.draw(abar[:10], 1000, make_generator(1), "cpu")
        assert drawn.dtype == torch.long and 0 <= int(drawn.min()) and int(drawn.max()) <= 9


def test_objectives_are_built_from_the_configuration_and_old_runs_load_as_the_papers():
    assert O.build(from_params(**tiny_params())) == O.PAPER and O.PAPER.is_paper
    assert O.PAPER.label() == "paper's (eps, l1, uniform)"
    cfg = from_params(**tiny_params(prediction="v", loss="l2", weighting="min_snr", snr_gamma=3.0,
                                    noise_levels="lognormal"))
    built = O.build(cfg)
    assert built == O.Objective(O.TARGETS["v"], "l2", O.MinSNR(3.0), O.NOISE_LEVELS["lognormal"])
    assert built.label() == "v, l2, min_snr 3, lognormal" and not built.is_paper
    # the paper's objective reads neither the clean image nor the alpha-bars: its steps keep no tensor for them
    assert not (O.PAPER.uses_abar or O.PAPER.target.uses_x0) and built.uses_abar
    assert O.Objective(weighting=O.MinSNR()).uses_abar
    x0, eps, a = _gaussian_batch()
    assert float(O.PAPER.loss_sum(eps + 1, None, eps, None)) == eps.numel()
    assert built.settings() == {"prediction": "v", "loss": "l2", "weighting": "min_snr", "snr_gamma": 3.0,
                                "noise_levels": "lognormal"}
    # a config.json written before objectives existed: the paper's objective, the same identity (run directory)
    old = from_params(**tiny_params()).to_dict()
    del old["model"]["prediction"]
    for key in ("weighting", "snr_gamma", "noise_levels"):
        del old["diffusion"][key]
    assert O.build(from_dict(old)) == O.PAPER
    assert not {"prediction", "weighting", "snr_gamma", "noise_levels"} & set(from_dict(old).identity())
    assert {"prediction", "weighting", "noise_levels"} <= set(cfg.identity())
    for bad, match in [(dict(prediction="score"), "prediction"), (dict(weighting="snr"), "weighting"),
                       (dict(noise_levels="cosine"), "noise_levels"), (dict(snr_gamma=-1.0), "snr_gamma")]:
        with pytest.raises(ValueError, match=match):
            from_params(**tiny_params(**bad))
    with pytest.raises(ValueError, match="loss"):
        O.Objective(loss="huber")
    with pytest.raises(TypeError, match="weighting"):
        O.Objective(weighting="min_snr")


def test_a_model_predicting_v_gives_the_noise_its_outputs_imply():
    """The same weights read as an epsilon model and as a v model: the v model's noise is V.to_eps of the
    epsilon model's outputs, on the grid and on overlapping windows."""
    for params, windows in [(dict(), None), (dict(coords=True), patchlab.patches.overlap_origins(16, 2))]:
        eps_model, schedule = patchlab.build(from_params(**tiny_params(**params)))
        v_model, _ = patchlab.build(from_params(**tiny_params(prediction="v", **params)))
        x_t = torch.randn(2, 3, 16, 16, generator=make_generator(0))
        t = torch.tensor([3, 15])
        with torch.no_grad():
            raw = predict_noise(eps_model, x_t, t, windows=windows)
            got = predict_noise(v_model, x_t, t, windows=windows, schedule=schedule)
        torch.testing.assert_close(got, O.TARGETS["v"].to_eps(raw, x_t, schedule.alphas_cumprod[t]))
        with pytest.raises(ValueError, match="give the schedule"):
            predict_noise(v_model, x_t, t)


def _grads(model, sched, x0, objective, **execution):
    model.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, sched, x0, Execution(**execution), generator=make_generator(11),
                                objective=objective)
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


TILINGS = {"grid": dict(patches=2), "N=1": dict(patches=1), "shifted grids": dict(patches=2, coords=True),
           "global view": dict(patches=2, coords=True, global_view=0.5, windows_below=0.5, dim_mults=(1,))}
OBJECTIVES = {"eps l2 min-snr": dict(prediction="eps", loss="l2", weighting="min_snr"),
              "v min-snr": dict(prediction="v", loss="l2", weighting="min_snr"),
              "x0 logit-normal": dict(prediction="x0", loss="l1", noise_levels="logit_normal"),
              "edm lognormal": dict(prediction="edm", loss="l2", noise_levels="lognormal")}


@pytest.mark.parametrize("tiling", TILINGS)
@pytest.mark.parametrize("recipe", OBJECTIVES)
def test_every_objective_trains_every_tiling_with_exact_patch_sequential_gradients(tiling, recipe):
    """Patches one at a time, micro-batches of images and checkpointed blocks give the batched step's loss and
    gradients for every objective (every loss is a sum of per-image terms)."""
    cfg = from_params(**tiny_params(**TILINGS[tiling], **OBJECTIVES[recipe]))
    model, sched = patchlab.build(cfg)
    objective = O.build(cfg)
    x0 = torch.rand(4, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    ref_loss, ref = _grads(model, sched, x0, objective, patch_mode="batched")
    assert ref.norm() > 0 and math.isfinite(ref_loss)
    for execution in (dict(patch_mode="sequential"), dict(patch_mode="batched", images_per_pass=3),
                      dict(patch_mode="sequential", images_per_pass=1, checkpointing="blocks")):
        loss, grads = _grads(model, sched, x0, objective, **execution)
        assert loss == pytest.approx(ref_loss, rel=1e-5), execution
        assert ((grads - ref).norm() / ref.norm()).item() <= 1e-5, execution


def test_an_objective_must_match_what_the_model_predicts():
    model, sched = patchlab.build(from_params(**tiny_params(prediction="v")))
    x0 = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="predicts 'v'"):
        accumulate_gradients(model, sched, x0)  # the paper's objective trains an epsilon model
    with pytest.raises(TypeError, match="objective"):
        accumulate_gradients(model, sched, x0, objective="v")
