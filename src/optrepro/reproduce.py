"""``make reproduce-table TABLE=<name>``: a published table's sweep at paper scale, then its analysis.

Prints the plan first (runs, and GPU hours estimated from a measured step time), stops there with
``--dry-run``, otherwise runs the sweeps (finished runs are skipped) and writes the analysis into
``results/<TABLE>/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from optrepro.pipeline import Sweep, analyze, matched_outside_eps, measure_step_seconds, preset_grid, run_sweeps

#: table name -> experiment presets (configs/experiment/) whose grids make it up
TABLES: dict[str, list[str]] = {
    "eadam_table2": ["eadam_table2"],
    "eadam_table3": ["eadam_table3"],
    "eadam_table4": ["eadam_table4"],
    "adabelief_cifar": ["adabelief_cifar"],
    "adabelief_imagenet": ["adabelief_imagenet"],
    "adabelief_gan": ["adabelief_gan"],
    "adabelief_sngan": ["adabelief_sngan"],
    "adabelief_transformer": ["adabelief_transformer"],
}
#: the 2x2 ablation (README, "Optimizers") on every paper task
ABLATION_TASKS = ("cifar10_resnet34", "cifar100_resnet34", "cifar10_vgg11", "cifar10_densenet121",
                  "ptb_lstm1", "ptb_lstm2", "ptb_lstm3", "cifar10_wgangp", "cifar10_sngan",
                  "iwslt14_transformer", "voc_fasterrcnn", "imagenet_resnet18")
ABLATION_CORNERS = "ablation_adam,ablation_eadam,ablation_belief_outside,ablation_belief_inside"


def plan(table: str, seeds: str) -> list[Sweep]:
    from optrepro.config import group_options

    if table == "all":
        return [s for name in [*TABLES, "ablation"] for s in plan(name, seeds)]
    if table == "ablation":
        tasks = [t for t in ABLATION_TASKS if t in group_options("task")]
        # the corners at the task's ε, and the outside corners at its inside floor (placement at a matched floor)
        outside = "optimizer=ablation_adam,ablation_belief_outside"
        sweeps = []
        for t in tasks:
            matched = f"optimizer.eps={matched_outside_eps(t)}"
            sweeps.append(Sweep(f"ablation-{t}", (f"task={t}", f"optimizer={ABLATION_CORNERS}", f"seed={seeds}",
                                                  "diagnostics.enabled=true")))
            sweeps.append(Sweep(f"matched-{t}", (f"task={t}", outside, matched, f"seed={seeds}",
                                                 "diagnostics.enabled=true")))
        return sweeps
    if table not in TABLES:
        raise SystemExit(f"error: unknown TABLE '{table}'; choose one of: {', '.join([*TABLES, 'ablation', 'all'])}")
    sweeps = []
    for experiment in TABLES[table]:
        if experiment not in group_options("experiment"):
            raise SystemExit(f"error: experiment preset '{experiment}' is not in configs/experiment/ yet")
        sweeps.append(Sweep(experiment, (f"experiment={experiment}", f"seed={seeds}"), preset_grid(experiment)))
    return sweeps


def runs_per_task(sweep: Sweep) -> dict[str, int]:
    """How many of a sweep's runs train each task."""
    tasks = [t for t in sweep.values("task") if t]
    n = sweep.n_runs()
    return {t: n // max(len(tasks), 1) for t in tasks}


def estimate_hours(sweeps: list[Sweep]) -> list[str]:
    """One line per task: measured seconds/step on this machine x steps x runs."""
    lines, total = [], 0.0
    counts: dict[str, int] = {}
    for sweep in sweeps:
        for task, n in runs_per_task(sweep).items():
            counts[task] = counts.get(task, 0) + n
    for task, n in counts.items():
        measured = measure_step_seconds(task)
        if isinstance(measured, str):
            lines.append(f"  {task:<24} {n:>4} runs   not measured: {measured}")
            continue
        seconds, steps = measured
        hours = seconds * steps * n / 3600
        total += hours
        lines.append(f"  {task:<24} {n:>4} runs x {steps} steps x {seconds * 1000:.1f} ms/step = {hours:.1f} h")
    lines.append(f"  estimated total: {total:.1f} device-hours on this machine (measured tasks only)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="all")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--results", default="results", help="output root (runs go to <results>/runs)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel jobs (joblib launcher)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    args = parser.parse_args(argv)

    sweeps = plan(args.table, args.seeds)
    results = Path(args.results)
    total = 0
    print(f"plan for TABLE={args.table} (seeds {args.seeds}):")
    for sweep in sweeps:
        n = sweep.n_runs()
        total += n
        grid = " ".join(sweep.overrides) + (f"  [preset grid: {sweep.preset_grid}]" if sweep.preset_grid else "")
        print(f"  {sweep.label:<28} {n:>5} runs   {grid}")
    print(f"  total: {total} runs; runs already finished under {results / 'runs'} are skipped")
    print("time, measured here with a few Adam steps per task:")
    for line in estimate_hours(sweeps):
        print(line)
    if args.dry_run:
        return
    started = time.time()
    failures = run_sweeps(sweeps, results / "runs", jobs=args.jobs)
    out = results / args.table
    code = analyze(results / "runs", out)
    print(f"done in {(time.time() - started) / 3600:.2f} h; report: {out / 'REPORT.md'}")
    sys.exit(1 if failures or code else 0)


if __name__ == "__main__":
    main()
