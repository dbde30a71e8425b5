"""95% intervals for the quality numbers, so that a ranking can tell a lead from a tie.

Two kinds of number, two intervals:

- a **share** (``confident``, ``coherence``: k of n samples pass a test) gets the Wilson score interval
  (:func:`wilson`), which stays inside [0, 1] and is sensible at 0 / n and n / n;
- a **sample-based score** (seam score, SWD, KID, class entropy; FID and digit FID) gets a percentile interval
  over resamples of the samples (:func:`bootstrap`): the score recomputed on ``R`` index sets of the ``n``
  samples, and the central 95% of those ``R`` values. The index sets are the bootstrap's, ``n`` samples drawn
  with replacement (:func:`resample`), except for the Fréchet distances, whose spread the bootstrap's repeated
  samples overstate two- to fourfold: they take half-samples, ``n // 2`` drawn without replacement
  (:func:`halves`). One evaluation draws both kinds once (:class:`Resamples`) and every score uses them. The
  real images stay fixed: the interval is the spread due to *which* samples a model happened to draw.
  Expensive parts (features, descriptors, kernel matrices) are computed once; a resample only re-indexes them.

Where the estimate is given (``estimate=``), the resampled values are moved so that their median is the
estimate before the percentiles are read (a re-centred percentile interval). Distances between sets (FID,
SWD, the plug-in entropy) are biased by the sample size and by repeated samples, so a resample's value sits
away from the estimate (FID of 256 samples: 20% above it); the move keeps the interval's spread and puts it
around the number the table shows.

Two models **tie** when their intervals overlap (:meth:`Interval.overlaps`, :func:`tie`). This is a
conservative reading: intervals that do not overlap mean a clear difference, overlapping ones need not mean
there is none.

Names. An interval of the value ``key`` is stored beside it as ``key_lo`` and ``key_hi``
(:data:`LO`, :data:`HI`, :func:`columns`) everywhere: ``confident_fake_lo`` in metrics.json, ``swd_lo`` in
curve.csv, ``SWD_lo`` in a study table.
"""

import contextlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import torch

LO, HI = "_lo", "_hi"  # suffixes of an interval's bounds, after the name of its value
LEVEL = 0.95  # the coverage of every interval
RESAMPLES = 200  # bootstrap resamples per evaluation: enough for a 95% interval to a few percent of its width


@dataclass(frozen=True)
class Interval:
    """A closed interval [``low``, ``high``] around an estimate (``low <= high``)."""

    low: float
    high: float

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"an interval needs low <= high, got [{self.low}, {self.high}]")

    def overlaps(self, other: "Interval") -> bool:
        """Whether the two intervals share a point: a tie."""
        return self.low <= other.high and other.low <= self.high

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low

    def shifted(self, by: float) -> "Interval":
        return Interval(self.low + by, self.high + by)

    def as_columns(self, key: str) -> dict:
        """{``key_lo``: low, ``key_hi``: high}."""
        lo, hi = columns(key)
        return {lo: self.low, hi: self.high}


def columns(key: str) -> tuple[str, str]:
    """The names of the bounds of ``key``'s interval: (``key_lo``, ``key_hi``)."""
    return key + LO, key + HI


def as_columns(key: str, interval: Interval | None) -> dict:
    """{``key_lo``, ``key_hi``}: the interval's bounds, or None for both when there is no interval."""
    return interval.as_columns(key) if interval is not None else dict.fromkeys(columns(key))


def read(row: dict | None, key: str) -> Interval | None:
    """The interval of ``key`` in a row (metrics.json, a CSV row as text or numbers): from ``key_lo`` and
    ``key_hi``, or None when either is absent, empty or not a number (rows written before intervals)."""
    bounds = []
    for name in columns(key):
        value = (row or {}).get(name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        if math.isnan(value):
            return None
        bounds.append(value)
    return Interval(*bounds)


def with_interval(row: dict, key: str, name: str | None = None) -> dict:
    """{``name``: ``row[key]``} (``name`` defaults to ``key``) and, when ``row`` holds the interval of ``key``,
    {``name_lo``, ``name_hi``} after it: a value renamed for a table, with its interval if it has one."""
    name = name or key
    interval = read(row, key)
    return {name: row.get(key), **(interval.as_columns(name) if interval is not None else {})}


def tie(a: Interval | None, b: Interval | None) -> bool | None:
    """Whether two values tie (their intervals overlap); None when either has no interval."""
    return None if a is None or b is None else a.overlaps(b)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, *, level: float = LEVEL) -> Interval:
    """The Wilson score interval of a share of ``successes`` out of ``n`` trials (Wilson 1927)::

        centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

    with ``p = successes / n`` and ``z`` the normal quantile of ``level`` (1.96 for 95%). 0 / 10 gives
    [0, 0.278], 5 / 10 [0.237, 0.763].
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"a share needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z, p = _z(level), successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(0.0 if successes == 0 else max(0.0, centre - half),
                    1.0 if successes == n else min(1.0, centre + half))


def share_interval(passed: torch.Tensor, *, level: float = LEVEL) -> Interval:
    """:func:`wilson` of a boolean tensor [n] (which samples pass)."""
    return wilson(int(passed.sum()), int(passed.numel()), level=level)


def resample(n: int, *, generator: torch.Generator, resamples: int = RESAMPLES) -> torch.Tensor:
    """Bootstrap index sets: [resamples x n] indices into n samples, drawn with replacement from
    ``generator`` (one call, so the sets are a function of the generator's seed)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"a bootstrap needs n >= 1 samples and resamples >= 1, got {n} and {resamples}")
    return torch.randint(0, n, (resamples, n), generator=generator)


def halves(n: int, *, generator: torch.Generator, resamples: int = RESAMPLES) -> torch.Tensor:
    """Half-sample index sets: [resamples x n // 2] distinct indices into n >= 4 samples each (drawn without
    replacement), from ``generator``. A mean over n // 2 of n samples drawn without replacement varies as
    much as a mean over n samples of the population does, and so, nearly, does a smooth function of means
    such as a Fréchet distance, which the bootstrap's repeated samples make spread two to four times
    more than new samples do (measured; see docs/metrics.md)."""
    if n < 4 or resamples < 1:
        raise ValueError(f"half-samples need n >= 4 samples and resamples >= 1, got {n} and {resamples}")
    return torch.rand(resamples, n, generator=generator).argsort(dim=1)[:, :n // 2]


@dataclass(frozen=True)
class Resamples:
    """The index sets every interval of one set of n samples is computed over: ``bootstrap`` [R x n]
    (:func:`resample`) and ``halves`` [R x n // 2] (:func:`halves`; None for n < 4)."""

    bootstrap: torch.Tensor
    halves: torch.Tensor | None

    @classmethod
    def draw(cls, n: int, *, generator: torch.Generator, resamples: int = RESAMPLES) -> "Resamples":
        """Both kinds of index set for ``n`` samples, drawn from ``generator`` in that order."""
        with_replacement = resample(n, generator=generator, resamples=resamples)
        return cls(with_replacement, halves(n, generator=generator, resamples=resamples) if n >= 4 else None)

    @property
    def n(self) -> int:
        return self.bootstrap.shape[1]


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside: a resample is many small operations, which torch's thread pool only
    slows down (by 10x and more on a machine whose cores are busy with other work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def percentiles(values: torch.Tensor, *, level: float = LEVEL, estimate: float | None = None) -> Interval:
    """The central ``level`` of ``values`` [R] (linear interpolation between order statistics); with
    ``estimate``, of the values moved so that their median is ``estimate``."""
    v = values.double().flatten()
    if estimate is not None:
        v = v - v.median() + estimate
    q = torch.quantile(v, torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=torch.float64))
    return Interval(float(q[0]), float(q[1]))


def bootstrap(statistic: Callable[[torch.Tensor], float], indices: torch.Tensor, *, level: float = LEVEL,
              estimate: float | None = None) -> Interval:
    """The percentile interval of ``statistic`` over the index sets ``indices`` [R x k] (:func:`resample`,
    k = n, or :func:`halves`): ``statistic(idx)`` is the score of the samples ``idx`` [k] (long, repeats
    allowed); ``estimate``: see :func:`percentiles`. Resamples on which the statistic is not defined (NaN or
    infinite: a handful of samples drawn as one sample repeated) are left out; at least half must remain."""
    if indices.dim() != 2 or indices.shape[0] < 2:
        raise ValueError(f"indices must be index sets [R x n] with R >= 2, got {list(indices.shape)}")
    with one_thread():
        values = torch.tensor([float(statistic(idx)) for idx in indices], dtype=torch.float64)
    values = values[torch.isfinite(values)]
    if 2 * len(values) < indices.shape[0] or len(values) < 2:
        raise ValueError(f"the statistic is not defined on {indices.shape[0] - len(values)} of {indices.shape[0]} "
                         f"resamples")
    return percentiles(values, level=level, estimate=estimate)
