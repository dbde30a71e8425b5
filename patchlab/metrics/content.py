"""The dataset's own content score: does a sample show *one* thing, drawn consistently across its patches?

Seam score, SWD and KID look at pixels and statistics; a patch model can pass them and still draw the two
halves of an object in two colours, or the top of a 7 on the bottom of a 2. Each built-in dataset whose
content can be checked has one score object here, chosen by :func:`for_dataset`:

- ``shapes`` -> :class:`Coherence`: the share of samples that are one object of one colour
  (:mod:`patchlab.metrics.shape_coherence`).
- ``digits`` -> :class:`Recognizability`: a digit classifier trained by the kit
  (:mod:`patchlab.metrics.digits`) scores the share of samples it recognises with confidence >= 0.9, the
  entropy of the predicted classes (mode coverage; log 10 = 2.30 for all ten digits equally often) and a
  Fréchet distance on its penultimate features ("digit FID").
- any other dataset -> :data:`NO_CONTENT` (no columns).

Every score gives its :attr:`~ContentScore.columns` (the first is the primary one, the one the study's
tables set beside coherence's place) and :meth:`~ContentScore.score` returns, per column ``key``, the
samples' value ``key_fake`` and real images' ``key_real`` (the reference every table shows beside it), and
the 95% interval of the samples' value, ``key_fake_lo`` and ``key_fake_hi`` (of a share also the real
images', :mod:`patchlab.metrics.uncertainty`). Evaluation (metrics.json), learning curves (curve.csv) and the
study's tables take the columns from here, so a new score is one class.
"""

from dataclasses import dataclass

import torch

from . import uncertainty as U


@dataclass(frozen=True)
class Column:
    """One number of a content score, as it is named in metrics.json (``key_fake`` / ``key_real``), curve.csv
    and the tables (``key``)."""

    key: str
    title: str  # a plot's title
    higher_is_better: bool
    reference: bool = False  # tables show real images' value beside it (`key real`)
    share: bool = False  # a share of the images: a Wilson interval for the real images' value too


class ContentScore:
    """No content score (datasets without one). Subclasses set :attr:`columns`, :attr:`note` and :meth:`score`."""

    columns: tuple[Column, ...] = ()
    note = ""  # one sentence for a table's note: what the columns mean

    @property
    def primary(self) -> Column | None:
        """The column a table shows where it has room for one (the first)."""
        return self.columns[0] if self.columns else None

    def result_keys(self) -> tuple[str, ...]:
        """The keys :meth:`score` returns, in order (metrics.json, metrics.csv): per column ``key_fake``, its
        interval's ``key_fake_lo`` and ``key_fake_hi``, ``key_real`` (and its interval, for a share)."""
        keys = []
        for c in self.columns:
            keys += [f"{c.key}_fake", *U.columns(f"{c.key}_fake"), f"{c.key}_real"]
            keys += U.columns(f"{c.key}_real") if c.share else []
        return tuple(keys)

    def describe(self, metrics: dict) -> str:
        """The sentence a table's note gives the content columns of an evaluation's ``metrics``."""
        return self.note

    def score(self, fake: torch.Tensor, real: torch.Tensor, patches: int, *,
              resamples: U.Resamples | None = None) -> dict:
        """{:meth:`result_keys`}: samples ``fake`` [n x C x H x W] and real images ``real`` [m x C x H x W] in
        [-1, 1], cut into ``patches`` x ``patches``; the intervals of scores that are not shares over the
        fake images' index sets ``resamples`` (default: drawn from a generator seeded with 0)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


NO_CONTENT = ContentScore()


class Coherence(ContentScore):
    """``shapes``: the share of images that are one object of one colour across all patches (RGB only;
    None for grayscale shapes)."""

    columns = (Column("coherence", "coherence (shapes)", True, share=True),)
    note = "Coherence: share of samples with one object of one colour (shapes only)."

    def score(self, fake, real, patches, *, resamples=None):
        from .shape_coherence import coherence_details

        if fake.shape[1] != 3:
            return dict.fromkeys(self.result_keys())
        out = {}
        for side, images in (("fake", fake), ("real", real)):
            coherent = coherence_details(images, patches).coherent
            out[f"coherence_{side}"] = float(coherent.float().mean())
            out.update(U.share_interval(coherent).as_columns(f"coherence_{side}"))
        return out


class Recognizability(ContentScore):
    """``digits``: what a digit classifier trained by the kit (held-out accuracy >= 97%, cached) makes of the
    samples. ``digit_fid_real`` is as many training digits (the first of the train split, class-balanced)
    against the real (held-out) images: what two real sets of that size score, the Fréchet distance being
    biased upwards for small sets."""

    columns = (Column("confident", "recognizable digits (confidence >= 0.9)", True, reference=True, share=True),
               Column("class_entropy", "entropy of the predicted digits (log 10 = 2.30: all ten)", True,
                      reference=True),
               Column("digit_fid", "digit FID (classifier features)", False, reference=True))
    note = ("Recognizability (digits): `confident` is the share of samples a digit classifier trained by the kit "
            "recognises with confidence >= 0.9, `class_entropy` the entropy of the predicted digits (2.30 = all "
            "ten equally often), `digit_fid` a Fréchet distance on the classifier's features; real held-out digits "
            "score the `real` values.")

    def score(self, fake, real, patches, *, resamples=None):
        from ..data import DigitsDataset
        from .digits import load_classifier, recognizability

        classifier = load_classifier()
        reference = DigitsDataset(image_size=real.shape[-1], channels=real.shape[1], split="train",
                                  size=len(real)).images
        m = recognizability(fake, real, classifier, reference=reference, resamples=resamples)
        # the keys recognizability() names otherwise: {result key: its key}
        named = {"digit_fid_fake": "digit_fid", **dict(zip(U.columns("digit_fid_fake"), U.columns("digit_fid"))),
                 "digit_classifier_accuracy": "classifier_accuracy"}
        return {key: m[named.get(key, key)] for key in self.result_keys()}

    def result_keys(self):
        return super().result_keys() + ("digit_classifier_accuracy",)

    def describe(self, metrics):
        accuracy = metrics.get("digit_classifier_accuracy")
        return self.note + (f" The classifier's accuracy on the 500 held-out digits: {accuracy:.3f}."
                            if accuracy is not None else "")


SCORES = {"shapes": Coherence(), "digits": Recognizability()}
ALL_COLUMNS = tuple(c.key for s in SCORES.values() for c in s.columns)  # every content column any table may hold


def for_dataset(name: str) -> ContentScore:
    """The content score of the dataset ``name`` (:data:`NO_CONTENT` for one without)."""
    return SCORES.get(name, NO_CONTENT)


def columns(metrics: dict) -> tuple[Column, ...]:
    """The content columns of whichever score wrote a metrics.json dict (by its ``dataset``)."""
    return for_dataset(metrics.get("dataset", "")).columns


def values(metrics: dict, *, references: bool = False, intervals: bool = False) -> dict:
    """{column: the samples' value} of the content columns in a metrics.json dict (:func:`columns`), in their
    order; with ``intervals`` also {``column_lo``, ``column_hi``: its interval} after each column whose
    interval the dict holds (metrics written before intervals hold none); with ``references`` also
    {``column real``: the real images' value} after each column that has one (:attr:`Column.reference`)."""
    out = {}
    for c in columns(metrics):
        out[c.key] = metrics.get(f"{c.key}_fake")
        interval = U.read(metrics, f"{c.key}_fake") if intervals else None
        if interval is not None:
            out.update(interval.as_columns(c.key))
        if references and c.reference:
            out[f"{c.key} real"] = metrics.get(f"{c.key}_real")
    return out


def columns_of(names) -> tuple[Column, ...]:
    """The content columns among ``names`` (a table's columns), in :data:`ALL_COLUMNS`' order."""
    names = set(names)
    return tuple(c for s in SCORES.values() for c in s.columns if c.key in names)
