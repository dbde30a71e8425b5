"""patchlab.study.measure: memory and time of the runs' steps, the hand-over sweep."""

import pytest

from tiny import tiny_params
from patchlab import tiling as T
from patchlab.config import from_params
from patchlab.study import measure as M
from patchlab.study import variants as V


@pytest.mark.slow
def test_profile_memory_writes_one_row_per_run_phase_and_scale(tmp_path):
    import pandas as pd

    runs = V.variant_runs(from_params(**tiny_params()), tmp_path, ["N=1", "N=2"])
    path = M.profile_memory(runs, tmp_path / "m.csv", batch=2, device="cpu", repeats=1, paper_estimate=False,
                            progress=False)
    df = pd.read_csv(path)
    assert list(df["phase"]) == ["train", "sample"] * 2 and set(df["scale"]) == {"profile"}
    n1, n2 = df[df["label"] == "N=1"], df[df["label"] == "N=2"]
    assert list(n2["patch_mode"]) == ["sequential"] * 2 and list(n1["patch_mode"]) == ["batched"] * 2
    assert (n2["peak_bytes"].to_numpy() < n1["peak_bytes"].to_numpy()).all()
    assert (df["step_seconds"] > 0).all()


def test_global_steps_count_the_steps_from_the_global_view():
    model = from_params(**tiny_params(coords=True, global_view=0.5, timesteps=1000)).model
    assert M.global_steps(T.CoarseToFine(model), 25, 1000) == 23  # DDIM 25 of T = 1000: t = 42 and 0 to the windows
    assert M.global_steps(T.CoarseToFine(model, 0.0), 25, 1000) == 25
    assert M.global_steps(T.CoarseToFine(model, 1.0), 25, 1000) == 0
    assert M.global_steps(T.CoarseToFine(model), 20, 20) == 19  # the same fraction of any T


def test_the_handover_sweep_is_of_the_coarse_to_fine_remedy(tmp_path):
    runs = V.variant_runs(from_params(**tiny_params()), tmp_path, ["N=2 overlap"])
    with pytest.raises(ValueError, match="coarse-to-fine remedy"):
        M.handover_sweep(runs[0], n=4, steps=2)


def test_the_handover_sweep_stops_at_the_models_windows_below(tmp_path):
    from patchlab.training import train

    run = V.variant_runs(from_params(**tiny_params(timesteps=100, steps=1, checkpoint_every=1, dim_mults=(1,))),
                         tmp_path, ["N=2 global"])[0]
    train(run.config, run.path, progress=False)
    rows = M.handover_sweep(run, n=4, steps=4, values=(0.0, 0.05, 0.1, 0.5, 1.0), device="cpu", features="offline",
                            progress=False)
    assert [r["global from"] for r in rows] == [0.0, 0.05, 0.1]  # its windows never learnt t >= 0.1 T
    assert [r["global steps"] + r["window steps"] for r in rows] == [4, 4, 4] and rows[0]["window steps"] == 0
    for key in ("seam", "KID", "SWD"):  # each with its 95% interval
        assert all(r[f"{key}_lo"] <= r[key] <= r[f"{key}_hi"] for r in rows), key
