"""The equal-budget report (``optrepro.tune``): trials and choices, results at the papers' settings and
under equal budget, the generalization gap, and the ablation verdict twice with where they disagree."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from optrepro.analysis import gap
from optrepro.analysis.load import RunsData, load_runs
from optrepro.analysis.stats import LEVEL, METHOD, Estimate, mean_interval
from optrepro.analysis.tables import EFFECT_TITLES, ablation_tables, fmt, fmt_interval
from optrepro.status import RunStatus

#: the ablation effects whose verdict is compared between the two protocols
COMPARED_EFFECTS = ("belief", "placement", "gap")


def verdict_sign(est: Estimate) -> str:
    """``+`` / ``-`` where the interval excludes 0 (improvement-signed: + = better), ``0`` where it does
    not, ``?`` without an interval."""
    if not est.has_interval:
        return "?"
    if est.lo > 0:
        return "+"
    if est.hi < 0:
        return "-"
    return "0"


def untuned_pairing(data: RunsData) -> RunsData:
    """The reruns with lr / ε / floor blanked, so the ablation pairs the four arms by seed alone (under equal
    budget each arm runs at its own chosen lr and ε, which the paper-setting pairing would keep apart)."""
    runs = data.runs.assign(lr=math.nan, eps=math.nan, effective_floor=math.nan)
    return dataclasses.replace(data, runs=runs)


def effect_estimates(data: RunsData) -> dict[tuple[str, str], Estimate]:
    """(task, effect) -> the pooled paired estimate of the ablation (scope "all")."""
    ablation = ablation_tables(data)
    out: dict[tuple[str, str], Estimate] = {}
    for _, r in ablation.effects[ablation.effects.eps == "all"].iterrows():
        out[(str(r.task), str(r.effect))] = Estimate(float(r["mean"]), float(r["std"]), float(r.ci_lo),
                                                     float(r.ci_hi), int(r.n_pairs), math.nan, math.nan)
    return out


def verdict_rows(paper: RunsData, tuned: RunsData) -> pd.DataFrame:
    """Per task and compared effect: the estimate at the papers' settings, under equal budget, agreement."""
    at_paper, at_budget = effect_estimates(paper), effect_estimates(untuned_pairing(tuned))
    rows = []
    for key in sorted(set(at_paper) | set(at_budget)):
        task, effect = key
        if effect not in COMPARED_EFFECTS:
            continue
        a, b = at_paper.get(key), at_budget.get(key)
        sa, sb = (verdict_sign(a) if a else "?"), (verdict_sign(b) if b else "?")
        rows.append({
            "task": task, "effect": EFFECT_TITLES[effect],
            "papers' settings": _est_text(a), "sign (paper)": sa,
            "equal budget": _est_text(b), "sign (budget)": sb,
            "agree": "yes" if sa == sb and sa != "?" else ("—" if "?" in (sa, sb) else "NO"),
        })
    return pd.DataFrame(rows)


def _est_text(est: Estimate | None) -> str:
    if est is None or est.n == 0:
        return "—"
    return f"{fmt(est.mean, 3)} {fmt_interval(est, 3, signed=True)} (n={est.n})"


def arm_results(data: RunsData, arms: list[str]) -> dict[str, str]:
    """Per arm: the primary metric's mean [interval] (n) over its completed seeds."""
    out = {}
    runs = data.runs
    for arm in arms:
        sub = runs[(runs.optimizer == arm) & (runs.status == RunStatus.COMPLETED)] if len(runs) else runs
        est = mean_interval(sub.final.astype(float).to_numpy()) if len(sub) else mean_interval([])
        interval = f" {fmt_interval(est)}" if est.has_interval else ""
        out[arm] = "—" if est.n == 0 else f"{fmt(est.mean)}{interval} (n={est.n})"
    return out


def trials_table(results: Path, space: Any) -> pd.DataFrame:
    """Every trial of every arm: its searched values and its validation objective (the only number selection saw)."""
    from optrepro.tune import trial_runs

    rows = []
    for arm, params in space.arms.items():
        for run_dir in trial_runs(results / "sweeps" / arm):
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
            summary_path = run_dir / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            row: dict[str, Any] = {"arm": arm, "run": run_dir.name, "status": summary.get("status")}
            for key in params:
                node: Any = cfg
                for part in key.split("."):
                    node = (node or {}).get(part)
                row[key] = node
            row[space.objective] = (summary.get("final") or {}).get(space.objective)
            rows.append(row)
    return pd.DataFrame(rows)


def write_tune_report(space: Any, results: Path, outcome: dict[str, Any]) -> Path:
    """TUNE.md and tune_trials.csv / tune_choices.csv / tune_verdicts.csv / tune_gap.csv under ``results``."""
    arms = list(space.arms)
    trials = trials_table(results, space)
    trials.to_csv(results / "tune_trials.csv", index=False, lineterminator="\n")
    choices = pd.DataFrame([{"arm": arm, "chosen": " ".join(c["overrides"]), space.objective: c["objective"],
                             "trial": c["trial"]} for arm, c in outcome["chosen"].items()])
    choices.to_csv(results / "tune_choices.csv", index=False, lineterminator="\n")
    paper, tuned = load_runs(results / "paper"), load_runs(results / "runs")
    at_paper, at_budget = arm_results(paper, arms), arm_results(tuned, arms)
    metric = str(tuned.runs.metric.iloc[0]) if len(tuned.runs) else "metric"
    verdicts = verdict_rows(paper, tuned)
    verdicts.to_csv(results / "tune_verdicts.csv", index=False, lineterminator="\n")
    gaps = pd.concat([gap.gap_table(paper).assign(protocol="papers' settings"),
                      gap.gap_table(tuned).assign(protocol="equal budget")], ignore_index=True)
    gaps.to_csv(results / "tune_gap.csv", index=False, lineterminator="\n")
    t = outcome["timings"]
    lines = [
        f"# Equal tuning budget: {space.name} ({space.task})", "",
        f"Every arm: {space.budget} trial(s) of hydra-optuna-sweeper ({space.sampler} sampler, seed "
        f"{space.sampler_seed}, trial seed {space.trial_seed}) over its own space, chosen on **{space.objective}** "
        f"(validation only; {' '.join(space.overrides) or 'the task’s validation split'}), then rerun with seeds "
        f"{', '.join(map(str, space.seeds))}. The papers' settings: each arm's recipe, same data and seeds. "
        f"Wall time: trials {t['trials_s']:.0f} s, reruns and papers' settings {t['reruns_s']:.0f} s, "
        f"total {t['total_s']:.0f} s.", "",
        "## Choices", "", choices.to_markdown(index=False), "",
        f"## Test results (`{metric}`, mean {LEVEL:.0%} {METHOD} interval, n seeds)", "",
        pd.DataFrame([{"arm": a, "papers' settings": at_paper[a], "equal budget": at_budget[a],
                       "chosen": " ".join(outcome["chosen"][a]["overrides"])} for a in arms]).to_markdown(index=False),
        "",
        "## Ablation verdict, twice", "",
        "Improvement-signed paired effects over seeds (+ = better); sign: + / − where the "
        f"{LEVEL:.0%} interval excludes 0, 0 where it does not. Under equal budget the arms are paired by seed "
        "alone (each runs at its own chosen lr and ε).", "",
    ]
    if verdicts.empty:
        lines += ["_(no ablation corners among the arms)_", ""]
    else:
        lines += [verdicts.to_markdown(index=False), ""]
        disagree = verdicts[verdicts.agree == "NO"]
        lines += [("**The protocols disagree** on: " + "; ".join(f"{r.task}: {r.effect} ({r['sign (paper)']} at the "
                   f"papers' settings, {r['sign (budget)']} under equal budget)" for _, r in disagree.iterrows()))
                  if len(disagree) else "The two protocols agree on every compared effect's sign.", ""]
    lines += ["## Generalization gap", "", f"{gap.SIGN}.", ""]
    if len(gaps):
        shown = gap.display(gaps)
        shown.insert(0, "protocol", gaps.protocol.to_numpy())
        lines += [shown.to_markdown(index=False), ""]
    lines += ["Files: `tune_trials.csv` (every trial: searched values, validation objective), `tune_choices.csv`, "
              "`tune_verdicts.csv`, `tune_gap.csv`; run folders under `trials/`, `runs/` (reruns), `paper/`.", ""]
    path = results / "TUNE.md"
    path.write_text("\n".join(lines))
    return path


__all__ = ["untuned_pairing", "verdict_rows", "verdict_sign", "write_tune_report"]
