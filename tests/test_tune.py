"""Equal tuning budgets (optrepro.tune) and the generalization gap (analysis/gap.py, Task.gap_summary)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import scipy.stats as sps
import yaml

from conftest import REPO, TEST_THREADS, run_folders, run_inprocess, summary
from optrepro.analysis.gap import gap_table
from optrepro.analysis.load import RunsData
from optrepro.errors import UserError
from optrepro.sobol_sampler import SobolSampler
from optrepro.tasks.base import heldin_indices
from optrepro.tune import Space, load_space, select, trial_command, trial_runs


# ------------------------------------------------------------------------------------- selection
def _fake_run(root: Path, name: str, final: dict, status: str = "completed") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": status, "final": final}))
    return folder


def test_selection_reads_the_validation_metric_only(tmp_path: Path) -> None:
    """Folders where validation and test disagree: a selection that looked at test would pick another run."""
    runs = [
        _fake_run(tmp_path, "a", {"val_acc": 91.0, "test_acc": 50.0}),
        _fake_run(tmp_path, "b", {"val_acc": 80.0, "test_acc": 99.0}),  # best on test, worse on validation
        _fake_run(tmp_path, "c", {"val_acc": 99.5, "test_acc": 99.9}, status="diverged"),  # not a completed trial
        _fake_run(tmp_path, "d", {"test_acc": 100.0}),  # no validation value: cannot be chosen
        _fake_run(tmp_path, "e", {"val_acc": float("nan"), "test_acc": 100.0}),
    ]
    best, value = select(runs, "val_acc", "max")
    assert best.name == "a" and value == 91.0
    # lower-is-better validation metric (perplexity): the smallest, whatever test says
    ppl = [_fake_run(tmp_path, "p1", {"valid_ppl": 120.0, "test_ppl": 10.0}),
           _fake_run(tmp_path, "p2", {"valid_ppl": 100.0, "test_ppl": 500.0})]
    assert select(ppl, "valid_ppl", "min")[0].name == "p2"
    assert select(runs[2:4], "val_acc", "max") is None


def test_a_test_metric_is_refused_as_objective(tmp_path: Path) -> None:
    space = yaml.safe_load((REPO / "configs/tune/digits_ablation.yaml").read_text())
    space["objective"] = "test_acc"
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(UserError, match="not a validation metric"):
        load_space(str(path))
    space["objective"], space["trial_seed"] = "val_acc", 0  # a trial seed among the rerun seeds
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(UserError, match="trial_seed"):
        load_space(str(path))


@pytest.mark.parametrize("name", ["digits_ablation", "textlm_lstm1"])
def test_shipped_spaces_load_and_search_lr_log_uniform(name: str) -> None:
    space = load_space(name, budget=3)
    assert space.budget == 3 and space.objective.startswith(("val_", "valid_"))
    for params in space.arms.values():
        assert params["optimizer.lr"].startswith("tag(log, interval(")


# ------------------------------------------------------------------------------------- the sampler
def test_sobol_sampler_is_balanced_and_the_same_for_every_arm() -> None:
    """Scrambled Sobol, 2^k points: exactly one point per 1/2^k stratum of each dimension (on the log scale for
    a log-uniform parameter); two studies with the same seed are offered the same points."""
    def draws(seed: int) -> list[tuple[float, float]]:
        study = optuna.create_study(sampler=SobolSampler(dims=["lr", "eps"], seed=seed))
        out = []
        for _ in range(8):
            trial = study.ask()
            out.append((trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_float("eps", 0.0, 1.0)))
            study.tell(trial, 0.0)
        return out

    first, again, other = draws(0), draws(0), draws(1)
    assert first == again and first != other
    lr = np.array([math.log(v[0] / 1e-4) / math.log(1e3) for v in first])
    eps = np.array([v[1] for v in first])
    for u in (lr, eps):
        assert sorted(np.floor(u * 8).astype(int)) == list(range(8))


# ------------------------------------------------------------------------------------- the sweep
def test_optuna_sweep_makes_ordinary_run_folders_and_is_told_validation(tmp_path: Path) -> None:
    """2 arms x 2 trials of digits (1 epoch): run folders like any run's, Optuna's best = the best val_acc."""
    space = Space(name="t", task="digits_cnn", objective="val_acc", direction="maximize", budget=2, seeds=[0],
                  trial_seed=100, overrides=["+task.data.val_size=300"],
                  arms={"adam": {"optimizer.lr": "tag(log, interval(1e-3, 3e-2))"},
                        "ablation_eadam": {"optimizer.lr": "tag(log, interval(1e-3, 3e-2))",
                                           "optimizer.eps": "tag(log, interval(1e-12, 1e-6))"}})
    env = {"OMP_NUM_THREADS": TEST_THREADS, "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    for arm in space.arms:
        cmd = trial_command(space, arm, tmp_path, extra=["profile=smoke", "task.epochs=1"])
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trials = trial_runs(tmp_path / "sweeps" / arm)
        assert len(trials) == 2 and all(t.parent == tmp_path / "trials" for t in trials)
        for t in trials:  # an ordinary run folder
            assert {"config.yaml", "summary.json", "metrics.jsonl"} <= {p.name for p in t.iterdir()}
            assert summary(t)["status"] == "completed" and summary(t)["val_metric"] == "val_acc"
        result = yaml.safe_load((tmp_path / "sweeps" / arm / "optimization_results.yaml").read_text())
        best, value = select(trials, "val_acc", "max")
        assert result["best_value"] == pytest.approx(value)
        cfg = yaml.safe_load((best / "config.yaml").read_text())
        assert result["best_params"]["optimizer.lr"] == pytest.approx(cfg["optimizer"]["lr"])
    assert len(run_folders(tmp_path / "trials")) == 4


@pytest.mark.slow
def test_make_tune_end_to_end(tmp_path: Path) -> None:
    """The whole protocol on 2 ablation corners x 2 trials, 2 seeds: choices, reruns, papers' settings, TUNE.md."""
    space = yaml.safe_load((REPO / "configs/tune/digits_ablation.yaml").read_text())
    space["arms"] = {k: v for k, v in space["arms"].items() if k in ("ablation_adam", "ablation_eadam")}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, "-m", "optrepro.tune", "--space", str(path), "--budget", "2", "--seeds",
                           "0,1", "--results", str(tmp_path / "out"), "profile=smoke", "wandb.mode=disabled"],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": TEST_THREADS, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    report = (out / "TUNE.md").read_text()
    assert "## Ablation verdict, twice" in report and "## Generalization gap" in report
    assert len(run_folders(out / "runs")) == 4 and len(run_folders(out / "paper")) == 4
    choices = pd.read_csv(out / "tune_choices.csv")
    assert set(choices.arm) == {"ablation_adam", "ablation_eadam"}


# ------------------------------------------------------------------------------------- the gap
def test_heldin_subset_is_fixed_and_seed_independent() -> None:
    a, b = heldin_indices(1000, None, 300, "vision-x"), heldin_indices(1000, None, 300, "vision-x")
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 300 and a.tolist() == sorted(a.tolist())
    assert heldin_indices(1000, None, 300, "vision-y").tolist() != a.tolist()
    assert len(heldin_indices(100, None, 300, "t")) == 100 and len(heldin_indices(1000, 50, 300, "t")) == 50


def test_heldin_measurement_does_not_change_the_run(tmp_path: Path) -> None:
    """The held-in evaluation is outside the run identity: it must leave the trajectory bit for bit alone."""
    base = ["task=digits_cnn", "profile=smoke", "optimizer=adam"]
    on = run_inprocess(base, tmp_path / "on")
    off = run_inprocess([*base, "task.heldin_size=0"], tmp_path / "off")
    assert on.status == off.status == "completed"
    (f_on,), (f_off,) = run_folders(tmp_path / "on"), run_folders(tmp_path / "off")
    assert f_on.name == f_off.name  # same identity
    s_on, s_off = summary(f_on), summary(f_off)
    assert s_off["gap"] is None and "heldin_acc" not in s_off["final"]
    for key in ("test_acc", "test_loss", "train_loss"):
        assert s_on["final"][key] == s_off["final"][key]


def _gap_data(gaps: dict[str, list[float]], metric: str = "heldin_acc") -> RunsData:
    rows = []
    for optimizer, values in gaps.items():
        for seed, g in enumerate(values):
            rows.append({"run": f"{optimizer}_{seed}", "task": "t", "setting": optimizer, "optimizer": optimizer,
                         "opt_class": optimizer, "seed": seed, "status": "completed", "gap": g, "gap_metric": metric})
    return RunsData(Path("."), pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def test_gap_compared_with_sgd_paired_by_seed() -> None:
    adam, sgd, adabelief = [2.0, 3.5, 2.6], [0.4, 1.0, 0.9], [0.5, 1.4, 0.2]
    table = gap_table(_gap_data({"adam": adam, "sgd": sgd, "adabelief": adabelief})).set_index("setting")
    diff = np.subtract(adam, sgd)
    half = sps.t.ppf(0.975, 2) * diff.std(ddof=1) / math.sqrt(3)
    row = table.loc["adam"]
    assert row.vs_sgd_mean == pytest.approx(diff.mean())
    assert (row.vs_sgd_lo, row.vs_sgd_hi) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert row.vs_sgd_lo > 0 and row.verdict.startswith("more overfitting than SGD")
    assert table.loc["adabelief"].verdict.startswith("no difference from SGD detected")
    assert table.loc["sgd"].verdict == "the SGD reference"
    assert table.loc["adam"].gap_mean == pytest.approx(np.mean(adam))
    # perplexity: a more negative gap (held-in ppl far below test ppl) is the one that overfits more
    ppl = gap_table(_gap_data({"adam": [-30.0, -31.0, -29.5], "sgd": [-5.0, -6.0, -5.5]}, "heldin_ppl"))
    assert ppl.set_index("setting").loc["adam"].verdict.startswith("more overfitting than SGD")
    assert set(gap_table(_gap_data({"adam": adam})).verdict) == {"no SGD runs on this task"}


def test_analysis_reports_the_gap_for_a_grid(tmp_path: Path) -> None:
    """The ordinary analysis (make demo, make reproduce-table) carries the gap: CSV, table, REPORT section."""
    from analysis_fixtures import write_run
    from optrepro.analyze import analyze

    for optimizer, gaps in (("sgd", [0.5, 1.0, 0.8]), ("adam", [2.5, 3.0, 2.9])):
        for seed, g in enumerate(gaps):
            write_run(tmp_path / "runs", task="digits_cnn", optimizer=optimizer, seed=seed, curve=[90.0, 95.0 - g],
                      extra_summary={"gap": {"metric": "heldin_acc", "test_metric": "test_acc", "value": g}})
    analyze(tmp_path / "runs", tmp_path / "out", None, REPO / "configs", make_figures=False)
    table = pd.read_csv(tmp_path / "out" / "tables" / "generalization_gap.csv").set_index("setting")
    assert table.loc["adam"].gap_mean == pytest.approx(np.mean([2.5, 3.0, 2.9]))
    assert table.loc["adam"].vs_sgd_mean == pytest.approx(np.mean([2.0, 2.0, 2.1]))
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "## Generalization gap" in report and "more overfitting than SGD (3 seeds)" in report
