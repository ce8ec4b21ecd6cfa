"""REPORT.md: the tables inline, the figures linked, the environment of the runs and what is missing."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from optrepro.analysis import diagnostics as optimizer_diagnostics
from optrepro.analysis.comparability import not_comparable_footer
from optrepro.analysis.load import NO_PROVENANCE, RunsData, configured_tasks
from optrepro.analysis.stats import LEVEL, METHOD
from optrepro.analysis.tables import CI_HEADER, Ablation, Comparison, PaperView, markdown
from optrepro.status import RunStatus


@dataclass
class Artifacts:
    """What the analysis wrote, for linking: per task, figure PNG paths by kind."""

    figures: dict[str, dict[str, Path]] = field(default_factory=dict)  # task -> kind -> png
    global_figures: dict[str, Path] = field(default_factory=dict)  # kind -> png
    tables: dict[str, Path] = field(default_factory=dict)  # stem -> md path


#: what the speed section's numbers mean (README, "Speed: time to target and performance profiles")
SPEED_TEXT = [
    "Time to target: the first logged eval point at which a run's metric reaches the target (≥ for "
    "accuracy-like, ≤ for loss-like metrics), as step, epoch and wall-clock second; a run that never reaches "
    "it is a miss, not its length. An arm (an optimizer at its main setting) reaches a task when at least the "
    "stated share of its seeds do; its time is then the median over seeds (misses count as ∞). "
    "Speed (DeepOBS) = the mean first epoch over the seeds that reached. "
    "Performance profile: r = an arm's time / the fastest arm's time on that task (∞ for a miss or a task "
    "it did not run), ρ(τ) = the share of the tasks with r ≤ τ; the AlgoPerf score = the area under ρ from "
    "τ = 1 to r_max, divided by r_max − 1 (1: fastest everywhere; 0: never within r_max of the fastest). "
    "Scores compare arms of this grid only: they change when arms are added.",
]


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _environment(runs: pd.DataFrame) -> str:
    if runs.empty:
        return "_no runs_"
    cols = ["git_sha", "torch", "cuda", "device", "device_name", "precision"]
    env = runs[cols].map(lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    dirty = runs.git_dirty.map(lambda v: v is True).to_numpy() if "git_dirty" in runs else False
    env["git_sha"] = env.git_sha.str[:12].where(~dirty, env.git_sha.str[:12] + " (uncommitted changes)")
    table = env.groupby(cols, sort=True, dropna=False).size().reset_index(name="runs")
    return table.to_markdown(index=False)


def _runs_shown(runs: pd.DataFrame) -> list[str]:
    """The profiles and the data of every run the report shows, near the top: what kind of numbers these are."""
    if runs.empty:
        return []
    profiles = runs.profile.value_counts().sort_index()
    lines = ["## Profiles and data", "",
             "Profiles: " + ", ".join(f"`{p}` ({n} run{'s' if n != 1 else ''})" for p, n in profiles.items()) + ".",
             ""]
    frame = runs.assign(
        dataset=runs.data_dataset.fillna("—"), kind=runs.data_kind.fillna("—"),
        real=runs.data_real.map(lambda v: "yes" if v is True else "no"),
        summary=runs.data_summary.fillna(NO_PROVENANCE))
    table = frame.groupby(["task", "dataset", "kind", "real", "summary"], sort=True).size().reset_index(name="runs")
    table = table.rename(columns={"kind": "kind (what the loader reads)", "real": "verified real"})
    lines += [table[["task", "dataset", "kind (what the loader reads)", "verified real", "runs", "summary"]]
              .to_markdown(index=False), ""]
    if (runs.profile != "default").any() or not runs.data_real.astype(bool).all():
        lines += ["Runs of another profile than `default` or on data that is not verified as the real dataset are "
                  "never compared with published numbers.", ""]
    return lines


def _missing(data: RunsData, published: pd.DataFrame, config_dir: Path | None) -> list[str]:
    lines: list[str] = []
    tasks_with_runs = set(data.runs.task.astype(str))
    configured = configured_tasks(config_dir)
    unrun = [
        stem
        for stem, name in configured.items()
        if name not in tasks_with_runs and not any(t.startswith(f"{stem}_") for t in tasks_with_runs)
    ]
    if unrun:
        lines.append(f"- Configured tasks without runs: {', '.join(sorted(unrun))}.")
    pub_tasks = sorted(set(published.task) - tasks_with_runs) if not published.empty else []
    if pub_tasks:
        lines.append(f"- Tasks with published numbers but no runs: {', '.join(pub_tasks)}.")
    for task in sorted(tasks_with_runs & set(published.task)):
        ran = set(data.runs[data.runs.task == task].optimizer) | set(data.runs[data.runs.task == task].opt_class)
        missing = [o for o in dict.fromkeys(published[published.task == task].optimizer) if o not in ran]
        if missing:
            lines.append(f"- {task}: published optimizers without runs: {', '.join(missing)}.")
    if not data.incomplete.empty:
        lines.append(f"- {len(data.incomplete)} incomplete run folder(s) (listed, not counted):\n")
        inc = data.incomplete.copy()
        inc["last_step"] = inc.last_step.map(lambda v: "—" if not math.isfinite(v) else str(int(v)))
        lines.append(inc[["run", "task", "optimizer", "seed", "state", "last_step"]].to_markdown(index=False))
        lines.append("")
    failed = data.runs[data.runs.status == RunStatus.FAILED]
    if not failed.empty:
        lines.append(f"- {len(failed)} failed run(s) (excluded from every mean):\n")
        lines.append(failed[["run", "task", "optimizer", "seed", "reason"]].fillna("—").to_markdown(index=False))
        lines.append("")
    diverged = data.runs[data.runs.status == RunStatus.DIVERGED]
    if not diverged.empty:
        lines.append(f"- {len(diverged)} diverged run(s) (counted in the `diverged` column, excluded from means):\n")
        div = diverged[["run", "task", "optimizer", "seed", "reason"]].fillna("—")
        lines.append(div.to_markdown(index=False))
        lines.append("")
    nan_runs = data.runs[(data.runs.status == RunStatus.COMPLETED) & ~data.runs.final.astype(float).map(math.isfinite)]
    if not nan_runs.empty:
        lines.append(
            f"- {len(nan_runs)} completed run(s) with a non-finite or missing final metric: {', '.join(nan_runs.run)}."
        )
    return lines


def write_report(
    out_dir: Path,
    data: RunsData,
    published: pd.DataFrame,
    comparison: Comparison,
    views: dict[str, PaperView],
    ablation: Ablation,
    artifacts: Artifacts,
    config_dir: Path | None,
    value_kind: str,
    speed_lines: list[str] | None = None,
    extra_sections: list[str] | None = None,
) -> Path:
    runs = data.runs
    status_counts = runs.status.value_counts().to_dict() if len(runs) else {}
    counts_text = ", ".join(f"{v} {k}" for k, v in sorted(status_counts.items())) or "none"
    lines = [
        "# optrepro results",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from `{data.runs_dir}`: "
        f"{len(runs)} complete run(s) ({counts_text}), "
        f"{len(data.incomplete)} incomplete.",
        "",
        f"Tables report the **{value_kind}** value of each task's primary metric: mean ± std over seeds, "
        f"{LEVEL:.0%} {METHOD} interval of the mean (n−1 degrees of freedom; column `{CI_HEADER}`), "
        "n = seeds counted (completed with a finite metric). "
        "Diverged and failed runs are counted in their own columns and never averaged. "
        "Δ vs published = the mean of the comparable runs − the published number: a run is comparable only "
        "when its config is the table's recipe (the run identity the recipe audit checks) and its data is the "
        "real dataset (data.json); every other run is listed under the table as not comparable.",
        "",
        *_runs_shown(runs),
    ]
    if runs.empty:
        lines += [
            "**No complete runs found.** Train some first, e.g. "
            "`python -m optrepro.train task=toy2d optimizer=adam profile=smoke`.",
            "",
        ]
    lines += ["## Environment", "", _environment(runs), ""]

    if not runs.empty:
        lines += ["## Results per task", ""]
    for task in sorted(comparison.per_task):
        frame = runs[runs.task == task]
        metric, mode = frame.metric.iloc[0], frame["mode"].iloc[0]
        lines += [
            f"### {task}",
            "",
            f"Primary metric `{metric}` ({'higher' if mode == 'max' else 'lower'} is better). "
            f"Tables: {_table_links(artifacts, out_dir, f'comparison_{task}')}",
            "",
        ]
        lines += [markdown(comparison.per_task[task][1]), ""]
        footer = not_comparable_footer(comparison.not_comparable.get(task), by_ref=True)
        lines += [*footer, ""] if footer else []
        for kind, title in (
            ("curves", "Learning curves"),
            ("eps", "ε sensitivity (nominal ε and effective floor)"),
            ("ablation_floor", "Ablation corners on the effective-floor axis"),
            ("ablation_by_variant", "Ablation effects per variant (e.g. model size)"),
            ("samples", "Generated samples"),
        ):
            png = artifacts.figures.get(task, {}).get(kind)
            if png is not None:
                lines += [
                    f"{title}: [PNG]({_rel(png, out_dir)}) · [PDF]({_rel(png.with_suffix('.pdf'), out_dir)})",
                    "",
                    f"![{title}]({_rel(png, out_dir)})",
                    "",
                ]
        figure = artifacts.figures.get(task, {}).get("diagnostics")
        lines += optimizer_diagnostics.report_section(data, task, figure, out_dir)
        if task in ablation.displays:
            lines += [
                "**Belief × ε ablation** (improvements: positive = better; paired Student-t intervals over seeds; "
                "p_H: Holm-adjusted p, family in the verdicts section):",
                "",
                markdown(ablation.displays[task]),
                "",
            ]
            if task in ablation.matched_displays:
                lines += [
                    "**Placement at a matched floor** (ε inside at ε against the same second moment with ε outside "
                    "at the inside floor √(ε/(1−β₂)); placement = placement at matched floor + floor size):",
                    "",
                    markdown(ablation.matched_displays[task]),
                    "",
                ]
            lines += [f"> {ablation.sentences[task]}", ""]
    toy = artifacts.global_figures.get("toy2d")
    if toy is not None:
        lines += ["## 2-D test functions", "", f"![toy 2-D trajectories]({_rel(toy, out_dir)})", ""]

    if ablation.sentences:
        lines += ["## Belief × ε ablation: verdicts", "", ablation.family_note(), ""]
        lines += [f"- {ablation.sentences[t]}" for t in sorted(ablation.sentences)]
        lines += [""]

    if speed_lines:
        lines += ["## Speed: time to target and performance profiles", "", *SPEED_TEXT, "", *speed_lines]

    if views:
        lines += [
            "## Paper views",
            "",
            "Laid out like the papers' tables; published numbers beside ours (— where we have no runs; "
            "ours: mean ± std over seeds, [setting] when the config is not the paper's name).",
            "",
        ]
        for stem, view in views.items():
            lines += [
                f"### {view.title}",
                "",
                f"Tables: {_table_links(artifacts, out_dir, f'paper_{stem}')}",
                "",
                markdown(view.display),
                "",
            ]
            footer = not_comparable_footer(view.not_comparable)
            lines += [*footer, ""] if footer else []

    lines += extra_sections or []  # e.g. the generalization gap (analysis/gap.py)
    lines += ["## What is missing", ""]
    missing = _missing(data, published, config_dir)
    lines += missing if missing else ["Nothing: every configured task has runs and no run is incomplete or failed."]
    lines += [""]
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _table_links(artifacts: Artifacts, out_dir: Path, stem: str) -> str:
    md = artifacts.tables.get(stem)
    if md is None:
        return "—"
    return " · ".join(f"[{ext}]({_rel(md.with_suffix('.' + ext), out_dir)})" for ext in ("md", "csv", "tex"))
