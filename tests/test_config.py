import json

import pytest

from patchlab import config as C
from tiny import tiny_params


def test_defaults_resolve_and_round_trip_through_json():
    cfg = C.from_params(**tiny_params())
    again = C.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert cfg.model.patch_size == 8 and cfg.model.num_patches == 4


def test_flat_keys_cover_every_section_and_are_unique():
    keys = C.valid_keys()
    assert len(keys) == len(set(keys))
    for required in ("image_size", "channels", "patches", "dim", "dim_mults", "position", "gcc",
                     "timesteps", "schedule"):
        assert required in keys


def test_unknown_key_is_refused_with_suggestion_and_valid_names():
    with pytest.raises(ValueError) as err:
        C.from_params(patchez=2)
    msg = str(err.value)
    assert "'patchez'" in msg and "did you mean 'patches'" in msg and "image_size" in msg


def test_unknown_key_is_also_a_type_error():
    with pytest.raises(TypeError):
        C.from_params(nonsense=1)


@pytest.mark.parametrize("key,value", [("patches", "2"), ("position", 1), ("dim_mults", 4),
                                       ("lr", "fast"), ("image_size", 32.0), ("dim_mults", (1, "2"))])
def test_wrong_types_are_refused(key, value):
    with pytest.raises(C.ConfigError, match=key):
        C.from_params(**{key: value})


def test_lists_become_tuples_and_ints_floats():
    cfg = C.from_params(dim_mults=[1, 2], lr=1)
    assert cfg.model.dim_mults == (1, 2) and isinstance(cfg.train.lr, float)


def test_image_size_not_divisible_by_patches():
    with pytest.raises(ValueError, match="not divisible by N=4"):
        C.from_params(image_size=30, patches=4)


def test_patch_size_must_survive_the_downsampling():
    with pytest.raises(ValueError, match="divisible by 4"):
        C.from_params(image_size=24, patches=4, dim_mults=(1, 2, 4))  # patch 6 cannot be halved twice


@pytest.mark.parametrize("params,match", [
    (dict(schedule="quadratic"), "schedule"), (dict(loss="huber"), "loss"), (dict(precision="fp16"), "precision"),
    (dict(patch_mode="parallel"), "patch_mode"), (dict(patch_mode=0), "patch_mode"),
    (dict(patches=2, patch_mode=5), "more patches per pass"), (dict(ema_decay=1.0), "ema_decay"),
    (dict(layout="fancy"), "layout"), (dict(dim=12, groups=8), "groups"), (dict(timesteps=0), "timesteps"),
])
def test_out_of_range_values(params, match):
    with pytest.raises(ValueError, match=match):
        C.from_params(**params)


def test_from_dict_rejects_unknown_sections_and_keys():
    with pytest.raises(C.ConfigError, match="sections"):
        C.from_dict({"model": {}, "extra": {}})
    with pytest.raises(C.ConfigError, match="did you mean 'image_size'"):
        C.from_dict({"model": {"image_sise": 32}})
    with pytest.raises(ValueError, match="version"):
        C.from_dict({"version": 99})


def test_replace_and_differences():
    cfg = C.from_params(**tiny_params())
    other = cfg.replace(steps=10, gcc=False)
    assert cfg.differences(other) == {"gcc": (True, False), "steps": (4, 10)}


def test_parameter_docs_are_filled_in():
    assert all(doc for _, _, doc in C.parameter_docs().values())


@pytest.mark.parametrize("size,n,mults", [(16, 3, (1, 2, 4)), (20, 2, (1, 2, 4)), (8, 4, (1, 2, 4)),
                                          (16, 3, (1,)), (100, 4, (1, 2, 4, 8))])
def test_the_suggested_image_sizes_build(size, n, mults):
    """A size that does not fit N and the UNet's halvings is refused with suggestions that do."""
    with pytest.raises(ValueError, match="e.g.") as info:
        C.from_params(image_size=size, patches=n, dim_mults=mults)
    suggested = [int(v) for v in str(info.value).split("e.g. ")[1].split(" or ")]
    for s in suggested:
        assert C.from_params(image_size=s, patches=n, dim_mults=mults).model.image_size == s


def test_absurd_sizes_and_binary_config_files_are_refused_in_one_line(tmp_path, capsys):
    from patchlab import cli

    with pytest.raises(ValueError, match=f"dim must be at most {C.MAX_SIZE}"):
        C.from_params(dim=800_000_000)
    with pytest.raises(ValueError, match="dim_mults must be at most"):
        C.from_params(dim_mults=(1, 10 ** 9))
    binary = tmp_path / "checkpoint.pt"
    binary.write_bytes(bytes(range(256)))
    assert cli.main(["config", "--config", str(binary)]) == 2
    err = capsys.readouterr().err
    assert "is not a JSON text file" in err and str(binary) in err and len(err.strip().splitlines()) == 1
