"""patchlab.study.variants: the variants a profile compares, their configurations and run directories."""

from tiny import tiny_params
from patchlab import tiling as T
from patchlab.config import from_params
from patchlab.study import variants as V


def test_hash_ignores_where_and_how_often_but_not_what():
    cfg = from_params(**tiny_params())
    assert V.config_hash(cfg) == V.config_hash(cfg.replace(device="auto", log_every=7, checkpoint_every=3))
    for change in ({"steps": 5}, {"gcc": False}, {"seed": 1}, {"lr": 1e-3}, {"patch_mode": "batched"}):
        assert V.config_hash(cfg.replace(**change)) != V.config_hash(cfg), change
    assert len(V.config_hash(cfg)) == 12


def test_run_directories_are_those_of_the_published_reports():
    """A run's identity (its directory) is the hash of what it trains under the names the keys had when the
    runs were published: the default profile's runs keep the ids of reports/default/tables/training.md."""
    from patchlab.study import params

    _, values = params.run_values("default")
    base = from_params(**params.run_config(values))
    ids = {run.label: run.path.name for run in V.variant_runs(base, "runs")}
    assert ids["N=2"] == "n2-636a00bcdc23" and ids["N=2 global"] == "n2-global-a3cfb2431f60"
    assert ids["N=1"] == "n1-941ea2bc720e" and ids["N=4 global"] == "n4-global-59d64c59dcd2"


def test_variant_runs_cover_the_papers_comparisons_and_the_remedies(tmp_path):
    runs = V.variant_runs(from_params(**tiny_params(patches=4)), tmp_path)
    assert [r.label for r in runs] == [v.label for v in V.VARIANTS]
    assert len({r.path for r in runs}) == 10 and all(r.path.parent == tmp_path for r in runs)  # remedies share
    assert len(V.unique(runs)) == 10
    coarse = V.find(runs, "N=2 global")  # a model of its own (trained on the global view too)
    assert isinstance(coarse.tiling, T.CoarseToFine) and coarse.config.model.global_view == V.GLOBAL_SHARE
    assert coarse.config.model.windows_below == V.GLOBAL_WINDOWS_BELOW > T.GLOBAL_FROM  # windows for the fine steps
    assert coarse.path.name.startswith("n2-global-") and coarse.path != V.find(runs, "N=2 coords").path
    assert (V.variant_of(coarse.config) == "N=2 global"
            and V.variant_of(V.find(runs, "N=2 coords").config) == "N=2 coords")
    shifted, coords = V.find(runs, "N=2 shifted"), V.find(runs, "N=2 coords")
    assert shifted.path == coords.path and shifted.tiling == T.Shifted(coords.config.model)
    assert (coords.tiling == T.Grid(coords.config.model) and V.variant("N=2 shifted").remedy
            and not V.variant("N=2 coords").remedy)
    assert shifted.config.model.coords and shifted.path.name.startswith("n2-coords-")
    # the runs of the paper's comparisons keep the directories they had before the remedies existed
    assert V.find(runs, "N=2").path.name.split("-")[-1] == V.config_hash(from_params(**tiny_params(patches=2)))
    n1 = V.find(runs, "N=1").config.model
    assert (n1.patches, n1.position, n1.gcc) == (1, False, False)
    assert V.find(runs, "N=2 no GCC").path.name.startswith("n2-no-gcc-")
    assert [r.label for r in V.variant_runs(runs[0].config, tmp_path, V.ABLATIONS)] == list(V.ABLATIONS)


def test_training_runs_put_the_configured_run_first_without_duplicates(tmp_path):
    cfg = from_params(**tiny_params(patches=2))
    runs = V.training_runs(cfg, tmp_path, comparison_runs=True)
    assert runs[0].label == "N=2" and len(runs) == 10 and len({r.path for r in runs}) == 10
    odd = V.training_runs(cfg.replace(patches=4, gcc=False), tmp_path, comparison_runs=True)
    assert odd[0].label == "N=4 no GCC" and len(odd) == 11
    assert V.training_runs(cfg, tmp_path) == runs[:1]
