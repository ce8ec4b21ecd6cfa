"""Comparison tables, paper views and the belief x eps ablation; writers for Markdown, CSV and LaTeX.

Every builder returns a numeric frame (written as CSV) and a display frame of formatted strings
(written as Markdown and LaTeX). Means use only runs that completed with a finite metric;
diverged, failed and NaN runs are counted in their own columns, never averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from optrepro.analysis.load import RunsData, format_value, short_key
from optrepro.analysis.stats import Estimate, bootstrap_mean, improvement

DASH = "—"
VALUE_KINDS = ("final", "best")

#: (second_moment, eps_placement) -> corner key of the 2x2 ablation (README, "Optimizers": the 2x2 ablation)
CORNERS: dict[tuple[str, str], str] = {
    ("grad_sq", "outside"): "adam",
    ("grad_sq", "inside"): "eadam",
    ("belief", "outside"): "belief_outside",
    ("belief", "inside"): "belief_inside",
}
CORNER_TITLES = {
    "adam": "g², ε outside (Adam)",
    "eadam": "g², ε inside (EAdam)",
    "belief_outside": "(g−m)², ε outside (AdaBelief text)",
    "belief_inside": "(g−m)², ε inside (AdaBelief code)",
}
EFFECTS = ("belief", "placement", "gap")
EFFECT_TITLES = {
    "belief": "belief effect ((g−m)² − g²)",
    "placement": "ε-placement effect (inside − outside)",
    "gap": "AdaBelief(code) − Adam",
}


# ------------------------------------------------------------------------------------- formatting
def fmt(value: Any, digits: int = 4) -> str:
    """Numbers at ``digits`` significant digits; NaN/None as a dash."""
    if value is None:
        return DASH
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return DASH
    return f"{number:.{digits}g}"


def fmt_signed(value: float, digits: int = 3) -> str:
    return DASH if not math.isfinite(value) else f"{value:+.{digits}g}"


def fmt_estimate(est: Estimate, digits: int = 4) -> str:
    """``mean ± std`` (or ``mean (n=1)``), the way the papers print seed spreads."""
    if est.n == 0:
        return DASH
    if est.n == 1:
        return f"{fmt(est.mean, digits)} (n=1)"
    return f"{fmt(est.mean, digits)} ± {fmt(est.std, 2)}"


def fmt_interval(est: Estimate, digits: int = 4, signed: bool = False) -> str:
    if est.n == 0:
        return DASH
    if not est.has_interval:
        return "n=1"
    f = (lambda v: fmt_signed(v, digits)) if signed else (lambda v: fmt(v, digits))
    return f"[{f(est.lo)}, {f(est.hi)}]"


# ------------------------------------------------------------------------------------- writers
def to_latex(display: pd.DataFrame) -> str:
    """LaTeX tabular with the Unicode of the display frames mapped to math."""
    text = display.to_latex(index=False, escape=True)
    for src, dst in (
        ("±", r"$\pm$"),
        (DASH, "---"),
        ("ε", r"$\varepsilon$"),
        ("²", r"$^2$"),
        ("−", "-"),
        ("×", r"$\times$"),
        ("Δ", r"$\Delta$"),
        ("↑", r"$\uparrow$"),
        ("↓", r"$\downarrow$"),
    ):
        text = text.replace(src, dst)
    return text


def write_table(
    out_dir: Path, stem: str, numeric: pd.DataFrame, display: pd.DataFrame, title: str | None = None
) -> dict[str, Path]:
    """``stem``.csv (numbers), ``stem``.md and ``stem``.tex (formatted) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")}
    numeric.to_csv(paths["csv"], index=False, lineterminator="\n")
    md = display.to_markdown(index=False) if len(display) else "_(no rows)_"
    paths["md"].write_text((f"**{title}**\n\n" if title else "") + md + "\n")
    paths["tex"].write_text(to_latex(display) if len(display) else "% no rows\n")
    return paths


def markdown(display: pd.DataFrame) -> str:
    return display.to_markdown(index=False) if len(display) else "_(no rows)_"


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


# ------------------------------------------------------------------------------------- published
def load_published(path: Path | None) -> pd.DataFrame:
    """The published numbers (paper, table, task, metric, which, optimizer, value, std, note, source)."""
    columns = ["paper", "table", "task", "metric", "which", "optimizer", "value", "std", "note", "source"]
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=columns)
    pub = pd.read_csv(
        path,
        dtype={"which": str, "note": str, "source": str},
        keep_default_na=False,
        na_values={"value": [""], "std": [""]},
    )
    for col in columns:
        if col not in pub.columns:
            pub[col] = ""
    pub["value"] = pd.to_numeric(pub["value"], errors="coerce")
    pub["std"] = pd.to_numeric(pub["std"], errors="coerce")
    return pub[columns]


def _published_candidates(optimizer: str, opt_class: Any) -> list[str]:
    """Published optimizer names one of our configs stands for: its config name, then its class."""
    if str(optimizer).startswith("ablation"):
        return []  # the ablation corners are ours; no paper printed them
    names = [str(optimizer)]
    if isinstance(opt_class, str) and opt_class not in names:
        names.append(opt_class)
    return names


def match_published(pub: pd.DataFrame, task: str, optimizer: str, opt_class: Any, value_kind: str) -> pd.Series | None:
    """The published row for our config: exact config name first, then the value kind we report."""
    rows = pub[pub.task == task]
    if rows.empty:
        return None
    for name in _published_candidates(optimizer, opt_class):
        cand = rows[rows.optimizer == name]
        if cand.empty:
            continue
        for which in (value_kind, ""):
            exact = cand[cand.which == which]
            if not exact.empty:
                return exact.iloc[0]
        return cand.iloc[0]
    return None


# ------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    numeric: pd.DataFrame
    per_task: dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # task -> (numeric, display)


def _group_estimates(frame: pd.DataFrame, value_kind: str) -> dict[str, Any]:
    completed = frame[frame.status == "completed"]
    values = completed[value_kind].astype(float).to_numpy()
    est = bootstrap_mean(values)
    best = bootstrap_mean(completed["best"].astype(float).to_numpy())
    return {
        "runs": len(frame),
        "n": est.n,
        "diverged": int((frame.status == "diverged").sum()),
        "failed": int((frame.status == "failed").sum()),
        "nan": int((~np.isfinite(values)).sum()),
        "est": est,
        "best_est": best,
        "wall_time": float(completed.wall_time.astype(float).mean()) if len(completed) else math.nan,
    }


def comparison_tables(data: RunsData, published: pd.DataFrame, value_kind: str = "final") -> Comparison:
    """One row per (task, optimizer config, setting): mean ± std, n, 95% CI, diverged, published, Δ."""
    records: list[dict[str, Any]] = []
    per_task: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    runs = data.runs
    for task, frame in runs.groupby("task", sort=True):
        task = str(task)
        varying = data.varying.get(task, [])
        metric, mode = str(frame.metric.iloc[0]), str(frame["mode"].iloc[0])
        task_records = []
        for (optimizer, setting), group in frame.groupby(["optimizer", "setting"], sort=True):
            g = _group_estimates(group, value_kind)
            est: Estimate = g["est"]
            first = group.iloc[0]
            pub = match_published(published, task, str(optimizer), first.opt_class, value_kind)
            pub_value = float(pub.value) if pub is not None else math.nan
            record = {
                "task": task,
                "metric": metric,
                "mode": mode,
                "value_kind": value_kind,
                "optimizer": optimizer,
                "setting": setting,
                "opt_class": first.opt_class,
                "second_moment": first.second_moment,
                "eps_placement": first.eps_placement,
                "effective_floor": first.effective_floor,
                **{short_key(c): first[c] for c in varying},
                "runs": g["runs"],
                "n": est.n,
                "diverged": g["diverged"],
                "failed": g["failed"],
                "nan": g["nan"],
                "mean": est.mean,
                "std": est.std,
                "ci_lo": est.lo,
                "ci_hi": est.hi,
                "min": est.minimum,
                "max": est.maximum,
                "best_mean": g["best_est"].mean,
                "best_std": g["best_est"].std,
                "wall_time_mean": g["wall_time"],
                "published": pub_value,
                "published_std": float(pub["std"]) if pub is not None else math.nan,
                "published_metric": pub.metric if pub is not None else "",
                "published_which": pub.which if pub is not None else "",
                "published_ref": f"{pub.paper}/{pub.table}" if pub is not None else "",
                "diff": est.mean - pub_value if pub is not None else math.nan,
            }
            record["_est"], record["_best"] = est, g["best_est"]
            task_records.append(record)
        numeric = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in task_records])
        display = pd.DataFrame([_comparison_display(r, metric, mode, value_kind) for r in task_records])
        per_task[task] = (numeric, display)
        records.extend(task_records)
    cols = [k for k in (records[0] if records else {}) if not k.startswith("_")]
    numeric_all = (
        pd.concat([n for n, _ in per_task.values()], ignore_index=True) if per_task else pd.DataFrame(columns=cols)
    )
    return Comparison(numeric_all, per_task)


def _comparison_display(r: dict[str, Any], metric: str, mode: str, value_kind: str) -> dict[str, str]:
    arrow = "↑" if mode == "max" else "↓"
    pub = DASH
    if math.isfinite(r["published"]):
        pub = fmt(r["published"])
        if math.isfinite(r["published_std"]):
            pub += f" ± {fmt(r['published_std'], 2)}"
        pub += f" ({r['published_ref']}{', ' + r['published_which'] if r['published_which'] else ''})"
    return {
        "optimizer (setting)": r["setting"],
        "ε floor": fmt(r["effective_floor"], 3),
        f"{metric} {value_kind} {arrow}": fmt_estimate(r["_est"]),
        "95% CI": fmt_interval(r["_est"]),
        "n": str(r["n"]),
        "diverged": str(r["diverged"]),
        "failed": str(r["failed"]),
        f"best {metric}": fmt_estimate(r["_best"]),
        "published": pub,
        "Δ vs published": fmt_signed(r["diff"], 3),
        "time (s)": fmt(r["wall_time_mean"], 3),
    }


# ------------------------------------------------------------------------------------- paper views
def main_setting(frame: pd.DataFrame) -> str | None:
    """The setting of one optimizer config with the most counted runs (ties: first label)."""
    if frame.empty:
        return None
    counted = frame[(frame.status == "completed") & np.isfinite(frame.final.astype(float))]
    counts = counted.groupby("setting").size() if len(counted) else frame.groupby("setting").size() * 0
    counts = counts.reindex(sorted(frame.setting.unique()), fill_value=0)
    return str(counts.sort_values(ascending=False, kind="stable").index[0])


def ours_for(runs: pd.DataFrame, task: str, optimizer: str) -> tuple[pd.DataFrame, str | None]:
    """Our runs standing for a published optimizer on a task: the exact config name, else its class
    when only one config of that class ran; within it, the main setting."""
    frame = runs[(runs.task == task) & (runs.optimizer == optimizer)]
    if frame.empty:
        by_class = runs[
            (runs.task == task) & (runs.opt_class == optimizer) & ~runs.optimizer.astype(str).str.startswith("ablation")
        ]
        if by_class.optimizer.nunique() == 1:
            frame = by_class
    if frame.empty:
        return frame, None
    setting = main_setting(frame)
    return frame[frame.setting == setting], setting


def paper_views(
    data: RunsData, published: pd.DataFrame, value_kind: str = "final"
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, str]]:
    """Per published table id ``paper_table``: (numeric long frame, display wide frame, title)."""
    views: dict[str, tuple[pd.DataFrame, pd.DataFrame, str]] = {}
    if published.empty:
        return views
    for (paper, table), pub in published.groupby(["paper", "table"], sort=False):
        columns = list(dict.fromkeys(zip(pub.task, pub.which, strict=True)))
        optimizers = list(dict.fromkeys(pub.optimizer))
        long_rows, display_rows = [], []
        for opt in optimizers:
            display_row: dict[str, str] = {"optimizer": opt}
            for task, which in columns:
                hit = pub[(pub.optimizer == opt) & (pub.task == task) & (pub.which == which)]
                kind = which if which in VALUE_KINDS else value_kind
                ours, setting = ours_for(data.runs, task, opt)
                completed = ours[ours.status == "completed"]
                est = bootstrap_mean(completed[kind].astype(float).to_numpy()) if len(ours) else bootstrap_mean([])
                pub_value = float(hit.value.iloc[0]) if len(hit) else math.nan
                pub_std = float(hit["std"].iloc[0]) if len(hit) else math.nan
                long_rows.append(
                    {
                        "paper": paper,
                        "table": table,
                        "task": task,
                        "which": which,
                        "optimizer": opt,
                        "published_metric": hit.metric.iloc[0] if len(hit) else "",
                        "published": pub_value,
                        "published_std": pub_std,
                        "ours_metric": str(ours.metric.iloc[0]) if len(ours) else "",
                        "ours_kind": kind,
                        "ours_setting": setting or "",
                        "ours_mean": est.mean,
                        "ours_std": est.std,
                        "ours_n": est.n,
                        "ours_diverged": int((ours.status == "diverged").sum()) if len(ours) else 0,
                        "diff": est.mean - pub_value,
                    }
                )
                label = task + (f" ({which})" if which else "")
                pub_text = fmt(pub_value) if len(hit) else DASH
                if len(hit) and math.isfinite(pub_std):
                    pub_text += f" ± {fmt(pub_std, 2)}"
                ours_text = fmt_estimate(est)
                if est.n and setting is not None and setting != opt:
                    ours_text += f" [{setting}]"
                display_row[f"{label} published"] = pub_text
                display_row[f"{label} ours"] = ours_text
            display_rows.append(display_row)
        metric_names = ", ".join(dict.fromkeys(pub.metric))
        sources = "; ".join(dict.fromkeys(pub.source))
        title = f"{paper} {table} ({metric_names}) — published: {sources}"
        views[f"{paper}_{table}"] = (pd.DataFrame(long_rows), pd.DataFrame(display_rows), title)
    return views


# ------------------------------------------------------------------------------------- ablation
@dataclass
class Ablation:
    corners: pd.DataFrame  # task, eps, corner, n, mean, std, ci_lo, ci_hi, diverged
    effects: pd.DataFrame  # task, eps, effect, n_pairs, mean, ci_lo, ci_hi (improvement-signed)
    sentences: dict[str, str]
    displays: dict[str, pd.DataFrame]


def ablation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the ``ablation`` optimizer class that sit on one of the four corners."""
    if runs.empty:
        return runs.assign(corner=pd.Series(dtype=object))
    frame = runs[runs.opt_class == "ablation"].copy()
    keys = list(zip(frame.second_moment, frame.eps_placement, strict=True))
    frame["corner"] = [CORNERS.get(k) for k in keys]  # type: ignore[arg-type]
    return frame[frame.corner.notna()]


def _eps_label(eps: Any) -> str:
    return "all" if eps == "all" else format_value(float(eps))


def ablation_tables(data: RunsData, value_kind: str = "final") -> Ablation:
    """Four corners with intervals and the two main effects with paired bootstrap intervals."""
    abl = ablation_runs(data.runs)
    corner_rows: list[dict[str, Any]] = []
    effect_rows: list[dict[str, Any]] = []
    sentences: dict[str, str] = {}
    displays: dict[str, pd.DataFrame] = {}
    for task, frame in abl.groupby("task", sort=True):
        task = str(task)
        mode = str(frame["mode"].iloc[0])
        eps_values = sorted(frame.eps.dropna().unique().tolist())
        scopes: list[Any] = [*eps_values, "all"] if len(eps_values) > 1 else ["all"]
        display_rows = []
        for scope in scopes:
            sub = frame if scope == "all" else frame[frame.eps == scope]
            row_display: dict[str, str] = {"ε": _eps_label(scope)}
            for corner in CORNERS.values():
                runs_c = sub[sub.corner == corner]
                est = bootstrap_mean(runs_c[runs_c.status == "completed"][value_kind].astype(float).to_numpy())
                corner_rows.append(
                    {
                        "task": task,
                        "eps": _eps_label(scope),
                        "corner": corner,
                        "n": est.n,
                        "mean": est.mean,
                        "std": est.std,
                        "ci_lo": est.lo,
                        "ci_hi": est.hi,
                        "diverged": int((runs_c.status == "diverged").sum()),
                    }
                )
                cell = DASH if est.n == 0 else f"{fmt(est.mean)} {fmt_interval(est)}"
                if est.n:
                    cell += f" (n={est.n})"
                row_display[CORNER_TITLES[corner]] = cell
            effects = _effects(sub, mode, value_kind)
            for name in EFFECTS:
                est = effects[name]
                effect_rows.append(
                    {
                        "task": task,
                        "eps": _eps_label(scope),
                        "effect": name,
                        "n_pairs": est.n,
                        "mean": est.mean,
                        "ci_lo": est.lo,
                        "ci_hi": est.hi,
                    }
                )
                row_display[EFFECT_TITLES[name]] = (
                    DASH if est.n == 0 else f"{fmt_signed(est.mean)} {fmt_interval(est, 3, signed=True)}"
                )
            row_display["pairs"] = str(effects["belief"].n)
            display_rows.append(row_display)
            if scope == "all":
                sentences[task] = verdict(task, effects, mode, frame.metric.iloc[0], eps_values)
        displays[task] = pd.DataFrame(display_rows)
    corners = pd.DataFrame(
        corner_rows, columns=["task", "eps", "corner", "n", "mean", "std", "ci_lo", "ci_hi", "diverged"]
    )
    effects_frame = pd.DataFrame(effect_rows, columns=["task", "eps", "effect", "n_pairs", "mean", "ci_lo", "ci_hi"])
    return Ablation(corners, effects_frame, sentences, displays)


def pair_table(frame: pd.DataFrame, value_kind: str) -> pd.DataFrame:
    """Completed corner runs as one row per pair unit (seed, eps, lr) and one column per corner."""
    done = frame[frame.status == "completed"]
    if done.empty:
        return pd.DataFrame(columns=list(CORNERS.values()))
    keyed = done.assign(_eps=done.eps.fillna(-1.0), _lr=done.lr.fillna(-1.0))
    wide = keyed.pivot_table(
        index=["seed", "_eps", "_lr"], columns="corner", values=value_kind, aggfunc="mean", dropna=False
    )
    return wide.reindex(columns=list(CORNERS.values()))


def _effects(frame: pd.DataFrame, mode: str, value_kind: str) -> dict[str, Estimate]:
    """Main effects per pair unit with all four corners, signed as improvements."""
    wide = pair_table(frame, value_kind)
    full = wide.dropna() if len(wide) else wide
    a, e = full["adam"].to_numpy(float), full["eadam"].to_numpy(float)
    bo, bi = full["belief_outside"].to_numpy(float), full["belief_inside"].to_numpy(float)
    per_unit = {
        "belief": ((bo - a) + (bi - e)) / 2.0,
        "placement": ((e - a) + (bi - bo)) / 2.0,
        "gap": bi - a,
    }
    return {k: bootstrap_mean(np.asarray(improvement(v, mode))) for k, v in per_unit.items()}


def _magnitude(est: Estimate) -> tuple[float, float]:
    lo, hi = abs(est.lo), abs(est.hi)
    if est.excludes_zero():
        return min(lo, hi), max(lo, hi)
    return 0.0, max(lo, hi)


def verdict(task: str, effects: dict[str, Estimate], mode: str, metric: str, eps_values: Iterable[float] = ()) -> str:
    """One sentence: which factor explains more of the AdaBelief(code) - Adam gap, or 'cannot tell'."""
    belief, placement, gap = effects["belief"], effects["placement"], effects["gap"]
    direction = "higher" if mode == "max" else "lower"
    eps_list = list(eps_values)
    scope = f" (pooled over ε = {', '.join(format_value(float(e)) for e in eps_list)})" if len(eps_list) > 1 else ""
    if belief.n == 0:
        return f"{task}: cannot tell — no seed/ε has all four ablation corners completed."
    numbers = (
        f"over {belief.n} seed/ε pair{'s' if belief.n != 1 else ''}{scope}, improvement "
        f"({direction} {metric} is better): gap AdaBelief(code) − Adam {fmt_signed(gap.mean)} "
        f"{fmt_interval(gap, 3, True)}, belief {fmt_signed(belief.mean)} {fmt_interval(belief, 3, True)}, "
        f"ε placement {fmt_signed(placement.mean)} {fmt_interval(placement, 3, True)}"
    )
    if not belief.has_interval:
        return f"{task}: cannot tell (n=1, no interval) — {numbers}."
    if not belief.excludes_zero() and not placement.excludes_zero():
        return f"{task}: cannot tell — both intervals include 0; {numbers}."
    b_lo, b_hi = _magnitude(belief)
    p_lo, p_hi = _magnitude(placement)
    if b_lo > p_hi:
        return f"{task}: the belief second moment explains more of the gap than ε placement — {numbers}."
    if p_lo > b_hi:
        return f"{task}: ε placement explains more of the gap than the belief second moment — {numbers}."
    return f"{task}: cannot tell — the two effects' intervals overlap; {numbers}."
