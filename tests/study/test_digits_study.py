"""The study on real digits (issue 21): the notebooks run unchanged on the ``digits`` data with the models a profile's
``variants`` names, and every table and figure holds recognizability where the shapes' hold coherence
(``reproduce --profile digits_smoke``: tiny models, a few steps; the numbers mean nothing)."""

import json

import pandas as pd

DIGITS_MODELS = ["N=1", "N=2", "N=4", "N=2 no position", "N=2 no GCC", "N=2 global"]
RECOGNIZABILITY = ["confident", "confident real", "class_entropy", "class_entropy real", "digit_fid", "digit_fid real"]


def test_the_digits_smoke_study_trains_only_its_variants_and_scores_recognizability(digits_smoke):
    root, reports, printed = digits_smoke
    trained = sorted(p.name.rsplit("-", 1)[0] for p in (root / "runs" / "digits_smoke").iterdir() if p.is_dir())
    assert trained == ["n1", "n2", "n2-global", "n2-no-gcc", "n2-no-position", "n4"]
    table = pd.read_csv(reports / "tables" / "memory_vs_quality.csv")
    assert table["model"].tolist() == DIGITS_MODELS
    assert set(RECOGNIZABILITY) <= set(table.columns) and "coherence" not in table.columns
    # 8 real held-out digits at 16 px (the smoke size; the classifier sees them resized back to 32)
    assert table["confident"].between(0, 1).all() and (table["confident real"] >= 0.5).all()
    assert table["class_entropy real"].gt(1.0).all() and table["digit_fid"].gt(0).all()
    metrics = json.loads((reports / "eval" / "n1" / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["digit_classifier_accuracy"] >= 0.97
    assert "confident_fake" in metrics and "coherence_fake" not in metrics


def test_every_digits_table_and_figure_takes_recognizability_where_shapes_take_coherence(digits_smoke):
    _, reports, _ = digits_smoke
    remedies = pd.read_csv(reports / "tables" / "seam_remedies.csv")
    assert remedies["model"].tolist() == ["N=2", "N=4", "N=2 global"]
    assert {"confident", "confident N=1"} <= set(remedies.columns)
    handover = pd.read_csv(reports / "tables" / "handover.csv")
    assert set(handover["model"]) == {"N=2 global"} and "confident N=1" in handover.columns
    curves = pd.read_csv(reports / "tables" / "learning_curves.csv")
    assert {"confident", "class_entropy", "digit_fid"} <= set(curves.columns) and curves["confident"].notna().all()
    ranking = pd.read_csv(reports / "tables" / "ranking.csv")
    assert "confident" in ranking.columns
    for figure in ("samples_scaling", "samples_ablations", "samples_remedies", "handover", "learning_curves",
                   "seam_inspector", "pareto"):
        assert (reports / "figures" / f"{figure}.png").is_file(), figure
    readme = (reports / "README.md").read_text()
    assert "Digits recognised with confidence >= 0.9" in readme and "GiB for N = 1 / 2 / 4" not in readme  # no paper size
    note = (reports / "tables" / "memory_vs_quality.md").read_text()
    assert "Recognizability (digits)" in note and "The classifier's accuracy on the 500 held-out digits: 0.9" in note
