"""A quasi-random (scrambled Sobol) Optuna sampler for equal-budget tuning (``hydra/sweeper/sampler=sobol``).

Optuna 2.10 (the version hydra-optuna-sweeper 1.3 runs with) has no QMCSampler, so this is one:
trial ``k`` takes point ``k`` of one scrambled Sobol sequence (``scipy.stats.qmc.Sobol``) over the
dimensions named in ``dims``, mapped through each parameter's distribution (log-uniform on the log
scale). With the same ``seed`` and ``dims``, every optimizer arm of a tuning run is offered the same
points of its own ranges: the arms differ in what they do with a budget, not in the luck of the draw.
Only the sampling is ours; the study, trials and bookkeeping are Optuna's and the sweeper's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    DiscreteUniformDistribution,
    IntLogUniformDistribution,
    IntUniformDistribution,
    LogUniformDistribution,
    UniformDistribution,
)
from scipy.stats import qmc


class SobolSampler(optuna.samplers.BaseSampler):
    """Point ``trial.number`` of a scrambled Sobol sequence; a parameter not in ``dims`` is drawn at random."""

    def __init__(self, dims: Sequence[str], seed: int | None = 0) -> None:
        if not dims:
            raise ValueError("SobolSampler needs the names of the searched parameters (dims)")
        self.dims = [str(d) for d in dims]
        self.seed = seed
        self._engine_points: Any = None
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def _point(self, number: int) -> list[float]:
        """Point ``number`` (0-based) of the sequence; the sequence is fixed by ``seed``, so a prefix never changes."""
        have = 0 if self._engine_points is None else len(self._engine_points)
        if number >= have:
            n = 1 << max(1, math.ceil(math.log2(number + 1)))  # powers of two keep Sobol's balance properties
            self._engine_points = qmc.Sobol(d=len(self.dims), scramble=True, seed=self.seed).random(n)
        return [float(u) for u in self._engine_points[number]]

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: BaseDistribution) -> Any:
        if param_name not in self.dims:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        u = self._point(trial.number)[self.dims.index(param_name)]
        return from_unit(u, param_distribution)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


def from_unit(u: float, dist: BaseDistribution) -> Any:
    """The value at quantile ``u`` in [0, 1) of a uniform / log-uniform / integer / categorical distribution."""
    if isinstance(dist, LogUniformDistribution):
        return math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low)))
    if isinstance(dist, UniformDistribution):
        return dist.low + u * (dist.high - dist.low)
    if isinstance(dist, DiscreteUniformDistribution):
        steps = int(round((dist.high - dist.low) / dist.q))
        return dist.low + min(int(u * (steps + 1)), steps) * dist.q
    if isinstance(dist, IntLogUniformDistribution):
        value = math.exp(math.log(dist.low) + u * (math.log(dist.high + 1) - math.log(dist.low)))
        return min(int(value), dist.high)
    if isinstance(dist, IntUniformDistribution):
        steps = (dist.high - dist.low) // dist.step
        return dist.low + min(int(u * (steps + 1)), steps) * dist.step
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    raise TypeError(f"SobolSampler cannot map onto {type(dist).__name__}")


__all__ = ["SobolSampler", "from_unit"]
