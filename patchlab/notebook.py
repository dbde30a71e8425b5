"""The notebooks' parameters: declared here, checked here, resolved into configurations here.

Every notebook in ``notebooks/`` is a thin driver (see the notebook contract in the README):

1. cell 1 imports; cell 2, tagged ``parameters``, assigns the parameters of :data:`NOTEBOOKS` with
   their defaults (typed literals, a comment each; a test keeps the cells and this module in step);
2. cell 3 calls :func:`resolve` with the notebook's ``globals()``; it refuses any literal the
   notebook did not declare (papermill only *warns* about unknown ``-p`` names and injects them
   anyway), checks every value's type, and builds the configuration with
   :func:`patchlab.config.from_params`, so nothing in the notebook derives values itself.

A *profile* (``notebooks/params/NAME.json``) is one flat JSON object of parameter values shared by all
notebooks; each notebook receives the keys it declares (:func:`split_profile`), and a key that no
notebook declares is an error before anything runs.
"""

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "params"
PROFILE_META = ("description",)  # keys of a profile file that are not parameters
_MARK = "_patchlab_notebook"  # where resolve() keeps the names that existed at its first call
_LITERALS = (type(None), bool, int, float, str, list, dict, tuple)
_IPYTHON_NAMES = frozenset({"In", "Out"})


class ParameterError(C.ConfigError):
    """An undeclared parameter, or a value of the wrong type (a ``ValueError`` and a ``TypeError``)."""


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its default, the types it accepts and a one-line doc."""

    default: Any
    types: tuple[type, ...]
    doc: str

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, self.types)


def _p(default, types, doc) -> Param:
    return Param(default, types if isinstance(types, tuple) else (types,), doc)


# Parameters every notebook takes: they name the profile and define the runs it trains and compares.
COMMON: dict[str, Param] = {
    "profile": _p("default", str, "profile name: runs go to <root>/runs/<profile>, results to <root>/reports/<profile>"),
    "root": _p(".", str, "folder that holds runs/ and reports/"),
    "dataset": _p("shapes", str, "training data: 'shapes' or 'faces' (built in), 'celeba', 'lsun_bedroom', 'folder'"),
    "data_root": _p(None, (str, type(None)), "folder of a real dataset (None for the built-ins)"),
    "image_size": _p(16, int, "image side in pixels"),
    "dim": _p(32, int, "UNet base channel width (paper: 128)"),
    "dim_mults": _p([1, 2], list, "UNet channel multiplier per level (paper: [1, 2, 4, 8])"),
    "steps": _p(1000, int, "optimizer steps of every run"),
    "batch_size": _p(16, int, "images per optimizer step"),
    "lr": _p(1e-3, float, "Adam learning rate (paper: 1e-4)"),
    "patch_mode": _p("batched", (str, int), "patches per UNet pass in training and sampling: 'batched', "
                                            "'sequential' or k (same results up to round-off; memory differs)"),
    "device": _p("auto", str, "'auto' (CUDA if available), 'cpu' or 'cuda'"),
    "threads": _p(1, (int, type(None)), "CPU threads of PyTorch (None: its default, one per core); one keeps small "
                                        "models fast on busy machines and CPU results identical everywhere"),
    "workers": _p(2, int, "runs trained at once on the CPU, each in its own process (GPU: one after the other)"),
    "seed": _p(0, int, "seed of model init, data order, noise and evaluation"),
    "config": _p({"warmup_steps": 50, "log_every": 25, "checkpoint_every": 250}, dict,
                 "any other patchlab.config parameter, e.g. {'ema_decay': 0.999} "
                           "(python -m patchlab train --help lists them)"),
}

NOTEBOOKS: dict[str, dict[str, Param]] = {
    "01_train": {
        **COMMON,
        "patches": _p(2, int, "N: the image is cut into N x N patches (1: an ordinary DDPM)"),
        "position": _p(True, bool, "one-hot patch position fused with the time embedding"),
        "gcc": _p(True, bool, "Global Content Conditioning: pooled whole x_t concatenated to each patch"),
        "comparison_runs": _p(False, bool, "also train the runs notebooks 02-04 compare "
                                           "(N of 1, 2 and 4; the ablations at N of 2)"),
    },
    "02_samples": {
        **COMMON,
        "grid_samples": _p(16, int, "images per model in the sample grids"),
        "sampler_steps": _p(25, int, "DDIM steps of the samples"),
        "borders": _p(True, bool, "draw the patch borders on the grids"),
        "trajectory_frames": _p(10, int, "frames shown of the denoising trajectory"),
    },
    "03_memory_vs_quality": {
        **COMMON,
        "eval_samples": _p(256, int, "samples (and real images) per model for the quality metrics"),
        "sampler_steps": _p(25, int, "DDIM steps of the samples"),
        "fid": _p(True, bool, "compute FID too (strongly biased below ~1000 samples; KID is not)"),
        "features": _p("auto", str, "FID/KID features: 'auto' (Inception if its weights are there, else "
                                    "offline), 'inception' or 'offline'"),
        "memory_batch": _p(None, (int, type(None)), "images per profiled step (None: batch_size)"),
        "memory_patch_mode": _p("sequential", (str, int), "patch mode of the profiled steps "
                                                          "(sequential: the memory-saving one)"),
        "timing_repeats": _p(3, int, "timed runs per profiled step (median); 0: no timing"),
        "paper_estimate": _p(True, bool, "add the paper's scale (128 px, dim 128) estimated with fake tensors"),
    },
    "04_seam_inspector": {
        **COMMON,
        "inspect_samples": _p(8, int, "samples per model in the inspector"),
        "sampler_steps": _p(25, int, "DDIM steps of the recorded trajectories"),
    },
}
ORDER = tuple(NOTEBOOKS)


def notebook_path(name: str) -> Path:
    return NOTEBOOK_DIR / f"{name}.ipynb"


def defaults(notebook: str) -> dict[str, Any]:
    """{name: default} of a notebook's parameters."""
    return {k: copy.deepcopy(p.default) for k, p in _spec(notebook).items()}


def all_parameters() -> dict[str, Param]:
    """Every parameter any notebook declares (the keys a profile may set)."""
    out: dict[str, Param] = {}
    for spec in NOTEBOOKS.values():
        out.update(spec)
    return out


def check(notebook: str, params: dict[str, Any], *, where: str | None = None) -> dict[str, Any]:
    """Validate ``params`` for ``notebook``: every name declared, every value of its type.

    Returns the full parameter set (defaults filled in). Raises :class:`ParameterError` naming the
    closest valid parameter and listing all of them.
    """
    spec = _spec(notebook)
    unknown = [k for k in params if k not in spec]
    where = where or f"notebook {notebook}"
    if unknown:
        raise ParameterError(_unknown(unknown, list(spec), where))
    for key, value in params.items():
        if not spec[key].accepts(value):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in spec[key].types)
            raise ParameterError(f"{where}: parameter '{key}' must be {names}, got {value!r}")
    return {**defaults(notebook), **params}


def split_profile(values: dict[str, Any], *, where: str = "profile") -> dict[str, dict[str, Any]]:
    """{notebook: the parameters it takes} from one flat profile; keys no notebook takes are errors."""
    valid = all_parameters()
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ParameterError(_unknown(unknown, list(valid), where))
    return {nb: check(nb, {k: v for k, v in values.items() if k in spec}, where=f"{where} ({nb})")
            for nb, spec in NOTEBOOKS.items()}


@dataclass(frozen=True)
class Setup:
    """What cell 3 of a notebook resolves: its parameters, configuration and output folders."""

    notebook: str
    params: dict[str, Any]
    config: C.Config  # 01_train: the run to train; the others: the base of the runs they compare
    runs_dir: Path  # <root>/runs/<profile>
    reports_dir: Path  # <root>/reports/<profile>
    extras: dict[str, Any] = field(default_factory=dict)

    def path(self, relative: str) -> Path:
        """``reports_dir / relative``, its folder created."""
        return _mkparent(self.reports_dir / relative)

    def figure(self, name: str) -> Path:
        """Path of a figure (PNG) of this profile's report, its folder created."""
        return _mkparent(self.reports_dir / "figures" / name)

    def table(self, name: str) -> Path:
        """Path stem of a table (``.csv`` and ``.md`` are added) of this profile's report."""
        return _mkparent(self.reports_dir / "tables" / name)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


def resolve(notebook: str, namespace: dict[str, Any]) -> Setup:
    """Cell 3 of every notebook: ``setup = patchlab.notebook.resolve("01_train", globals())``.

    Reads the declared parameters from ``namespace`` (missing ones take their defaults), refuses
    literals the notebook does not declare (names papermill injected with ``-p``), checks types and
    resolves the configuration. At the first call in a kernel the names then present are remembered:
    later calls (re-running the cell interactively) ignore names created by later cells.
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
    params = check(notebook, {k: namespace[k] for k in spec if k in namespace})
    setup = make_setup(notebook, params)
    if params["threads"] is not None:
        import torch

        torch.set_num_threads(params["threads"])
    return setup


def make_setup(notebook: str, params: dict[str, Any]) -> Setup:
    """:class:`Setup` of already checked parameters (see :func:`check`)."""
    if params["threads"] is not None and params["threads"] < 1:
        raise ParameterError(f"parameter 'threads' must be a positive integer or None, got {params['threads']}")
    if params["workers"] < 1:
        raise ParameterError(f"parameter 'workers' must be a positive integer, got {params['workers']}")
    cfg = C.from_params(**base_params(params, **_run_switches(notebook, params)))
    root = Path(params["root"])
    return Setup(notebook, dict(params), cfg, root / "runs" / params["profile"], root / "reports" / params["profile"])


def base_params(params: dict[str, Any], *, patches: int = 2, position: bool = True, gcc: bool = True) -> dict:
    """Flat :mod:`patchlab.config` parameters of a run from notebook parameters and the run's switches."""
    extra = dict(params["config"])
    clash = sorted(set(extra) & (set(COMMON) | {"patches", "position", "gcc"}))
    if clash:
        raise ParameterError(f"parameter 'config' must not set {clash}: they are notebook parameters of their own")
    out = {k: params[k] for k in ("dataset", "data_root", "image_size", "dim", "steps", "batch_size", "lr",
                                  "patch_mode", "device", "seed")}
    out["dim_mults"] = tuple(params["dim_mults"])
    return {**out, **extra, "patches": patches, "position": position, "gcc": gcc}


def _run_switches(notebook: str, params: dict[str, Any]) -> dict[str, Any]:
    if notebook == "01_train":
        return {k: params[k] for k in ("patches", "position", "gcc")}
    return {}


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
