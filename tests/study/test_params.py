"""patchlab.study.params: declared parameters, the check of a notebook's globals, profiles."""

import json

import pytest

from patchlab.study import params as NB


def _namespace(name, **extra):
    """What a fresh kernel holds at cell 3: imports, IPython's names, the parameters (+ injected ones)."""
    import patchlab

    return {"__name__": "__main__", "_": "", "In": ["", "import x"], "Out": {}, "get_ipython": print,
            "patchlab": patchlab, "params": NB, **NB.defaults(name), **extra}


def test_resolve_reads_the_profile_and_the_parameters_and_builds_the_config(tmp_path):
    ns = _namespace("01_train", patches=4, gcc=False, root=str(tmp_path), profile="smoke",
                    overrides={"steps": 3})
    setup = NB.resolve("01_train", ns)
    cfg = setup.config
    assert cfg.model.patches == 4 and not cfg.model.gcc and cfg.model.position
    assert cfg.train.steps == 3 and cfg.model.dim == 16  # the override, and the smoke profile's dim
    assert setup.runs_dir == tmp_path / "runs" / "smoke" and setup.reports_dir == tmp_path / "results" / "smoke"
    assert setup["patches"] == 4 and setup["workers"] == 2  # the notebook's own, then the profile's run keys
    assert setup.figure("a.png").parent.is_dir()


def test_an_injected_unknown_name_is_refused_naming_the_valid_ones():
    with pytest.raises(NB.ParameterError) as info:
        NB.resolve("01_train", _namespace("01_train", patchez=2))
    msg = str(info.value)
    assert "'patchez' (did you mean 'patches'?)" in msg and "valid parameters are" in msg
    assert "comparison_runs" in msg and ValueError in type(info.value).__mro__


def test_names_created_after_the_first_resolve_are_allowed_on_a_rerun():
    ns = _namespace("02_samples")
    NB.resolve("02_samples", ns)
    ns.update(samples_per_row=4, setup="later cells")  # an interactive session goes on, then re-runs cell 3
    NB.resolve("02_samples", ns)


@pytest.mark.parametrize("notebook, changes, words", [
    ("01_train", {"position": 1}, ["'position' must be bool"]),
    ("01_train", {"patches": 0}, ["'patches' must be >= 1"]),
    ("01_train", {"overrides": {"steps": "10"}}, ["'steps' must be int"]),
    ("01_train", {"overrides": {"image_size": 18}}, ["divisible"]),
    ("01_train", {"overrides": {"stepz": 3}}, ["'stepz' (did you mean 'steps'?)"]),
    ("01_train", {"overrides": {"config": {"patches": 4}}}, ["'config' must not set"]),
    ("01_train", {"overrides": {"dataset": "nosuch"}}, ["dataset 'nosuch' is unknown", "shapes"]),
    ("01_train", {"overrides": {"dataset": "celeba", "data_root": "/nonexistent"}}, ["celeba", "data/README.md"]),
    ("01_train", {"overrides": {"device": "gpu"}}, ["'device' must be one of"]),
    ("01_train", {"overrides": {"gpus": 0}}, ["'gpus' must be >= 1"]),
    ("01_train", {"overrides": {"gpus": 3, "device": "cpu"}}, ["'gpus'", "batch_size=16 does not divide over 3"]),
    ("01_train", {"overrides": {"gpus": 2, "device": "cpu"}}, ["'gpus'=2", "N=2 global", "cannot train data-parallel"]),
    ("03_memory_vs_quality", {"overrides": {"gpus": 2, "device": "cpu"}}, ["N=2 global cannot train in 2 processes"]),
    ("02_samples", {"sampler_steps": 0}, ["'sampler_steps' must be >= 1"]),
    ("02_samples", {"overrides": {"config": {"timesteps": 20}}, "sampler_steps": 25}, ["at most T = 20"]),
    ("03_memory_vs_quality", {"eval_samples": -1}, ["'eval_samples' must be >= 4"]),
    ("03_memory_vs_quality", {"features": "nosuch"}, ["'features' must be one of"]),
    ("03_memory_vs_quality", {"memory_patch_mode": "foo"}, ["memory_patch_mode", "'batched', 'sequential'"]),
    ("03_memory_vs_quality", {"memory_patch_mode": 5}, ["memory_patch_mode", "more patches per pass"]),
    ("03_memory_vs_quality", {"timing_repeats": -1}, ["'timing_repeats' must be >= 0"]),
    ("04_seam_inspector", {"profile": "nosuch"}, ["no profile 'nosuch'", "default", "smoke"]),
    ("01_train", {"overrides": {"variants": ["N=1", "N=2", "N=4", "N=3"]}}, ["'variants'", "unknown model(s) ['N=3']"]),
    ("02_samples", {"overrides": {"variants": ["N=1", "N=2"]}}, ["'variants' must include N=1, N=2, N=4", "N=4 missing"]),
    ("03_memory_vs_quality", {"overrides": {"variants": ["N=1", "N=2", "N=4", "N=2"]}}, ["names a model twice"]),
    ("01_train", {"overrides": {"variants": "N=1"}}, ["'variants' must be list or None"]),
])
def test_every_value_is_checked_before_any_work(notebook, changes, words):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        NB.resolve(notebook, _namespace(notebook, **changes))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_cuda_is_refused_on_a_machine_without_one():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        NB.resolve("01_train", _namespace("01_train", overrides={"device": "cuda"}))


def test_profiles_are_split_into_run_keys_and_notebook_parameters(tmp_path):
    runs, own = NB.split_profile({"steps": 5, "grid_samples": 3, "eval_samples": 8, "description": "x"})
    assert runs == {"steps": 5} and own == {"grid_samples": 3, "eval_samples": 8}
    with pytest.raises(NB.ParameterError, match="'grid_sample' \\(did you mean 'grid_samples'\\?\\)"):
        NB.split_profile({"grid_sample": 3})
    with pytest.raises(ValueError, match="unknown notebook"):
        NB.defaults("05_nothing")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"steps": 7, "dim": 16}))
    name, values = NB.run_values(str(path), {"lr": 0.01})
    assert name == "mine" and values["steps"] == 7 and values["lr"] == 0.01
    assert values["dataset"] == NB.RUN_KEYS["dataset"].default  # not in the file: the default


def test_parameters_source_is_papermill_readable_and_short():
    for name in NB.ORDER:
        source = NB.parameters_source(name)
        assert len(source.splitlines()) == len(NB.NOTEBOOKS[name]) <= 12
        assert max(len(line) for line in source.splitlines()) <= 115
        namespace = {}
        exec(source, namespace)  # noqa: S102 - the cell is plain Python literals
        assert {k: namespace[k] for k in NB.NOTEBOOKS[name]} == NB.defaults(name)
    source = NB.parameters_source("03_memory_vs_quality")
    assert 'memory_batch: "Optional[int]" = None  #' in source
    assert 'memory_patch_mode: "Union[str, int]" = \'sequential\'  #' in source


def test_the_variants_key_chooses_the_runs_every_notebook_trains_and_compares(tmp_path, monkeypatch):
    """A profile's ``variants`` limits notebook 01's comparison runs and what the others compare; a notebook's
    own choice of labels (notebook 04's) is cut to it."""
    from patchlab.study import orchestrate, variants

    chosen = ["N=1", "N=2", "N=4", "N=2 no GCC", "N=2 global"]
    ns = _namespace("01_train", root=str(tmp_path), profile="smoke", overrides={"variants": chosen})
    setup = NB.resolve("01_train", ns)
    runs = variants.training_runs(setup.config, setup.runs_dir, comparison_runs=True, labels=setup["variants"])
    assert [r.label for r in runs] == ["N=2", "N=1", "N=4", "N=2 no GCC", "N=2 global"]  # the notebook's run first
    monkeypatch.setattr(orchestrate, "ensure", lambda runs, **kw: runs)  # nothing trained here
    setup4 = NB.resolve("04_seam_inspector", _namespace("04_seam_inspector", root=str(tmp_path), profile="smoke",
                                                         sampler_steps=3,
                                                         overrides={"variants": chosen}))
    got = orchestrate.trained_runs(setup4, labels=variants.ABLATIONS + ("N=2 shifted", "N=2 global"))
    assert [r.label for r in got] == ["N=2", "N=2 no GCC", "N=2 global"]
    assert [r.label for r in orchestrate.trained_runs(setup4)] == chosen
    assert [r.label for r in variants.among(got, ("N=4 global", "N=2 global"))] == ["N=2 global"]
    everything = NB.resolve("02_samples", _namespace("02_samples", root=str(tmp_path), profile="smoke",
                                                      sampler_steps=3))
    assert len(orchestrate.trained_runs(everything)) == len(variants.VARIANTS)
