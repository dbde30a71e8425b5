"""Learning curves: the quality of a run's EMA weights at intervals during training.

``LearningCurve(cfg, run_dir, every=...)`` is passed to :func:`patchlab.training.train` as its
``evaluator``; every ``every`` steps (and at the last step) it samples a fixed set of images from
fixed noise (DDIM), with the model's own tiling (the grid, or coarse to fine), and compares them with a
fixed set of real images by the recipe of the final evaluation
(:func:`patchlab.metrics.sample_set.score_samples`): seam score on the tiling's lines (N = 1 at the
2 x 2 borders), KID and SWD, the dataset's content score (:mod:`patchlab.metrics.content`: coherence for
``shapes``, recognizability for ``digits``), and the mean pixel value of the samples beside the
real images' (a global colour shift, the symptom of an undertrained model, shows there first). Rows go to
``RUN_DIR/curve.csv`` (:func:`fields`); a resumed run drops the
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
from .content import for_dataset
from .sample_set import score_samples


def fields(dataset: str) -> tuple[str, ...]:
    """The columns of a learning curve of ``dataset``: its content score's (samples' values) beside the rest."""
    content = tuple(c.key for c in for_dataset(dataset).columns)
    return ("step", "seam", "seam_real", "kid", "kid_stderr", "swd", *content, "mean", "mean_real", "seconds")


class LearningCurve:
    """Evaluates the EMA weights every ``every`` steps: ``n`` DDIM samples (``steps`` steps) from noise
    seeded by the run's seed, against ``n`` real images; writes a row of :func:`fields` to curve.csv.

    Call it as ``curve(step, model, schedule)`` after every step (it skips the others). ``features``:
    the FID/KID features (see :func:`patchlab.metrics.feature_extractor`; ``"offline"`` is fast).
    """

    def __init__(self, cfg: C.Config, run_dir, *, every: int, n: int = 64, steps: int = 25,
                 features: str = "offline"):
        if every < 1 or n < 4 or steps < 1:
            raise ValueError(f"a learning curve needs every >= 1, n >= 4 and steps >= 1; got every={every}, n={n}, "
                             f"steps={steps}")
        self.cfg, self.path = cfg, RunPaths(Path(run_dir)).curve
        self.every, self.n, self.steps, self.features = every, n, min(steps, cfg.diffusion.timesteps), features
        self.tiling, self.fields = T.for_model(cfg.model), fields(cfg.data.dataset)
        self._real = self._extractor = None
        self._started = False

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.cfg.train.steps

    def __call__(self, step: int, model, schedule) -> dict | None:
        if not self._started:  # a resumed run: the rows from its first step on are done again
            self._start(step)
        if not self.due(step):
            return None
        start = time.perf_counter()
        row = {"step": step, **self.measure(model, schedule), "seconds": None}
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
                          swd_generator=make_generator(seed), kid_generator=make_generator(seed))
        content = {c.key: m[f"{c.key}_fake"] for c in for_dataset(cfg.data.dataset).columns}
        return {"seam": m["seam_fake"], "seam_real": m["seam_real"], "kid": m["kid"], "kid_stderr": m["kid_stderr"],
                "swd": m["swd"], **content, "mean": m["mean_fake"], "mean_real": m["mean_real"]}

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
                  features: str = "offline") -> LearningCurve | None:
    """A :class:`LearningCurve` for ``train(..., evaluator=...)``, or None when ``every`` is 0 (off)."""
    return LearningCurve(cfg, run_dir, every=every, n=n, steps=steps, features=features) if every else None
