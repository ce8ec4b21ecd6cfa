"""The analysis stage on real run folders from short toy2d runs (made once per session).

Numbers are checked against a direct pandas computation over the summary files; every table and
figure is built; a diverged, a failed and an incomplete run are reported, not crashed on.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_inprocess
from optrepro.analysis.load import load_runs
from optrepro.analysis.tables import ablation_tables, comparison_tables, load_published
from optrepro.analyze import analyze

SMOKE = ["task=toy2d", "profile=smoke"]
CORNERS = ("ablation_adam", "ablation_eadam", "ablation_belief_outside", "ablation_belief_inside")
PUBLISHED = REPO / "results" / "published_results.csv"


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~30 smoke runs of the toy task and two of digits_cnn, shared by every test here."""
    root = tmp_path_factory.mktemp("toy_runs")
    jobs: list[list[str]] = []
    for eps in ("1e-12", "1e-8"):
        for seed in ("0", "1"):
            for opt in (*CORNERS, "adam"):
                jobs.append([*SMOKE, f"optimizer={opt}", f"optimizer.eps={eps}", f"seed={seed}"])
    for seed in ("0", "1"):
        jobs += [[*SMOKE, "optimizer=adabelief", f"seed={seed}"], [*SMOKE, "optimizer=sgd", f"seed={seed}"]]
    jobs.append(["task=toy2d_l1_scaled", "profile=smoke", "optimizer=adam"])
    jobs.append(["task=toy2d_l1_scaled", "profile=smoke", "optimizer=ablation_belief_inside"])
    # the CPU demo image task (scikit-learn digits, 2 epochs): a 'max' metric with real epochs
    jobs += [["task=digits_cnn", "profile=smoke", "optimizer=adam", f"seed={seed}"] for seed in ("0", "1")]
    # a diverged run (SGD with a huge step on Rosenbrock overflows) and a failed one (fault injection)
    jobs.append([*SMOKE, "task.function=rosenbrock", "optimizer=sgd", "optimizer.lr=1.0"])
    jobs.append([*SMOKE, "optimizer=radam", "+task.fault.raise_at_step=5"])
    for job in jobs:
        outcome = run_inprocess(job, root)
        assert outcome.status in ("completed", "diverged", "failed"), (job, outcome)
    # an interrupted run: a copy of a finished folder without its summary
    source = next(p.parent for p in sorted(root.glob("toy2d_l1_adam_s0_*/summary.json")))
    shutil.copytree(source, root / "toy2d_l1_adam_s9_interrupted")
    (root / "toy2d_l1_adam_s9_interrupted" / "summary.json").unlink()
    return root


@pytest.fixture(scope="session")
def toy_out(toy_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy_out")
    analyze(toy_runs, out, PUBLISHED, REPO / "configs")
    return out


def _summaries(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        rows.append(
            {
                "task": s["task"],
                "optimizer": s["optimizer"],
                "seed": s["seed"],
                "status": s["status"],
                "eps": s["factors"]["eps"],
                "floor": s["factors"]["effective_floor"],
                "second": s["factors"]["second_moment"],
                "placement": s["factors"]["eps_placement"],
                "final": s["final"].get(s["metric"], math.nan),
            }
        )
    return pd.DataFrame(rows)


def test_statuses_recorded(toy_runs: Path) -> None:
    direct = _summaries(toy_runs)
    data = load_runs(toy_runs)
    assert len(data.runs) == len(direct) and len(data.incomplete) == 1
    assert data.incomplete.run.iloc[0] == "toy2d_l1_adam_s9_interrupted"
    assert set(data.runs.status) == {"completed", "diverged", "failed"}
    assert data.runs.loc[data.runs.status == "failed", "reason"].str.contains("fault injected").all()


def test_comparison_matches_pandas(toy_runs: Path) -> None:
    data = load_runs(toy_runs)
    comp = comparison_tables(data, load_published(PUBLISHED)).numeric
    direct = _summaries(toy_runs)
    counted = direct[(direct.status == "completed") & np.isfinite(direct.final)]
    expected = counted.groupby(["task", "optimizer", "eps"], dropna=False).final.agg(["mean", "count"])
    for (task, opt, eps), exp in expected.iterrows():
        labels = {opt} | ({f"{opt} (eps={eps:.6g})"} if isinstance(eps, float) and math.isfinite(eps) else set())
        got = comp[(comp.task == task) & (comp.optimizer == opt) & comp.setting.isin(labels)]
        assert len(got) == 1, (task, opt, eps, labels)
        assert got.n.iloc[0] == exp["count"]
        assert got["mean"].iloc[0] == pytest.approx(exp["mean"], rel=1e-12)
    for _, row in comp[comp.n >= 2].iterrows():
        assert row.ci_lo <= row["mean"] <= row.ci_hi
    diverged = comp[comp.task == "toy2d_rosenbrock"].iloc[0]
    assert diverged.diverged == 1 and diverged.n == 0 and math.isnan(diverged["mean"])
    digits = comp[comp.task == "digits_cnn"].iloc[0]
    assert digits.metric == "test_acc" and digits["mode"] == "max" and digits.n == 2
    # the eps sweep gives one row per eps for the swept configs
    adam = comp[(comp.task == "toy2d_l1") & (comp.optimizer == "adam")]
    assert sorted(adam.setting) == ["adam (eps=1e-08)", "adam (eps=1e-12)"]


def test_ablation_matches_pandas(toy_runs: Path) -> None:
    data = load_runs(toy_runs)
    abl = ablation_tables(data)
    direct = _summaries(toy_runs)
    l1 = direct[(direct.task == "toy2d_l1") & direct.optimizer.isin(CORNERS)]
    wide = l1.pivot_table(index=["seed", "eps"], columns="optimizer", values="final")
    # loss is a 'min' metric: an improvement is a decrease, so effects are negated differences
    belief = (
        -((wide.ablation_belief_outside - wide.ablation_adam) + (wide.ablation_belief_inside - wide.ablation_eadam)) / 2
    )
    place = (
        -((wide.ablation_eadam - wide.ablation_adam) + (wide.ablation_belief_inside - wide.ablation_belief_outside)) / 2
    )
    effects = abl.effects[abl.effects.task == "toy2d_l1"].set_index(["eps", "effect"])
    assert effects.loc[("all", "belief"), "mean"] == pytest.approx(belief.mean(), abs=1e-12)
    assert effects.loc[("all", "placement"), "mean"] == pytest.approx(place.mean(), abs=1e-12)
    assert effects.loc[("all", "gap"), "n_pairs"] == 4
    assert abl.sentences["toy2d_l1"].startswith("toy2d_l1: ")
    # the l1_scaled task has only one corner: reported, not crashed on
    assert "no seed/ε has all four" in abl.sentences["toy2d_l1_scaled"]
    # the factors identify the corners (not the config names)
    corners = data.runs[data.runs.opt_class == "ablation"]
    assert set(zip(corners.second_moment, corners.eps_placement, strict=True)) == {
        ("grad_sq", "outside"),
        ("grad_sq", "inside"),
        ("belief", "outside"),
        ("belief", "inside"),
    }


def test_every_output_written(toy_out: Path) -> None:
    names = {p.relative_to(toy_out).as_posix() for p in toy_out.rglob("*") if p.is_file()}
    for expected in (
        "REPORT.md",
        "runs.csv",
        "curves.csv",
        "tables/comparison_all.csv",
        "tables/comparison_toy2d_l1.md",
        "tables/comparison_toy2d_l1.tex",
        "tables/ablation_toy2d_l1.md",
        "tables/ablation_effects.csv",
        "tables/paper_eadam2020_table2.md",
        "figures/toy2d_trajectories.png",
        "figures/toy2d_trajectories.pdf",
        "figures/eps_toy2d_l1.png",
        "figures/ablation_floor_toy2d_l1.png",
        "figures/curves_toy2d_l1.png",
        "figures/curves_toy2d_l1.pdf",
        "figures/curves_digits_cnn.png",
        "tables/comparison_digits_cnn.md",
    ):
        assert expected in names, expected
    curves = pd.read_csv(toy_out / "curves.csv")
    runs = pd.read_csv(toy_out / "runs.csv")
    assert set(curves.run) <= set(runs.run)
    one = runs[runs.status == "completed"].iloc[0]
    last = curves[(curves.run == one.run) & (curves.key == one.metric)].sort_values("step").value.iloc[-1]
    assert last == pytest.approx(one.final)


def test_report_lists_what_is_missing(toy_out: Path) -> None:
    report = (toy_out / "REPORT.md").read_text()
    assert "toy2d_l1_adam_s9_interrupted" in report  # incomplete: listed
    assert "fault injected" in report  # failed run with its reason
    assert "toy2d_rosenbrock" in report and "diverged" in report
    assert "Configured tasks without runs" in report and "digits_cnn" in report
    assert "Tasks with published numbers but no runs" in report
    assert "figures/toy2d_trajectories.png" in report and "tables/comparison_toy2d_l1.md" in report
    assert "## Environment" in report
    import torch

    assert torch.__version__ in report
