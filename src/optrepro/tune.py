"""Equal tuning budgets: ``python -m optrepro.tune --space digits_ablation [--budget 8] [--seeds 0,1,2]``.

The protocol (README "Equal tuning budgets"), one command from search to verdict:

1. **Trials.** Every arm of ``configs/tune/<space>.yaml`` gets the same number of trials (``budget``) of
   ``hydra/sweeper=optuna`` over its own search space (a quasi-random Sobol sampler,
   :mod:`optrepro.sobol_sampler`, or Optuna's RandomSampler). A trial is an ordinary ``optrepro.train``
   run folder under ``<results>/trials``; Optuna is told the run's validation metric
   (``Outcome.objective``: the task's ``val_metric``, never a test metric).
2. **Selection** (:func:`select`) reads the trial run folders of the arm and picks the best final value of
   the space's ``objective`` (a validation key); nothing else in the run is looked at.
3. **Reruns.** The chosen config of each arm is rerun with ``seeds`` under ``<results>/runs``; the same arms
   at the papers' settings (their recipes, no search) run on the same data and seeds under
   ``<results>/paper``.
4. **Report** (``<results>/TUNE.md``, ``tune_*.csv``): the trials and choices, test results with intervals,
   the generalization gap, and, for the belief × ε ablation, the verdict twice -- at the papers' settings and
   under equal budget -- with a line saying where they disagree.

Run folders are content-hashed, so the command resumes: trials drawn again (same sampler seed) and reruns
already done are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from optrepro.config import CONFIG_DIR
from optrepro.errors import UserError

SPACE_DIR = CONFIG_DIR / "tune"
SAMPLERS = ("sobol", "random")


@dataclasses.dataclass
class Space:
    """One ``configs/tune/<name>.yaml``: the task, the arms and their search spaces, the budget."""

    name: str
    task: str
    arms: dict[str, dict[str, str]]
    objective: str
    direction: str
    budget: int
    seeds: list[int]
    trial_seed: int
    sampler: str = "sobol"
    sampler_seed: int = 0
    overrides: list[str] = dataclasses.field(default_factory=list)

    @property
    def mode(self) -> str:
        return "max" if self.direction == "maximize" else "min"


def load_space(name: str, budget: int | None = None, seeds: list[int] | None = None) -> Space:
    """The search-space config ``name`` (a file under configs/tune/, or a path), with overrides."""
    path = Path(name) if name.endswith(".yaml") else SPACE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))) or "none"
        raise UserError(f"no tuning space '{name}' ({path}); choose one of: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(Space)} - {"name"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; a tuning space has {', '.join(sorted(fields))}")
    space = Space(name=path.stem, **raw)
    if budget is not None:
        space.budget = budget
    if seeds is not None:
        space.seeds = seeds
    if space.budget < 1:
        raise UserError(f"the budget is trials per arm and must be >= 1, got {space.budget}")
    if space.direction not in ("maximize", "minimize"):
        raise UserError(f"{path}: direction must be maximize or minimize, got {space.direction!r}")
    if space.sampler not in SAMPLERS:
        raise UserError(f"{path}: sampler must be one of {', '.join(SAMPLERS)}, got {space.sampler!r}")
    if not space.objective.startswith(("val_", "valid_")):
        raise UserError(f"{path}: objective {space.objective!r} is not a validation metric (val_* or valid_*); "
                        "selection on a test metric would make the test numbers optimistic")
    if space.trial_seed in space.seeds:
        raise UserError(f"{path}: trial_seed {space.trial_seed} is one of the rerun seeds; keep them apart")
    return space


# ------------------------------------------------------------------------------------- commands
def train_command(space: Space, optimizer: str, results: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "optrepro.train", "-m", f"task={space.task}", f"optimizer={optimizer}",
            *space.overrides, *extra, f"results_dir={results}", "progress=false"]


LAUNCHERS = ("basic", "joblib", "population")


def launcher_args(jobs: int, launcher: str = "basic") -> list[str]:
    """``basic``: one run after another (``jobs`` > 1 makes it joblib); ``population``: the runs of a sweep
    train as one batched model (hydra/launcher=population; the tasks that batch: digits, toy2d, ...)."""
    if launcher == "population":
        return ["hydra/launcher=population"]
    if launcher == "joblib" or jobs > 1:
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={max(jobs, 1)}"]
    return []


def trial_command(space: Space, arm: str, results: Path, jobs: int = 1, extra: list[str] | None = None,
                  launcher: str = "basic") -> list[str]:
    """``optrepro.train -m`` with the Optuna sweeper over the arm's space: ``budget`` trials, one study per arm.
    Optuna asks for ``jobs`` trials at a time (all ``budget`` of them with the population launcher: the
    quasi-random and random samplers do not learn from earlier trials, so nothing is lost by asking at once)."""
    params = space.arms[arm]
    batch = space.budget if launcher == "population" else max(jobs, 1)
    sampler = ["hydra/sweeper/sampler=sobol", f"hydra.sweeper.sampler.dims=[{','.join(params)}]"] \
        if space.sampler == "sobol" else ["hydra/sweeper/sampler=random"]
    return train_command(space, arm, results / "trials", [
        f"seed={space.trial_seed}", "hydra/sweeper=optuna", *sampler,
        f"hydra.sweeper.sampler.seed={space.sampler_seed}", f"hydra.sweeper.n_trials={space.budget}",
        f"hydra.sweeper.n_jobs={batch}", f"hydra.sweeper.direction={space.direction}",
        f"hydra.sweeper.study_name={space.name}-{arm}", "hydra.sweeper.max_failure_rate=1.0",
        f"hydra.sweep.dir={results / 'sweeps' / arm}", *launcher_args(jobs, launcher),
        *(f"{key}={value}" for key, value in params.items()), *(extra or [])])


def run_command(cmd: list[str], log: Path) -> None:
    """Run one sweep, its output appended to ``log``; a failed sweep is an error naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        raise UserError(f"command failed (exit {code}); see {log}: {' '.join(cmd[3:])}")


# ------------------------------------------------------------------------------------- selection
def trial_runs(sweep_dir: Path) -> list[Path]:
    """The run folders of one arm's trials (the sweep's own outcome records, not every folder on disk)."""
    from optrepro.sweep import read_outcomes

    seen: dict[str, None] = {}
    for row in read_outcomes(sweep_dir):
        if row.get("run_dir"):
            seen.setdefault(str(row["run_dir"]), None)
    return [Path(p) for p in seen]


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def select(run_dirs: list[Path], objective: str, mode: str) -> tuple[Path, float] | None:
    """The trial with the best final ``objective`` (a validation metric) among the completed ones; ties go
    to the first by folder name. Reads ``summary.json``'s ``final[objective]`` and nothing else, so no test
    number can move the choice. None when no trial completed with a finite objective."""
    scored = []
    for run_dir in sorted(run_dirs, key=lambda p: p.name):
        summary = _read_summary(run_dir)
        if summary is None or summary.get("status") != "completed":
            continue
        value = (summary.get("final") or {}).get(objective)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            scored.append((float(value), run_dir))
    if not scored:
        return None
    sign = -1.0 if mode == "max" else 1.0
    value, best = min(scored, key=lambda vr: sign * vr[0])  # min keeps the first of equal values
    return best, value


def chosen_overrides(run_dir: Path, keys: list[str]) -> list[str]:
    """``key=value`` of the searched keys as the chosen trial ran them (its config.yaml)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    out = []
    for key in keys:
        node: Any = cfg
        for part in key.split("."):
            node = node[part]
        out.append(f"{key}={node!r}" if isinstance(node, float) else f"{key}={node}")
    return out


# ------------------------------------------------------------------------------------- the protocol
def tune(space: Space, results: Path, jobs: int = 1, extra: list[str] | None = None,
         say: Any = print, launcher: str = "basic") -> dict[str, Any]:
    """Trials, selection, reruns and paper-setting runs of every arm; returns what the report needs."""
    results.mkdir(parents=True, exist_ok=True)
    log = results / "tune.log"
    seeds = ",".join(str(s) for s in space.seeds)
    chosen: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for arm in space.arms:
        sweep_dir = results / "sweeps" / arm
        shutil.rmtree(sweep_dir, ignore_errors=True)  # this call's outcome records only; run folders stay
        say(f"{arm}: {space.budget} trial(s) of {', '.join(space.arms[arm])} ({space.sampler})")
        run_command(trial_command(space, arm, results, jobs, extra, launcher), log)
        pick = select(trial_runs(sweep_dir), space.objective, space.mode)
        if pick is None:
            raise UserError(f"{arm}: no trial completed with a finite {space.objective}; see {log}")
        best, value = pick
        overrides = chosen_overrides(best, list(space.arms[arm]))
        chosen[arm] = {"trial": best.name, "objective": value, "overrides": overrides}
        say(f"{arm}: chose {' '.join(overrides)} ({space.objective}={value:.4g}, {best.name})")
    timings["trials_s"] = time.perf_counter() - start
    mid = time.perf_counter()
    for arm, pick in chosen.items():
        run_command(train_command(space, arm, results / "runs",
                                  [f"seed={seeds}", *pick["overrides"], *launcher_args(jobs, launcher),
                                   *(extra or [])]), log)
    say(f"reruns with seeds {seeds} -> {results / 'runs'}")
    run_command(train_command(space, ",".join(space.arms), results / "paper",
                              [f"seed={seeds}", *launcher_args(jobs, launcher), *(extra or [])]), log)
    say(f"papers' settings with seeds {seeds} -> {results / 'paper'}")
    timings["reruns_s"] = time.perf_counter() - mid
    timings["total_s"] = time.perf_counter() - start
    return {"chosen": chosen, "timings": timings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="optrepro-tune", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="a tuning space: configs/tune/<name>.yaml (or a path)")
    parser.add_argument("--budget", type=int, default=None, help="trials per arm (default: the space's)")
    parser.add_argument("--seeds", default=None, help="rerun seeds, comma-separated (default: the space's)")
    parser.add_argument("--results", type=Path, default=None, help="default: results/tune/<space>")
    parser.add_argument("--jobs", type=int, default=1, help="parallel jobs (joblib launcher) per sweep")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="basic",
                        help="how each sweep's runs train: basic (one by one), joblib (--jobs processes), "
                        "population (one batched model; tasks that support it, e.g. digits)")
    parser.add_argument("overrides", nargs="*", help="extra train overrides for every run (e.g. profile=smoke)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        space = load_space(args.space, args.budget, seeds)
        results = args.results or Path("results") / "tune" / space.name
        outcome = tune(space, results, args.jobs, args.overrides, launcher=args.launcher)
        from optrepro.analysis.tune_report import write_tune_report

        report = write_tune_report(space, results, outcome)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    t = outcome["timings"]
    print(f"tuning report {report} (trials {t['trials_s']:.0f} s, reruns {t['reruns_s']:.0f} s, "
          f"total {t['total_s']:.0f} s)")


if __name__ == "__main__":
    main()


__all__ = ["Space", "chosen_overrides", "load_space", "main", "select", "trial_command", "trial_runs", "tune"]
