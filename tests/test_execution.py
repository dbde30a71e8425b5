"""patchlab.execution: how a step runs, validated once; it never changes what the step computes."""

import pytest
import torch

import patchlab
from patchlab.config import from_params
from patchlab.execution import Execution
from tiny import tiny_params


def test_values_and_combinations_are_checked_where_it_is_built():
    for bad, match in ((dict(patch_mode="parallel"), "patch_mode"), (dict(patch_mode=0), "patch_mode"),
                       (dict(precision="fp8"), "precision"), (dict(fast_path="jit"), "fast_path"),
                       (dict(part=(2, 2)), "part"), (dict(unet=print, fast_path="compile"), "not both"),
                       (dict(runner=torch.nn.Identity(), fast_path="compile"), "cannot be combined")):
        with pytest.raises(ValueError, match=match):
            Execution(**bad)
    assert Execution().describe() == {"patch_mode": "sequential", "images_per_pass": None, "checkpointing": "none",
                                      "precision": "fp32", "fast_path": "off"}
    assert Execution(part=(1, 2)).parallel and not Execution().parallel
    assert Execution(patch_mode=2) == Execution(patch_mode=2, unet=print)  # a custom unet is not a setting


def test_phase_model_and_device_checks():
    model, _ = patchlab.build(from_params(**tiny_params()))
    with pytest.raises(ValueError, match="bf16 weights are for sampling"):
        Execution(precision="bf16-weights").check("train", model)
    with pytest.raises(ValueError, match="cast them first"):
        Execution(precision="bf16-weights").check("sample", model)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Execution(fast_path="graphs").check("sample", model)
    with pytest.raises(ValueError, match="phase"):
        Execution().check("infer", model)
    Execution(precision="bf16").check("train", model)


def test_passes_are_cut_by_the_patch_mode():
    assert Execution(patch_mode="batched").chunks(4) == [[0, 1, 2, 3]]
    assert Execution().chunks(4) == [[0], [1], [2], [3]]
    assert Execution(patch_mode=3).chunks(4) == [[0, 1, 2], [3]]
    assert Execution(patch_mode=4).chunks(1) == [[0]]  # more per pass than there are windows: one pass


def test_the_fast_path_of_a_model_is_built_once_and_kept(monkeypatch):
    import patchlab.accel

    monkeypatch.setattr(patchlab.accel, "COMPILE_BACKEND", "aot_eager")
    model, _ = patchlab.build(from_params(**tiny_params()))
    ex = Execution(fast_path="compile")
    first = ex.forward(model, "sample")
    assert isinstance(first, patchlab.accel.CompiledUNet) and ex.forward(model, "sample") is first
    assert ex.forward(model, "train") is not first and Execution().forward(model, "train") is model
    assert ex.replace(patch_mode=2).forward(model, "sample") is not first  # a copy starts afresh
