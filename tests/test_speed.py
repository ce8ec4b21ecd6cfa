"""Time to target, performance profiles and the AlgoPerf score (optrepro.analysis.speed), and the speed
section of the analysis on a small synthetic runs folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis_fixtures import write_run
from optrepro.analysis import speed
from optrepro.analysis.load import load_runs

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published_results.csv"


def _points(values: list[float], steps: list[int] | None = None) -> pd.DataFrame:
    steps = steps or [10 * (i + 1) for i in range(len(values))]
    return pd.DataFrame({"step": steps, "epoch": [s / 10 for s in steps], "wall_time": [s / 20 for s in steps],
                         "value": values})


# ------------------------------------------------------------------------------------- one curve
def test_time_to_target_first_crossing_in_both_directions() -> None:
    """Up: [50, 70, 80, 90] reaches 80 at its 3rd point (step 30, epoch 3, 1.5 s; >= is inclusive).
    Non-monotone [50, 85, 60, 90] reaches 80 at its 2nd point although it falls back after it.
    Down: [5, 3, 4, 1] reaches <= 3 at the 2nd point, <= 2 only at the 4th.
    A NaN point never reaches: [nan, 5] reaches <= 6 at the 2nd point."""
    hit = speed.time_to_target(_points([50, 70, 80, 90]), 80, "max")
    assert hit == {"reached": True, "step": 30.0, "epoch": 3.0, "wall_time": 1.5}
    assert speed.time_to_target(_points([50, 85, 60, 90]), 80, "max")["step"] == 20.0
    assert speed.time_to_target(_points([5, 3, 4, 1]), 3, "min")["step"] == 20.0
    assert speed.time_to_target(_points([5, 3, 4, 1]), 2, "min")["step"] == 40.0
    assert speed.time_to_target(_points([math.nan, 5]), 6, "min")["step"] == 20.0
    # rows out of step order are read in step order
    assert speed.time_to_target(_points([90, 50], steps=[20, 10]), 80, "max")["step"] == 20.0


def test_a_miss_is_not_the_run_length() -> None:
    for values, target, mode in (([1, 2, 3], 4, "max"), ([3, 2, 1.5], 1, "min"), ([math.nan, math.nan], 0, "max")):
        hit = speed.time_to_target(_points(values), target, mode)
        assert hit["reached"] is False
        assert all(math.isnan(hit[k]) for k in ("step", "epoch", "wall_time"))
    assert speed.time_to_target(_points([1, 2]), math.nan, "max")["reached"] is False


def test_metric_direction() -> None:
    assert speed.metric_mode("test_acc") == "max" and speed.metric_mode("valid_ppl") == "min"
    assert speed.metric_mode("fid") == "min" and speed.metric_mode("valid_bleu") == "max"
    assert speed.metric_mode("loss", primary=("loss", "min")) == "min"
    assert speed.metric_mode("modes_covered", "min") == "min"  # stated wins
    assert speed.metric_mode("something") is None


# ------------------------------------------------------------------------------------- arms
def _per_run(reached: list[bool], steps: list[float]) -> pd.DataFrame:
    n = len(reached)
    return pd.DataFrame({
        "task": "t", "target": "x", "optimizer": "a", "setting": "a", "target_value": 1.0,
        "reached": reached, "step": [s if r else math.nan for s, r in zip(steps, reached, strict=True)],
        "epoch": [s / 10 if r else math.nan for s, r in zip(steps, reached, strict=True)],
        "wall_time": [s / 20 if r else math.nan for s, r in zip(steps, reached, strict=True)],
        "seed": range(n),
    })


def test_arm_reaches_only_with_the_required_share_of_seeds() -> None:
    """3 of 5 seeds reach at steps 10, 30, 20: reached (share 0.6); median of (10, 20, 30, inf, inf) = 30;
    DeepOBS speed = mean epoch of the reaching seeds = (1 + 3 + 2) / 3 = 2. With 2 of 5 it is a miss (inf)."""
    three = speed.arm_table(_per_run([True, True, True, False, False], [10, 30, 20, 0, 0]), 0.6).iloc[0]
    assert bool(three.reaches) and three.reached_seeds == 3 and three.seeds == 5
    assert three.step == 30.0 and three.epoch == 3.0 and three.speed_epochs == pytest.approx(2.0)
    two = speed.arm_table(_per_run([True, True, False, False, False], [10, 30, 0, 0, 0]), 0.6).iloc[0]
    assert not bool(two.reaches) and two.step == math.inf and two.wall_time == math.inf
    assert two.speed_epochs == pytest.approx(2.0)  # DeepOBS speed is still shown, beside "2/5"
    # a stated share of 0.4 admits 2 of 5
    assert bool(speed.arm_table(_per_run([True, True, False, False, False], [10, 30, 0, 0, 0]), 0.4).iloc[0].reaches)


# ------------------------------------------------------------------------------------- profiles
def _three_tasks() -> pd.DataFrame:
    inf = math.inf
    rows = [("T1", "A", 10.0), ("T1", "B", 20.0), ("T1", "C", inf),
            ("T2", "A", 30.0), ("T2", "B", 12.0), ("T2", "C", 60.0),
            ("T3", "A", inf), ("T3", "B", inf)]  # nobody reaches T3; C did not run it
    frame = pd.DataFrame(rows, columns=["task", "optimizer", "step"])
    frame["reaches"] = np.isfinite(frame.step)
    return frame


def test_profile_and_score_on_a_known_table() -> None:
    """Hand computation, r_max = 4, 3 tasks.

    T1: A 10, B 20, C miss -> t_best 10: r_A = 1, r_B = 2, r_C = inf.
    T2: A 30, B 12, C 60   -> t_best 12: r_A = 2.5, r_B = 1, r_C = 5.
    T3: nobody reaches; C did not run it -> r = inf for all.
    rho_A: 1/3 on [1, 2.5), 2/3 on [2.5, 4]; rho_B: 1/3 on [1, 2), 2/3 on [2, 4]; rho_C = 0.
    score = integral of rho over [1, 4] / 3:
      A: (1/3 * 1.5 + 2/3 * 1.5) / 3 = 1.5 / 3 = 0.5  (= ((4 - 1) + (4 - 2.5)) / (3 * 3))
      B: (1/3 * 1 + 2/3 * 2) / 3 = (5/3) / 3 = 5/9   (= ((4 - 2) + (4 - 1)) / (3 * 3))
      C: 0 (its only finite r, 5, is above r_max).
    """
    table = _three_tasks()
    r = speed.ratios(table, "step")
    assert r.loc["T1"].tolist() == [1.0, 2.0, math.inf]
    assert r.loc["T2"].tolist() == [2.5, 1.0, 5.0]
    assert r.loc["T3"].tolist() == [math.inf] * 3
    assert speed.rho(r["A"], 1.0) == pytest.approx(1 / 3) and speed.rho(r["A"], 2.49) == pytest.approx(1 / 3)
    assert speed.rho(r["A"], 2.5) == pytest.approx(2 / 3) and speed.rho(r["C"], 4.0) == 0.0
    assert speed.score(r["A"]) == pytest.approx(0.5)
    assert speed.score(r["B"]) == pytest.approx(5 / 9)
    assert speed.score(r["C"]) == 0.0
    # the exact area agrees with a Riemann sum of rho on a grid of step h (error <= jumps * h / (r_max - 1))
    h = 1e-3
    taus = np.arange(1.0, 4.0, h)
    for name in "ABC":
        riemann = sum(speed.rho(r[name], t) for t in taus) * h / 3
        assert speed.score(r[name]) == pytest.approx(riemann, abs=3 * h / 3 + 1e-12)
    profile = speed.profile_table(table.assign(wall_time=table.step), ["step", "wall_time"], 4.0)
    assert profile.optimizer.tolist() == ["B", "A", "C"]  # by score
    assert profile.set_index("optimizer").loc["A", "tasks_reached"] == 2
    assert profile.set_index("optimizer").loc["C", "tasks_run"] == 2
    assert (profile.tasks == 3).all()


def test_fastest_at_zero_steps() -> None:
    r = speed.ratios(pd.DataFrame({"task": ["T"] * 2, "optimizer": ["A", "B"], "step": [0.0, 5.0]}), "step")
    assert r.loc["T"].tolist() == [1.0, math.inf]


# ------------------------------------------------------------------------------------- the analysis
def _grid(root: Path) -> None:
    """Two tasks with the same curves: adam's seeds' bests are 80, 80, 90 (median 80 = the reference target);
    adabelief reaches 80 at step 20 in every seed, adam at step 30 in every seed, sgd never."""
    curves = {"adam": [[50.0, 70.0, 80.0], [50.0, 60.0, 80.0], [50.0, 75.0, 90.0]],
              "adabelief": [[60.0, 80.0, 85.0]] * 3, "sgd": [[40.0, 50.0, 60.0]] * 3}
    for task in ("cifar10_vgg11", "fake_task"):
        for optimizer, per_seed in curves.items():
            for seed, curve in enumerate(per_seed):
                write_run(root, task=task, optimizer=optimizer, seed=seed, curve=curve)


def test_analysis_writes_speed_tables_figures_and_report(tmp_path: Path) -> None:
    """Reference target 80 on both tasks: adabelief r = 1, adam r = 30 / 20 = 1.5, sgd misses, so the
    scores are 1, (4 - 1.5) / 3 = 5/6 and 0 (steps; the fixture's wall time is step / 20, the same ratios)."""
    from optrepro.analyze import DEFAULT_PUBLISHED_CURVES, analyze

    _grid(tmp_path / "runs")
    out = tmp_path / "out"
    analyze(tmp_path / "runs", out, PUBLISHED, REPO / "configs", make_figures=True,
            published_curves_path=DEFAULT_PUBLISHED_CURVES)
    targets = pd.read_csv(out / "tables" / "speed_targets.csv")
    ref = targets[targets.target == "reference_best"].set_index("task").target_value
    assert ref.to_dict() == {"cifar10_vgg11": 80.0, "fake_task": 80.0}
    # the published target of cifar10_vgg11 is the authors' Adam final, read from the curves file
    pub = targets[(targets.task == "cifar10_vgg11") & (targets.target == "published_adam_final")].iloc[0]
    assert pub.kind == "published_curve" and "published_curves" in pub.origin
    profile = pd.read_csv(out / "tables" / "profile_reference_best.csv").set_index("optimizer")
    assert profile.score_step.to_dict() == pytest.approx({"adabelief": 1.0, "adam": 2.5 / 3, "sgd": 0.0})
    assert profile.score_wall_time.to_dict() == pytest.approx({"adabelief": 1.0, "adam": 2.5 / 3, "sgd": 0.0})
    runs = pd.read_csv(out / "tables" / "time_to_target_runs.csv")
    assert len(runs[runs.target == "reference_best"]) == 18
    assert runs[(runs.optimizer == "sgd")].reached.eq(False).all() and runs[runs.optimizer == "sgd"].step.isna().all()
    for name in ("figures/profile_reference_best.png", "figures/profile_reference_best.pdf",
                 "figures/published_overlay_cifar10_vgg11.png", "tables/time_to_target_reference_best.md",
                 "tables/published_time_to_target.csv", "tables/published_time_to_target_published_adam_final.md"):
        assert (out / name).exists(), name
    assert not (out / "figures" / "published_overlay_fake_task.png").exists()
    report = (out / "REPORT.md").read_text()
    assert "## Speed: time to target and performance profiles" in report
    assert "figures/profile_reference_best.png" in report and "The authors' own curves" in report
    # the authors' curves: every optimizer's first epoch is within its curve, Adam reaches its own final value
    published = pd.read_csv(out / "tables" / "published_time_to_target.csv")
    own = published[(published.target == "published_adam_final") & (published.optimizer == "adam")]
    assert own.reached.all() and len(own) == 6


def test_old_runs_without_a_config_file_get_the_default_target(tmp_path: Path) -> None:
    """No speed.yaml: every task gets the reference target on its primary metric."""
    _grid(tmp_path / "runs")
    data = load_runs(tmp_path / "runs")
    cfg = speed.load_speed_config(tmp_path / "missing.yaml")
    targets = speed.targets_for_runs(cfg, data, pd.DataFrame(columns=["task", "optimizer"]))
    assert {(t.task, t.id, t.value) for t in targets} == {("cifar10_vgg11", "reference_best", 80.0),
                                                         ("fake_task", "reference_best", 80.0)}


def test_every_configured_published_target_resolves() -> None:
    """configs/analysis/speed.yaml names rows of the committed published files that exist (a typo would
    leave a task without its target)."""
    from optrepro.analysis.curves import load_published_curves
    from optrepro.analysis.tables import load_published
    from optrepro.analyze import DEFAULT_PUBLISHED_CURVES

    cfg = speed.load_speed_config(REPO / "configs" / "analysis" / "speed.yaml")
    assert cfg.required_share == 0.6 and cfg.r_max == 4.0
    published, curves = load_published(PUBLISHED), load_published_curves(DEFAULT_PUBLISHED_CURVES)
    targets = speed.resolve_targets(cfg, sorted(cfg.tasks), published, {}, lambda *a: (math.nan, "not here"), curves)
    pub = [t for t in targets if t.kind in ("published", "published_curve")]
    assert {t.task for t in pub} == {t for t, e in cfg.tasks.items() if any(
        s["kind"] in ("published", "published_curve") for s in e.get("targets") or [])}
    assert all(math.isfinite(t.value) and t.mode in ("max", "min") for t in pub), [t for t in pub if t.value != t.value]


def test_reference_arm_falls_back_to_the_adam_corner_when_the_grid_has_no_adam() -> None:
    """The default reference arm is a list: adam, else ablation_adam (Adam's update as the ablation's corner);
    a grid of the four corners (the demo's LSTM, MT and ring GAN) gets its target from ablation_adam."""
    cfg = speed.load_speed_config(None)
    have = {("corners_only", "ablation_adam"): 7.0, ("both", "adam"): 3.0, ("both", "ablation_adam"): 9.0}

    def reference_best(task: str, arm: str, metric: str, mode: str) -> tuple[float, str]:
        value = have.get((task, arm), math.nan)
        return value, f"{arm}" if not math.isnan(value) else f"no runs of arm {arm}"

    targets = speed.resolve_targets(cfg, ["corners_only", "both", "neither"], pd.DataFrame(),
                                    {t: ("test_acc", "max") for t in ("corners_only", "both", "neither")},
                                    reference_best)
    value = {t.task: t.value for t in targets}
    assert value["corners_only"] == 7.0 and value["both"] == 3.0 and math.isnan(value["neither"])
