"""Bootstrap intervals over seeds, with a seeded generator so the same runs give the same numbers.

Percentile bootstrap of the mean: resample the n values with replacement ``n_boot`` times and take
the 2.5% and 97.5% quantiles of the resampled means. With n < 2 there is no interval (NaN): a
single seed says nothing about seed-to-seed spread, and the tables print ``n=1`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 4000
LEVEL = 0.95
SEED = 20201014  # fixed: intervals are part of the committed tables and must not change between runs


@dataclass(frozen=True)
class Estimate:
    """Mean of the finite values with its spread and bootstrap interval."""

    mean: float
    std: float  # sample std (ddof=1); NaN for n < 2
    lo: float
    hi: float
    n: int
    minimum: float
    maximum: float

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)

    def excludes_zero(self) -> bool:
        return self.has_interval and (self.lo > 0 or self.hi < 0)


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED
) -> Estimate:
    """Mean, std and percentile-bootstrap interval of the finite ``values`` (NaN/inf are dropped)."""
    x = finite(values)
    n = len(x)
    if n == 0:
        nan = math.nan
        return Estimate(nan, nan, nan, nan, 0, nan, nan)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, math.nan, 1, mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = (float(q) for q in np.quantile(means, [alpha, 1.0 - alpha]))
    # the percentile interval contains the point estimate up to float rounding of the resampled sums
    lo, hi = min(lo, mean), max(hi, mean)
    return Estimate(mean, float(x.std(ddof=1)), lo, hi, n, float(x.min()), float(x.max()))


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = SEED,
) -> Estimate:
    """Mean difference a - b over pairs (same seed, same eps), resampling pairs, not runs.

    Pairing removes the seed-to-seed variation both arms share, so the interval is usually much
    narrower than that of the two unpaired means. Pairs with a non-finite side are dropped.
    """
    a_arr, b_arr = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples differ in length: {a_arr.shape} vs {b_arr.shape}")
    return bootstrap_mean(a_arr - b_arr, n_boot=n_boot, level=level, seed=seed)


def improvement(values: np.ndarray | float, mode: str) -> np.ndarray | float:
    """Signed so that positive means better: the value for 'max' metrics, its negative for 'min'."""
    return values if mode == "max" else -values  # type: ignore[operator]
