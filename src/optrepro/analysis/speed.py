"""Speed: time to target per run, performance profiles and the AlgoPerf score over the tasks of a grid.

Time to target (per run, from its metrics.jsonl rows, so old run folders get it too): the first eval
point whose value of the target's metric reaches the target, in the direction of the metric (``max``:
value >= target; ``min``: value <= target), as its logged step, epoch and wall-clock second. The
eval points are the ones logged, taken in step order, no interpolation; a NaN value never reaches; a
curve that reaches and falls back still reached at its first crossing. A run that never reaches is a
miss (``reached`` false, times NaN), never the run's length.

Targets come from ``configs/analysis/speed.yaml`` (per task, each with its origin): ``fixed`` (a value
stated in the file), ``published`` (a number of results/published_results.csv, e.g. the authors'
final Adam value) and ``reference`` (AlgoPerf-style: the median over seeds of the best value that a
reference arm's runs of this grid reached).

An *arm* is one optimizer of a task at its main setting (the setting with the most counted runs);
its seeds are its completed and diverged runs. The arm reaches the target when at least
``required_share`` of its seeds do (AlgoPerf: 3 of 5); its time is then the median over seeds with
misses as +inf, else +inf. DeepOBS' speed is beside it: the mean first epoch over the seeds that
reached (with how many did).

Performance profile over the tasks T that have the target: r(task, arm) = t / t_best (t_best: the
fastest arm on that task; +inf when the arm missed or did not run), rho(tau) = |{task: r <= tau}| / |T|,
and the AlgoPerf score = (1 / (r_max - 1)) * integral of rho from 1 to r_max (r_max = 4): 1 when the
arm is the fastest on every task, 0 when it is never within r_max times the fastest. For a step
function the integral is exact: each task with r <= r_max adds (r_max - r) / ((r_max - 1) |T|).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from optrepro.analysis.load import RunsData
from optrepro.status import RunStatus

MEASURES = {"step": "steps", "wall_time": "wall-clock s", "epoch": "epochs"}
#: defaults when the config file is missing or leaves them out
REQUIRED_SHARE = 0.6
R_MAX = 4.0
DEFAULT_TARGETS: list[dict[str, Any]] = [
    {"id": "reference_best", "kind": "reference", "arm": ["adam", "ablation_adam"],
     "origin": "AlgoPerf-style: median over seeds of the best value the adam arm of this grid reached"},
]
_MIN_WORDS = ("loss", "ppl", "fid", "distance", "error", "nll")
_MAX_WORDS = ("acc", "bleu", "map", "top1", "top5", "covered", "fraction")


@dataclass(frozen=True)
class Target:
    """One resolved target of one task; ``value`` NaN when it could not be resolved (``origin`` says why)."""

    task: str
    id: str
    kind: str
    metric: str
    mode: str
    value: float
    origin: str


@dataclass
class SpeedConfig:
    """configs/analysis/speed.yaml, read."""

    required_share: float
    r_max: float
    default: dict[str, Any]
    tasks: dict[str, dict[str, Any]]

    def entry(self, task: str) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        """(metric, mode, target specs) of a task: the default's targets, then the task's own."""
        own = self.tasks.get(task) or {}
        metric = own.get("metric", self.default.get("metric"))
        mode = own.get("mode", self.default.get("mode"))
        specs = [*(self.default.get("targets") or []), *(own.get("targets") or [])]
        return metric, mode, specs


def load_speed_config(path: Path | None) -> SpeedConfig:
    """The targets file; a missing one gives the defaults (reference arm adam on the primary metric)."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        raw = yaml.safe_load(Path(path).read_text()) or {}
    default = raw.get("default") or {"metric": None, "targets": DEFAULT_TARGETS}
    return SpeedConfig(float(raw.get("required_share", REQUIRED_SHARE)), float(raw.get("r_max", R_MAX)),
                       default, dict(raw.get("tasks") or {}))


def metric_mode(metric: str, stated: str | None = None, primary: tuple[str, str] | None = None) -> str | None:
    """Direction of a metric: as stated, else the run summary's mode for the primary metric, else from its
    name (loss/ppl/fid/... down, acc/bleu/map/... up); None when none of these says."""
    if stated in ("max", "min"):
        return stated
    if primary is not None and metric == primary[0] and primary[1] in ("max", "min"):
        return primary[1]
    name = metric.lower()
    if any(w in name for w in _MIN_WORDS):
        return "min"
    if any(w in name for w in _MAX_WORDS):
        return "max"
    return None


# ------------------------------------------------------------------------------------- one curve
def reaches(values: np.ndarray, target: float, mode: str) -> np.ndarray:
    """Per point: does it reach the target (NaN never does)."""
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = values >= target if mode == "max" else values <= target
    return hit & np.isfinite(values)


def time_to_target(points: pd.DataFrame, target: float, mode: str) -> dict[str, Any]:
    """First eval point (in step order) of ``points`` (columns step, epoch, wall_time, value) reaching the
    target: {reached, step, epoch, wall_time}; times NaN on a miss."""
    miss = {"reached": False, "step": math.nan, "epoch": math.nan, "wall_time": math.nan}
    if not math.isfinite(target) or points.empty:
        return miss
    pts = points.sort_values("step", kind="stable")
    hit = reaches(pts.value.to_numpy(float), target, mode)
    if not hit.any():
        return miss
    first = pts.iloc[int(np.argmax(hit))]
    return {"reached": True, "step": float(first.step), "epoch": float(first.epoch),
            "wall_time": float(first.wall_time)}


def best_value(values: np.ndarray, mode: str) -> float:
    """Best finite value of a curve in the metric's direction (NaN when none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan
    return float(values.max() if mode == "max" else values.min())


# ------------------------------------------------------------------------------------- arms and targets
def arms(data: RunsData) -> pd.DataFrame:
    """Runs that are seeds of an arm: per task and optimizer its main setting, completed or diverged runs."""
    from optrepro.analysis.tables import main_setting

    runs = data.runs[data.runs.status.isin([RunStatus.COMPLETED, RunStatus.DIVERGED])]
    parts = []
    for _, sub in runs.groupby(["task", "optimizer"], sort=True):
        parts.append(sub[sub.setting == main_setting(sub)])
    return pd.concat(parts, ignore_index=True) if parts else runs.iloc[0:0]


class _Curves:
    """A grid's curves indexed by (run, key) once: a mask over every row per run and target would be
    quadratic in the grid's size."""

    COLUMNS = ["step", "epoch", "wall_time", "value"]

    def __init__(self, curves: pd.DataFrame) -> None:
        self.groups = {key: g[self.COLUMNS] for key, g in curves.groupby(["run", "key"], sort=False)}
        self.empty = pd.DataFrame(columns=self.COLUMNS)

    def points(self, run: str, metric: str) -> pd.DataFrame:
        return self.groups.get((run, metric), self.empty)


def _published_value(published: pd.DataFrame, task: str, spec: dict[str, Any]) -> tuple[float, str | None, str]:
    """(value, metric, origin) of a ``published`` target from published_results.csv."""
    rows = published[(published.task == task) & (published.optimizer == spec.get("optimizer"))]
    for col in ("paper", "table", "which", "metric"):
        if spec.get(col) is not None:
            rows = rows[rows[col].astype(str) == str(spec[col])]
    where = ", ".join(f"{c}={spec[c]}" for c in ("paper", "table", "optimizer", "which") if spec.get(c) is not None)
    if len(rows) != 1:
        return math.nan, spec.get("metric"), f"published_results.csv has {len(rows)} rows for {task} {where}"
    row = rows.iloc[0]
    return float(row.value), str(row.metric), f"published_results.csv: {task} {where} ({row.source})"


def _curve_value(curves: pd.DataFrame | None, task: str, spec: dict[str, Any], metric: str,
                 mode: str) -> tuple[float, str]:
    """(value, origin) of a ``published_curve`` target: the final (last epoch) or best value of an optimizer's
    curve in results/published_curves.csv.gz, unrounded."""
    optimizer, which = spec.get("optimizer"), spec.get("which", "final")
    where = f"published_curves.csv.gz: {task} {optimizer} {metric} {which}"
    if curves is None or curves.empty:
        return math.nan, f"{where}: no published curves loaded"
    sub = curves[(curves.task == task) & (curves.optimizer == optimizer) & (curves.metric == metric)]
    if sub.empty:
        return math.nan, f"{where}: no such curve"
    sub = sub.sort_values("epoch")
    if which == "final":
        return float(sub.value.iloc[-1]), f"{where} (epoch {int(sub.epoch.iloc[-1])})"
    return best_value(sub.value.to_numpy(float), mode), where


def resolve_targets(
    cfg: SpeedConfig,
    tasks: list[str],
    published: pd.DataFrame,
    primary: dict[str, tuple[str, str]],
    reference_best: Any,
    curves: pd.DataFrame | None = None,
) -> list[Target]:
    """Every target of every task; ``reference_best(task, arm, metric, mode)`` -> (value, origin) computes the
    AlgoPerf-style ones on whatever curves the caller has (our runs or the published curves); ``curves``
    (the authors' curves) resolve the ``published_curve`` ones."""
    out = []
    for task in tasks:
        task_metric, task_mode, specs = cfg.entry(task)
        for spec in specs:
            kind = str(spec.get("kind"))
            metric = spec.get("metric") or task_metric or (primary.get(task) or (None, None))[0]
            origin = str(spec.get("origin") or "")
            if kind == "published":
                value, pub_metric, where = _published_value(published, task, spec)
                metric = spec.get("metric") or pub_metric or metric
                origin = f"{origin}; {where}" if origin else where
            if metric is None:
                continue
            mode = metric_mode(str(metric), spec.get("mode") or task_mode, primary.get(task))
            if mode is None:
                out.append(Target(task, str(spec["id"]), kind, str(metric), "?", math.nan,
                                  f"direction of {metric} unknown: state mode: max|min in speed.yaml"))
                continue
            if kind == "fixed":
                value = float(spec["value"])
            elif kind == "published_curve":
                value, where = _curve_value(curves, task, spec, str(metric), mode)
                origin = f"{origin}; {where}" if origin else where
            elif kind == "reference":  # arm: one arm, or a list: the first that has runs on the task
                arm = spec.get("arm", "adam")
                for candidate in [arm] if isinstance(arm, str) else list(arm):
                    value, why = reference_best(task, str(candidate), str(metric), mode)
                    if not math.isnan(value):
                        break
                origin = f"{origin} ({why})" if origin else why
            elif kind not in ("published", "published_curve"):
                raise ValueError(f"speed.yaml: target {spec.get('id')} of {task}: unknown kind {kind!r}")
            out.append(Target(task, str(spec["id"]), kind, str(metric), mode, value, origin))
    return out


def targets_for_runs(cfg: SpeedConfig, data: RunsData, published: pd.DataFrame,
                     curves: pd.DataFrame | None = None) -> list[Target]:
    """Targets of the tasks of a grid; reference targets from its own arms."""
    seeds = arms(data)
    indexed = _Curves(data.curves)
    primary = {str(t): (str(f.metric.iloc[0]), str(f["mode"].iloc[0])) for t, f in data.runs.groupby("task")}

    def reference(task: str, arm: str, metric: str, mode: str) -> tuple[float, str]:
        runs = seeds[(seeds.task == task) & (seeds.optimizer == arm)]
        bests = [best_value(indexed.points(r, metric).value.to_numpy(float), mode) for r in runs.run]
        bests = [b for b in bests if math.isfinite(b)]
        if not bests:
            return math.nan, f"no runs of arm {arm} with {metric} in this grid"
        return float(np.median(bests)), f"median of {len(bests)} seeds' best {metric} of {runs.setting.iloc[0]}"

    return resolve_targets(cfg, sorted(primary), published, primary, reference, curves)


# ------------------------------------------------------------------------------------- tables
TARGET_COLUMNS = ["task", "target", "kind", "metric", "mode", "target_value", "origin"]


def targets_frame(targets: list[Target]) -> pd.DataFrame:
    return pd.DataFrame([(t.task, t.id, t.kind, t.metric, t.mode, t.value, t.origin) for t in targets],
                        columns=TARGET_COLUMNS)


def run_table(data: RunsData, targets: list[Target]) -> pd.DataFrame:
    """Per run of an arm and target: reached, and the first step / epoch / wall-clock second."""
    seeds = arms(data)
    indexed = _Curves(data.curves)
    rows = []
    for t in targets:
        if not math.isfinite(t.value):
            continue
        for _, run in seeds[seeds.task == t.task].iterrows():
            hit = time_to_target(indexed.points(run.run, t.metric), t.value, t.mode)
            rows.append({"run": run.run, "task": t.task, "optimizer": run.optimizer, "setting": run.setting,
                         "seed": int(run.seed), "status": run.status, "target": t.id, "metric": t.metric,
                         "mode": t.mode, "target_value": t.value, **hit})
    columns = ["run", "task", "optimizer", "setting", "seed", "status", "target", "metric", "mode",
               "target_value", "reached", "step", "epoch", "wall_time"]
    return pd.DataFrame(rows, columns=columns)


def arm_table(per_run: pd.DataFrame, required_share: float) -> pd.DataFrame:
    """Per task, target and arm: seeds, seeds reached, whether the arm reaches (>= required_share of its
    seeds), its median times (misses +inf; +inf when it does not reach) and DeepOBS' speed (mean first
    epoch over the seeds that reached)."""
    rows = []
    keys = ["task", "target", "optimizer", "setting"]
    for key, sub in per_run.groupby(keys, sort=True):
        n, k = len(sub), int(sub.reached.sum())
        counts = n > 0 and k >= math.ceil(required_share * n - 1e-9)
        row = dict(zip(keys, key, strict=True))
        row.update({"target_value": float(sub.target_value.iloc[0]), "seeds": n, "reached_seeds": k,
                    "reaches": bool(counts)})
        for measure in MEASURES:
            times = sub[measure].where(sub.reached, math.inf).to_numpy(float)
            row[measure] = float(np.median(times)) if counts else math.inf
        reached = sub[sub.reached]
        row["speed_epochs"] = float(reached.epoch.mean()) if len(reached) else math.nan
        rows.append(row)
    columns = [*keys, "target_value", "seeds", "reached_seeds", "reaches", *MEASURES, "speed_epochs"]
    return pd.DataFrame(rows, columns=columns)


def ratios(times: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Task x optimizer table of r = t / t_best for one target (times: task, optimizer, <measure>); an arm
    that missed or did not run the task is +inf; t_best = 0 gives r = 1 for the arms at 0."""
    t = times.pivot_table(index="task", columns="optimizer", values=measure, aggfunc="first")
    t = t.astype(float).fillna(math.inf)
    out = t.copy()
    for task, row in t.iterrows():
        finite = row[np.isfinite(row)]
        if finite.empty:
            out.loc[task] = math.inf
            continue
        best = float(finite.min())
        out.loc[task] = np.where(row == best, 1.0, row / best) if best > 0 else np.where(row == 0, 1.0, math.inf)
    return out


def rho(r: pd.Series, tau: float) -> float:
    """Share of the tasks (entries of ``r``) with ratio <= tau."""
    return float((r.to_numpy(float) <= tau).mean()) if len(r) else math.nan


def score(r: pd.Series, r_max: float = R_MAX) -> float:
    """AlgoPerf score: the integral of rho over [1, r_max] divided by r_max - 1, exact for the step function."""
    values = r.to_numpy(float)
    if not len(values):
        return math.nan
    inside = values[values <= r_max]
    return float(np.sum((r_max - np.maximum(inside, 1.0)) / (r_max - 1)) / len(values))


def profile_table(arm_rows: pd.DataFrame, measures: list[str], r_max: float) -> pd.DataFrame:
    """Per optimizer, for one target: the score per measure, tasks reached / tasks, and r per task."""
    tasks = sorted(arm_rows.task.unique())
    optimizers = sorted(arm_rows.optimizer.unique())
    out = pd.DataFrame({"optimizer": optimizers})
    for measure in measures:
        r = ratios(arm_rows, measure).reindex(index=tasks, columns=optimizers).fillna(math.inf)
        out[f"score_{measure}"] = [score(r[o], r_max) for o in optimizers]
        for task in tasks:
            out[f"r_{measure}:{task}"] = [float(r.loc[task, o]) for o in optimizers]
    reached = arm_rows[arm_rows.reaches].groupby("optimizer").size()
    ran = arm_rows.groupby("optimizer").size()
    out["tasks_reached"] = [int(reached.get(o, 0)) for o in optimizers]
    out["tasks_run"] = [int(ran.get(o, 0)) for o in optimizers]
    out["tasks"] = len(tasks)
    return out.sort_values(f"score_{measures[0]}", ascending=False, kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------- published curves
def published_speed(cfg: SpeedConfig, curves: pd.DataFrame, published: pd.DataFrame,
                    primary: dict[str, tuple[str, str]] | None = None) -> tuple[list[Target], pd.DataFrame]:
    """Time to target on the authors' own curves (one run per optimizer; the eval points are epochs):
    the targets of each task they cover (reference ones: the reference arm's best on its published curve),
    and per task, target and optimizer the first epoch reaching it."""
    if curves.empty:
        return [], pd.DataFrame(columns=[*TARGET_COLUMNS[:2], "optimizer", "target_value", "reached", "epoch"])

    def points(task: str, optimizer: str, metric: str) -> pd.DataFrame:
        sub = curves[(curves.task == task) & (curves.optimizer == optimizer) & (curves.metric == metric)]
        return pd.DataFrame({"step": sub.epoch, "epoch": sub.epoch, "wall_time": math.nan, "value": sub.value})

    def reference(task: str, arm: str, metric: str, mode: str) -> tuple[float, str]:
        value = best_value(points(task, arm, metric).value.to_numpy(float), mode)
        why = f"best {metric} of the published {arm} curve" if math.isfinite(value) else f"no published {arm} curve"
        return value, why

    targets = resolve_targets(cfg, sorted(curves.task.unique()), published, primary or {}, reference, curves)
    rows = []
    for t in targets:
        if not math.isfinite(t.value):
            continue
        for optimizer in sorted(curves[(curves.task == t.task) & (curves.metric == t.metric)].optimizer.unique()):
            hit = time_to_target(points(t.task, optimizer, t.metric), t.value, t.mode)
            rows.append({"task": t.task, "target": t.id, "optimizer": optimizer, "target_value": t.value,
                         "reached": hit["reached"], "epoch": hit["epoch"]})
    return targets, pd.DataFrame(rows, columns=["task", "target", "optimizer", "target_value", "reached", "epoch"])


# ------------------------------------------------------------------------------------- figure
def profile_figure(arm_rows: pd.DataFrame, measures: list[str], r_max: float, title: str, out_dir: Path,
                   stem: str) -> Path:
    """rho(tau) for tau in [1, r_max], one step line per optimizer, one panel per measure."""
    from optrepro.analysis.figures import _color, plt, save

    tasks = sorted(arm_rows.task.unique())
    optimizers = sorted(arm_rows.optimizer.unique())
    fig, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4.2), squeeze=False,
                             layout="constrained")
    taus = np.linspace(1.0, r_max, 301)
    for ax, measure in zip(axes[0], measures, strict=True):
        r = ratios(arm_rows, measure).reindex(index=tasks, columns=optimizers).fillna(math.inf)
        for i, optimizer in enumerate(optimizers):
            ys = [rho(r[optimizer], tau) for tau in taus]
            ax.step(taus, ys, where="post", color=_color(i), ls="-" if i < 10 else "--",
                    label=f"{optimizer} (score {score(r[optimizer], r_max):.2f})")
        ax.set_xlim(1.0, r_max)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"τ (time / fastest time, in {MEASURES[measure]})")
        ax.set_ylabel(f"ρ(τ): share of the {len(tasks)} task(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return save(fig, out_dir, stem)


# ------------------------------------------------------------------------------------- writing
@dataclass
class SpeedResult:
    """What the analysis wrote for the speed section: Markdown blocks and figure paths."""

    lines: list[str]
    overlays: dict[str, Path]


def _time_text(value: float, digits: int = 4) -> str:
    from optrepro.analysis.tables import DASH, fmt

    if value == math.inf:
        return "not reached"
    return DASH if not math.isfinite(value) else fmt(value, digits)


def _rel(path: Path, out_dir: Path) -> str:
    import os

    return Path(os.path.relpath(path, out_dir)).as_posix()


def _arm_display(arm_rows: pd.DataFrame) -> pd.DataFrame:
    from optrepro.analysis.tables import fmt

    return pd.DataFrame({
        "task": arm_rows.task,
        "target": [f"{fmt(v)}" for v in arm_rows.target_value],
        "optimizer": arm_rows.setting,
        "seeds reached": [f"{k}/{n}" for k, n in zip(arm_rows.reached_seeds, arm_rows.seeds, strict=True)],
        "steps (median)": [_time_text(v) for v in arm_rows.step],
        "epochs (median)": [_time_text(v) for v in arm_rows.epoch],
        "wall s (median)": [_time_text(v, 3) for v in arm_rows.wall_time],
        "speed: mean epoch (DeepOBS)": [_time_text(v) for v in arm_rows.speed_epochs],
    })


def _profile_display(table: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    from optrepro.analysis.tables import fmt

    out = pd.DataFrame({"optimizer": table.optimizer})
    for m in measures:
        out[f"score ({MEASURES[m]})"] = [fmt(v, 3) for v in table[f"score_{m}"]]
    out["tasks reached / run / all"] = [f"{a} / {b} / {c}" for a, b, c in
                                        zip(table.tasks_reached, table.tasks_run, table.tasks, strict=True)]
    return out


def _published_display(rows: pd.DataFrame, targets: list[Target]) -> pd.DataFrame:
    from optrepro.analysis.tables import fmt

    values = {t.task: t.value for t in targets}
    cols = {}
    for task, sub in rows.groupby("task", sort=True):
        mode = next(t.mode for t in targets if t.task == task)
        header = f"{task} ({'≥' if mode == 'max' else '≤'} {fmt(values[task])})"
        cols[header] = {o: (str(int(e)) if r else "not reached") for o, r, e in
                        zip(sub.optimizer, sub.reached, sub.epoch, strict=True)}
    frame = pd.DataFrame(cols)
    frame = frame.fillna("—").sort_index()
    return frame.rename_axis("optimizer").reset_index()


def write_speed(out_dir: Path, data: RunsData, published: pd.DataFrame, curves: pd.DataFrame,
                cfg: SpeedConfig, make_figures: bool) -> SpeedResult:
    """Every speed table and figure of a grid (and of the authors' curves) under ``out_dir``; the report's lines."""
    from optrepro.analysis.curves import overlay_figures
    from optrepro.analysis.tables import write_table

    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    lines: list[str] = []
    targets = targets_for_runs(cfg, data, published, curves) if not data.runs.empty else []
    per_run = run_table(data, targets) if targets else run_table(data, [])
    arm_rows = arm_table(per_run, cfg.required_share)
    if targets:
        tables_dir.mkdir(parents=True, exist_ok=True)
        targets_frame(targets).to_csv(tables_dir / "speed_targets.csv", index=False, lineterminator="\n")
        per_run.to_csv(tables_dir / "time_to_target_runs.csv", index=False, lineterminator="\n")
        arm_rows.to_csv(tables_dir / "time_to_target.csv", index=False, lineterminator="\n")
        from optrepro.analysis.tables import fmt

        shown = targets_frame(targets).assign(target_value=lambda f: f.target_value.map(fmt))
        lines += ["**Targets** (configs/analysis/speed.yaml; a target whose value is — could not be resolved, "
                  "the origin says why):", "", shown.to_markdown(index=False), ""]
    measures = ["step", "wall_time"]
    for target_id, rows in arm_rows.groupby("target", sort=True):
        stem = f"time_to_target_{target_id}"
        write_table(tables_dir, stem, rows, _arm_display(rows), f"time to target `{target_id}`")
        table = profile_table(rows, measures, cfg.r_max)
        write_table(tables_dir, f"profile_{target_id}", table, _profile_display(table, measures),
                    f"performance profile `{target_id}`")
        lines += [f"### Target `{target_id}`", "",
                  f"Performance profile over {rows.task.nunique()} task(s) (AlgoPerf score, r_max = {cfg.r_max:g}; "
                  f"an arm reaches a task when ≥ {cfg.required_share:.0%} of its seeds do):", "",
                  _profile_display(table, measures).to_markdown(index=False), ""]
        if make_figures:
            png = profile_figure(rows, measures, cfg.r_max, f"performance profile: target {target_id}",
                                 figures_dir, f"profile_{target_id}")
            lines += [f"![profile {target_id}]({_rel(png, out_dir)})", ""]
        lines += ["<details><summary>Time to target per task and optimizer</summary>", "",
                  _arm_display(rows).to_markdown(index=False), "", "</details>", ""]

    pub_targets, pub_rows = published_speed(cfg, curves, published)
    if len(pub_rows):
        tables_dir.mkdir(parents=True, exist_ok=True)
        pub_rows.to_csv(tables_dir / "published_time_to_target.csv", index=False, lineterminator="\n")
        lines += ["### The authors' own curves", "",
                  "First epoch at which each optimizer's published curve (AdaBelief repo, one run each, "
                  "results/published_curves.csv.gz) reaches the target; the column says the target.", ""]
        for target_id, rows in pub_rows.groupby("target", sort=True):
            chosen = [t for t in pub_targets if t.id == target_id and math.isfinite(t.value)]
            display = _published_display(rows, chosen)
            write_table(tables_dir, f"published_time_to_target_{target_id}", rows, display,
                        f"authors' curves: first epoch reaching `{target_id}`")
            arm_like = rows.assign(setting=rows.optimizer, seeds=1, reached_seeds=rows.reached.astype(int),
                                   reaches=rows.reached, step=rows.epoch.where(rows.reached, math.inf),
                                   wall_time=math.inf, speed_epochs=rows.epoch)
            arm_like["epoch"] = arm_like.step
            table = profile_table(arm_like, ["epoch"], cfg.r_max)
            scores = ", ".join(f"{o} {s:.2f}" for o, s in zip(table.optimizer, table.score_epoch, strict=True))
            origins = "; ".join(dict.fromkeys(t.origin.split("; ")[0].split(" (")[0] for t in chosen))
            lines += [f"**`{target_id}`** ({origins}):", "",
                      display.to_markdown(index=False), "",
                      f"AlgoPerf score over these {rows.task.nunique()} task(s), in epochs: {scores}.", ""]
    overlays: dict[str, Path] = {}
    if make_figures and not curves.empty and not data.runs.empty:
        metrics = {t.task: t.metric for t in targets if t.kind in ("published", "published_curve")}
        for task in data.runs.task.astype(str).unique():
            if task not in metrics and task in set(curves.task):
                metrics[task] = next(t.metric for t in targets if t.task == task)
        overlays = overlay_figures(data, curves, metrics, figures_dir)
        for task, png in sorted(overlays.items()):
            rel = _rel(png, out_dir)
            lines += [f"Published curves beside ours, {task}: [PNG]({rel}) · "
                      f"[PDF]({_rel(png.with_suffix('.pdf'), out_dir)})", "", f"![{task} overlay]({rel})", ""]
    return SpeedResult(lines, overlays)
