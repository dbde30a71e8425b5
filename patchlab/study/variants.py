"""The runs a profile trains and compares: the variants, their configurations and where their runs live.

The paper compares N = 1, 2, 4 (position and GCC on; N = 1 is a plain DDPM) and, at N = 2, the
ablations without position, without GCC and without either. Beyond the paper, the seam remedies: a
model trained with continuous window coordinates on randomly shifted grids (``coords``), sampled on
the fixed grid, on a grid that moves between steps (``shifted``) and with overlapping blended windows
(``overlap``), at N = 2 and 4; and coarse to fine (``global``): a coords model also trained on the
global view (the whole image pooled to one patch) that denoises the noisy steps from it and the last
ones with overlapping windows, its windows trained on those fine steps only. :data:`VARIANTS` lists
them; every run is the profile's base configuration with the variant's switches, and the window
remedies of one N share one trained model.

A run lives in ``runs/<profile>/<slug>-<hash>``, where ``hash`` is :func:`config_hash` of its resolved
configuration: a run whose configuration is unchanged is reused (and an interrupted one resumed by
:func:`patchlab.training.train`); any change that alters what is trained gives a new directory.
Training them is :mod:`patchlab.study.orchestrate`'s; measuring them :mod:`patchlab.study.measure`'s.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .. import checkpoint as ckpt
from .. import config as C
from .. import tiling as T
from ..runs import RunPaths


GLOBAL_SHARE = 0.5  # the global remedy's share of training images denoised as the global view
# ... and its windows learn only the timesteps below this fraction of T, twice the sampler's hand-over
# (patchlab.tiling.GLOBAL_FROM): the steps they denoise and a margin. Chosen from trial runs outside the
# study (three seeds each, N = 2, hand-over 0.05): coherence 0.21 on average with windows trained on every
# timestep, 0.23 with 0.05, 0.35 with 0.1, 0.32 with 0.2.
GLOBAL_WINDOWS_BELOW = 0.1


@dataclass(frozen=True)
class Variant:
    """One model compared: N, the conditioning switches and, for the seam remedies, the sampler's windows."""

    label: str
    patches: int
    position: bool
    gcc: bool
    coords: bool = False  # trained with continuous window coordinates on randomly shifted grids
    windows: str = "grid"  # the sampler's tiling (a name of patchlab.tiling.NAMES)
    global_view: float = 0.0  # share of the training images denoised as the global view (coords models)
    windows_below: float = 1.0  # the windows train on timesteps below this fraction of T (global_view models)

    @property
    def trains(self) -> str:
        """The label of the variant whose trained model this one samples (the remedies share one)."""
        if self.global_view:
            return f"N={self.patches} global"
        return f"N={self.patches} coords" if self.coords else self.label

    @property
    def remedy(self) -> bool:
        """Whether its sampler's windows leave the fixed grid (a seam remedy)."""
        return T.TILINGS[self.windows].moves

    def switches(self) -> dict:
        """The configuration keys this variant sets on a profile's base configuration."""
        return {"patches": self.patches, "position": self.position, "gcc": self.gcc, "coords": self.coords,
                "global_view": self.global_view, "windows_below": self.windows_below}


VARIANTS = (
    Variant("N=1", 1, False, False),
    Variant("N=2", 2, True, True),
    Variant("N=4", 4, True, True),
    Variant("N=2 no position", 2, False, True),
    Variant("N=2 no GCC", 2, True, False),
    Variant("N=2 neither", 2, False, False),
    Variant("N=2 coords", 2, True, True, coords=True),
    Variant("N=2 shifted", 2, True, True, coords=True, windows="shifted"),
    Variant("N=2 overlap", 2, True, True, coords=True, windows="overlap"),
    Variant("N=4 coords", 4, True, True, coords=True),
    Variant("N=4 shifted", 4, True, True, coords=True, windows="shifted"),
    Variant("N=4 overlap", 4, True, True, coords=True, windows="overlap"),
    Variant("N=2 global", 2, True, True, coords=True, windows="global", global_view=GLOBAL_SHARE,
            windows_below=GLOBAL_WINDOWS_BELOW),
    Variant("N=4 global", 4, True, True, coords=True, windows="global", global_view=GLOBAL_SHARE,
            windows_below=GLOBAL_WINDOWS_BELOW),
)
PAPER = ("N=1", "N=2", "N=4", "N=2 no position", "N=2 no GCC", "N=2 neither")  # the paper's comparisons
SCALING = ("N=1", "N=2", "N=4")  # the memory/quality trade-off
ABLATIONS = ("N=2", "N=2 no position", "N=2 no GCC", "N=2 neither")  # what each conditioning adds
REMEDIES = ("N=2", "N=2 coords", "N=2 shifted", "N=2 overlap", "N=2 global")  # seam-free patches at N = 2
REMEDIES_N4 = ("N=4", "N=4 coords", "N=4 shifted", "N=4 overlap", "N=4 global")
PAPER_BATCH = {"train": 32, "sample": 16}  # the paper's training batch per GPU; a sampling batch of 16


def variant(label: str) -> Variant:
    for v in VARIANTS:
        if v.label == label:
            return v
    raise ValueError(f"unknown variant {label!r}; the variants are {', '.join(v.label for v in VARIANTS)}")


def variant_of(cfg: C.Config) -> str:
    """The label of ``cfg``'s switches: the label of the variant of :data:`VARIANTS` that trains such a model,
    or a description like ``N=4 no GCC``."""
    m = cfg.model
    mine = {k: getattr(m, k) for k in Variant("", 1, True, True).switches()}
    for v in VARIANTS:
        if v.trains == v.label and v.switches() == mine:
            return v.label
    if m.global_view:
        return f"N={m.patches} global"
    off = [name for name, on in (("position", m.position), ("GCC", m.gcc)) if not on]
    return f"N={m.patches}" + ("" if not off else " neither" if len(off) == 2 else f" no {off[0]}")


def config_hash(cfg: C.Config) -> str:
    """12 hex digits identifying what ``cfg`` trains (:meth:`patchlab.config.Config.identity`)."""
    return hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True, default=list).encode()).hexdigest()[:12]


def slug(label: str) -> str:
    """``"N=2 no GCC"`` -> ``"n2-no-gcc"``."""
    return label.lower().replace("=", "").replace(" ", "-")


@dataclass(frozen=True)
class Run:
    """A run of a profile: its variant label, resolved configuration and directory, and the windows its
    samples are drawn with (variants that only sample differently share a directory)."""

    label: str
    config: C.Config
    path: Path
    windows: str = "grid"

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.path)

    @property
    def patches(self) -> int:
        return self.config.model.patches

    @property
    def tiling(self) -> T.Tiling:
        """The tiling its samples are drawn with, built for (and checked against) its model."""
        return T.build(self.config.model, self.windows)


def run_for(cfg: C.Config, runs_dir, label: str | None = None, *, windows: str = "grid",
            trains: str | None = None) -> Run:
    """The :class:`Run` of ``cfg`` under ``runs_dir`` (``<slug of trains>-<hash>``)."""
    label = label or variant_of(cfg)
    return Run(label, cfg, Path(runs_dir) / f"{slug(trains or label)}-{config_hash(cfg)}", windows)


def variant_runs(base: C.Config, runs_dir, labels=None) -> list[Run]:
    """The runs of ``labels`` (default: all :data:`VARIANTS`) on the base configuration ``base``."""
    labels = [v.label for v in VARIANTS] if labels is None else list(labels)
    runs = []
    for label in labels:
        v = variant(label)
        cfg = base.replace(**v.switches())
        runs.append(run_for(cfg, runs_dir, label, windows=v.windows, trains=v.trains))
    return runs


def unique(runs: list[Run]) -> list[Run]:
    """One run per directory (the remedies of one N share their trained model), in order."""
    seen, out = set(), []
    for run in runs:
        if run.path not in seen:
            seen.add(run.path)
            out.append(run)
    return out


def training_runs(cfg: C.Config, runs_dir, *, comparison_runs: bool = False, labels=None) -> list[Run]:
    """The run of ``cfg`` first, then (with ``comparison_runs``) every other model the notebooks compare on the
    same base (``labels``, default all): one run per trained model (the remedies of one N share theirs)."""
    main = run_for(cfg, runs_dir)
    return unique([main] + (variant_runs(cfg, runs_dir, labels) if comparison_runs else []))


def among(runs: list[Run], labels) -> list[Run]:
    """The runs of ``runs`` labelled one of ``labels``, in the order of ``labels`` (those present)."""
    by_label = {run.label: run for run in runs}
    return [by_label[label] for label in labels if label in by_label]


def find(runs: list[Run], label: str) -> Run:
    """The run labelled ``label`` among ``runs``."""
    for run in runs:
        if run.label == label:
            return run
    raise ValueError(f"no run {label!r} among {[r.label for r in runs]}")


def is_trained(run: Run) -> bool:
    """Whether ``run`` has a checkpoint at its final step."""
    return run.paths.checkpoint.is_file() and ckpt.read_step(run.paths.checkpoint) >= run.config.train.steps
