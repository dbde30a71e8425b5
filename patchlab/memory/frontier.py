"""The frontier: the largest square image each memory lever trains (and samples) within a budget.

For the paper's UNet (:data:`patchlab.config.PAPER_PARAMS`: dim 128, mults 1,2,4,8) at batch 1 (Adam for
training), each lever of :data:`LEVERS` -- N = 1 plain, N = 1 with checkpointed blocks, N = 2, 4, 8 one patch
per pass, N = 4 one patch per pass with checkpointed blocks -- in fp32 and bf16 (autocast for training, bf16
weights for sampling). A step's peak at image size s is ``a + b s^2 + c s^4`` (what does not grow with the
image: weights, gradients, Adam's state; what grows with the pixels; the mid-level full attention, whose
score matrix grows with the pixels squared), fitted exactly to fake-tensor estimates at three sizes
(:data:`FIT_SIZES` times N: the same patch sizes for every N, so each fit spans the images that lever
reaches) and checked against direct estimates of the whole step at two others (:data:`CHECK_SIZES` times N;
the errors are reported, per row too). The fitted training estimates leave Adam's update out and
add its state (two float32 tensors per weight): at batch 1 the step's peak is in backward, where Adam holds
only its state (the checks, with the update, test that too); that halves the time of a frontier. Each image
size is then the largest multiple of 64 px whose predicted peak, plus the planner's headroom, fits the
budget.

    rows, checks = frontier()           # a few minutes on 2 CPU cores (fake tensors: nothing allocated)
    print(format_frontier(rows, checks))
"""

from dataclasses import dataclass

import numpy as np

from .. import config as C
from ..execution import Execution
from .profiler import format_bytes
from .steps import profile_step

GiB = 1 << 30
BUDGETS_GIB = (8, 16, 24, 40, 80)
FIT_SIZES = (256, 768, 1280)
CHECK_SIZES = (512, 1024)
STEP = 64  # image sizes are multiples of this (a patch of N = 8 then still halves 3 times)
MAX_SIZE = 64 * 1024


@dataclass(frozen=True)
class Lever:
    """One way to run a step: ``patches`` N (a different model when N > 1) and how its passes run."""

    name: str
    patches: int
    execution: Execution
    phases: tuple[str, ...] = ("train", "sample")

    def changes_model(self) -> bool:
        return self.patches > 1


LEVERS = (
    Lever("N=1 plain", 1, Execution(patch_mode="batched")),
    Lever("N=1 checkpointed", 1, Execution(patch_mode="batched", checkpointing="blocks"), ("train",)),
    Lever("N=2 sequential", 2, Execution(patch_mode="sequential")),
    Lever("N=4 sequential", 4, Execution(patch_mode="sequential")),
    Lever("N=8 sequential", 8, Execution(patch_mode="sequential")),
    Lever("N=4 sequential checkpointed", 4, Execution(patch_mode="sequential", checkpointing="blocks"), ("train",)),
)
LOW_PRECISION = {"train": "bf16", "sample": "bf16-weights"}


@dataclass(frozen=True)
class Curve:
    """A lever's fitted peak ``a + b s^2 + c s^4`` (bytes, s in px) for one phase and precision."""

    phase: str
    lever: Lever
    precision: str
    coefficients: tuple[float, float, float]

    def peak(self, size: int) -> float:
        a, b, c = self.coefficients
        return a + b * size ** 2 + c * size ** 4

    def largest(self, budget_bytes: int, headroom: float = 0.1) -> int:
        """The largest multiple of :data:`STEP` px whose predicted peak + ``headroom`` fits (0: none)."""
        limit, best, size = budget_bytes / (1 + headroom), 0, STEP
        while size <= MAX_SIZE and self.peak(size) <= limit:
            best, size = size, size + STEP
        return best


def estimate(lever: Lever, phase: str, precision: str, size: int, base: dict | None = None, *,
             adam_update: bool = True):
    """The fake-tensor :class:`patchlab.memory.StepProfile` of one ``phase`` step of one image of ``size`` px,
    run as ``lever`` says (training with Adam; ``adam_update=False``: without the update, see above)."""
    params = {**C.PAPER_PARAMS, **(base or {}), "image_size": size, "patches": lever.patches}
    optimizer = "adam" if phase == "train" and adam_update else "none"
    return profile_step(C.from_params(**params), phase, batch=1, execution=lever.execution.replace(
        precision=precision), optimizer=optimizer, estimate=True)


def fitted_peak(lever: Lever, phase: str, precision: str, size: int, base: dict | None = None) -> int:
    """The peak the fit uses: sampling's step, or training's without Adam's update plus Adam's state."""
    prof = estimate(lever, phase, precision, size, base, adam_update=False)
    state = 2 * 4 * prof.parameters if phase == "train" else 0  # exp_avg, exp_avg_sq: float32 per weight
    return prof.report.peak_bytes + state


def fit(lever: Lever, phase: str, precision: str, *, base: dict | None = None,
        sizes=FIT_SIZES) -> Curve:
    """The :class:`Curve` through the peaks (:func:`fitted_peak`) at ``sizes`` (three of them)."""
    peaks = [fitted_peak(lever, phase, precision, s, base) for s in sizes]
    matrix = np.array([[1.0, s ** 2, s ** 4] for s in sizes])
    return Curve(phase, lever, precision, tuple(float(v) for v in np.linalg.solve(matrix, np.array(peaks, float))))


def frontier(*, budgets_gib=BUDGETS_GIB, levers=LEVERS, phases=("train", "sample"), headroom: float = 0.1,
             base: dict | None = None, fit_sizes=FIT_SIZES, check_sizes=CHECK_SIZES,
             progress=None) -> tuple[list[dict], list[dict]]:
    """-> (rows, checks). A row per phase, lever and precision: ``{"phase", "lever", "patches",
    "changes_model", "checkpointing", "precision", "floor_bytes"`` (weights, gradients and optimizer state: what
    does not grow with the image), ``"coefficients"`` (a, b, c), ``"sizes": {budget GiB: largest px}}``;
    a check per curve and check size: the direct estimate, the curve's prediction and their relative error.
    ``base``: parameters over the paper's (tests use a smaller UNet, at ``fit_sizes`` and ``check_sizes`` of
    their own). ``progress(text)`` before each curve."""
    rows, checks = [], []
    for phase in phases:
        for lever in levers:
            if phase not in lever.phases:
                continue
            for precision in ("fp32", LOW_PRECISION[phase]):
                if progress:
                    progress(f"frontier: {phase} {lever.name} {precision}")
                curve, floor, errors = fit(lever, phase, precision, base=base,
                                           sizes=[s * lever.patches for s in fit_sizes]), None, []
                for size in (s * lever.patches for s in check_sizes):
                    direct = estimate(lever, phase, precision, size, base)
                    rep = direct.report
                    grads = 4 * direct.parameters if phase == "train" else 0  # (at the peak not all exist yet)
                    floor = rep.weights_bytes + grads + rep.optimizer_state_bytes
                    checks.append({"phase": phase, "lever": lever.name, "precision": precision, "size": size,
                                   "estimate_bytes": rep.peak_bytes, "predicted_bytes": curve.peak(size),
                                   "error": curve.peak(size) / rep.peak_bytes - 1})
                    errors.append(abs(checks[-1]["error"]))
                rows.append({"phase": phase, "lever": lever.name, "patches": lever.patches,
                             "changes_model": lever.changes_model(), "checkpointing": lever.execution.checkpointing,
                             "precision": precision, "floor_bytes": floor,
                             "coefficients": list(curve.coefficients), "fit_error": max(errors),
                             "sizes": {str(b): curve.largest(b * GiB, headroom) for b in budgets_gib}})
    return rows, checks


def crossover(rows: list[dict], phase: str = "train", precision: str = "fp32", lever: str = "N=1 checkpointed") -> int:
    """The smallest image size (multiple of :data:`STEP`) at which one image's activations under ``lever``
    outweigh what does not grow with the image (weights, gradients, Adam's state): below it, splitting the
    batch (or checkpointing) already brings N = 1 within 2x of the floor that every lever shares, and
    patches have little left to save."""
    row = next(r for r in rows if (r["phase"], r["precision"], r["lever"]) == (phase, precision, lever))
    a, b, c = row["coefficients"]
    size = STEP
    while size <= MAX_SIZE and a + b * size ** 2 + c * size ** 4 < 2 * row["floor_bytes"]:
        size += STEP
    return size


def format_frontier(rows: list[dict], checks: list[dict]) -> str:
    """A terminal table: the largest image per budget, for each phase, lever and precision, and the check."""
    budgets = list(rows[0]["sizes"]) if rows else []
    head = ["phase", "lever", "precision", "floor", "fit error"] + [f"{b} GiB" for b in budgets]
    lines = [[r["phase"], r["lever"], r["precision"], format_bytes(r["floor_bytes"]), f"{r['fit_error']:.1%}"] +
             [str(r["sizes"][b] or "-") for b in budgets] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    worst = max((abs(c["error"]) for c in checks), default=0.0)
    sizes = sorted({c["size"] for c in checks})
    return "\n".join(
        ["largest square image (px, multiples of 64) per budget, batch 1 (train: Adam), the paper's UNet; "
         "N > 1 is another model, the other levers only change how a step runs"] +
        [fmt.format(*head)] + [fmt.format(*line) for line in lines] +
        [f"fit a + b s^2 + c s^4 to estimates at N x {', '.join(map(str, FIT_SIZES))} px; against direct estimates "
         f"at N x {', '.join(map(str, CHECK_SIZES))} px ({len(sizes)} sizes) the largest error is {worst:.2%}"])
