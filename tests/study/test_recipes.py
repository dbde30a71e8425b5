import json

import pytest

from patchlab import objective as O
from patchlab.study import recipes as R


def test_the_study_trains_every_recipe_at_every_n_and_seed_on_the_digits_profiles_model():
    study = R.runs(800, [0, 1], "runs/x")
    assert len(study) == len(R.RECIPES) * len(R.PATCHES) * 2
    assert len({run.path for *_, run in study}) == len(study)  # one directory per run
    for name, n, seed, run in study:
        cfg = run.config
        assert (cfg.model.patches, cfg.model.position, cfg.model.gcc) == (n, n > 1, n > 1)
        assert (cfg.data.dataset, cfg.model.image_size, cfg.model.channels, cfg.model.dim) == ("digits", 32, 1, 32)
        assert (cfg.train.steps, cfg.train.seed, cfg.train.batch_size, cfg.train.lr) == (800, seed, 32, 2e-3)
        objective = O.build(cfg)
        assert objective.is_paper == (name == "paper")
        assert run.path.name.startswith(f"n{n}-")
    assert O.build(study[-1][3].config).settings()["prediction"] == "edm"
    subset = R.runs(4, [0], "runs/x", recipes=["paper"], patches=[2])
    assert [(r, n, s) for r, n, s, _ in subset] == [("paper", 2, 0)]


def test_training_seconds_add_up_across_resumes():
    rows = [{"step": 25, "elapsed_s": 10.0}, {"step": 50, "elapsed_s": 20.0}, {"step": 60, "elapsed_s": 25.0},
            {"step": 75, "elapsed_s": 7.0}, {"step": 100, "elapsed_s": 17.0}]
    assert R.train_seconds(rows) == {25: 10.0, 50: 20.0, 60: 25.0, 75: 32.0, 100: 42.0}


def _row(recipe, n, seed, step, confident, fid=100.0):
    return {"recipe": recipe, "N": n, "seed": seed, "step": step, "images": 32 * step, "confident": confident,
            "digit_fid": fid}


def _rows(fast_final=0.8, paper_final=0.3):
    rows = []
    for seed in (0, 1):
        for n in (1, 2):
            rows += [_row("paper", n, seed, 200, 0.1), _row("paper", n, seed, 400, paper_final, 300)]
            rows += [_row("fast", n, seed, 200, 0.5 + 0.01 * seed), _row("fast", n, seed, 400, fast_final, 60)]
    return rows


def test_images_to_the_bar_and_the_last_points():
    rows = _rows()
    first = R.reached(rows)
    assert first[("fast", 1, 0)] == 6400 and first[("paper", 2, 1)] is None
    finals = R.final_points(rows)
    assert [p["confident"] for p in finals[("paper", 1)]] == [0.3, 0.3]
    assert [p["seed"] for p in finals[("fast", 2)]] == [0, 1]


def test_the_recommended_recipe_is_the_best_at_the_end_and_a_tie_goes_to_the_faster_one():
    best, why = R.choose(_rows(), samples=256)
    assert best == "fast" and "highest confident share" in why
    # within the intervals at the end: the one that reached the bar with fewer images
    best, why = R.choose(_rows(fast_final=0.50, paper_final=0.52), samples=256)
    assert best == "fast" and "tie" in why
    best, _ = R.choose(_rows(fast_final=0.5, paper_final=0.9), samples=256)
    assert best == "paper"


def test_the_report_tables_the_curves_and_the_samplers(tmp_path):
    R.write_csv(tmp_path / "curves.csv", [r for r in _rows() if (r["recipe"], r["N"], r["seed"]) != ("paper", 1, 1)])
    R.write_csv(tmp_path / "samplers.csv", [
        {"recipe": "fast", "N": 1, "weights": "ema", "sampler": "heun", "steps": 13, "spacing": "quadratic",
         "evaluations": 25, "confident": 0.75, "digit_fid": 40.0, "seconds": 12.0}])
    (tmp_path / "config.json").write_text(json.dumps({
        "recipes": {"paper": {}, "fast": {}}, "patches": [1, 2], "steps": 400, "seeds": [0, 1], "curve_every": 200,
        "samples": 256, "run_minutes_median": 20.0, "workers": 2}))
    R.RECIPES.setdefault("fast", dict(prediction="v", loss="l2", weighting="min_snr"))
    try:
        readme = R.write_report(tmp_path).read_text()
    finally:
        R.RECIPES.pop("fast")
    assert "**Recommended: fast**" in readme
    assert "| fast | 1 | 6,400 | 6,400 |" in readme and "| paper | 2 | not in 12,800 | not in 12,800 |" in readme
    assert "| paper | 1 | not in 12,800 | not trained |" in readme  # a run left out of the study
    assert "1 run(s) of the full design were not trained" in readme
    assert "| fast | v, l2, min_snr 5 |" in readme and "| paper | paper's (eps, l1, uniform) |" in readme
    assert "| fast | 1 | ema | heun | 13 | quadratic | 25 | 0.75 [0.69, 0.80] | 40 | 12 |" in readme
    assert (tmp_path / "figures" / "learning_curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_study_runs_end_to_end(tmp_path):
    out = tmp_path / "out"
    R.main(["--out", str(out), "--runs", str(tmp_path / "runs"), "--steps", "2", "--seeds", "0", "--curve-every", "2",
            "--samples", "4", "--recipes", "EDM", "--patches", "1", "--workers", "1", "--smoke"])
    curves, samplers = R._read_csv(out / "curves.csv"), R._read_csv(out / "samplers.csv")
    assert [(r["recipe"], r["step"]) for r in curves] == [("EDM", 2)]
    assert len(samplers) == 4  # three sampler settings and the raw weights
    assert {r["evaluations"] for r in samplers if r["sampler"] == "heun"} == {3}
    assert (out / "README.md").is_file() and json.loads((out / "config.json").read_text())["steps"] == 2
    # again without training: the trained runs reported, the sweep kept
    R.main(["--out", str(out), "--runs", str(tmp_path / "runs"), "--steps", "2", "--seeds", "0", "1", "--curve-every",
            "2", "--samples", "4", "--recipes", "EDM", "--patches", "1", "--no-train", "--no-sweep"])
    assert R._read_csv(out / "samplers.csv") == samplers
    assert "| EDM | 1 | not in 64 | not trained |" in (out / "README.md").read_text()
    with pytest.raises(SystemExit, match="no run of the study is trained"):
        R.main(["--out", str(out), "--runs", str(tmp_path / "none"), "--no-train"])
