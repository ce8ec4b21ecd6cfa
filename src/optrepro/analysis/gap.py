"""Generalization gap across optimizers: the "generalizes like SGD" claim, with intervals.

Every classification and LM task logs its metric on a fixed held-in subset of the training set
(``heldin_<stem>``) beside the test metric; summary.json's ``gap`` is held-in minus test at the last
eval point (``optrepro.tasks.base.Task.gap_summary``). Here, per task and setting: the mean gap over
seeds with its Student-t interval, and, where the grid has SGD on that task, the gap's difference to
SGD's paired by seed (same seed = same data order and initialisation) with a paired-t interval.
An interval containing 0 is "no difference from SGD detected with n seeds", never "equal".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from optrepro.analysis.figures import save  # noqa: E402
from optrepro.analysis.load import RunsData  # noqa: E402
from optrepro.analysis.stats import LEVEL, METHOD, Estimate, mean_interval, paired_interval  # noqa: E402
from optrepro.analysis.tables import safe_name  # noqa: E402
from optrepro.status import RunStatus  # noqa: E402

COLUMNS = ["task", "setting", "optimizer", "gap_metric", "n", "gap_mean", "gap_lo", "gap_hi",
           "vs_sgd_n", "vs_sgd_mean", "vs_sgd_lo", "vs_sgd_hi", "verdict"]
SIGN = ("gap = held-in (training) metric − test metric at the last eval point; accuracy: positive = "
        "test worse than train (overfitting); loss / perplexity: negative = test worse than train")


def _gap_runs(data: RunsData) -> pd.DataFrame:
    runs = data.runs
    if runs.empty or "gap" not in runs:
        return runs.iloc[0:0]
    done = runs[(runs.status == RunStatus.COMPLETED) & np.isfinite(runs.gap.astype(float))]
    return done


def _sgd_setting(frame: pd.DataFrame) -> str | None:
    """The SGD setting of a task the others are compared with: the one with most seeds (first by name)."""
    sgd = frame[frame.opt_class == "sgd"]
    if sgd.empty:
        return None
    counts = sgd.groupby("setting").seed.nunique()
    return str(sorted(counts.index, key=lambda s: (-int(counts[s]), str(s)))[0])


def _verdict(est: Estimate, mode: str) -> str:
    """What the paired difference to SGD says, in words (``mode`` of the gap's metric)."""
    if est.n == 0:
        return "no seed shared with SGD"
    if not est.has_interval:
        return f"{est.n} shared seed: no interval"
    if est.lo <= 0.0 <= est.hi:
        return f"no difference from SGD detected ({est.n} seeds)"
    more_overfit = (est.mean > 0) == (mode == "max")
    return f"{'more' if more_overfit else 'less'} overfitting than SGD ({est.n} seeds)"


def gap_table(data: RunsData) -> pd.DataFrame:
    """One row per (task, setting): the mean end gap with its interval and the paired difference to SGD."""
    runs = _gap_runs(data)
    rows: list[dict[str, Any]] = []
    for task, frame in runs.groupby("task", sort=True):
        sgd_setting = _sgd_setting(frame)
        sgd = frame[frame.setting == sgd_setting].groupby("seed").gap.mean() if sgd_setting else None
        for setting, sub in frame.groupby("setting", sort=True):
            est = mean_interval(sub.gap.astype(float).to_numpy())
            gap_metric = str(sub.gap_metric.iloc[0])
            mode = "max" if gap_metric.endswith("acc") else "min"
            row = {"task": task, "setting": setting, "optimizer": str(sub.optimizer.iloc[0]),
                   "gap_metric": gap_metric, "n": est.n, "gap_mean": est.mean, "gap_lo": est.lo, "gap_hi": est.hi,
                   "vs_sgd_n": 0, "vs_sgd_mean": math.nan, "vs_sgd_lo": math.nan, "vs_sgd_hi": math.nan,
                   "verdict": "no SGD runs on this task" if sgd is None else ""}
            if sgd is not None and setting == sgd_setting:
                row["verdict"] = "the SGD reference"
            elif sgd is not None:
                mine = sub.groupby("seed").gap.mean()
                seeds = sorted(set(mine.index) & set(sgd.index))
                diff = paired_interval(mine.loc[seeds].to_numpy(float), sgd.loc[seeds].to_numpy(float))
                row.update(vs_sgd_n=diff.n, vs_sgd_mean=diff.mean, vs_sgd_lo=diff.lo, vs_sgd_hi=diff.hi,
                           verdict=_verdict(diff, mode))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _num(value: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.{digits}g}"


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text: gap mean [interval] (n), Δ vs SGD [interval] (pairs), verdict."""
    out = []
    for _, r in table.iterrows():
        interval = f" [{_num(r.gap_lo)}, {_num(r.gap_hi)}]" if math.isfinite(r.gap_lo) else ""
        vs_interval = f" [{_num(r.vs_sgd_lo)}, {_num(r.vs_sgd_hi)}]" if math.isfinite(r.vs_sgd_lo) else ""
        vs = f"{_num(r.vs_sgd_mean)}{vs_interval} ({r.vs_sgd_n})" if r.vs_sgd_n else "—"
        out.append({"task": r.task, "setting": r.setting, "gap of": r.gap_metric,
                    "gap (held-in − test)": f"{_num(r.gap_mean)}{interval} (n={r.n})",
                    "Δ gap vs SGD (paired)": vs, "verdict": r.verdict})
    return pd.DataFrame(out)


def gap_curves(data: RunsData, out_dir: Path) -> dict[str, Path]:
    """Per task, the mean gap curve (held-in − test of the gap metric at every eval) of each setting."""
    runs = _gap_runs(data)
    curves = data.curves
    paths: dict[str, Path] = {}
    if runs.empty or curves.empty:
        return paths
    for task, frame in runs.groupby("task", sort=True):
        heldin = str(frame.gap_metric.iloc[0])
        test = data.summaries.get(str(frame.run.iloc[0]), {}).get("gap", {}).get("test_metric")
        if not test:
            continue
        sub = curves[curves.run.isin(frame.run) & curves.key.isin([heldin, test])]
        if sub.empty:
            continue
        wide = sub.pivot_table(index=["setting", "run", "epoch"], columns="key", values="value", aggfunc="mean")
        if heldin not in wide or test not in wide:
            continue
        wide = (wide[heldin] - wide[test]).rename("gap").reset_index()
        fig, ax = plt.subplots(figsize=(6, 4))
        for setting, s in wide.groupby("setting", sort=True):
            stats = s.groupby("epoch").gap.agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], label=str(setting))
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{heldin} − {test}")
        ax.set_title(f"{task}: generalization gap (mean, band = seed range)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = save(fig, out_dir, f"gap_{safe_name(str(task))}")
        paths[str(task)] = path
    return paths


def report_section(table: pd.DataFrame, figures: dict[str, Path], out_dir: Path) -> list[str]:
    """REPORT.md's "Generalization gap" section (nothing when no run recorded a gap)."""
    if table.empty:
        return []
    lines = ["## Generalization gap (\"generalizes like SGD\")", "",
             f"{SIGN}. Intervals: {LEVEL:.0%} {METHOD} over seeds; Δ vs SGD paired by seed (the task's SGD "
             "setting with most seeds). An interval containing 0 means no difference was detected with those "
             "seeds, not that the gaps are equal. Table: `tables/generalization_gap.csv`.", ""]
    lines += [display(table).to_markdown(index=False), ""]
    for task, png in sorted(figures.items()):
        rel = png.relative_to(out_dir).as_posix() if png.is_relative_to(out_dir) else png.as_posix()
        lines += [f"![{task}: generalization gap]({rel})", ""]
    return lines


__all__ = ["SIGN", "display", "gap_curves", "gap_table", "report_section"]
