"""The optimizer diagnostics (``opt/*`` curves, optrepro.optim.diagnostics) per task: a figure of the
series over training for the four ablation corners, and a REPORT section that puts the mechanism
(how often the eps floor dominates, how often belief's case 3 is active) next to the outcome.

Numbers are those of the last eval point of each run; per setting: mean over seeds with a 95%
Student-t interval (analysis.stats.mean_interval). Two settings are called different only when their intervals do not
overlap; otherwise the section says "cannot tell".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from optrepro.analysis.load import RunsData  # noqa: E402
from optrepro.analysis.stats import Estimate, mean_interval  # noqa: E402
from optrepro.analysis.tables import (  # noqa: E402
    CORNER_TITLES,
    ablation_runs,
    fmt,
    fmt_interval,
    main_setting,
    nominal_eps,
    safe_name,
)
from optrepro.status import RunStatus  # noqa: E402

SERIES = {
    "opt/floor_share": "floor share (ε floor > √q̂)",
    "opt/case3_share": "case-3 share (belief step ≥ 2× g² step)",
    "opt/step_ratio_q50": "step ratio (√v̂+F)/(√ŝ+F), median; band q10–q90",
    "opt/eff_lr_q50": "effective lr, median over coordinates",
}
COLUMNS = {
    "opt/floor_share": "floor share",
    "opt/case3_share": "case-3 share",
    "opt/step_ratio_q50": "step ratio q50",
    "opt/eff_lr_q50": "eff. lr q50",
}
STYLES = {"adam": (0, "-"), "eadam": (0, "--"), "belief_outside": (1, "-"), "belief_inside": (1, "--")}


def _diag_curves(data: RunsData, task: str) -> pd.DataFrame:
    curves = data.curves
    if curves.empty:
        return curves
    return curves[(curves.task == task) & curves.key.astype(str).str.startswith("opt/")]


def tasks_with_diagnostics(data: RunsData) -> list[str]:
    if data.curves.empty:
        return []
    keys = data.curves.key.astype(str)
    return sorted(set(data.curves[keys.str.startswith("opt/")].task.astype(str)))


# ------------------------------------------------------------------------------------- figure
def figures(data: RunsData, out_dir: Path) -> dict[str, Path]:
    """Per task with diagnostics on the ablation corners: the four series against training step,
    one line per corner (its main setting), mean over seeds with a min–max band."""
    from optrepro.analysis.figures import save

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths: dict[str, Path] = {}
    corners = ablation_runs(data.runs)
    for task in tasks_with_diagnostics(data):
        frame = corners[(corners.task == task) & (corners.status == "completed")]
        curves = _diag_curves(data, task)
        if frame.empty or curves[curves.run.isin(frame.run)].empty:
            continue
        fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, layout="constrained")
        for corner, (ci, ls) in STYLES.items():
            sub = frame[frame.corner == corner]
            if sub.empty:
                continue
            runs = sub[sub.setting == main_setting(sub)].run.tolist()
            mine = curves[curves.run.isin(runs)]
            for ax, key in zip(axes.ravel(), SERIES, strict=True):
                agg = mine[mine.key == key].groupby("step").value.agg(["mean", "min", "max"])
                if agg.empty:
                    continue
                label = f"{CORNER_TITLES[corner]} (n={len(runs)})"
                ax.plot(agg.index, agg["mean"], ls=ls, color=colors[ci], label=label)
                low, high = agg["min"], agg["max"]
                if key == "opt/step_ratio_q50":  # the band is the spread over coordinates here
                    q = mine[mine.key.isin(["opt/step_ratio_q10", "opt/step_ratio_q90"])]
                    spread = q.groupby(["step", "key"]).value.mean().unstack()
                    if {"opt/step_ratio_q10", "opt/step_ratio_q90"} <= set(spread.columns):
                        low, high = spread["opt/step_ratio_q10"], spread["opt/step_ratio_q90"]
                ax.fill_between(low.index, low, high, color=colors[ci], alpha=0.15, lw=0)
        for ax, (key, title) in zip(axes.ravel(), SERIES.items(), strict=True):
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            if key in ("opt/step_ratio_q50", "opt/eff_lr_q50"):
                ax.set_yscale("log")
            else:
                ax.set_ylim(-0.03, 1.03)
        for ax in axes[1]:
            ax.set_xlabel("step")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"{task}: where the step size comes from (sampled coordinates; band: min–max over seeds)")
        paths[task] = save(fig, out_dir, f"diagnostics_{safe_name(task)}")
    return paths


# ------------------------------------------------------------------------------------- numbers
def last_values(data: RunsData, task: str) -> pd.DataFrame:
    """One row per run with diagnostics: its setting, and each opt/* key at its last eval point."""
    curves = _diag_curves(data, task)
    if curves.empty:
        return pd.DataFrame()
    last = curves.sort_values("step").groupby(["run", "key"]).value.last().unstack()
    runs = data.runs.set_index("run").loc[last.index]
    last.insert(0, "setting", runs.setting)
    last.insert(1, "status", runs.status)
    last.insert(2, "final", runs.final.astype(float))
    corners = ablation_runs(data.runs).set_index("run").corner
    last.insert(1, "corner", [corners.get(r) for r in last.index])
    return last[last.status == "completed"]


def _order(setting: str, corner: Any) -> tuple[int, str]:
    order = list(STYLES)
    return (order.index(corner) if corner in order else len(order), setting)


def summary_table(data: RunsData, task: str) -> tuple[pd.DataFrame, dict[str, dict[str, Estimate]]]:
    """Display table (one row per setting) and the estimates behind it."""
    last = last_values(data, task)
    if last.empty:
        return pd.DataFrame(), {}
    metric = str(data.runs[data.runs.task == task].metric.iloc[0])
    rows, estimates = [], {}
    groups = sorted(last.groupby("setting"), key=lambda kv: _order(str(kv[0]), kv[1].corner.iloc[0]))
    for setting, sub in groups:
        est = {key: mean_interval(sub[key].to_numpy(float)) for key in COLUMNS if key in sub}
        est["final"] = mean_interval(sub.final.to_numpy(float))
        estimates[str(setting)] = est
        row = {"setting": str(setting), "n": str(len(sub))}
        for key, title in COLUMNS.items():
            row[title] = _estimate(est[key], 3) if key in est else "—"
        row[f"{metric} (final)"] = _estimate(est["final"], 4)
        rows.append(row)
    return pd.DataFrame(rows), estimates


def _estimate(est: Estimate, digits: int) -> str:
    return "—" if est.n == 0 else f"{fmt(est.mean, digits)} {fmt_interval(est, digits)}"


def _differ(a: Estimate, b: Estimate) -> str:
    """'higher' / 'lower' when the intervals are apart; 'cannot tell' when they overlap or are missing."""
    if not (math.isfinite(a.mean) and math.isfinite(b.mean)):
        return "cannot tell"
    lo_a, hi_a = (a.lo, a.hi) if a.has_interval else (a.mean, a.mean)
    lo_b, hi_b = (b.lo, b.hi) if b.has_interval else (b.mean, b.mean)
    if a.n < 2 or b.n < 2:  # one seed: no interval, no claim
        return "cannot tell"
    if lo_a > hi_b:
        return "higher"
    if hi_a < lo_b:
        return "lower"
    return "cannot tell"


def _share(est: Estimate) -> str:
    return "—" if not math.isfinite(est.mean) else f"{100 * est.mean:.0f}%"


def sentences(data: RunsData, task: str, estimates: dict[str, dict[str, Estimate]]) -> list[str]:
    """The mechanism in numbers, and beside it the outcome, per nominal ε of the 2×2 (the ε at which all
    four corners ran; the matched-floor outside runs are not a scope of their own)."""
    frame = ablation_runs(data.runs)
    frame = frame[(frame.task == task) & (frame.status == RunStatus.COMPLETED)]
    scopes: list[float | None] = list(nominal_eps(frame)) or [None]
    mode = str(data.runs[data.runs.task == task]["mode"].iloc[0]) if (data.runs.task == task).any() else "max"
    out = []
    for eps in scopes:
        at = frame if eps is None else frame[frame.eps == eps]
        by_corner: dict[str, dict[str, Estimate]] = {}
        for corner, sub in at.groupby("corner"):
            setting = main_setting(sub)
            if setting in estimates:
                by_corner[str(corner)] = estimates[setting]
        by_corner = {c: by_corner[c] for c in STYLES if c in by_corner}
        if not by_corner:
            continue
        where = "" if eps is None or len(scopes) == 1 else f"At ε = {fmt(eps, 3)}: "
        floor = ", ".join(f"{CORNER_TITLES[c]} {_share(e['opt/floor_share'])}" for c, e in by_corner.items()
                          if "opt/floor_share" in e)
        parts = [f"the ε floor dominates the denominator on {floor} of the sampled coordinates (last eval)"]
        case3 = ", ".join(f"{CORNER_TITLES[c]} {_share(by_corner[c]['opt/case3_share'])}"
                          for c in ("belief_outside", "belief_inside") if c in by_corner)
        if case3:
            parts.append("belief's case 3 (its step at least twice the g² step at the same state) is active on "
                         + case3)
        if "belief_inside" in by_corner and "belief_outside" in by_corner:
            a, b = by_corner["belief_inside"], by_corner["belief_outside"]
            floor_cmp = _differ(a["opt/floor_share"], b["opt/floor_share"])
            case_cmp = _differ(a["opt/case3_share"], b["opt/case3_share"])
            outcome = _differ(a["final"], b["final"])
            better = {"higher": "better" if mode == "max" else "worse",
                      "lower": "worse" if mode == "max" else "better"}.get(outcome, "cannot tell")
            parts.append(
                f"ε inside vs outside at the same nominal ε, both with (g−m)²: floor share {floor_cmp}, case-3 share "
                f"{case_cmp}; outcome: " + (f"inside {better} than outside" if better != "cannot tell"
                                            else "cannot tell (intervals overlap)"))
        text = "; ".join(parts) + "."
        out.append(where + text[0].upper() + text[1:] if not where else where + text)
    return out


def report_section(data: RunsData, task: str, figure: Path | None, out_dir: Path) -> list[str]:
    """REPORT.md lines for one task (empty when its runs logged no diagnostics)."""
    display, estimates = summary_table(data, task)
    if display.empty:
        return []
    lines = ["**Where the step size comes from** (optimizer diagnostics on sampled coordinates, last eval "
             "point; mean [95% interval] over seeds; README “Optimizer diagnostics”):", ""]
    lines += [display.to_markdown(index=False), ""]
    lines += [f"- {s}" for s in sentences(data, task, estimates)]
    lines += [""]
    if figure is not None:
        rel = Path(os.path.relpath(figure, out_dir)).as_posix()
        lines += [f"![diagnostics]({rel})", ""]
    return lines

