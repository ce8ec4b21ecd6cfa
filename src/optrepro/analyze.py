"""Analysis entry point: ``python -m optrepro.analyze [--runs results/runs] [--out results]``.

Both defaults are relative to the current folder (the project root, where ``make`` and the README run it);
a runs folder that is missing or holds no run folder is refused (exit 2) rather than reported as empty.

Reads every run folder, writes runs.csv / curves.csv, tables/ (Markdown, CSV, LaTeX), figures/
(PNG, PDF) and REPORT.md under --out; the speed section (time to target, performance profiles, the
authors' curves beside ours: optrepro.analysis.speed) reads its targets from configs/analysis/speed.yaml.
CPU only; the same runs give the same table and figure bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from optrepro.analysis import diagnostics as optimizer_diagnostics
from optrepro.analysis import figures as figs
from optrepro.analysis import gap, speed
from optrepro.analysis.comparability import Comparability, not_comparable_footer
from optrepro.analysis.curves import load_published_curves
from optrepro.analysis.load import RunsData, load_runs
from optrepro.analysis.report import Artifacts, write_report
from optrepro.analysis.stats import LEVEL, MAX_SEEDS, METHOD, seeds_needed
from optrepro.analysis.tables import (
    FAMILY_EFFECTS,
    VALUE_KINDS,
    ablation_tables,
    comparison_tables,
    fmt,
    load_published,
    paper_views,
    safe_name,
    write_table,
)
from optrepro.errors import UserError

REPO = Path(__file__).resolve().parents[2]
INTERVALS = f"{LEVEL:.0%} {METHOD} intervals, effects paired by seed; p_H: Holm-adjusted p, see ablation_verdicts.md"
DEFAULT_PUBLISHED = REPO / "results" / "published_results.csv"
#: the AdaBelief authors' per-epoch curves (scripts/published_curves.py rebuilds it from their repo)
DEFAULT_PUBLISHED_CURVES = REPO / "results" / "published_curves.csv.gz"


def analyze(
    runs_dir: Path,
    out_dir: Path,
    published_path: Path | None = DEFAULT_PUBLISHED,
    config_dir: Path | None = None,
    value_kind: str = "final",
    make_figures: bool = True,
    published_curves_path: Path | None = DEFAULT_PUBLISHED_CURVES,
) -> Artifacts:
    """Everything ``main`` does, callable from tests and the Makefile's Python."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    data: RunsData = load_runs(runs_dir)
    published = load_published(published_path)
    artifacts = Artifacts()

    data.runs.to_csv(out_dir / "runs.csv", index=False, lineterminator="\n")
    data.curves.to_csv(out_dir / "curves.csv", index=False, lineterminator="\n")
    data.incomplete.to_csv(out_dir / "incomplete.csv", index=False, lineterminator="\n")

    rule = Comparability(data, published)
    comparison = comparison_tables(data, published, value_kind, rule)
    if not comparison.numeric.empty:
        tables_dir.mkdir(parents=True, exist_ok=True)
        comparison.numeric.to_csv(tables_dir / "comparison_all.csv", index=False, lineterminator="\n")
    for task, (numeric, display) in comparison.per_task.items():
        stem = f"comparison_{safe_name(task)}"
        others = comparison.not_comparable.get(task)
        footer = not_comparable_footer(others, by_ref=True)
        artifacts.tables[f"comparison_{task}"] = write_table(
            tables_dir, stem, numeric, display, f"{task}: optimizer comparison", footer
        )["md"]

    views = paper_views(data, published, value_kind, rule)
    for stem, view in views.items():
        artifacts.tables[f"paper_{stem}"] = write_table(
            tables_dir, f"paper_{safe_name(stem)}", view.numeric, view.display, view.title,
            not_comparable_footer(view.not_comparable),
        )["md"]
    excluded = [o.assign(table=f"comparison_{t}") for t, o in sorted(comparison.not_comparable.items())]
    excluded += [v.not_comparable.assign(table=f"paper_{s}") for s, v in views.items() if len(v.not_comparable)]
    if excluded:
        tables_dir.mkdir(parents=True, exist_ok=True)
        columns = ["table", "run", "task", "optimizer", "setting", "seed", "profile", "data_summary", "reason"]
        pd.concat(excluded, ignore_index=True)[columns].to_csv(
            tables_dir / "not_comparable.csv", index=False, lineterminator="\n")

    ablation = ablation_tables(data, value_kind)
    if not ablation.corners.empty:
        tables_dir.mkdir(parents=True, exist_ok=True)
        ablation.corners.to_csv(tables_dir / "ablation_corners.csv", index=False, lineterminator="\n")
        ablation.effects.to_csv(tables_dir / "ablation_effects.csv", index=False, lineterminator="\n")
        for task, display in ablation.displays.items():
            numeric = ablation.effects[ablation.effects.task == task]
            title = f"{task}: belief × ε ablation ({INTERVALS})"
            artifacts.tables[f"ablation_{task}"] = write_table(
                tables_dir, f"ablation_{safe_name(task)}", numeric, display, title
            )["md"]
        for task, display in ablation.matched_displays.items():
            artifacts.tables[f"ablation_matched_{task}"] = write_table(
                tables_dir,
                f"ablation_matched_{safe_name(task)}",
                ablation.effects[
                    (ablation.effects.task == task)
                    & ablation.effects.effect.isin(["placement_matched", "floor_size", "placement"])
                ],
                display,
                f"{task}: placement at a matched floor ({INTERVALS})",
            )["md"]
        verdicts = "\n".join(f"- {ablation.sentences[t]}" for t in sorted(ablation.sentences))
        (tables_dir / "ablation_verdicts.md").write_text(f"{ablation.family_note()}\n\n{verdicts}\n")

    gaps = gap.gap_table(data)
    if not gaps.empty:
        write_table(tables_dir, "generalization_gap", gaps, gap.display(gaps), f"generalization gap ({gap.SIGN})")
    gap_figures = gap.gap_curves(data, figures_dir) if make_figures else {}
    if make_figures and not data.runs.empty:
        for kind, paths in (
            ("curves", figs.learning_curves(data, figures_dir)),
            ("eps", figs.eps_sensitivity(data, figures_dir, value_kind)),
            ("ablation_floor", figs.ablation_floor(data, figures_dir, value_kind)),
            ("ablation_by_variant", figs.ablation_by_variant(ablation.effects, figures_dir)),
            ("samples", figs.ring_gan_samples(data, figures_dir)),
            ("diagnostics", optimizer_diagnostics.figures(data, figures_dir)),
        ):
            for task, png in paths.items():
                artifacts.figures.setdefault(task, {})[kind] = png
        toy = figs.toy2d_trajectories(data, figures_dir)
        if toy is not None:
            artifacts.global_figures["toy2d"] = toy

    from optrepro.config import CONFIG_DIR

    speed_config = speed.load_speed_config(Path(config_dir or CONFIG_DIR) / "analysis" / "speed.yaml")
    speed_result = speed.write_speed(out_dir, data, published, load_published_curves(published_curves_path),
                                     speed_config, make_figures)
    for task, png in speed_result.overlays.items():
        artifacts.figures.setdefault(task, {})["published_overlay"] = png
    write_report(out_dir, data, published, comparison, views, ablation, artifacts, config_dir, value_kind,
                 speed_lines=speed_result.lines, extra_sections=gap.report_section(gaps, gap_figures, out_dir))
    return artifacts


def seeds_needed_table(
    runs_dir: Path, effect: float, task: str | None = None, contrast: str | None = None, value_kind: str = "final"
) -> pd.DataFrame:
    """Per task, ε and contrast of the ablation: seeds an effect of ``effect`` (metric units) would need to be
    detected with 80% power at the report's strictest Holm level, given the observed spread of the pairs."""
    ablation = ablation_tables(load_runs(runs_dir), value_kind)
    rows = ablation.effects[ablation.effects.in_family.astype(bool)]
    if task is not None:
        if task not in set(ablation.effects.task):
            known = ", ".join(sorted(set(ablation.effects.task))) or "none"
            raise UserError(f"no ablation runs for task '{task}' under {runs_dir}; tasks with ablation runs: {known}")
        rows = rows[rows.task == task]
    if contrast is not None:
        rows = rows[rows.effect == contrast]
    alpha = ablation.alpha / max(ablation.family_size, 1)
    out = []
    for _, r in rows.iterrows():
        n = seeds_needed(effect, float(r["std"]), alpha)
        out.append(
            {
                "task": r.task,
                "eps": r.eps,
                "contrast": r.effect,
                "seeds now": int(r.n_pairs),
                "observed std": fmt(r["std"], 3),
                "detectable now": fmt(r.mde, 3),
                f"seeds for {effect:g}": str(n) if n is not None else f"> {MAX_SEEDS}",
            }
        )
    return pd.DataFrame(out)


def check_runs_folder(runs_dir: Path) -> None:
    """A runs folder to analyse holds at least one run folder: a report of nothing would read as a result."""
    from optrepro.runs import iter_run_dirs

    if not runs_dir.is_dir():
        what = "is not a folder" if runs_dir.exists() else "does not exist"
        raise UserError(f"runs folder {runs_dir} {what}; pass --runs FOLDER (the results_dir of your runs; "
                        f"default results/runs under the current folder)")
    if next(iter_run_dirs(runs_dir), None) is None:
        raise UserError(f"no run folders under {runs_dir} (a run folder holds config.yaml); train first, "
                        "or pass --runs FOLDER")


def main(argv: list[str] | None = None) -> None:
    """Console script ``optrepro-analyze``."""
    parser = argparse.ArgumentParser(prog="optrepro-analyze", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, default=Path("results/runs"),
        help="folder of run folders, searched recursively (default: results/runs under the current folder)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"),
        help="where tables/, figures/, REPORT.md go (default: results under the current folder)",
    )
    parser.add_argument(
        "--published",
        type=Path,
        default=DEFAULT_PUBLISHED,
        help="published numbers CSV (default: the project's results/published_results.csv)",
    )
    parser.add_argument(
        "--published-curves",
        type=Path,
        default=DEFAULT_PUBLISHED_CURVES,
        help="the authors' per-epoch curves (default: the project's results/published_curves.csv.gz)",
    )
    parser.add_argument(
        "--configs",
        type=Path,
        default=None,
        help="config folder, to list configured tasks without runs (default: the project's)",
    )
    parser.add_argument(
        "--value",
        choices=VALUE_KINDS,
        default="final",
        help="which value of the primary metric the tables compare (default: final)",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables and report only")
    parser.add_argument(
        "--seeds-needed",
        type=float,
        default=None,
        metavar="EFFECT",
        help="print, per task, ε and ablation contrast, how many seeds an effect of EFFECT (metric units) would "
        "need given the observed seed-to-seed spread, and stop (writes nothing)",
    )
    parser.add_argument("--task", default=None, help="with --seeds-needed: only this task")
    parser.add_argument(
        "--contrast", choices=FAMILY_EFFECTS, default=None, help="with --seeds-needed: only this contrast"
    )
    args = parser.parse_args(argv)
    if args.seeds_needed is None and (args.task is not None or args.contrast is not None):
        parser.error("--task and --contrast go with --seeds-needed")
    try:
        run_cli(args)
    except UserError as exc:  # one line, exit 2: the project's user-error contract (train.main's too)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(args: argparse.Namespace) -> None:
    """``main`` after parsing: a problem the user can fix is a UserError."""
    if args.seeds_needed is not None:
        if not args.seeds_needed > 0:
            raise UserError(f"--seeds-needed must be > 0, got {args.seeds_needed:g}")
        check_runs_folder(args.runs)
        table = seeds_needed_table(args.runs, args.seeds_needed, args.task, args.contrast, args.value)
        if table.empty:
            raise UserError(f"no ablation contrast with 2 or more seeds under {args.runs}")
        print(table.to_string(index=False))
        return
    check_runs_folder(args.runs)
    if args.published is not None and not args.published.exists():
        print(
            f"note: published numbers {args.published} not found; tables show no published column values",
            file=sys.stderr,
        )
    config_dir = args.configs
    if config_dir is None:
        from optrepro.config import CONFIG_DIR

        config_dir = CONFIG_DIR
    start = time.perf_counter()
    analyze(args.runs, args.out, args.published, config_dir, args.value, not args.no_figures, args.published_curves)
    print(
        f"analysis written to {args.out} ({args.out / 'REPORT.md'}) in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
