import pytest
import torch

import patchlab
from patchlab import tiling as T
from patchlab.config import from_params
from patchlab.execution import Execution
from patchlab.runtime import make_generator
from patchlab.runs import load_run
from patchlab.sampling import Denoised, get_sampler, sample, timesteps_for
from patchlab.schedule import make_schedule
from patchlab.training import train
from tiny import tiny_params


def _model(**kw):
    return patchlab.build(from_params(**tiny_params(**kw)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny models trained for 30 steps (T=1000, cosine), cached per (N, position, gcc).

    Untrained random weights predict noise far outside the data's range; at t = T-1 the cosine
    schedule divides by sqrt(abar) ~ 5e-5, so GEMM round-off of ~1e-6 in the few x0 pixels that
    escape clipping can grow past 1e-4. A model that has seen data at all keeps the modes within ~1e-6.
    """
    cache = {}

    def get(n, position, gcc, coords=False):
        if (n, position, gcc, coords) not in cache:
            cfg = from_params(**tiny_params(patches=n, position=position, gcc=gcc, dim_mults=(1,), timesteps=1000,
                                            steps=30, lr=2e-3, batch_size=8, log_every=30, checkpoint_every=30,
                                            sample_steps=2, coords=coords))
            run = tmp_path_factory.mktemp("run")
            train(cfg, run, progress=False)
            cache[(n, position, gcc, coords)] = load_run(run)[:2]
        return cache[(n, position, gcc, coords)]
    return get


def _modes(n):
    """Sequential and chunks of k that divide N*N evenly and unevenly (the last pass smaller)."""
    return ["sequential", *sorted({k for k in (2, 3, n * n - 1) if 1 < k < n * n})]


@pytest.mark.slow
@pytest.mark.parametrize("n,position,gcc", [(1, True, True), (2, True, True), (2, False, False), (4, True, True),
                                            (4, False, True)])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_all_patch_modes_give_the_same_images_ddim(trained, n, position, gcc, eta):
    """Max abs difference <= 1e-4 in float32: the modes differ only in round-off of batched GEMMs."""
    model, sched = trained(n, position, gcc)
    ref = sample(model, sched, 3, sampler="ddim", steps=12, eta=eta, execution=Execution(patch_mode="batched"),
                 generator=make_generator(7))
    for mode in _modes(n):
        out = sample(model, sched, 3, sampler="ddim", steps=12, eta=eta, execution=Execution(patch_mode=mode),
                     generator=make_generator(7))
        assert (out - ref).abs().max().item() <= 1e-4, mode


@pytest.mark.slow
def test_all_patch_modes_give_the_same_images_ddpm_1000_steps(trained):
    model, sched = trained(2, True, True)
    ref = sample(model, sched, 2, execution=Execution(patch_mode="batched"), generator=make_generator(3))
    out = sample(model, sched, 2, execution=Execution(patch_mode="sequential"), generator=make_generator(3))
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("n,position,gcc", [(2, True, True), (2, False, False), (4, True, True), (4, False, True)])
def test_all_patch_modes_give_the_same_images_untrained_ddpm(n, position, gcc):
    model, sched = _model(patches=n, position=position, gcc=gcc, dim_mults=(1,), timesteps=50)
    ref = sample(model, sched, 3, execution=Execution(patch_mode="batched"), generator=make_generator(7))
    for mode in _modes(n):
        out = sample(model, sched, 3, execution=Execution(patch_mode=mode), generator=make_generator(7))
        assert (out - ref).abs().max().item() <= 1e-4, mode


@pytest.mark.parametrize("params,windows", [(dict(patches=1), None), (dict(patches=2), None),
                                            (dict(patches=2, coords=True), "overlap"),
                                            (dict(patches=2, coords=True, global_view=0.5, dim_mults=(1,)), "global")])
def test_images_per_pass_give_the_same_images(params, windows):
    """Denoising k images at a time (the last chunk smaller) gives the images of one pass over all of them, with
    every tiling: each image's prediction depends on that image alone (up to float32 round-off of GEMMs over
    other batch sizes, which the untrained weights amplify a little over the steps)."""
    model, sched = _model(**params)
    ref = sample(model, sched, 5, sampler="ddim", steps=4, eta=0.5, tiling=windows,
                 execution=Execution(patch_mode="batched"), generator=make_generator(7))
    for k in (1, 2, 5, 8):
        out = sample(model, sched, 5, sampler="ddim", steps=4, eta=0.5, tiling=windows,
                     execution=Execution(patch_mode="sequential", images_per_pass=k), generator=make_generator(7))
        assert (out - ref).abs().max().item() <= 5e-4, k


def test_output_range_shape_and_determinism():
    model, sched = _model()
    a = sample(model, sched, 2, generator=make_generator(1))
    b = sample(model, sched, 2, generator=make_generator(1))
    c = sample(model, sched, 2, generator=make_generator(2))
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_eta0_is_deterministic_given_x_T():
    model, sched = _model()
    x_T = torch.randn(2, 3, 16, 16, generator=make_generator(3))
    a = sample(model, sched, 2, sampler="ddim", steps=5, x_T=x_T, generator=make_generator(1))
    b = sample(model, sched, 2, sampler="ddim", steps=5, x_T=x_T, generator=make_generator(2))
    assert torch.equal(a, b)


def test_callback_sees_every_step_with_clipped_x0():
    model, sched = _model()
    seen = []
    sample(model, sched, 2, sampler="ddim", steps=6,
           callback=lambda i, t, x, x0: seen.append((i, t, x.shape, float(x0.abs().max()))))
    assert [s[0] for s in seen] == list(range(6)) and seen[0][1] == 19 and seen[-1][1] == 0
    assert all(s[3] <= 1.0 for s in seen)


def test_ddpm_visits_all_steps():
    model, sched = _model()
    ts = []
    sample(model, sched, 1, callback=lambda i, t, x, x0: ts.append(t))
    assert ts == list(range(19, -1, -1))


def test_timesteps_for():
    assert timesteps_for("ddim", 1000, 4) == [999, 666, 333, 0]
    assert timesteps_for("ddim", 10, 10) == list(range(9, -1, -1))
    assert timesteps_for("ddim", 10, 1) == [9]


@pytest.mark.parametrize("kw,match", [
    (dict(sampler="ddpm", steps=5), "all T"), (dict(sampler="ddim", steps=0), "steps"),
    (dict(sampler="ddim", steps=21), "steps"), (dict(sampler="euler"), "sampler"),
    (dict(sampler="ddim", eta=2.0), "eta"), (dict(x_T=torch.zeros(1, 3, 8, 8)), "x_T"),
    (dict(execution=Execution(precision="bf16-weights")), "cast them first"), (dict(tiling="random"), "windows"),
])
def test_bad_arguments(kw, match):
    model, sched = _model()
    with pytest.raises(ValueError, match=match):
        sample(model, sched, 1, **kw)
    for bad, match in ((dict(patch_mode="parallel"), "patch_mode"), (dict(precision="fp8"), "precision")):
        with pytest.raises(ValueError, match=match):
            Execution(**bad)


def test_bf16_autocast_samples_what_fp32_does_up_to_bf16_round_off(trained):
    """bf16 autocast changes only the UNet's arithmetic: the images stay those of fp32 within bf16's
    precision (3 significant digits: a few hundredths on [-1, 1] after 12 steps), not some other images."""
    model, sched = trained(2, True, True)
    fp32, bf16, other = (sample(model, sched, 4, sampler="ddim", steps=12, generator=make_generator(seed),
                                execution=Execution(precision=precision))
                         for seed, precision in ((4, "fp32"), (4, "bf16"), (5, "fp32")))
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().mean() < 0.02 < (other - fp32).abs().mean()


def test_model_training_flag_is_restored():
    model, sched = _model()
    model.train()
    sample(model, sched, 1, sampler="ddim", steps=2)
    assert model.training


# --- the seam remedies: windows off the fixed grid ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("windows", ["grid", "shifted", "overlap"])
def test_remedies_give_the_same_images_in_every_patch_mode(trained, n, windows):
    model, sched = trained(n, True, True, coords=True)
    ref = sample(model, sched, 3, sampler="ddim", steps=12, execution=Execution(patch_mode="batched"),
                 generator=make_generator(7), tiling=windows)
    for mode in ["sequential", 3]:
        out = sample(model, sched, 3, sampler="ddim", steps=12, execution=Execution(patch_mode=mode),
                     generator=make_generator(7), tiling=windows)
        assert (out - ref).abs().max().item() <= 1e-4, mode
    if windows != "grid":  # the windows change the images (the model sees other patches)
        grid = sample(model, sched, 3, sampler="ddim", steps=12, execution=Execution(patch_mode="batched"),
                      generator=make_generator(7))
        assert (grid - ref).abs().max().item() > 1e-3


def test_windows_put_predictions_together_exactly():
    from patchlab import patches as P
    from patchlab.model import predict_noise

    model, _ = _model(patches=2, coords=True, dim_mults=(1,))
    x = torch.rand(2, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    t = torch.tensor([3, 5])

    def echo(inputs, t, pos):  # predicts its own patch: a tiling must give back the image
        return inputs[:, :3]

    for shift in ((0, 0), (4, 4), (3, 6)):
        torch.testing.assert_close(predict_noise(model, x, t, Execution(unet=echo),
                                                 windows=P.grid_origins(16, 2, shift)),
                                   x)

    def constant(inputs, t, pos):  # overlapping windows are blended with weights that sum to one
        return torch.full_like(inputs[:, :3], 0.25)

    out = predict_noise(model, x, t, Execution(unet=constant), windows=P.overlap_origins(16, 2))
    torch.testing.assert_close(out, torch.full_like(x, 0.25))
    echoed = predict_noise(model, x, t, Execution(unet=echo), windows=P.overlap_origins(16, 2))
    torch.testing.assert_close(echoed, x)  # every window agrees with the image, so the blend is the image


def test_windows_off_the_grid_need_a_coords_model():
    model, sched = _model(patches=2)
    with pytest.raises(ValueError, match="coords=True"):
        sample(model, sched, 1, sampler="ddim", steps=2, tiling="shifted")
    with pytest.raises(ValueError, match="windows must be one of"):
        sample(model, sched, 1, sampler="ddim", steps=2, tiling="random")


# --- the coarse-to-fine remedy: the global view, then overlapping windows -----------------------------------


def _global(n=2):
    return _model(patches=n, coords=True, global_view=0.5, dim_mults=(1,), timesteps=1000)


@pytest.mark.parametrize("n", [2, 4])
def test_global_windows_give_the_same_images_in_every_patch_mode(n):
    model, sched = _global(n)
    ref = sample(model, sched, 3, sampler="ddim", steps=6, execution=Execution(patch_mode="batched"),
                 generator=make_generator(7), tiling=T.CoarseToFine(model.config, 0.3))
    for mode in ["sequential", 3]:
        out = sample(model, sched, 3, sampler="ddim", steps=6, execution=Execution(patch_mode=mode),
                     generator=make_generator(7), tiling=T.CoarseToFine(model.config, 0.3))
        assert (out - ref).abs().max().item() <= 1e-4, mode


def test_global_from_hands_over_from_the_global_view_to_the_windows():
    model, sched = _global()
    passes = []

    def counting(inputs, t, pos):
        passes.append((float(t[0]), bool(pos[0, -1])))
        return model(inputs, t, pos)

    kw = dict(sampler="ddim", steps=5)
    steps = timesteps_for("ddim", 1000, 5)  # 999, 749, 500, 250, 0
    sample(model, sched, 2, generator=make_generator(1), tiling=T.CoarseToFine(model.config, 0.4),
           execution=Execution(patch_mode="batched", unet=counting), **kw)
    flags = [flag for _, flag in passes]
    assert flags == [True, True, True, False, False]  # t >= 400 from the global view, one pass each; then windows
    assert [T.CoarseToFine(model.config, 0.4).uses_global_view(t, 1000) for t in steps] == flags
    assert passes[0][0] < 999  # the view's own, lower noise level
    every = sample(model, sched, 2, generator=make_generator(1), tiling=T.CoarseToFine(model.config, 1.0), **kw)
    overlap = sample(model, sched, 2, generator=make_generator(1), tiling="overlap", **kw)
    torch.testing.assert_close(every, overlap)  # 1: windows at every step, i.e. the overlap sampler
    only = sample(model, sched, 2, generator=make_generator(1), tiling=T.CoarseToFine(model.config, 0.0), **kw)
    assert (only - overlap).abs().max().item() > 1e-3


def test_global_windows_need_a_global_view_model_and_a_fraction():
    model, sched = _model(patches=2, coords=True, dim_mults=(1,))
    with pytest.raises(ValueError, match="global_view > 0"):
        sample(model, sched, 1, sampler="ddim", steps=2, tiling="global")
    model, sched = _global()
    for bad in (-0.1, 1.5, 50, True):
        with pytest.raises(ValueError, match="global_from"):
            T.CoarseToFine(model.config, bad)


def test_a_model_whose_windows_learnt_the_fine_steps_samples_coarse_to_fine_by_default():
    """windows_below < 1: the windows only below it, so the sampler refuses windows at noisier steps and, not
    told, hands over at min(GLOBAL_FROM, windows_below)."""
    model, sched = _model(patches=2, coords=True, global_view=0.5, windows_below=0.02, dim_mults=(1,),
                          timesteps=1000)
    assert T.for_model(model.config) == T.CoarseToFine(model.config, 0.02)
    assert T.build(model.config).settings() == {"windows": "global", "global_from": 0.02}
    kw = dict(sampler="ddim", steps=4)
    for bad in ("grid", "overlap"):
        with pytest.raises(ValueError, match="windows_below = 0.02"):
            sample(model, sched, 1, generator=make_generator(0), tiling=bad, **kw)
    with pytest.raises(ValueError, match="windows_below = 0.02"):
        T.CoarseToFine(model.config, 0.05)
    default = sample(model, sched, 2, generator=make_generator(3), **kw)
    explicit = sample(model, sched, 2, generator=make_generator(3), tiling=T.CoarseToFine(model.config, 0.02), **kw)
    torch.testing.assert_close(default, explicit)
    # the older models keep theirs: the grid, and GLOBAL_FROM for the hand-over
    older, _ = _global()
    assert T.for_model(older.config) == T.Grid(older.config)
    assert T.build(older.config, "global").global_from == T.GLOBAL_FROM


# --- the samplers over a denoiser ---------------------------------------------------------------------------

MU, SD = 0.2, 0.3  # a Gaussian data set: every pixel ~ N(MU, SD^2), independently


def _exact_denoiser(schedule):
    """The exact denoiser of the Gaussian data set: E[x0 | x_t] and the noise it implies."""
    def denoise(x, t):
        a = float(schedule.alphas_cumprod[t])
        x0 = MU + a ** 0.5 * SD ** 2 / (a * SD ** 2 + 1 - a) * (x - a ** 0.5 * MU)
        return Denoised(x0, (x - a ** 0.5 * x0) / (1 - a) ** 0.5)
    return denoise


def _gaussian_run(name, steps, spacing="uniform", count=20000):
    schedule = make_schedule("cosine", 1000)
    g = make_generator(0)
    noise = torch.randn(count, 1, 1, 1, generator=g, dtype=torch.float64)
    sampler = get_sampler(name)
    out = sampler.run(_exact_denoiser(schedule), noise, timesteps_for(sampler, 1000, steps, spacing), schedule,
                      generator=g)
    return noise, out


@pytest.mark.parametrize("name,steps,spacing", [("ddpm", None, "uniform"), ("ddim", 50, "uniform"),
                                                ("ddim", 25, "quadratic"), ("heun", 13, "quadratic"),
                                                ("dpmpp_2m", 25, "quadratic"), ("heun", 25, "uniform"),
                                                ("dpmpp_2m", 50, "uniform")])
def test_each_sampler_with_the_exact_denoiser_recovers_a_gaussian_data_set(name, steps, spacing):
    _, out = _gaussian_run(name, steps, spacing)
    assert float(out.mean()) == pytest.approx(MU, abs=0.01)
    assert float(out.std()) == pytest.approx(SD, rel=0.05)


def test_second_order_samplers_follow_the_ode_closer_than_ddim_at_equal_evaluations():
    """The deterministic samplers solve the same ODE (the images of one noise): against a 1000-step DDIM,
    Heun (13 steps, 25 evaluations) and DPM-Solver++(2M) (25) are closer than DDIM with 25."""
    noise, exact = _gaussian_run("ddim", 1000)
    error = {name: float((_gaussian_run(name, steps, "quadratic")[1] - exact).abs().mean())
             for name, steps in (("ddim", 25), ("heun", 13), ("dpmpp_2m", 25))}
    assert error["heun"] < error["ddim"] / 2 and error["dpmpp_2m"] < error["ddim"] / 2, error
    assert get_sampler("heun").evaluations(13) == 25 == get_sampler("dpmpp_2m").evaluations(25)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
@pytest.mark.parametrize("params,windows", [(dict(patches=2), "grid"), (dict(patches=2, prediction="v"), "grid"),
                                            (dict(patches=2, coords=True, prediction="edm"), "shifted"),
                                            (dict(patches=2, coords=True, prediction="x0"), "overlap"),
                                            (dict(patches=2, coords=True, global_view=0.5), "global")])
def test_second_order_samplers_work_with_every_objective_tiling_and_execution(sampler, params, windows):
    model, sched = _model(dim_mults=(1,), timesteps=50, **params)
    kw = dict(sampler=sampler, steps=5, spacing="quadratic", tiling=windows)
    ref = sample(model, sched, 3, execution=Execution(patch_mode="batched"), generator=make_generator(7), **kw)
    assert ref.shape == (3, 3, 16, 16) and bool(torch.isfinite(ref).all())
    for execution in (Execution(patch_mode="sequential"), Execution(patch_mode=3, images_per_pass=2)):
        out = sample(model, sched, 3, execution=execution, generator=make_generator(7), **kw)
        assert (out - ref).abs().max().item() <= 1e-4, execution


def test_heun_evaluates_twice_per_step_but_the_last():
    model, sched = _model(patches=2, coords=True, dim_mults=(1,))
    seen, passes = [], []

    def counting(inputs, t, pos):
        passes.append(float(t[0]))
        return model(inputs, t, pos)

    sample(model, sched, 1, sampler="heun", steps=4, tiling="shifted", callback=lambda i, t, x, x0: seen.append(t),
           execution=Execution(patch_mode="batched", unet=counting))
    assert seen == [19, 13, 6, 0] and passes == [19, 13, 13, 6, 6, 0, 0]  # 2 x 4 - 1 evaluations
    assert timesteps_for("ddim", 1000, 5, "quadratic") == [999, 562, 250, 62, 0]
    with pytest.raises(ValueError, match="spacing"):
        timesteps_for("ddim", 1000, 5, "cosine")
    with pytest.raises(ValueError, match="eta applies to DDIM only"):
        sample(model, sched, 1, sampler="heun", steps=2, eta=0.5)
