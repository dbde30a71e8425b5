"""The notebooks' parameters: declared here, checked here, resolved into configurations here.

Every notebook in ``notebooks/`` is a thin driver (see the notebook contract in the README):

1. cell 1 imports; cell 2, tagged ``parameters``, assigns the parameters of :data:`NOTEBOOKS` with
   their defaults (typed literals, a comment each; a test keeps the cells and this module in step);
2. cell 3 calls :func:`resolve` with the notebook's ``globals()``: it refuses any literal the notebook
   did not declare (papermill only *warns* about unknown ``-p`` names and injects them anyway), reads
   the profile, checks every value and builds the configuration, so nothing in a notebook derives
   values itself.

A *profile* (``notebooks/params/NAME.json``, or any JSON file) is one flat object: the keys of
:data:`RUN_KEYS` define the runs (data, model, training) that every notebook shares, and a profile may
also set the notebooks' own parameters (``grid_samples``, ...), which ``reproduce`` passes to each
notebook. A notebook names its profile and may change run keys with ``overrides``, so its parameters
cell holds only what that notebook itself does.
"""

import copy
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as C
from .. import patches as P

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "params"
PROFILE_META = ("description",)  # keys of a profile file that are not parameters
OUTPUTS = {"results": "a user's reproduction (not tracked by git)", "reports": "the committed reports"}
_MARK = "_patchlab_notebook"  # where resolve() keeps the names that existed at its first call
_LITERALS = (type(None), bool, int, float, str, list, dict, tuple)
_IPYTHON_NAMES = frozenset({"In", "Out"})


class ParameterError(C.ConfigError):
    """An undeclared parameter, or a value of the wrong type or out of range (a ``ValueError`` and a
    ``TypeError``)."""


@dataclass(frozen=True)
class Param:
    """One parameter: its default, the types it accepts, a one-line doc and, optionally, the smallest
    value allowed (numbers) or the allowed values (strings)."""

    default: Any
    types: tuple[type, ...]
    doc: str
    minimum: int | None = None
    choices: tuple | None = None

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, self.types)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (its type is right), or None."""
        if self.minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value < self.minimum:
            return f"must be >= {self.minimum}, got {value!r}"
        if self.choices is not None and isinstance(value, str) and value not in self.choices:
            return f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
        return None


def _p(default, types, doc, **limits) -> Param:
    return Param(default, types if isinstance(types, tuple) else (types,), doc, **limits)


# The keys of a profile that define the runs every notebook shares (read from the profile file).
RUN_KEYS: dict[str, Param] = {
    "dataset": _p("shapes", str, "training data: 'shapes', 'faces' or 'digits' (built in), 'celeba', "
                                 "'lsun_bedroom', 'folder'"),
    "data_root": _p(None, (str, type(None)), "folder of a real dataset (None for the built-ins)"),
    "image_size": _p(16, int, "image side in pixels", minimum=1),
    "dim": _p(32, int, "UNet base channel width (paper: 128)", minimum=1),
    "dim_mults": _p([1, 2], list, "UNet channel multiplier per level (paper: [1, 2, 4, 8])"),
    "steps": _p(1000, int, "optimizer steps of every run", minimum=1),
    "batch_size": _p(16, int, "images per optimizer step", minimum=1),
    "lr": _p(1e-3, float, "Adam learning rate (paper: 1e-4)"),
    "patch_mode": _p("batched", (str, int), "patches per UNet pass in training and sampling: 'batched', "
                                            "'sequential' or k (same results up to round-off; memory differs)"),
    "device": _p("auto", str, "'auto' (CUDA if available), 'cpu' or 'cuda'", choices=C.DEVICES),
    "threads": _p(1, (int, type(None)), "CPU threads of PyTorch (None: its default, one per core); one keeps small "
                                        "models fast on busy machines and CPU results identical everywhere",
                  minimum=1),
    "workers": _p(2, int, "runs trained at once on the CPU, each in its own process (GPU: one after the other)",
                  minimum=1),
    "gpus": _p(1, int, "processes per run: above 1 each run trains data-parallel through torchrun, one process "
                       "per GPU (on a CPU device, gloo processes); same results as one", minimum=1),
    "seed": _p(0, int, "seed of model init, data order, noise and evaluation"),
    "curve_every": _p(0, int, "record each run's learning curve (quality of its EMA weights) every this many "
                              "steps while it trains; 0: off", minimum=0),
    "curve_samples": _p(64, int, "samples per learning-curve point (KID, SWD, seam score, coherence)", minimum=4),
    "config": _p({}, dict, "any other patchlab.config parameter, e.g. {'ema_decay': 0.999} "
                           "(python -m patchlab train --help lists them)"),
    "variants": _p(None, (list, type(None)), "the models the notebooks train and compare (labels of "
                                             "patchlab.study.variants.VARIANTS, N=1, N=2 and N=4 among them); "
                                             "None: all of them"),
}

# What every notebook's parameters cell starts with: which profile, what to change, where files go.
COMMON: dict[str, Param] = {
    "profile": _p("default", str, "a name in notebooks/params/ or a JSON file: the runs' data, model, training"),
    "overrides": _p({}, dict, "changes to the profile's runs, e.g. {'steps': 200}"),
    "root": _p(".", str, "folder of runs/<profile>/ (the trained models) and of the output folder"),
    "output": _p("results", str, "reports go to <root>/<output>/<profile>/ ('reports': the committed ones)"),
}

NOTEBOOKS: dict[str, dict[str, Param]] = {
    "01_train": {
        **COMMON,
        "patches": _p(2, int, "N: the image is cut into N x N patches (1: a plain DDPM)", minimum=1),
        "position": _p(True, bool, "one-hot patch position fused with the time embedding"),
        "gcc": _p(True, bool, "Global Content Conditioning: the pooled whole x_t beside each patch"),
        "comparison_runs": _p(True, bool, "also train the runs 02-04 compare (N of 1, 2, 4; ablations at N of 2)"),
    },
    "02_samples": {
        **COMMON,
        "grid_samples": _p(16, int, "images per model in the sample grids", minimum=1),
        "sampler_steps": _p(25, int, "DDIM steps of the samples", minimum=1),
        "borders": _p(True, bool, "draw the patch borders on the grids"),
        "trajectory_frames": _p(10, int, "frames shown of the denoising trajectory", minimum=1),
    },
    "03_memory_vs_quality": {
        **COMMON,
        "eval_samples": _p(256, int, "samples (and real images) per model for the quality metrics", minimum=4),
        "sampler_steps": _p(25, int, "DDIM steps of the samples", minimum=1),
        "fid": _p(True, bool, "compute FID too (biased below ~1000 samples; KID is not)"),
        "features": _p("offline", str, "FID/KID features: 'offline' (fast), 'inception' (standard, slow on a CPU), "
                                       "'auto'", choices=("auto", "inception", "offline")),
        "memory_batch": _p(None, (int, type(None)), "images per profiled step (None: batch_size)", minimum=1),
        "memory_patch_mode": _p("sequential", (str, int), "patch mode of the profiled steps ('sequential' saves most)"),
        "timing_repeats": _p(3, int, "timed runs per profiled step (median); 0: no timing", minimum=0),
        "paper_estimate": _p(True, bool, "also the paper's size: these models and the frontier (estimated)"),
    },
    "04_seam_inspector": {
        **COMMON,
        "inspect_samples": _p(8, int, "samples per model in the inspector", minimum=1),
        "sampler_steps": _p(25, int, "DDIM steps of the recorded trajectories", minimum=1),
    },
}
ORDER = tuple(NOTEBOOKS)


def notebook_path(name: str) -> Path:
    return NOTEBOOK_DIR / f"{name}.ipynb"


def defaults(notebook: str) -> dict[str, Any]:
    """{name: default} of a notebook's parameters."""
    return {k: copy.deepcopy(p.default) for k, p in _spec(notebook).items()}


def notebook_parameters() -> dict[str, Param]:
    """Every notebook parameter that is not common to all (the keys a profile may set besides the run keys)."""
    out: dict[str, Param] = {}
    for spec in NOTEBOOKS.values():
        out.update({k: p for k, p in spec.items() if k not in COMMON})
    return out


# --- profiles ---------------------------------------------------------------------------------------


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json") if p.stem != "demo")


def load_profile(profile: str) -> tuple[str, dict[str, Any]]:
    """(name, values) of a profile given by name (``notebooks/params/NAME.json``) or as a JSON file path."""
    path = Path(profile)
    if path.suffix == ".json" or os.sep in profile:
        name = path.stem
    else:
        name, path = profile, PROFILE_DIR / f"{profile}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no profile {profile!r} (looked for {path}); available profiles: "
                                f"{', '.join(available_profiles())}, or give the path of a JSON file")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile {path} is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"profile {path} must hold one JSON object of parameters")
    return name, values


def split_profile(values: dict[str, Any], *, where: str = "profile") -> tuple[dict[str, Any], dict[str, Any]]:
    """(run keys, notebook parameters) of a profile's values; unknown keys and wrong types are errors."""
    values = {k: v for k, v in values.items() if k not in PROFILE_META}
    own = notebook_parameters()
    valid = [*RUN_KEYS, *own]
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ParameterError(_unknown(unknown, valid, where))
    for key, value in values.items():
        _check_value(key, value, RUN_KEYS.get(key) or own[key], where)
    return ({k: v for k, v in values.items() if k in RUN_KEYS},
            {k: v for k, v in values.items() if k in own})


def run_values(profile: str, overrides: dict[str, Any] | None = None, *,
               where: str = "profile") -> tuple[str, dict[str, Any]]:
    """(profile name, every run key) of ``profile`` with ``overrides``: defaults, then the file, then the
    overrides (which may only change run keys)."""
    name, values = load_profile(profile)
    runs, _ = split_profile(values, where=f"{where} {name!r}")
    overrides = dict(overrides or {})
    wrong = [k for k in overrides if k not in RUN_KEYS]
    if wrong:
        raise ParameterError(_unknown(wrong, list(RUN_KEYS), "parameter 'overrides'"))
    for key, value in overrides.items():
        _check_value(key, value, RUN_KEYS[key], "parameter 'overrides'")
    return name, {**{k: copy.deepcopy(p.default) for k, p in RUN_KEYS.items()}, **runs, **overrides}


# --- a notebook's parameters ------------------------------------------------------------------------


def check(notebook: str, params: dict[str, Any], *, where: str | None = None) -> dict[str, Any]:
    """Validate ``params`` for ``notebook``: every name declared, every value of its type and range.

    Returns the full parameter set (defaults filled in). Raises :class:`ParameterError` naming the
    closest valid parameter and listing all of them.
    """
    spec = _spec(notebook)
    unknown = [k for k in params if k not in spec]
    where = where or f"notebook {notebook}"
    if unknown:
        raise ParameterError(_unknown(unknown, list(spec), where))
    for key, value in params.items():
        _check_value(key, value, spec[key], where)
    return {**defaults(notebook), **params}


@dataclass(frozen=True)
class Setup:
    """What cell 3 of a notebook resolves: its parameters, the runs' values, configuration and folders."""

    notebook: str
    params: dict[str, Any]  # the notebook's own parameters (its cell), checked
    runs: dict[str, Any]  # every run key: from the profile and the overrides
    config: C.Config  # 01_train: the run to train; the others: the base of the runs they compare
    runs_dir: Path  # <root>/runs/<profile>
    reports_dir: Path  # <root>/<output>/<profile>

    def figure(self, name: str) -> Path:
        """Path of a figure (PNG) of this profile's report, its folder created."""
        return _mkparent(self.reports_dir / "figures" / name)

    def table(self, name: str) -> Path:
        """Path stem of a table (``.csv`` and ``.md`` are added) of this profile's report, its folder created."""
        return _mkparent(self.reports_dir / "tables" / name)

    def path(self, relative: str) -> Path:
        """``reports_dir / relative``, its folder created."""
        return _mkparent(self.reports_dir / relative)

    def __getitem__(self, key: str) -> Any:
        return self.params[key] if key in self.params else self.runs[key]


def resolve(notebook: str, namespace: dict[str, Any]) -> Setup:
    """Cell 3 of every notebook: ``setup = params.resolve("01_train", globals())``.

    Reads the declared parameters from ``namespace`` (missing ones take their defaults), refuses
    literals the notebook does not declare (names papermill injected with ``-p``), reads the profile,
    checks every value and resolves the configuration. At the first call in a kernel the names then
    present are remembered: later calls (re-running the cell interactively) ignore names created by
    later cells. Sets PyTorch's CPU threads to the profile's ``threads``.
    """
    spec = _spec(notebook)
    mark = namespace.get(_MARK)
    if not isinstance(mark, dict) or mark.get("notebook") != notebook:
        mark = {"notebook": notebook, "names": frozenset(namespace)}
        namespace[_MARK] = mark
    stray = [k for k, v in namespace.items()
             if k in mark["names"] and k not in spec and not k.startswith("_") and k not in _IPYTHON_NAMES
             and isinstance(v, _LITERALS)]
    if stray:
        raise ParameterError(_unknown(stray, list(spec), f"notebook {notebook}"))
    setup = make_setup(notebook, check(notebook, {k: namespace[k] for k in spec if k in namespace}))
    if setup.runs["threads"] is not None:
        import torch

        torch.set_num_threads(setup.runs["threads"])
    return setup


def make_setup(notebook: str, params: dict[str, Any]) -> Setup:
    """:class:`Setup` of checked parameters (see :func:`check`): reads the profile, resolves the
    configuration and checks what only the configuration can tell (sizes, patch modes, DDIM steps,
    the device, the data, the FID features)."""
    name, runs = run_values(params["profile"], params["overrides"])
    cfg = C.from_params(**run_config(runs, **{k: params[k] for k in ("patches", "position", "gcc") if k in params}))
    _check_against_config(notebook, params, runs, cfg)
    root = Path(params["root"])
    return Setup(notebook, dict(params), runs, cfg, root / "runs" / name, root / params["output"] / name)


def run_config(runs: dict[str, Any], *, patches: int = 2, position: bool = True, gcc: bool = True) -> dict:
    """Flat :mod:`patchlab.config` parameters of a run from the run keys and the run's switches."""
    extra = dict(runs["config"])
    clash = sorted(set(extra) & (set(RUN_KEYS) | {"patches", "position", "gcc"}))
    if clash:
        raise ParameterError(f"parameter 'config' must not set {clash}: they are parameters of their own")
    out = {k: runs[k] for k in ("dataset", "data_root", "image_size", "dim", "steps", "batch_size", "lr",
                                "patch_mode", "device", "seed")}
    out["dim_mults"] = tuple(runs["dim_mults"])
    return {**out, **extra, "patches": patches, "position": position, "gcc": gcc}


def _check_data_parallel(where: str, cfg: C.Config, gpus: int) -> None:
    """Refuse ``gpus`` > 1 processes per run when a run the notebooks train (``cfg`` or a model they compare)
    cannot train data-parallel (:func:`patchlab.training.check_job`), before any run has trained."""
    from ..training import check_job
    from .variants import variant_runs

    compared = [(run.label, run.config) for run in variant_runs(cfg, ".", None)]  # all: stricter than a profile
    for label, config in [("the notebook's run", cfg), *compared]:
        try:
            check_job(config, world_size=gpus)
        except ValueError as exc:
            raise ParameterError(f"{where}: parameter 'gpus'={gpus}: {label} cannot train in {gpus} processes: "
                                 f"{exc}") from None


def _check_against_config(notebook: str, params: dict[str, Any], runs: dict[str, Any], cfg: C.Config) -> None:
    from .. import data
    from ..runtime import resolve_device

    where = f"notebook {notebook}"
    device = resolve_device(cfg.train.device)  # 'cuda' on a machine without a GPU fails here, before any work
    if runs["gpus"] > 1:
        import torch

        if device.type == "cuda" and runs["gpus"] > torch.cuda.device_count():
            raise ParameterError(f"{where}: parameter 'gpus' asks for {runs['gpus']} GPUs, this machine has "
                                 f"{torch.cuda.device_count()}")
        _check_data_parallel(where, cfg, runs["gpus"])
    _check_variants(where, runs["variants"])
    if cfg.data.dataset not in data.DATASETS:
        raise ParameterError(f"{where}: dataset {cfg.data.dataset!r} is unknown; choose one of "
                             f"{', '.join(data.DATASETS)}")
    if cfg.data.dataset not in data.BUILTINS:  # the data must be there (layout checked, nothing decoded)
        data.make_dataset(cfg.data.dataset, cfg.data.data_root, image_size=cfg.model.image_size,
                          channels=cfg.model.channels)
    if "sampler_steps" in params and params["sampler_steps"] > cfg.diffusion.timesteps:
        raise ParameterError(f"{where}: parameter 'sampler_steps' must be at most T = {cfg.diffusion.timesteps} "
                             f"(the diffusion steps), got {params['sampler_steps']}")
    if "memory_patch_mode" in params:
        mode = params["memory_patch_mode"]
        try:
            P.check_patch_mode(mode)
            P.chunks(4, mode)  # the smallest patch model compared (N = 2) has 4 patches
        except ValueError as exc:
            raise ParameterError(f"{where}: parameter 'memory_patch_mode': {exc}") from None
    if params.get("features") == "inception":
        from ..metrics import describe

        describe("inception")  # raises with instructions when the weights are not on this machine


def _check_variants(where: str, labels: list | None) -> None:
    """The ``variants`` key: known labels, once each, the study's N = 1, 2, 4 among them."""
    from .variants import SCALING, VARIANTS

    if labels is None:
        return
    known = [v.label for v in VARIANTS]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ParameterError(f"{where}: parameter 'variants': unknown model(s) {unknown}; the models are "
                             f"{', '.join(known)}")
    if len(set(labels)) != len(labels):
        raise ParameterError(f"{where}: parameter 'variants' names a model twice: {labels}")
    missing = [label for label in SCALING if label not in labels]
    if missing:
        raise ParameterError(f"{where}: parameter 'variants' must include {', '.join(SCALING)} (every table "
                             f"compares against them); {', '.join(missing)} missing")


def _check_value(key: str, value: Any, param: Param, where: str) -> None:
    if not param.accepts(value):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in param.types)
        raise ParameterError(f"{where}: parameter '{key}' must be {names}, got {value!r}")
    problem = param.problem(value)
    if problem:
        raise ParameterError(f"{where}: parameter '{key}' {problem}")


def _spec(notebook: str) -> dict[str, Param]:
    if notebook not in NOTEBOOKS:
        raise ValueError(f"unknown notebook {notebook!r}; the notebooks are {', '.join(NOTEBOOKS)}")
    return NOTEBOOKS[notebook]


def _unknown(unknown: list[str], valid: list[str], where: str) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"{where}: unknown parameter(s) {', '.join(parts)}; valid parameters are: {', '.join(valid)}"


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def parameters_source(notebook: str, values: dict[str, Any] | None = None) -> str:
    """The source of a notebook's parameters cell: one typed literal and comment per parameter."""
    values = {**defaults(notebook), **(values or {})}
    lines = [f"{key}: {type_annotation(param)} = {values[key]!r}  # {param.doc}"
             for key, param in _spec(notebook).items()]
    return "\n".join(lines)


def type_annotation(param: Param) -> str:
    """``int``, ``"Optional[str]"``, ``"Union[str, int]"``: the annotation written in a parameters cell
    (unions quoted: not evaluated at run time, and readable by ``papermill --help-notebook``)."""
    names = [t.__name__ for t in param.types if t is not type(None)]
    inner = names[0] if len(names) == 1 else f"Union[{', '.join(names)}]"
    if type(None) in param.types:
        return f'"Optional[{inner}]"'
    return inner if len(names) == 1 else f'"{inner}"'
