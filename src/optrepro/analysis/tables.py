"""Comparison tables, paper views and the belief x eps ablation; writers for Markdown, CSV and LaTeX.

Every builder returns a numeric frame (written as CSV) and a display frame of formatted strings
(written as Markdown and LaTeX). Means use only runs that completed with a finite metric;
diverged, failed and NaN runs are counted in their own columns, never averaged. A published
number is set against runs the comparability rule admits (:mod:`optrepro.analysis.comparability`:
the table's recipe and the real data) and no others; those are listed as not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from optrepro.analysis.comparability import Comparability, Ref
from optrepro.analysis.load import RunsData, format_value, short_key
from optrepro.analysis.stats import (
    ALPHA,
    LEVEL,
    METHOD,
    POWER,
    Estimate,
    detectable_effect,
    holm,
    improvement,
    mean_interval,
)
from optrepro.status import RunStatus

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
CI_HEADER = f"{LEVEL:.0%} CI ({METHOD})"
#: every effect of the ablation, improvement-signed (positive = better); see EFFECT_TITLES
EFFECTS = ("belief", "placement", "gap", "size_difference", "placement_matched", "floor_size")
EFFECT_TITLES = {
    "belief": "belief effect ((g−m)² − g²)",
    "placement": "ε-placement effect (inside − outside, same nominal ε)",
    "gap": "AdaBelief(code) − Adam",
    "size_difference": "size of placement − size of belief",
    "placement_matched": "placement at matched floor (inside at ε − outside at √(ε/(1−β₂)))",
    "floor_size": "floor size at fixed placement (outside at √(ε/(1−β₂)) − outside at ε)",
}
#: the statements the verdict sentences use: tested, Holm-adjusted together over every task and ε
FAMILY_EFFECTS = ("belief", "placement", "size_difference", "placement_matched", "floor_size")
#: outside corner -> its column at the inside corners' floor (same second moment, ε outside = that floor)
MATCHED = {"adam": "adam_matched", "belief_outside": "belief_outside_matched"}
MATCHED_TITLES = {
    "adam_matched": "g², ε outside at matched floor",
    "belief_outside_matched": "(g−m)², ε outside at matched floor",
}
MATCH_RTOL = 1e-3  # an outside run's ε matches an inside floor within this relative tolerance


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
        ("√", r"$\surd$"),
        ("β", r"$\beta$"),
        ("₂", r"$_2$"),
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
    out_dir: Path, stem: str, numeric: pd.DataFrame, display: pd.DataFrame, title: str | None = None,
    footer: list[str] | None = None,
) -> dict[str, Path]:
    """``stem``.csv (numbers), ``stem``.md and ``stem``.tex (formatted) under ``out_dir``; ``footer``
    lines (the runs not comparable with the published numbers) go under the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")}
    numeric.to_csv(paths["csv"], index=False, lineterminator="\n")
    md = display.to_markdown(index=False) if len(display) else "_(no rows)_"
    tail = "\n\n" + "\n".join(footer) if footer else ""
    paths["md"].write_text((f"**{title}**\n\n" if title else "") + md + tail + "\n")
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


def published_candidates(pub: pd.DataFrame, task: str, optimizer: str, opt_class: Any,
                         value_kind: str) -> list[pd.Series]:
    """The published rows that could stand beside our config, best first: exact config name first, then
    its class; within a name the value kind we report, then rows without one, then the rest."""
    rows = pub[pub.task == task]
    out: list[pd.Series] = []
    for name in _published_candidates(optimizer, opt_class):
        cand = rows[rows.optimizer == name]
        order = [cand[cand.which == value_kind], cand[cand.which == ""],
                 cand[~cand.which.isin([value_kind, ""])]]
        out += [row for part in order for _, row in part.iterrows()]
    return out


# ------------------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    numeric: pd.DataFrame
    per_task: dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # task -> (numeric, display)
    #: task -> runs of settings with a published number that the rule does not admit (a ``reason`` column)
    not_comparable: dict[str, pd.DataFrame] = field(default_factory=dict)


def _group_estimates(frame: pd.DataFrame, value_kind: str) -> dict[str, Any]:
    completed = frame[frame.status == RunStatus.COMPLETED]
    values = completed[value_kind].astype(float).to_numpy()
    est = mean_interval(values)
    best = mean_interval(completed["best"].astype(float).to_numpy())
    return {
        "runs": len(frame),
        "n": est.n,
        "diverged": int((frame.status == RunStatus.DIVERGED).sum()),
        "failed": int((frame.status == RunStatus.FAILED).sum()),
        "nan": int((~np.isfinite(values)).sum()),
        "at_chance": at_chance(completed, value_kind),
        "est": est,
        "best_est": best,
        "wall_time": float(completed.wall_time.astype(float).mean()) if len(completed) else math.nan,
    }


def at_chance(completed: pd.DataFrame, value_kind: str) -> int | None:
    """Completed runs no better than a constant predictor (their ``chance_level``; NaN counts as at chance):
    the per-seed failure count of fine-tuning (Mosbach et al. 2021). None where the task has no chance level."""
    if "chance_level" not in completed or not len(completed):
        return None
    chance = completed["chance_level"].astype(float).to_numpy()
    if not np.isfinite(chance).any():
        return None
    values = completed[value_kind].astype(float).to_numpy()
    better = values < chance if str(completed["mode"].iloc[0]) == "min" else values > chance
    return int((~(np.isfinite(values) & better)).sum())


def comparison_tables(data: RunsData, published: pd.DataFrame, value_kind: str = "final",
                      rule: Comparability | None = None) -> Comparison:
    """One row per (task, optimizer config, setting): mean ± std, n, 95% CI, diverged, published, Δ.

    Δ vs published is the mean of the comparable runs only (``comparable`` of ``runs``); NaN when none is."""
    rule = rule or Comparability(data, published)
    records: list[dict[str, Any]] = []
    per_task: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    excluded: dict[str, list[pd.DataFrame]] = {}
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
            # the published number beside a setting: the best candidate whose table's recipe admits some of
            # its runs (an EAdam Table 2 run stands beside EAdam's number, not the AdaBelief repo's), else the best
            candidates = published_candidates(published, task, str(optimizer), first.opt_class, value_kind)
            pub = candidates[0] if candidates else None
            ok = group.iloc[0:0]
            for cand in candidates:
                admitted, _ = rule.split(group, (str(cand.paper), str(cand.table), str(cand.optimizer)))
                if len(admitted):
                    pub = cand
                    break
            pub_value = float(pub.value) if pub is not None else math.nan
            if pub is not None:
                ok, others = rule.split(group, (str(pub.paper), str(pub.table), str(pub.optimizer)))
                if len(others):
                    excluded.setdefault(task, []).append(others.assign(published_ref=f"{pub.paper}/{pub.table}"))
            ok_est = mean_interval(ok[ok.status == RunStatus.COMPLETED][value_kind].astype(float).to_numpy())
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
                "at_chance": g["at_chance"],
                "mean": est.mean,
                "std": est.std,
                "ci_lo": est.lo,
                "ci_hi": est.hi,
                "ci_method": est.method if est.has_interval else "",
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
                "comparable": len(ok),
                "comparable_n": ok_est.n,
                "comparable_mean": ok_est.mean,
                "diff": ok_est.mean - pub_value if pub is not None and ok_est.n else math.nan,
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
    not_comparable = {task: pd.concat(parts, ignore_index=True) for task, parts in excluded.items()}
    return Comparison(numeric_all, per_task, not_comparable)


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
        CI_HEADER: fmt_interval(r["_est"]),
        "n": str(r["n"]),
        "diverged": str(r["diverged"]),
        "failed": str(r["failed"]),
        **({} if r["at_chance"] is None else {"at chance": f"{r['at_chance']}/{r['n']}"}),
        f"best {metric}": fmt_estimate(r["_best"]),
        "published": pub,
        "comparable": f"{r['comparable']}/{r['runs']}" if math.isfinite(r["published"]) else DASH,
        "Δ vs published": _diff_text(r),
        "time (s)": fmt(r["wall_time_mean"], 3),
    }


def _diff_text(r: dict[str, Any]) -> str:
    """Δ of the comparable runs' mean; says over how many when that is not every counted run."""
    if not math.isfinite(r["diff"]):
        return DASH
    text = fmt_signed(r["diff"], 3)
    return text if r["comparable_n"] == r["n"] else f"{text} (n={r['comparable_n']})"


# ------------------------------------------------------------------------------------- paper views
def main_setting(frame: pd.DataFrame) -> str | None:
    """The setting of one optimizer config with the most counted runs (ties: first label)."""
    if frame.empty:
        return None
    counted = frame[(frame.status == RunStatus.COMPLETED) & np.isfinite(frame.final.astype(float))]
    counts = counted.groupby("setting").size() if len(counted) else frame.groupby("setting").size() * 0
    counts = counts.reindex(sorted(frame.setting.unique()), fill_value=0)
    return str(counts.sort_values(ascending=False, kind="stable").index[0])


def candidates_for(runs: pd.DataFrame, task: str, optimizer: str) -> pd.DataFrame:
    """Our runs that could stand for a published optimizer on a task: the exact config name, else its
    class when only one config of that class ran."""
    frame = runs[(runs.task == task) & (runs.optimizer == optimizer)]
    if frame.empty:
        by_class = runs[
            (runs.task == task) & (runs.opt_class == optimizer) & ~runs.optimizer.astype(str).str.startswith("ablation")
        ]
        if by_class.optimizer.nunique() == 1:
            frame = by_class
    return frame


def ours_for(runs: pd.DataFrame, task: str, optimizer: str) -> tuple[pd.DataFrame, str | None]:
    """:func:`candidates_for`, within it the main setting."""
    frame = candidates_for(runs, task, optimizer)
    if frame.empty:
        return frame, None
    setting = main_setting(frame)
    return frame[frame.setting == setting], setting


@dataclass
class PaperView:
    """One published table laid out like the paper, ours beside it (comparable runs only)."""

    numeric: pd.DataFrame
    display: pd.DataFrame
    title: str
    #: runs that would stand for a cell but the rule does not admit, with a ``reason`` column
    not_comparable: pd.DataFrame


def paper_views(
    data: RunsData, published: pd.DataFrame, value_kind: str = "final", rule: Comparability | None = None
) -> dict[str, PaperView]:
    """Per published table id ``paper_table``: its view. "ours" holds only runs the comparability rule
    admits for that table; the other candidates are listed in ``not_comparable``."""
    views: dict[str, PaperView] = {}
    if published.empty:
        return views
    rule = rule or Comparability(data, published)
    for (paper, table), pub in published.groupby(["paper", "table"], sort=False):
        columns = list(dict.fromkeys(zip(pub.task, pub.which, strict=True)))
        optimizers = list(dict.fromkeys(pub.optimizer))
        long_rows, display_rows = [], []
        excluded: list[pd.DataFrame] = []
        for opt in optimizers:
            display_row: dict[str, str] = {"optimizer": opt}
            for task, which in columns:
                hit = pub[(pub.optimizer == opt) & (pub.task == task) & (pub.which == which)]
                kind = which if which in VALUE_KINDS else value_kind
                ref: Ref = (str(paper), str(table), str(opt))
                comparable, others = rule.split(candidates_for(data.runs, task, opt), ref)
                if len(others) and len(hit):
                    excluded.append(others.drop_duplicates("run"))
                ours, setting = ours_for(comparable, task, opt)
                completed = ours[ours.status == RunStatus.COMPLETED]
                est = mean_interval(completed[kind].astype(float).to_numpy()) if len(ours) else mean_interval([])
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
                        "ours_diverged": int((ours.status == RunStatus.DIVERGED).sum()) if len(ours) else 0,
                        "not_comparable": int(others.run.nunique()),
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
        others_all = (pd.concat(excluded, ignore_index=True).drop_duplicates("run") if excluded
                      else data.runs.iloc[0:0].assign(reason=pd.Series(dtype=object)))
        views[f"{paper}_{table}"] = PaperView(pd.DataFrame(long_rows), pd.DataFrame(display_rows), title, others_all)
    return views


# ------------------------------------------------------------------------------------- ablation
@dataclass(frozen=True)
class Stat:
    """One effect in one scope: its estimate, Holm-adjusted p (NaN outside the family) and detectable effect."""

    est: Estimate
    p_holm: float
    mde: float

    def status(self, alpha: float = ALPHA) -> str:
        """``+``/``-``: significant after Holm, that sign; ``0``: tested, not significant; ``""``: not tested."""
        if not math.isfinite(self.p_holm):
            return ""
        if self.p_holm < alpha:
            return "+" if self.est.mean > 0 else "-"
        return "0"


@dataclass
class Ablation:
    corners: pd.DataFrame  # task, eps, corner, n, mean, std, ci_lo, ci_hi, ci_method, diverged
    effects: pd.DataFrame  # task, eps, matched_eps, effect, n_pairs, mean, std, ci_lo, ci_hi, p, p_holm, mde, ...
    sentences: dict[str, str]
    displays: dict[str, pd.DataFrame]
    matched_displays: dict[str, pd.DataFrame] = field(default_factory=dict)
    family_size: int = 0
    alpha: float = ALPHA

    def family_note(self) -> str:
        """What the correction is and over what, for the report."""
        effects = ", ".join(EFFECT_TITLES[e] for e in FAMILY_EFFECTS)
        return (
            f"Verdicts test each effect's paired differences with a two-sided t-test and correct with Holm's method "
            f"over one family of {self.family_size} statement(s): every (task, ε) with at least 2 complete pairs × "
            f"the tested effects ({effects}); a statement is significant when its Holm-adjusted p (p_H) is below "
            f"{self.alpha:g}. Intervals printed are per-statement {LEVEL:.0%} {METHOD} intervals (uncorrected). "
            f"Detectable effect: the true mean effect a two-sided t-test at the strictest Holm level "
            f"α/{max(self.family_size, 1)} detects with {POWER:.0%} power, "
            f"(t_{{n−1,1−α/2m}} + t_{{n−1,{POWER:g}}})·s/√n, s = the observed std of the paired differences."
        )


def ablation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the ``ablation`` optimizer class that sit on one of the four corners."""
    if runs.empty:
        return runs.assign(corner=pd.Series(dtype=object))
    frame = runs[runs.opt_class == "ablation"].copy()
    keys = list(zip(frame.second_moment, frame.eps_placement, strict=True))
    frame["corner"] = [CORNERS.get(k) for k in keys]  # type: ignore[arg-type]
    return frame[frame.corner.notna()]


def split_task_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """The ablation's runs with ``task`` relabelled by the task settings that vary among one task's runs
    (e.g. ``lm_pretrain_fineweb (task.model.n_layer=12, ...)`` in a model-size grid): the 2x2 then pairs and
    averages runs of one variant only, never a seed's runs of two model sizes, and reports one verdict per size."""
    cols = [c for c in frame.columns if str(c).startswith("task.")]
    if frame.empty or not cols:
        return frame
    out = frame.copy()
    for task, sub in frame.groupby("task", sort=False):
        varying = [c for c in cols if sub[c].astype(str).nunique(dropna=False) > 1]
        if varying:
            out.loc[sub.index, "task"] = [
                f"{task} ({', '.join(f'{short_key(c)}={format_value(v)}' for c, v in zip(varying, row, strict=True))})"
                for row in sub[varying].itertuples(index=False, name=None)
            ]
    return out


def _eps_label(eps: Any) -> str:
    return "all" if eps == "all" else format_value(float(eps))


def nominal_eps(frame: pd.DataFrame) -> list[float]:
    """The ε values at which all four corners ran: the 2x2's scopes (matched-floor-only ε values are not)."""
    per_eps = frame.dropna(subset=["eps"]).groupby("eps").corner.nunique()
    return sorted(float(e) for e, k in per_eps.items() if k == len(CORNERS))


def _corner_row(task: str, eps: str, corner: str, est: Estimate, diverged: int) -> dict[str, Any]:
    """One row of the corner-means table (a corner, or an outside corner at the matched floor)."""
    return {"task": task, "eps": eps, "corner": corner, "n": est.n, "mean": est.mean, "std": est.std,
            "ci_lo": est.lo, "ci_hi": est.hi, "ci_method": est.method if est.has_interval else "",
            "diverged": diverged, "_est": est}


def pair_table(frame: pd.DataFrame, value_kind: str) -> pd.DataFrame:
    """Completed corner runs as one row per pair unit (seed, eps, lr) and one column per corner, plus each
    outside corner's run at the inside corners' floor (``*_matched``, same seed and lr) and its ``matched_eps``."""
    columns = [*CORNERS.values(), *MATCHED.values(), "matched_eps"]
    done = frame[frame.status == RunStatus.COMPLETED]
    if done.empty:
        return pd.DataFrame(columns=columns)
    keyed = done.assign(_eps=done.eps.fillna(-1.0), _lr=done.lr.fillna(-1.0))
    wide = keyed.pivot_table(
        index=["seed", "_eps", "_lr"], columns="corner", values=value_kind, aggfunc="mean", dropna=False
    ).reindex(columns=list(CORNERS.values()))
    inside = frame[(frame.eps_placement == "inside") & np.isfinite(frame.effective_floor.astype(float))]
    floors = {
        (float(e), float(lr)): float(f)
        for e, lr, f in zip(inside.eps.fillna(-1.0), inside.lr.fillna(-1.0), inside.effective_floor, strict=True)
    }
    outside = keyed[keyed.eps_placement == "outside"]
    wide["matched_eps"] = math.nan
    for corner, column in MATCHED.items():
        wide[column] = math.nan
        runs_c = outside[outside.corner == corner]
        for seed, eps, lr in wide.index:
            floor = floors.get((float(eps), float(lr)))
            if floor is None:
                continue
            hit = runs_c[
                (runs_c.seed == seed)
                & (runs_c._lr == lr)
                & (np.abs(runs_c.effective_floor.astype(float) - floor) <= MATCH_RTOL * floor)
            ]
            if len(hit):
                wide.loc[(seed, eps, lr), column] = float(hit[value_kind].astype(float).mean())
                wide.loc[(seed, eps, lr), "matched_eps"] = float(hit.eps.iloc[0])
    return wide[columns]


def unit_effects(frame: pd.DataFrame, mode: str, value_kind: str) -> pd.DataFrame:
    """Per pair unit (seed, eps, lr): each effect signed as an improvement (NaN where a run is missing).

    Main effects of the 2x2 average over the other factor. The matched-floor pair splits the nominal
    placement effect exactly: placement = placement_matched + floor_size, each averaged over the two
    second moments (inside at ε vs outside at the inside floor, and outside at that floor vs outside at ε).
    """
    wide = pair_table(frame, value_kind)
    val = {c: improvement(wide[c].to_numpy(float), mode) for c in [*CORNERS.values(), *MATCHED.values()]}
    a, e, bo, bi = val["adam"], val["eadam"], val["belief_outside"], val["belief_inside"]
    am, bom = val["adam_matched"], val["belief_outside_matched"]
    out = pd.DataFrame(
        {
            "belief": ((bo - a) + (bi - e)) / 2.0,
            "placement": ((e - a) + (bi - bo)) / 2.0,
            "gap": bi - a,
            "placement_matched": ((e - am) + (bi - bom)) / 2.0,
            "floor_size": ((am - a) + (bom - bo)) / 2.0,
            "matched_eps": wide["matched_eps"].to_numpy(float),
            **{c: wide[c].to_numpy(float) for c in MATCHED.values()},
        },
        index=wide.index,
    )
    return out


def scope_estimates(units: pd.DataFrame) -> dict[str, Estimate]:
    """Every effect's interval over the units of one scope; size_difference = |placement| − |belief| per unit,
    each signed by its own mean over the scope (positive: placement is the larger effect)."""
    est = {
        k: mean_interval(units[k].to_numpy(float))
        for k in ("belief", "placement", "gap", "placement_matched", "floor_size")
    }
    sign_p = 1.0 if not est["placement"].mean < 0 else -1.0
    sign_b = 1.0 if not est["belief"].mean < 0 else -1.0
    size = sign_p * units.placement.to_numpy(float) - sign_b * units.belief.to_numpy(float)
    est["size_difference"] = mean_interval(size)
    return {k: est[k] for k in EFFECTS}


def _cell(stat: Stat) -> str:
    est = stat.est
    if est.n == 0:
        return DASH
    text = f"{fmt_signed(est.mean)} {fmt_interval(est, 3, signed=True)}"
    if math.isfinite(stat.p_holm):
        text += f" p_H={stat.p_holm:.3g}"
    return text


def ablation_tables(data: RunsData, value_kind: str = "final", alpha: float = ALPHA) -> Ablation:
    """Four corners with intervals, the effects with paired-t intervals, Holm over the verdicts' family,
    detectable effects, and one verdict per task (per ε; pooled only where every ε says the same)."""
    abl = split_task_variants(ablation_runs(data.runs))
    corner_rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []  # one per (task, scope, effect), Estimate included
    per_task: dict[str, dict[str, Any]] = {}
    for task, frame in abl.groupby("task", sort=True):
        task = str(task)
        mode = str(frame["mode"].iloc[0])
        eps_values = nominal_eps(frame)
        scopes: list[Any] = [*eps_values, "all"] if len(eps_values) > 1 else ["all"]
        family_scopes = [s for s in scopes if s != "all"] or ["all"]
        units = unit_effects(frame, mode, value_kind)
        unit_eps = units.index.get_level_values("_eps").to_numpy(float) if len(units) else np.array([])
        in_nominal = np.isin(unit_eps, eps_values) if eps_values else np.ones(len(units), bool)
        per_task[task] = {
            "mode": mode,
            "metric": str(frame.metric.iloc[0]),
            "scopes": scopes,
            "family_scopes": family_scopes,
            "eps_values": eps_values,
        }
        for scope in scopes:
            label = _eps_label(scope)
            # pooled corners: the nominal ε values only (the matched-floor outside runs have a table of their own)
            pooled = frame[frame.eps.isin(eps_values)] if eps_values else frame
            sub = pooled if scope == "all" else frame[frame.eps == scope]
            for corner in CORNERS.values():
                runs_c = sub[sub.corner == corner]
                est = mean_interval(runs_c[runs_c.status == RunStatus.COMPLETED][value_kind].astype(float).to_numpy())
                diverged = int((runs_c.status == RunStatus.DIVERGED).sum())
                corner_rows.append(_corner_row(task, label, corner, est, diverged))
            scope_units = units[in_nominal] if scope == "all" else units[unit_eps == float(scope)]
            matched_eps = ", ".join(format_value(float(e)) for e in sorted(scope_units.matched_eps.dropna().unique()))
            for column in MATCHED.values():
                est = mean_interval(scope_units[column].to_numpy(float))
                corner_rows.append(_corner_row(task, label, column, est, 0))
            for name, est in scope_estimates(scope_units).items():
                raw.append(
                    {
                        "task": task,
                        "eps": label,
                        "matched_eps": matched_eps,
                        "effect": name,
                        "n_pairs": est.n,
                        "mean": est.mean,
                        "std": est.std,
                        "ci_lo": est.lo,
                        "ci_hi": est.hi,
                        "ci_method": est.method if est.has_interval else "",
                        "p": est.p,
                        "in_family": scope in family_scopes and name in FAMILY_EFFECTS and est.n >= 2,
                        "_est": est,
                    }
                )
    family = [r for r in raw if r["in_family"]]
    m = len(family)
    for r, p_adj in zip(family, holm([r["p"] for r in family]), strict=True):
        r["p_holm"] = p_adj
    for r in raw:
        r.setdefault("p_holm", math.nan)
        r["mde"] = detectable_effect(r["std"], r["n_pairs"], alpha / max(m, 1))
    stats = {(r["task"], r["eps"], r["effect"]): Stat(r["_est"], r["p_holm"], r["mde"]) for r in raw}
    sentences: dict[str, str] = {}
    displays: dict[str, pd.DataFrame] = {}
    matched_displays: dict[str, pd.DataFrame] = {}
    corner_est = {(r["task"], r["eps"], r["corner"]): r["_est"] for r in corner_rows}
    for task, info in per_task.items():
        labels = [_eps_label(s) for s in info["scopes"]]
        # what a scope is called in tables and sentences: its ε; "pooled" over several; the ε when there is one
        names = {label: label for label in labels}
        names["all"] = (
            "pooled" if len(labels) > 1 else (_eps_label(info["eps_values"][0]) if info["eps_values"] else "all")
        )
        display_rows, matched_rows = [], []
        for label in labels:
            row: dict[str, str] = {"ε": names[label]}
            for corner in CORNERS.values():
                est = corner_est[(task, label, corner)]
                row[CORNER_TITLES[corner]] = DASH if est.n == 0 else f"{fmt(est.mean)} {fmt_interval(est)} (n={est.n})"
            for name in ("belief", "placement", "size_difference", "gap"):
                row[EFFECT_TITLES[name]] = _cell(stats[(task, label, name)])
            row["pairs"] = str(stats[(task, label, "belief")].est.n)
            display_rows.append(row)
            pm = stats[(task, label, "placement_matched")]
            if pm.est.n:
                eps_m = next(
                    r["matched_eps"]
                    for r in raw
                    if (r["task"], r["eps"], r["effect"]) == (task, label, "placement_matched")
                )
                mrow = {"ε (inside)": row["ε"], "matched outside ε": eps_m or DASH}
                for column, title in MATCHED_TITLES.items():
                    est = corner_est[(task, label, column)]
                    mrow[title] = DASH if est.n == 0 else f"{fmt(est.mean)} {fmt_interval(est)} (n={est.n})"
                for name in ("placement_matched", "floor_size", "placement"):
                    mrow[EFFECT_TITLES[name]] = _cell(stats[(task, label, name)])
                mrow["pairs"] = str(pm.est.n)
                matched_rows.append(mrow)
        displays[task] = pd.DataFrame(display_rows)
        if matched_rows:
            matched_displays[task] = pd.DataFrame(matched_rows)
        fam = [_eps_label(s) for s in info["family_scopes"]]
        scoped = {names[label]: {k: stats[(task, label, k)] for k in EFFECTS} for label in fam}
        pooled = {k: stats[(task, "all", k)] for k in EFFECTS}
        sentences[task] = verdict(task, scoped, pooled, info["mode"], info["metric"], alpha)
    corners = pd.DataFrame(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in corner_rows],
        columns=["task", "eps", "corner", "n", "mean", "std", "ci_lo", "ci_hi", "ci_method", "diverged"],
    )
    effects_frame = pd.DataFrame(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in raw],
        columns=[
            "task",
            "eps",
            "matched_eps",
            "effect",
            "n_pairs",
            "mean",
            "std",
            "ci_lo",
            "ci_hi",
            "ci_method",
            "p",
            "in_family",
            "p_holm",
            "mde",
        ],
    )
    return Ablation(corners, effects_frame, sentences, displays, matched_displays, m, alpha)


# ------------------------------------------------------------------------------------- verdict
def _seeds_text(stats: Iterable[Stat]) -> str:
    ns = sorted({s.est.n for s in stats if s.est.n})
    if not ns:
        return "no"
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def _undetectable(stats: list[Stat], metric: str) -> str:
    """'with 3 seeds an effect below 0.6 test_acc is undetectable here' for the untold statements."""
    mdes = [s.mde for s in stats if math.isfinite(s.mde)]
    if not mdes:
        return ""
    return f"; with {_seeds_text(stats)} seeds an effect below {fmt(max(mdes), 2)} {metric} is undetectable here"


def _sig(status: str) -> bool:
    return status in ("+", "-")


def _main_category(s: dict[str, Stat], alpha: float) -> tuple[str, str]:
    """(signature, phrase) of the 2x2 at one scope: which factor explains more, or why we cannot tell."""
    belief, placement, size = s["belief"], s["placement"], s["size_difference"]
    if belief.est.n == 0:
        return "none", "cannot tell — no seed has all four ablation corners completed"
    if belief.est.n < 2 or not belief.est.has_interval:
        return "n1", "cannot tell (n=1, no interval)"
    b, p, d = belief.status(alpha), placement.status(alpha), size.status(alpha)
    signature = f"b{b}p{p}d{d}"
    place_dir = "inside better" if placement.est.mean > 0 else "inside worse"
    belief_dir = "(g−m)² better" if belief.est.mean > 0 else "(g−m)² worse"
    if not _sig(b) and not _sig(p):
        return signature, "cannot tell (neither effect is significant)"
    if d == "+" and _sig(p):
        return signature, f"ε placement explains more of the gap than the belief second moment ({place_dir})"
    if d == "-" and _sig(b):
        return signature, f"the belief second moment explains more of the gap than ε placement ({belief_dir})"
    if _sig(b) and _sig(p):
        return signature, f"both factors matter ({belief_dir}, {place_dir}); cannot tell which explains more"
    which = f"ε placement ({place_dir})" if _sig(p) else f"the belief second moment ({belief_dir})"
    return signature, f"only {which} has a significant effect; cannot tell which explains more"


def _matched_category(s: dict[str, Stat], alpha: float) -> tuple[str, str] | None:
    """(signature, phrase) of the matched-floor contrasts at one scope; None without matched pairs."""
    pm, fs = s["placement_matched"], s["floor_size"]
    if pm.est.n < 2:
        return None
    a, f = pm.status(alpha), fs.status(alpha)
    signature = f"m{a}f{f}"
    floor_dir = "a larger floor is better" if fs.est.mean > 0 else "a larger floor is worse"
    if not _sig(a) and _sig(f):
        return signature, (
            f"cannot tell the placements apart at matched floors while the floor's size moves the metric "
            f"({floor_dir}): only the floor's size matters"
        )
    if _sig(a):
        side = "inside" if pm.est.mean > 0 else "outside"
        floor = f"and the floor's size matters too ({floor_dir})" if _sig(f) else "floor size not significant"
        return signature, f"placement matters beyond the floor's size (ε {side} is better at the same floor; {floor})"
    return signature, "cannot tell (neither placement at matched floor nor floor size is significant)"


def _numbers(s: dict[str, Stat], names: tuple[str, ...]) -> str:
    short = {
        "gap": "gap AdaBelief(code) − Adam",
        "belief": "belief",
        "placement": "ε placement",
        "placement_matched": "placement at matched floor",
        "floor_size": "floor size",
    }
    parts = []
    for name in names:
        stat = s[name]
        text = f"{short[name]} {fmt_signed(stat.est.mean)} {fmt_interval(stat.est, 3, True)}"
        if math.isfinite(stat.p_holm):
            text += f" (p_H={stat.p_holm:.3g})"
        parts.append(text)
    return ", ".join(parts)


def _grouped(
    scoped: dict[str, dict[str, Stat]],
    pooled: dict[str, Stat],
    categories: dict[str, tuple[str, str]],
    names: tuple[str, ...],
    untold: tuple[str, ...],
    metric: str,
) -> str:
    """One ε: its phrase and numbers; several: 'at every ε' with pooled numbers when all agree, else per ε."""
    labels = list(categories)
    if len(labels) == 1:
        label = labels[0]
        sig, phrase = categories[label]
        where = f" (ε = {label})" if label not in ("all", "pooled") else ""
        pairs = scoped[label][names[0]].est.n
        tail = _undetectable([scoped[label][k] for k in untold], metric) if phrase.startswith("cannot tell") else ""
        return f"{phrase}{tail} — over {pairs} pair{'s' if pairs != 1 else ''}{where}: {_numbers(scoped[label], names)}"
    signatures = {categories[label][0] for label in labels}
    if len(signatures) == 1:
        phrase = categories[labels[0]][1]
        tail = ""
        if phrase.startswith("cannot tell"):
            tail = _undetectable([scoped[label][k] for label in labels for k in untold], metric)
        return (
            f"{phrase} at every ε ({', '.join(labels)}){tail} — pooled over {pooled[names[0]].est.n} seed/ε pairs: "
            f"{_numbers(pooled, names)}"
        )
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(categories[label][1], []).append(label)
    parts = []
    for phrase, eps in groups.items():
        tail = _undetectable([scoped[e][k] for e in eps for k in untold], metric) if phrase.startswith("cannot") else ""
        parts.append(f"{phrase} at ε = {', '.join(eps)}{tail}")
    where = "; ".join(parts)
    detail = "; ".join(f"ε = {label}: {_numbers(scoped[label], names)}" for label in labels)
    return f"the answer depends on ε — {where} [{detail}]"


def verdict(
    task: str,
    scoped: dict[str, dict[str, Stat]],
    pooled: dict[str, Stat],
    mode: str,
    metric: str,
    alpha: float = ALPHA,
) -> str:
    """The task's sentence: per ε (``scoped``, the family's scopes) which factor explains more of the
    AdaBelief(code) − Adam gap, pooled only where every ε says the same; then the matched-floor contrasts."""
    direction = "higher" if mode == "max" else "lower"
    main = {label: _main_category(s, alpha) for label, s in scoped.items()}
    if all(sig in ("none",) for sig, _ in main.values()):
        return f"{task}: cannot tell — no seed/ε has all four ablation corners completed."
    if all(sig == "n1" for sig, _ in main.values()):
        numbers = _numbers(next(iter(scoped.values())), ("gap", "belief", "placement"))
        return f"{task}: cannot tell (n=1, no interval) — {numbers}."
    usable = {k: v for k, v in main.items() if v[0] not in ("none", "n1")}
    text = _grouped(scoped, pooled, usable, ("gap", "belief", "placement"), ("belief", "placement"), metric)
    sentence = f"{task}: {text} (improvements, {direction} {metric} is better)."
    matched = {label: c for label, s in scoped.items() if (c := _matched_category(s, alpha)) is not None}
    if matched:
        text = _grouped(scoped, pooled, matched, ("placement_matched", "floor_size"), ("placement_matched",), metric)
        sentence += f" At matched floors: {text}."
    return sentence
