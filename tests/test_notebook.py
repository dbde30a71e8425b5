"""patchlab.notebook: declared parameters, the check of a notebook's globals, profiles."""

import pytest

from patchlab import notebook as NB


def _namespace(name, **extra):
    """What a fresh kernel holds at cell 3: imports, IPython's names, the parameters (+ injected ones)."""
    import patchlab

    return {"__name__": "__main__", "_": "", "In": ["", "import x"], "Out": {}, "get_ipython": print,
            "patchlab": patchlab, "notebook": NB, **NB.defaults(name), **extra}


def test_resolve_reads_the_parameters_and_builds_the_config(tmp_path):
    ns = _namespace("01_train", patches=4, gcc=False, root=str(tmp_path), profile="p")
    setup = NB.resolve("01_train", ns)
    assert setup.config.model.patches == 4 and not setup.config.model.gcc and setup.config.model.position
    assert setup.runs_dir == tmp_path / "runs" / "p" and setup.reports_dir == tmp_path / "reports" / "p"
    assert setup["patches"] == 4
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


def test_wrong_types_and_bad_configs_are_refused():
    with pytest.raises(NB.ParameterError, match="'steps' must be int"):
        NB.resolve("01_train", _namespace("01_train", steps="10"))
    with pytest.raises(NB.ParameterError, match="'position' must be bool"):
        NB.resolve("01_train", _namespace("01_train", position=1))
    with pytest.raises(ValueError, match="divisible"):
        NB.resolve("01_train", _namespace("01_train", image_size=18))
    with pytest.raises(NB.ParameterError, match="'config' must not set"):
        NB.resolve("01_train", _namespace("01_train", config={"patches": 4}))
    assert NB.check("03_memory_vs_quality", {"lr": 1, "memory_batch": None})["lr"] == 1  # ints are numbers


def test_profiles_are_split_per_notebook_and_unknown_keys_fail():
    split = NB.split_profile({"steps": 5, "grid_samples": 3, "eval_samples": 8})
    assert split["02_samples"]["grid_samples"] == 3 and "grid_samples" not in split["03_memory_vs_quality"]
    assert all(p["steps"] == 5 for p in split.values())
    with pytest.raises(NB.ParameterError, match="'grid_sample' \\(did you mean 'grid_samples'\\?\\)"):
        NB.split_profile({"grid_sample": 3})
    with pytest.raises(ValueError, match="unknown notebook"):
        NB.defaults("05_nothing")


def test_parameters_source_is_papermill_readable():
    source = NB.parameters_source("03_memory_vs_quality")
    assert 'memory_batch: "Optional[int]" = None  #' in source
    assert 'patch_mode: "Union[str, int]" = \'batched\'  #' in source
    namespace = {}
    exec(source, namespace)  # noqa: S102 - the cell is plain Python literals
    assert {k: namespace[k] for k in NB.NOTEBOOKS["03_memory_vs_quality"]} == NB.defaults("03_memory_vs_quality")
