import math

import pytest
import torch

from patchlab import schedule as S


def test_cosine_matches_closed_form():
    sched = S.make_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.betas.max() <= 0.999 and sched.betas.min() > 0


def test_linear_endpoints_and_rescaling():
    assert S.linear_betas(1000)[0].item() == pytest.approx(1e-4)
    assert S.linear_betas(1000)[-1].item() == pytest.approx(0.02)
    assert S.linear_betas(100)[-1].item() == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("T", [1, 20, 1000])
def test_schedule_shapes_and_monotonic(name, T):
    sched = S.make_schedule(name, T)
    assert sched.timesteps == T and sched.alphas_cumprod.dtype == torch.float64
    assert torch.all(sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1])
    assert torch.isfinite(sched.posterior_log_variance).all()


def test_q_sample_and_predict_x0_invert_each_other():
    sched = S.make_schedule("cosine", 50)
    x0 = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 10, 25, 49])
    x_t = S.q_sample(sched, x0, t, noise)
    assert x_t.dtype == torch.float64  # computed in the dtype of the image
    assert torch.allclose(S.predict_x0(sched, x_t, t, noise), x0, atol=1e-9)
    assert torch.allclose(S.predict_eps(sched, x_t, t, x0), noise, atol=1e-9)
    assert S.q_sample(sched, x0.float(), t, noise.float()).dtype == torch.float32


def test_posterior_matches_bayes_rule():
    """The posterior mean/variance equal the Gaussian product of q(x_t|x_{t-1}) and q(x_{t-1}|x0)."""
    sched = S.make_schedule("linear", 100)
    t = 40
    abar_prev, beta = sched.alphas_cumprod[t - 1], sched.betas[t]
    x0, x_t = torch.tensor([[[[0.3]]]], dtype=torch.float64), torch.tensor([[[[-0.7]]]], dtype=torch.float64)
    prec = 1 / beta * (1 - beta) + 1 / (1 - abar_prev)
    mean = ((1 - beta).sqrt() / beta * x_t + abar_prev.sqrt() / (1 - abar_prev) * x0) / prec
    m, v, logv = S.posterior(sched, x0, x_t, torch.tensor([t]))
    assert m.item() == pytest.approx(mean.item(), rel=1e-9)
    assert v.item() == pytest.approx((1 / prec).item(), rel=1e-9)
    assert logv.item() == pytest.approx(math.log(v.item()), rel=1e-9)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="cosine"):
        S.make_schedule("sigmoid", 10)


# --- the global view: a pooled noisy image is a noisy image of the pooled clean image -------------------


def test_fractional_timestep_inverts_alphas_cumprod():
    sched = S.make_schedule("cosine", 1000)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    assert torch.allclose(S.fractional_timestep(sched, sched.alphas_cumprod[t]), t.float(), atol=1e-4)
    between = (sched.alphas_cumprod[100] + sched.alphas_cumprod[101]) / 2
    assert S.fractional_timestep(sched, between[None]).item() == pytest.approx(100.5, abs=1e-3)
    assert S.fractional_timestep(sched, torch.tensor([1.0], dtype=torch.float64)).item() == 0.0  # clamped to [0, T-1]


@pytest.mark.parametrize("factor", [2, 4])
def test_pooled_view_is_the_forward_process_of_the_pooled_image(factor):
    """c * pool(x_t) = sqrt(a') pool(x0) + sqrt(1 - a') * f pool(noise), a' >= a, exactly."""
    sched = S.make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 250, 700, 999])
    pool = torch.nn.functional.avg_pool2d
    view, t_view, abar_view = S.pooled_view(sched, pool(S.q_sample(sched, x0, t, noise), factor), t, factor)
    assert view.shape == (5, 3, 16 // factor, 16 // factor)
    a = abar_view.reshape(-1, 1, 1, 1)
    unit = factor * pool(noise, factor)  # the view's noise
    assert torch.allclose(view, a.sqrt() * pool(x0, factor) + (1 - a).sqrt() * unit, atol=1e-12)
    assert torch.all(abar_view >= sched.alphas_cumprod[t]) and torch.all(t_view <= t.float() + 1e-4)
    assert torch.allclose(S.fractional_timestep(sched, abar_view), t_view, atol=1e-4)
    big = torch.randn(64, 3, 32, 32, generator=g, dtype=torch.float64)
    assert (factor * pool(big, factor)).std().item() == pytest.approx(1.0, abs=0.03)  # unit noise again
