"""Learning curves: the quality of a run's EMA weights at intervals during training.

``LearningCurve(cfg, run_dir, every=...)`` is passed to :func:`patchlab.training.train` as its
``evaluator``; every ``every`` steps (and at the last step) it samples a fixed set of images from
fixed noise (DDIM), with the model's own tiling (the grid, or coarse to fine), and compares them with a
fixed set of real images by the recipe of the final evaluation
(:func:`patchlab.metrics.sample_set.score_samples`): seam score on the tiling's lines (N = 1 at the
2 x 2 borders), KID and SWD, the dataset's content score (:mod:`patchlab.metrics.content`: coherence for
``shapes``, recognizability for ``digits``), and the mean pixel value of the samples beside the
real images' (a global colour shift, the symptom of an undertrained model, shows there first); each score of the
samples with its 95% interval (``seam_lo``, ``seam_hi``, ...: :mod:`patchlab.metrics.uncertainty`; curves
recorded before intervals have none). Rows go to ``RUN_DIR/curve.csv`` (:func:`fields`); a resumed run drops the
rows after its checkpoint and records them again, so the curve of an interrupted run equals that of an
uninterrupted one. :func:`read_curve` is its one reader.
"""

import csv
import time
from pathlib import Path

from .. import config as C
from .. import tiling as T
from ..execution import Execution
from ..runs import RunDirectoryError, RunPaths, read_step_rows
from ..runtime import Stream, derived_seed, make_generator
from .evaluate import generate, real_images
from .features import feature_extractor
from . import uncertainty as U
from .content import for_dataset
from .sample_set import score_samples

# curve column <- score_samples key, for the scores of the samples (each with its interval in the curve)
_SCORES = {"seam": "seam_fake", "kid": "kid", "swd": "swd"}


RAW = "raw_"  # the prefix of the raw weights' columns beside the EMA's (LearningCurve(raw=True))


def fields(dataset: str, *, raw: bool = False) -> tuple[str, ...]:
    """The columns of a learning curve of ``dataset``: its content score's (samples' values) beside the rest,
    each score of the samples followed by its interval's ``_lo`` and ``_hi``; with ``raw``, the same scores of
    the raw weights prefixed :data:`RAW` (``raw_swd``, ``raw_confident_lo``, ...)."""
    content = tuple(k for c in for_dataset(dataset).columns for k in (c.key, *U.columns(c.key)))
    scores = ("seam", *U.columns("seam"), "seam_real", "kid", "kid_stderr", *U.columns("kid"), "swd",
              *U.columns("swd"), *content, "mean")
    return ("step", *scores, "mean_real", *(RAW + k for k in scores if k != "seam_real" and raw), "seconds")


class LearningCurve:
    """Evaluates the EMA weights every ``every`` steps: ``n`` DDIM samples (``steps`` steps) from noise
    seeded by the run's seed, against ``n`` real images; writes a row of :func:`fields` to curve.csv.

    Call it as ``curve(step, model, schedule, raw=weights)`` after every step (it skips the others); with
    ``raw`` (a short run's EMA lags its weights) it scores the raw weights ``raw`` too, from the same noise.
    ``features``: the FID/KID features (see :func:`patchlab.metrics.feature_extractor`; ``"offline"`` is fast).
    """

    def __init__(self, cfg: C.Config, run_dir, *, every: int, n: int = 64, steps: int = 25,
                 features: str = "offline", raw: bool = False):
        if every < 1 or n < 4 or steps < 1:
            raise ValueError(f"a learning curve needs every >= 1, n >= 4 and steps >= 1; got every={every}, n={n}, "
                             f"steps={steps}")
        self.cfg, self.path = cfg, RunPaths(Path(run_dir)).curve
        self.every, self.n, self.steps, self.features = every, n, min(steps, cfg.diffusion.timesteps), features
        self.tiling, self.fields, self.raw = T.for_model(cfg.model), fields(cfg.data.dataset, raw=raw), raw
        self._real = self._extractor = None
        self._started = False

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.cfg.train.steps

    def __call__(self, step: int, model, schedule, raw=None) -> dict | None:
        if not self._started:  # a resumed run: the rows from its first step on are done again
            self._start(step)
        if not self.due(step):
            return None
        if self.raw and raw is None:
            raise ValueError("this learning curve scores the raw weights too: call it with raw=the model")
        start = time.perf_counter()
        row = {"step": step, **self.measure(model, schedule), "seconds": None}
        if self.raw:
            row.update({RAW + k: v for k, v in self.measure(raw, schedule).items() if k != "mean_real"})
        row["seconds"] = round(time.perf_counter() - start, 2)
        self._append(row)
        return row

    def measure(self, model, schedule) -> dict:
        """The metrics of ``model`` now (no file written): :func:`patchlab.metrics.sample_set.score_samples`
        of samples drawn with the model's own tiling, scored on its lines."""
        cfg, seed = self.cfg, derived_seed(self.cfg.train.seed, Stream.CURVE)
        if self._real is None:
            self._real, _ = real_images(cfg, self.n, seed=seed)
            self._extractor = feature_extractor(self.features, device=next(model.parameters()).device)
            self._real_features = self._extractor(self._real)
        fake = generate(model, schedule, self.n, steps=self.steps, seed=seed, tiling=self.tiling,
                        execution=Execution(patch_mode=cfg.train.patch_mode), batch_size=self.n)
        m = score_samples(fake, self._real, tiling=self.tiling, steps=self.steps, dataset=cfg.data.dataset,
                          extractor=self._extractor, real_features=self._real_features,
                          swd_generator=make_generator(seed), kid_generator=make_generator(seed),
                          resample_generator=make_generator(derived_seed(seed, Stream.RESAMPLE)))
        names = {**_SCORES, **{c.key: f"{c.key}_fake" for c in for_dataset(cfg.data.dataset).columns}}
        scores = {}
        for column, key in names.items():  # the value and its interval, renamed
            scores.update({column: m[key], **dict(zip(U.columns(column), (m[k] for k in U.columns(key))))})
        return {**scores, "seam_real": m["seam_real"], "kid_stderr": m["kid_stderr"], "mean": m["mean_fake"],
                "mean_real": m["mean_real"]}

    def _start(self, step: int) -> None:
        # A resumed run keeps the points before its first new step that an uninterrupted run has too
        # (a shorter earlier run's last point is not one of them).
        kept = [r for r in read_curve(self.path) if r["step"] < step and r["step"] % self.every == 0]
        self._write(kept, "w")
        self._started = True

    def _append(self, row: dict) -> None:
        self._write([row], "a")

    def _write(self, rows: list[dict], mode: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, mode, newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                if mode == "w":
                    writer.writeheader()
                writer.writerows(rows)
        except OSError as exc:
            raise RunDirectoryError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


def read_curve(path) -> list[dict]:
    """The rows of a ``curve.csv``: ``step`` an int, the metrics (its columns, :func:`fields`) floats (None where
    empty); [] without a file."""
    return read_step_rows(path, complete="seconds")


def evaluator_for(cfg: C.Config, run_dir, *, every: int, n: int = 64, steps: int = 25,
                  features: str = "offline", raw: bool = False) -> LearningCurve | None:
    """A :class:`LearningCurve` for ``train(..., evaluator=...)``, or None when ``every`` is 0 (off)."""
    return LearningCurve(cfg, run_dir, every=every, n=n, steps=steps, features=features, raw=raw) if every \
        else None
