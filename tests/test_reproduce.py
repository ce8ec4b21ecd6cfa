"""``make reproduce-table`` / ``make sweep-eps`` on a cluster: launchers, results folder, --list, the dry run's
estimate (never downloading, "not timed" instead of zeros), and the SLURM path through submitit's local executor."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_folders, summary
from optrepro import reproduce
from optrepro.config import compose_train
from optrepro.errors import UserError
from optrepro.pipeline import Sweep, launcher_overrides, measure_step_seconds


def test_launcher_overrides_reach_hydra_submitit() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    slurm = launcher_overrides("slurm", partition="gpu", gpus_per_job=2, time_limit_min=90)
    assert slurm == ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
                     "hydra.launcher.timeout_min=90"]
    launcher = compose_train([*slurm, "hydra.launcher.account=abc"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.account) == ("gpu", 2, 90, "abc")
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # logs under the sweep dir
    local = compose_train(launcher_overrides("local", time_limit_min=5), return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.timeout_min == 5
    assert launcher_overrides("joblib", jobs=3) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    assert launcher_overrides("basic") == ["hydra/launcher=basic"]
    assert launcher_overrides("auto") is None and launcher_overrides("population") is None
    with pytest.raises(UserError, match="partition is for the slurm launcher"):
        launcher_overrides("joblib", partition="gpu")
    with pytest.raises(UserError, match="time limit"):
        launcher_overrides("slurm", time_limit_min=0)


def test_submitit_launchers_need_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_submitit(name: str, *args: Any) -> Any:
        return None if name.startswith("hydra_plugins.hydra_submitit") else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_submitit)
    for name in ("local", "slurm"):
        with pytest.raises(UserError, match=r"pip install 'optrepro\[slurm\]'"):
            launcher_overrides(name)
    assert launcher_overrides("basic") == ["hydra/launcher=basic"]


def test_reproduce_refuses_a_second_results_folder_or_launcher(capsys: pytest.CaptureFixture[str]) -> None:
    for override, hint in (("results_dir=/tmp/x", "--results (make: RESULTS=<folder>)"),
                           ("hydra/launcher=joblib", "--launcher (make: LAUNCHER=...)")):
        with pytest.raises(SystemExit) as exit_info:
            reproduce.main(["--table", "eadam_table3", "--dry-run", override])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and hint in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--table", "eadam_table3", "--partition", "gpu"])
    assert exit_info.value.code == 2 and "LAUNCHER=slurm" in capsys.readouterr().err


def _fake_timing(task: str, steps: int = 10, warmup: int = 3, overrides: Any = ()) -> tuple[float, int] | str:
    return (0.1, 3600) if task.startswith("cifar10_") else f"{task} data not found here"


def test_list_names_every_table_with_runs_and_hours_or_why_not(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(reproduce, "measure_step_seconds", _fake_timing)
    reproduce.main(["--list", "--seeds", "0"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == {*reproduce.TABLES, "ablation", "all"}
    for name, (description, _) in reproduce.TABLES.items():
        runs = sum(s.n_runs() for s in reproduce.plan(name, "0"))
        assert f" {runs} runs  {description}; " in lines[name], lines[name]
    # eadam_table3 trains PTB only: nothing timed, so it says why instead of "0.0 device-hours"
    assert lines["eadam_table4"].endswith("not timed: voc_fasterrcnn data not found here")  # the preset's task
    assert lines["eadam_table3"].endswith("not timed: ptb_lstm1 data not found here")
    # eadam_table2: its 3 CIFAR-10 tasks x 4 optimizers at 0.1 s x 3600 steps = 1.2 h, its CIFAR-100 tasks untimed
    assert lines["eadam_table2"].endswith("; 1.2 device-hours (3 tasks not timed)")


def test_estimate_counts_timed_tasks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reproduce, "measure_step_seconds", _fake_timing)
    sweeps = [Sweep("a", ("task=cifar10_vgg11,cifar100_vgg11", "seed=0,1"))]
    estimate = reproduce.estimate_hours(sweeps)
    assert estimate.lines[1] == f"  {'cifar100_vgg11':<24}    2 runs   not timed: cifar100_vgg11 data not found here"
    assert estimate.total_line() == ("  estimated total: 0.2 device-hours on this machine for 1 timed tasks; "
                                     "1 more not timed, not counted")
    none = reproduce.estimate_hours([Sweep("b", ("task=ptb_lstm1", "seed=0"))])
    assert none.total_line() == "  estimated total: none (no task could be timed; 1 not timed)"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every connection attempt: a download would be one."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # a download's first step (name lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_the_estimate_never_downloads(tmp_path: Path, no_network: list[Any]) -> None:
    # cifar10_resnet18's runs download when the files are missing (task.data.download=true); its estimate does not
    assert compose_train(["task=cifar10_resnet18"]).task.data.download is True
    root = tmp_path / "data"
    why = measure_step_seconds("cifar10_resnet18", steps=1, warmup=0, overrides=[f"task.data.root={root}"])
    assert isinstance(why, str) and "not found" in why and "download failed" not in why
    # even when the runs are told to download
    why = measure_step_seconds("ptb_lstm1", steps=1, warmup=0,
                               overrides=[f"task.data.root={root}", "task.data.download=true"])
    assert isinstance(why, str) and "task.data.download=true" in why
    assert no_network == [] and not root.exists()
    # an extra override the task has no key for: said, not a traceback
    why = measure_step_seconds("toy2d", steps=1, warmup=0, overrides=[f"task.data.root={root}"])
    assert why == "its config does not compose: Could not override 'task.data.root'."


def test_dry_run_says_not_timed_and_downloads_nothing(tmp_path: Path, no_network: list[Any],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the CIFAR tasks' data root is the relative data/
    reproduce.main(["--table", "eadam_table2", "--dry-run", "--results", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert out.count("not timed: cifar1") == 6 and "device-hours" not in out
    assert "estimated total: none (no task could be timed; 6 not timed)" in out
    assert no_network == [] and list(tmp_path.iterdir()) == []


def test_slurm_path_through_submitits_local_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``make reproduce-table LAUNCHER=slurm`` runs, with submitit's local executor in place of SLURM:
    ordinary run folders, submitit's logs under the sweep dir, and the analysis."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweeps = [Sweep("toy", ("task=toy2d", "profile=smoke", "optimizer=ablation_belief_inside", "seed=0"))]
    launch = launcher_overrides("local", time_limit_min=5)
    started = time.time()
    assert reproduce.execute(sweeps, tmp_path, "toy", "local", 1, launch, ("wandb.mode=disabled",)) == 0
    runs = run_folders(tmp_path / "runs")
    assert len(runs) == 1 and {summary(f)["status"] for f in runs} == {"completed"}
    assert list((tmp_path / "runs" / ".sweeps").glob("*/.submitit/*/*_log.out")), "submitit's job logs"
    assert "ablation_belief_inside" in (tmp_path / "toy" / "REPORT.md").read_text()
    print(f"submitit local pipeline: {time.time() - started:.1f} s")


def _make_n(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, env=env, timeout=60)


def test_sweep_eps_trains_and_analyses_in_the_results_folder(tmp_path: Path) -> None:
    proc = _make_n("sweep-eps", f"RESULTS={tmp_path}", "TASK=digits_cnn")
    assert proc.returncode == 0, proc.stderr
    sweep_dir = f"{tmp_path}/sweeps/digits_cnn"
    assert f"results_dir={sweep_dir}/runs " in proc.stdout
    assert f"optrepro.analyze --runs {sweep_dir}/runs --out {sweep_dir}" in proc.stdout
    assert "results/sweeps" not in proc.stdout
    refused = _make_n("sweep-eps", f"ARGS=results_dir={tmp_path}")
    assert refused.returncode == 2 and "set RESULTS=<folder> instead" in refused.stderr
    assert "optrepro.train" not in refused.stdout


def test_reproduce_table_passes_the_launcher_and_the_results_folder(tmp_path: Path) -> None:
    proc = _make_n("reproduce-table", "TABLE=eadam_table3", f"RESULTS={tmp_path}", "LAUNCHER=slurm",
                   "PARTITION=gpu", "GPUS_PER_JOB=1", "TIME_LIMIT=720", "ARGS=hydra.launcher.account=abc")
    assert proc.returncode == 0, proc.stderr
    command = " ".join(proc.stdout.replace("\\\n", " ").split())
    assert (f"-m optrepro.reproduce --table eadam_table3 --seeds 0,1,2 --jobs 2 --results {tmp_path} "
            "--launcher slurm --partition gpu --gpus-per-job 1 --time-limit 720 hydra.launcher.account=abc") in command
    assert "--launcher" not in _make_n("reproduce-table").stdout  # the default: JOBS joblib processes
