"""Analysis entry point: ``python -m optrepro.analyze [--runs results/runs] [--out results]``.

Reads every run folder, writes runs.csv / curves.csv, tables/ (Markdown, CSV, LaTeX), figures/
(PNG, PDF) and REPORT.md under --out. CPU only; the same runs give the same table and figure bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from optrepro.analysis import diagnostics as optimizer_diagnostics
from optrepro.analysis import figures as figs
from optrepro.analysis.load import RunsData, load_runs
from optrepro.analysis.report import Artifacts, write_report
from optrepro.analysis.tables import (
    VALUE_KINDS,
    ablation_tables,
    comparison_tables,
    load_published,
    paper_views,
    safe_name,
    write_table,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PUBLISHED = REPO / "results" / "published_results.csv"


def analyze(
    runs_dir: Path,
    out_dir: Path,
    published_path: Path | None = DEFAULT_PUBLISHED,
    config_dir: Path | None = None,
    value_kind: str = "final",
    make_figures: bool = True,
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

    comparison = comparison_tables(data, published, value_kind)
    if not comparison.numeric.empty:
        tables_dir.mkdir(parents=True, exist_ok=True)
        comparison.numeric.to_csv(tables_dir / "comparison_all.csv", index=False, lineterminator="\n")
    for task, (numeric, display) in comparison.per_task.items():
        stem = f"comparison_{safe_name(task)}"
        artifacts.tables[f"comparison_{task}"] = write_table(
            tables_dir, stem, numeric, display, f"{task}: optimizer comparison"
        )["md"]

    views = paper_views(data, published, value_kind)
    for stem, (numeric, display, title) in views.items():
        artifacts.tables[f"paper_{stem}"] = write_table(
            tables_dir, f"paper_{safe_name(stem)}", numeric, display, title
        )["md"]

    ablation = ablation_tables(data, value_kind)
    if not ablation.corners.empty:
        tables_dir.mkdir(parents=True, exist_ok=True)
        ablation.corners.to_csv(tables_dir / "ablation_corners.csv", index=False, lineterminator="\n")
        ablation.effects.to_csv(tables_dir / "ablation_effects.csv", index=False, lineterminator="\n")
        for task, display in ablation.displays.items():
            numeric = ablation.effects[ablation.effects.task == task]
            artifacts.tables[f"ablation_{task}"] = write_table(
                tables_dir, f"ablation_{safe_name(task)}", numeric, display, f"{task}: belief × ε ablation"
            )["md"]
        (tables_dir / "ablation_verdicts.md").write_text(
            "\n".join(f"- {ablation.sentences[t]}" for t in sorted(ablation.sentences)) + "\n"
        )

    if make_figures and not data.runs.empty:
        for kind, paths in (
            ("curves", figs.learning_curves(data, figures_dir)),
            ("eps", figs.eps_sensitivity(data, figures_dir, value_kind)),
            ("ablation_floor", figs.ablation_floor(data, figures_dir, value_kind)),
            ("samples", figs.ring_gan_samples(data, figures_dir)),
            ("diagnostics", optimizer_diagnostics.figures(data, figures_dir)),
        ):
            for task, png in paths.items():
                artifacts.figures.setdefault(task, {})[kind] = png
        toy = figs.toy2d_trajectories(data, figures_dir)
        if toy is not None:
            artifacts.global_figures["toy2d"] = toy

    write_report(out_dir, data, published, comparison, views, ablation, artifacts, config_dir, value_kind)
    return artifacts


def main(argv: list[str] | None = None) -> None:
    """Console script ``optrepro-analyze``."""
    parser = argparse.ArgumentParser(prog="optrepro-analyze", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, default=Path("results/runs"), help="folder of run folders (recursive)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="where tables/, figures/, REPORT.md go"
    )
    parser.add_argument(
        "--published",
        type=Path,
        default=DEFAULT_PUBLISHED,
        help="published numbers CSV (default: the project's results/published_results.csv)",
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
    args = parser.parse_args(argv)
    if not args.runs.exists():
        print(f"note: runs folder {args.runs} does not exist; writing a report that says so", file=sys.stderr)
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
    analyze(args.runs, args.out, args.published, config_dir, args.value, not args.no_figures)
    print(
        f"analysis written to {args.out} ({args.out / 'REPORT.md'}) in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
