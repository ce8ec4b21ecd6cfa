"""make demo / reproduce-table / sweep-eps plumbing: plans, run counts, estimates, one tiny pipeline run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_folders, summary
from optrepro.demo import CORNERS, OUTSIDE, demo_plan
from optrepro.demo import OPTIMIZERS as ALL
from optrepro.pipeline import Sweep, analyze, count_outcomes, measure_step_seconds, run_sweeps
from optrepro.reproduce import TABLES, plan, runs_per_task


def test_sweep_counts_runs_of_the_whole_grid() -> None:
    assert Sweep("a", ("task=toy2d", "optimizer=adam,sgd", "seed=0,1,2")).n_runs() == 6
    assert Sweep("b", ("task=toy2d", "seed=range(0,4)")).n_runs() == 4
    # an experiment preset's own grid counts too, unless the command line replaces that key
    preset = Sweep("c", ("experiment=x", "seed=0,1"), {"task": "a,b,c", "optimizer": "p,q", "seed": "0,1,2,3,4"})
    assert preset.n_runs() == 2 * 3 * 2


#: the demo grid before it had a 10-minute default (174 runs): what ``--full`` must still run
OLD_DEMO_GRID = {
    "toy2d": ("task=toy2d", "task.function=l1,l1_rotated,quadratic_rotated,beale,rosenbrock", f"optimizer={ALL}",
              "seed=0"),
    "toy2d_l1_scaled": ("task=toy2d_l1_scaled", f"optimizer={ALL}", "seed=0"),
    "digits": ("task=digits_cnn", f"optimizer={ALL}", "seed=0,1,2"),
    "digits-eps": ("task=digits_cnn", f"optimizer={CORNERS}", "optimizer.eps=1e-16,1e-4", "seed=0,1,2"),
    "digits-matched": ("task=digits_cnn", f"optimizer={OUTSIDE}", "seed=0,1,2",
                       "optimizer.eps=" + ",".join(repr(math.sqrt(e / (1 - 0.999))) for e in (1e-16, 1e-8, 1e-4))),
    "textlm": ("task=textlm_lstm1", f"optimizer=adabelief,{CORNERS}", "seed=0,1,2"),
    "textlm-matched": ("task=textlm_lstm1", f"optimizer={OUTSIDE}", f"optimizer.eps={math.sqrt(1e-8 / (1 - 0.999))!r}",
                       "seed=0,1,2"),
    "ring_gan": ("task=ring_gan", f"optimizer=adabelief,{CORNERS}", "seed=0,1,2"),
    "synthetic_mt": ("task=synthetic_mt", f"optimizer=adabelief,{CORNERS}", "seed=0,1,2"),
}


def _optimizers(sweep: Sweep) -> set[str]:
    return set(sweep.values("optimizer"))


def test_demo_plan_covers_every_family_in_fewer_runs() -> None:
    sweeps = {s.label: s for s in demo_plan()}
    assert list(sweeps) == list(OLD_DEMO_GRID)  # every sweep of the full grid, in the same order
    tasks = {s.values("task")[0] for s in sweeps.values()}
    assert tasks == {"toy2d", "toy2d_l1_scaled", "digits_cnn", "textlm_lstm1", "ring_gan", "synthetic_mt"}
    corners = set(CORNERS.split(","))
    # every optimizer of the debate on the cheap tasks, with 3 seeds on digits
    assert _optimizers(sweeps["toy2d"]) == _optimizers(sweeps["digits"]) == set(ALL.split(","))
    assert sweeps["digits"].values("seed") == ["0", "1", "2"]
    # the 2x2 on every slow task with 3 seeds (paired intervals), and its matched-floor contrast on the LSTM
    for label in ("textlm", "ring_gan", "synthetic_mt"):
        assert _optimizers(sweeps[label]) == corners and sweeps[label].n_runs() == 12, label
    assert sweeps["textlm-matched"].n_runs() == 6
    # the digits eps axis: 1e-8 (the default) and 1e-4, each inside eps with its matched outside floor
    assert _optimizers(sweeps["digits-eps"]) == corners
    assert [float(v) for v in sweeps["digits-eps"].values("optimizer.eps")] == [1e-4]
    floors = {math.sqrt(e / (1 - 0.999)) for e in (1e-8, 1e-4)}
    assert {float(v) for v in sweeps["digits-matched"].values("optimizer.eps")} == floors
    assert sweeps["digits-matched"].values("optimizer") == ["ablation_adam", "ablation_belief_outside"]
    assert sum(s.n_runs() for s in sweeps.values()) == 147


def test_demo_full_is_the_old_grid() -> None:
    sweeps = demo_plan(full=True)
    assert {s.label: s.overrides for s in sweeps} == OLD_DEMO_GRID
    assert sum(s.n_runs() for s in sweeps) == 174


def test_demo_profiles_shorten_the_training_and_full_keeps_it() -> None:
    from optrepro.config import compose_train
    from optrepro.demo import PROFILE

    assert PROFILE == {False: "demo", True: "demo_full"}
    length = {"digits_cnn": "epochs", "textlm_lstm1": "epochs", "ring_gan": "steps", "synthetic_mt": "epochs"}
    for task, key in length.items():
        own, demo, full = (compose_train([f"task={task}", f"profile={p}"]).task
                           for p in ("default", "demo", "demo_full"))
        assert demo[key] < own[key], task
        # demo_full: the task's own training; only synthetic_mt's per-epoch valid BLEU is trimmed (50 sentences)
        trimmed = {"valid_bleu_subset": 50} if task == "synthetic_mt" else {}
        assert {**own, **trimmed} == dict(full), task
    # the toy functions are cheap whatever their length: both profiles run them unchanged
    for profile in ("demo", "demo_full"):
        assert compose_train(["task=toy2d", f"profile={profile}"]).task == compose_train(["task=toy2d"]).task


def test_demo_refuses_an_unknown_sweep_label(capsys: pytest.CaptureFixture[str]) -> None:
    from optrepro.demo import main

    with pytest.raises(SystemExit) as exc:
        main(["--only", "digits,nope"])
    assert exc.value.code == 2 and "unknown sweep label(s) nope" in capsys.readouterr().err


def test_every_table_has_its_preset_and_plan() -> None:
    for table in TABLES:
        sweeps = plan(table, "0,1,2")
        assert sweeps and all(s.n_runs() > 0 for s in sweeps), table
        # every run is counted under its task, also where the preset selects the task in its defaults
        assert all(sum(runs_per_task(s).values()) == s.n_runs() for s in sweeps), table
    assert runs_per_task(plan("eadam_table4", "0,1,2")[0]) == {"voc_fasterrcnn": 12}
    eadam2 = plan("eadam_table2", "0,1,2")[0]
    assert sum(runs_per_task(eadam2).values()) == eadam2.n_runs()
    ablation = {s.label: s for s in plan("ablation", "0")}
    assert all(s.n_runs() == (2 if s.label.startswith("matched-") else 4) for s in ablation.values())
    assert len([s for s in ablation if s.startswith("matched-")]) == len(ablation) / 2
    # the matched outside ε is the inside floor at the task's own beta2 (the Transformer recipe uses 0.98)
    assert [float(v) for v in ablation["matched-cifar10_resnet34"].values("optimizer.eps")] == [
        math.sqrt(1e-8 / (1 - 0.999))
    ]
    assert [float(v) for v in ablation["matched-iwslt14_transformer"].values("optimizer.eps")] == [
        math.sqrt(1e-8 / (1 - 0.98))
    ]


def test_step_time_is_measured_or_explained() -> None:
    measured = measure_step_seconds("toy2d", steps=3, warmup=1)
    assert isinstance(measured, tuple) and measured[0] > 0 and measured[1] == 1000
    missing = measure_step_seconds("ptb_lstm1", steps=1, warmup=0)
    assert isinstance(missing, str) and "task.data.download=true" in missing


def test_reproduce_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "optrepro.reproduce", "--table", "eadam_table3", "--dry-run",
                           "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "36 runs" in proc.stdout and "estimated total: " in proc.stdout
    # the PTB tasks are timed where their files are, else each says why (tests/test_reproduce.py: without data)
    assert proc.stdout.count(" runs x ") + proc.stdout.count("not timed: ") == 3
    assert not any(tmp_path.iterdir())


def test_pipeline_runs_sweeps_then_the_analysis(tmp_path: Path) -> None:
    sweeps = [Sweep("toy", ("task=toy2d", "profile=smoke", "optimizer=adam,ablation_belief_inside", "seed=0"))]
    runs = tmp_path / "runs"
    assert run_sweeps(sweeps, runs, jobs=1, extra=("wandb.mode=disabled",), show_progress=False) == 0
    assert {summary(f)["status"] for f in run_folders(runs)} == {"completed"} and len(run_folders(runs)) == 2
    assert count_outcomes(runs, since=0) == 2
    # a second pipeline run skips both
    assert run_sweeps(sweeps, runs, jobs=1, extra=("wandb.mode=disabled",), show_progress=False) == 0
    assert "2 skipped" in (runs / ".sweeps" / "toy.log").read_text()
    assert analyze(runs, tmp_path / "out") == 0
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "toy2d_l1" in report and "ablation_belief_inside" in report


def test_sweep_launcher_uses_populations_where_the_task_batches() -> None:
    from optrepro.pipeline import sweep_launcher

    assert sweep_launcher(Sweep("d", ("task=digits_cnn", "seed=0,1")), 2, True) == ["hydra/launcher=population"]
    assert sweep_launcher(Sweep("r", ("task=ring_gan",)), 2, True) == ["hydra/launcher=population"]
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert sweep_launcher(Sweep("t", ("task=textlm_lstm1",)), 2, True) == joblib  # LSTMs do not batch
    assert sweep_launcher(Sweep("d", ("task=digits_cnn",)), 2, False) == joblib
    assert sweep_launcher(Sweep("d", ("task=digits_cnn",)), 1, False) == []
