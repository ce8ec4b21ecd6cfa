"""The analysis stage on hand-written run folders (same format as train.py writes): numbers checked
against a direct pandas computation, intervals, the ablation effects, missing/empty/NaN handling."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis_fixtures import ABLATION_CORNERS, write_run
from conftest import REPO
from optrepro.analysis.load import load_runs, settings_of
from optrepro.analysis.stats import bootstrap_mean, improvement, paired_bootstrap
from optrepro.analysis.tables import (
    ablation_tables,
    comparison_tables,
    load_published,
    paper_views,
    verdict,
)
from optrepro.analyze import DEFAULT_PUBLISHED, analyze, main

PUBLISHED = REPO / "results" / "published_results.csv"


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def mixed_runs(tmp_path: Path) -> Path:
    """cifar10_vgg11-like task with an eps sweep, a diverged, a failed, a NaN and an incomplete run."""
    root = tmp_path / "runs"
    rng = np.random.default_rng(1)
    for opt in ("adam", "adabelief", "eadam"):
        for eps in (1e-16, 1e-8):
            for seed in range(3):
                final = 88.0 + (1.5 if opt != "adam" else 0.0) + float(rng.normal(0, 0.4))
                write_run(
                    root,
                    task="cifar10_vgg11",
                    optimizer=opt,
                    seed=seed,
                    eps=eps,
                    curve=[final - 3, final - 1, final],
                )
    write_run(
        root,
        task="cifar10_vgg11",
        optimizer="sgd",
        seed=0,
        status="diverged",
        reason="non-finite training loss at step 7",
        curve=[10.0, float("nan")],
        second_moment=None,
        placement=None,
    )
    write_run(
        root,
        task="cifar10_vgg11",
        optimizer="sgd",
        seed=1,
        curve=[80.0, 85.0],
        second_moment=None,
        placement=None,
    )
    write_run(root, task="cifar10_vgg11", optimizer="radam", seed=0, status="failed", reason="RuntimeError: boom")
    write_run(root, task="cifar10_vgg11", optimizer="radam", seed=1, curve=[50.0, float("nan")])
    write_run(root, task="cifar10_vgg11", optimizer="yogi", seed=0, complete=False)
    write_run(root, task="toyish", optimizer="adam", seed=0, metric="loss", mode="min", curve=[1.0, 0.1])
    return root


def _direct_table(root: Path) -> pd.DataFrame:
    """The expected comparison numbers straight from the summary files (no analysis code)."""
    import json

    rows = []
    for path in sorted(root.rglob("summary.json")):
        s = json.loads(path.read_text())
        cfg_eps = s["factors"]["eps"] if s["factors"]["eps"] is not None else 1e-8
        rows.append(
            {
                "task": s["task"],
                "optimizer": s["optimizer"],
                "eps": cfg_eps,
                "status": s["status"],
                "final": s["final"].get(s["metric"], math.nan),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_bootstrap_interval_contains_mean_and_is_reproducible(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.lognormal(0, 1.5, size=n)  # skewed on purpose
        est = bootstrap_mean(x)
        assert est.n == n and est.lo <= x.mean() <= est.hi
        assert est.mean == pytest.approx(x.mean()) and est.std == pytest.approx(x.std(ddof=1))
        assert bootstrap_mean(x) == est  # seeded: same numbers every time
    constant = bootstrap_mean([0.1, 0.1, 0.1])
    assert constant.lo <= constant.mean <= constant.hi


def test_bootstrap_edge_cases() -> None:
    one = bootstrap_mean([3.0, float("nan"), float("inf")])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.lo) and not one.has_interval
    empty = bootstrap_mean([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_paired_bootstrap_removes_shared_seed_noise() -> None:
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 5, size=8)  # big shared noise
    a = 10 + seed_effect + rng.normal(0, 0.01, size=8)
    b = 9 + seed_effect + rng.normal(0, 0.01, size=8)
    paired = paired_bootstrap(a, b)
    assert paired.lo <= (a - b).mean() <= paired.hi
    assert paired.lo > 0.9 and paired.hi < 1.1  # the pairing sees the +1 despite the noise
    unpaired_width = bootstrap_mean(a).hi - bootstrap_mean(a).lo
    assert paired.hi - paired.lo < unpaired_width / 10
    assert improvement(np.array([1.0]), "min")[0] == -1.0 and improvement(2.0, "max") == 2.0


# ------------------------------------------------------------------------------------- loading
def test_runs_table_and_incomplete(mixed_runs: Path) -> None:
    data = load_runs(mixed_runs)
    assert len(data.runs) == 18 + 4 + 1
    assert data.incomplete.run.str.contains("yogi").all() and len(data.incomplete) == 1
    assert "yogi" not in set(data.runs.optimizer)
    assert data.varying["cifar10_vgg11"] == ["opt.eps"]  # the only hyperparameter swept within a config
    assert data.varying["toyish"] == []
    assert "adam (eps=1e-16)" in set(data.runs.setting)
    row = data.runs[data.runs.setting == "adam (eps=1e-16)"].iloc[0]
    assert row.eps == 1e-16 and row.second_moment == "grad_sq" and row.eps_placement == "outside"
    assert row.lr == 1e-3 and row.beta2 == 0.999 and row.weight_decay == 0.0 and row.git_sha.startswith("abc")
    # the curves table holds every logged value of every complete run, nothing of the incomplete one
    curves = data.curves
    assert set(curves.run) == set(data.runs.run)
    assert len(curves[(curves.run == row.run)]) == 3 * 4  # 3 eval points x (train_loss, lr, test_acc, test_loss)
    assert curves[(curves.run == row.run) & (curves.key == "test_acc")].value.iloc[-1] == row.final


def test_comparison_matches_direct_pandas(mixed_runs: Path) -> None:
    data = load_runs(mixed_runs)
    published = load_published(PUBLISHED)
    comp = comparison_tables(data, published).per_task["cifar10_vgg11"][0]
    direct = _direct_table(mixed_runs)
    direct = direct[direct.task == "cifar10_vgg11"]
    counted = direct[(direct.status == "completed") & np.isfinite(direct.final)]
    expected = counted.groupby(["optimizer", "eps"]).final.agg(["mean", "std", "count"])
    for (opt, eps), exp in expected.iterrows():
        label = f"{opt} (eps={eps:.6g})"
        got = comp[comp.setting == label].iloc[0]
        assert got["mean"] == pytest.approx(exp["mean"], rel=1e-12)
        assert got["n"] == exp["count"]
        if exp["count"] > 1:
            assert got["std"] == pytest.approx(exp["std"], rel=1e-12)
            assert got.ci_lo <= got["mean"] <= got.ci_hi
        else:
            assert math.isnan(got.ci_lo)
    sgd = comp[comp.optimizer == "sgd"].iloc[0]
    assert sgd.diverged == 1 and sgd.n == 1 and sgd["mean"] == 85.0  # the diverged seed is not averaged
    radam = comp[comp.optimizer == "radam"].iloc[0]
    assert radam.failed == 1 and radam.nan == 1 and radam.n == 0 and math.isnan(radam["mean"])
    # published value and difference, from the CSV directly (repo_curves lists a 'final' adam number)
    pub = pd.read_csv(PUBLISHED)
    adam = comp[comp.setting == "adam (eps=1e-08)"].iloc[0]
    final_rows = pub[(pub.task == "cifar10_vgg11") & (pub.optimizer == "adam") & (pub.which == "final")]
    assert adam.published == final_rows.value.iloc[0]
    assert adam["diff"] == pytest.approx(adam["mean"] - adam.published)


def test_paper_view_fills_ours_and_dashes(mixed_runs: Path) -> None:
    data = load_runs(mixed_runs)
    published = load_published(PUBLISHED)
    views = paper_views(data, published)
    numeric, display, title = views["eadam2020_table2"]
    assert "EAdam" in title
    assert list(display.optimizer) == ["adam", "radam", "adabelief", "eadam"]
    cell = numeric[(numeric.task == "cifar10_vgg11") & (numeric.optimizer == "eadam")].iloc[0]
    runs = data.runs
    main = runs[(runs.optimizer == "eadam") & (runs.setting == cell.ours_setting) & (runs.status == "completed")]
    assert cell.ours_n == 3 and cell.ours_mean == pytest.approx(main.final.mean())
    assert cell.published == 91.45 and cell["diff"] == pytest.approx(cell.ours_mean - 91.45)
    assert display.loc[display.optimizer == "adam", "cifar10_resnet18 ours"].iloc[0] == "—"
    assert display.loc[display.optimizer == "adam", "cifar10_resnet18 published"].iloc[0] == "92.88"


# ------------------------------------------------------------------------------------- ablation
def _ablation_runs(
    root: Path,
    mode: str,
    belief: float,
    inside: float,
    seeds: int = 4,
    noise: float = 0.05,
    eps_values: tuple[float, ...] = (1e-8,),
) -> None:
    """Corners with known main effects (as raw metric changes) plus shared seed noise."""
    rng = np.random.default_rng(3)
    seed_noise = rng.normal(0, 1.0, size=seeds)
    for eps in eps_values:
        for optimizer, (second, placement) in ABLATION_CORNERS.items():
            for seed in range(seeds):
                value = 50.0 + seed_noise[seed] + rng.normal(0, noise)
                value += belief * (second == "belief") + inside * (placement == "inside")
                write_run(
                    root,
                    task="abl",
                    optimizer=optimizer,
                    seed=seed,
                    eps=eps,
                    curve=[value],
                    metric="m",
                    mode=mode,
                )


def test_ablation_effects_match_direct_and_verdict(tmp_path: Path) -> None:
    _ablation_runs(tmp_path, "max", belief=0.1, inside=2.0, eps_values=(1e-16, 1e-8))
    data = load_runs(tmp_path)
    abl = ablation_tables(data)
    effects = abl.effects.set_index(["eps", "effect"])
    runs = data.runs
    wide = runs.pivot_table(index=["seed", "eps"], columns="optimizer", values="final")
    belief = (
        (wide.ablation_belief_outside - wide.ablation_adam) + (wide.ablation_belief_inside - wide.ablation_eadam)
    ) / 2
    place = (
        (wide.ablation_eadam - wide.ablation_adam) + (wide.ablation_belief_inside - wide.ablation_belief_outside)
    ) / 2
    assert effects.loc[("all", "belief"), "mean"] == pytest.approx(belief.mean())
    assert effects.loc[("all", "placement"), "mean"] == pytest.approx(place.mean())
    assert effects.loc[("all", "placement"), "n_pairs"] == 8
    assert effects.loc[("1e-08", "placement"), "n_pairs"] == 4  # per-eps rows exist when eps was swept
    for name in ("belief", "placement", "gap"):
        row = effects.loc[("all", name)]
        assert row.ci_lo <= row["mean"] <= row.ci_hi
    corners = abl.corners.set_index(["eps", "corner"])
    assert corners.loc[("all", "eadam"), "mean"] == pytest.approx(runs[runs.optimizer == "ablation_eadam"].final.mean())
    assert "ε placement explains more" in abl.sentences["abl"]


def test_ablation_min_mode_counts_decrease_as_improvement(tmp_path: Path) -> None:
    _ablation_runs(tmp_path, "min", belief=-3.0, inside=0.0)  # belief lowers a lower-is-better metric
    abl = ablation_tables(load_runs(tmp_path))
    effects = abl.effects.set_index(["eps", "effect"])
    assert effects.loc[("all", "belief"), "mean"] == pytest.approx(3.0, abs=0.2)  # improvement: positive
    assert "belief second moment explains more" in abl.sentences["abl"]


def test_ablation_cannot_tell(tmp_path: Path) -> None:
    _ablation_runs(tmp_path / "a", "max", belief=0.0, inside=0.0, noise=1.0)
    assert "cannot tell" in ablation_tables(load_runs(tmp_path / "a")).sentences["abl"]
    _ablation_runs(tmp_path / "b", "max", belief=1.0, inside=5.0, seeds=1)
    sentence = ablation_tables(load_runs(tmp_path / "b")).sentences["abl"]
    assert "cannot tell (n=1" in sentence
    # only two corners: no complete pair, still a sentence, no crash
    for opt in ("ablation_adam", "ablation_eadam"):
        write_run(tmp_path / "c", task="abl", optimizer=opt, seed=0, curve=[1.0])
    abl = ablation_tables(load_runs(tmp_path / "c"))
    assert "no seed/ε has all four" in abl.sentences["abl"]


def test_verdict_overlapping_effects_cannot_tell() -> None:
    est_b = bootstrap_mean([1.0, 1.2, 0.9, 1.1])
    est_p = bootstrap_mean([1.05, 1.15, 0.95, 1.0])
    text = verdict("t", {"belief": est_b, "placement": est_p, "gap": est_b}, "max", "m")
    assert "cannot tell" in text and "overlap" in text


# ------------------------------------------------------------------------------------- end to end
def test_analyze_writes_everything_and_is_deterministic(mixed_runs: Path, tmp_path: Path) -> None:
    for opt in ABLATION_CORNERS:
        for seed in range(2):
            write_run(mixed_runs, task="cifar10_vgg11", optimizer=opt, seed=seed, curve=[80.0 + seed, 85.0 + seed])
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    analyze(mixed_runs, out1, PUBLISHED, REPO / "configs")
    analyze(mixed_runs, out2, PUBLISHED, REPO / "configs")
    files = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    names = {p.as_posix() for p in files}
    for expected in (
        "runs.csv",
        "curves.csv",
        "REPORT.md",
        "tables/comparison_cifar10_vgg11.md",
        "tables/comparison_cifar10_vgg11.csv",
        "tables/comparison_cifar10_vgg11.tex",
        "tables/paper_eadam2020_table2.md",
        "tables/ablation_cifar10_vgg11.md",
        "figures/eps_cifar10_vgg11.png",
        "figures/eps_cifar10_vgg11.pdf",
        "figures/curves_cifar10_vgg11.png",
        "figures/ablation_floor_cifar10_vgg11.png",
    ):
        assert expected in names, expected
    for rel in files:
        if rel.name != "REPORT.md":
            assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes(), rel
    report = (out1 / "REPORT.md").read_text()
    assert "tables/comparison_cifar10_vgg11.md" in report and "figures/eps_cifar10_vgg11.png" in report
    assert "RuntimeError: boom" in report  # failed runs with their reasons
    assert "cifar10_vgg11_yogi_s0" in report  # incomplete runs listed
    assert "Tasks with published numbers but no runs" in report and "imagenet_resnet18" in report
    assert "abc123def456" in report  # environment: git SHA
    assert "\\pm" in (out1 / "tables/comparison_cifar10_vgg11.tex").read_text()
    runs_csv = pd.read_csv(out1 / "runs.csv")
    assert len(runs_csv) == 23 + 8


def test_empty_runs_dir_gives_a_report(tmp_path: Path) -> None:
    main(["--runs", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "No complete runs found" in report
    assert (tmp_path / "out" / "tables" / "paper_eadam2020_table2.md").exists()  # paper views, all dashes


def test_cli_entry_point(mixed_runs: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optrepro.analyze",
            "--runs",
            str(mixed_runs),
            "--out",
            str(tmp_path / "cli"),
            "--no-figures",
            "--value",
            "best",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "cli" / "tables" / "comparison_cifar10_vgg11.csv")
    assert (table.value_kind == "best").all()
    assert DEFAULT_PUBLISHED.exists()
    pub = pd.read_csv(DEFAULT_PUBLISHED)
    assert "source" in pub.columns and len(pub) == len(pd.read_csv(PUBLISHED))


def test_settings_leave_out_data_location() -> None:
    cfg = {
        "task": {"name": "t", "data": {"root": "/a", "num_workers": 4, "augment": "flip"}, "epochs": 3},
        "optimizer": {"name": "adam", "config_name": "adam", "eps": 1e-8, "betas": [0.9, 0.999]},
        "seed": 1,
        "results_dir": "/r",
        "precision": "auto",
        "profile": {"name": "smoke"},
    }
    got = settings_of(cfg)
    assert got == {
        "task.data.augment": "flip",
        "task.epochs": 3,
        "opt.eps": 1e-8,
        "opt.betas": "[0.9, 0.999]",
        "cfg.precision": "auto",
        "cfg.profile.name": "smoke",
    }
