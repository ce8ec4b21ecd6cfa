"""GLUE's standard dev metrics and the chance level each is judged against (the per-seed failure count).

Metrics, in percent as GLUE reports them: accuracy (RTE, SST-2, MRPC, CoLA), F1 of the positive class
(MRPC), Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B, a regression). Computed with
scikit-learn and SciPy, the libraries the GLUE reference scripts use.

A *failed* run (Mosbach et al. 2021, "On the Stability of Fine-tuning BERT": a run whose final accuracy is no
better than the majority class) is one whose final primary metric is no better than a constant predictor's:
accuracy <= the majority class's share of the dev set; F1 <= the F1 of predicting positive everywhere
(2p / (1 + p), p the positive share; the best constant F1); Matthews and Pearson/Spearman <= 0 (what a
constant prediction scores; undefined correlations, NaN, count as failed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: task -> its primary metric (the one the task's ``metric`` names) and all the metrics it logs
PRIMARY = {"rte": "acc", "mrpc": "f1", "cola": "mcc", "stsb": "pearson", "sst2": "acc"}
LOGGED = {"rte": ("acc",), "mrpc": ("acc", "f1"), "cola": ("acc", "mcc"), "stsb": ("pearson", "spearman"),
          "sst2": ("acc",)}


def glue_metrics(task: str, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """The task's metrics (percent) of class predictions (argmax ids) or, for STS-B, predicted scores."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    pred, gold = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    out: dict[str, float] = {}
    for name in LOGGED[task]:
        if name == "acc":
            out[name] = 100.0 * float(accuracy_score(gold.astype(int), pred.astype(int)))
        elif name == "f1":
            out[name] = 100.0 * float(f1_score(gold.astype(int), pred.astype(int), zero_division=0.0))
        elif name == "mcc":
            out[name] = 100.0 * float(matthews_corrcoef(gold.astype(int), pred.astype(int)))
        else:
            constant = np.ptp(pred) == 0 or np.ptp(gold) == 0
            corr = pearsonr if name == "pearson" else spearmanr
            out[name] = math.nan if constant else 100.0 * float(corr(pred, gold)[0])
    return out


def chance_level(task: str, labels: Sequence[float], metric: str | None = None) -> float:
    """The best a constant predictor scores on ``labels`` in ``metric`` (the task's primary one by default)."""
    metric = metric or PRIMARY[task]
    gold = np.asarray(labels, dtype=np.float64)
    if metric == "acc":
        counts = np.bincount(gold.astype(int))
        return 100.0 * float(counts.max() / counts.sum())
    if metric == "f1":
        p = float((gold.astype(int) == 1).mean())
        return 100.0 * 2 * p / (1 + p)
    return 0.0  # mcc, pearson, spearman: a constant scores 0 (or is undefined)


def failed(value: float | None, chance: float) -> bool:
    """A run at chance level: its metric is missing, NaN, or no better than ``chance``."""
    return value is None or not math.isfinite(value) or value <= chance


__all__ = ["LOGGED", "PRIMARY", "chance_level", "failed", "glue_metrics"]
