"""Confidence intervals for small evaluation sets, by bootstrap.

Twenty-one test articles is a small sample: a difference between two strategies (or two adapters)
means something only when its interval leaves zero. Two helpers, numpy only, seeded:

- ``bootstrap_ci(values)``: the mean of one column and its percentile interval.
- ``paired_bootstrap(a, b)``: the mean difference ``b - a`` over the same samples, resampling
  sample indices (so each article's pair stays together), its interval, and whether the interval
  leaves zero (``significant``).

Missing values (``None``/NaN) are dropped, pairwise for the paired test. Fewer than two values give
an interval equal to the point (and ``n`` says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


@dataclass(frozen=True)
class PairedDifference(Interval):
    """``mean`` is the mean of ``b - a``; ``significant`` when the interval leaves zero."""

    significant: bool = False


def _clean(values: Sequence[float | None]) -> np.ndarray:
    out = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return np.asarray(out, dtype=np.float64)


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _resampled(
    x: np.ndarray, resamples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """The mean of a non-empty ``x`` and its percentile interval (the point, under two values)."""
    mean = float(x.mean())
    if x.size < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    low, high = _percentiles(x[idx].mean(axis=1), confidence)
    return mean, low, high


def bootstrap_ci(
    values: Sequence[float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval."""
    _check(resamples, confidence)
    x = _clean(values)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    mean, low, high = _resampled(x, resamples, confidence, seed)
    return Interval(mean, low, high, int(x.size), confidence)


def paired_bootstrap(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Mean of ``b - a`` over paired samples, with its interval; pairs with a missing side drop."""
    _check(resamples, confidence)
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and not math.isnan(float(x)) and not math.isnan(float(y))
    ]
    if not pairs:
        return PairedDifference(math.nan, math.nan, math.nan, 0, confidence, False)
    d = np.asarray([y - x for x, y in pairs], dtype=np.float64)
    mean, low, high = _resampled(d, resamples, confidence, seed)
    significant = d.size >= 2 and (low > 0.0 or high < 0.0)
    return PairedDifference(mean, low, high, int(d.size), confidence, significant)
