"""Sweeps and reliability: launchers, idempotent relaunch, fault tests with real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_table_matches_the_runs, cli, fault_env, metrics, run_folders, summary

TOY = ["task=toy2d", "profile=smoke"]
SLOW_TOY = ["task=toy2d", "task.function=quadratic_rotated", "optimizer=adam", "task.steps=600",
            "task.eval_every=100", "+task.fault.sleep_per_step=0.004", "checkpoint.every_steps=25"]


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def _same_result(a: Path, b: Path) -> None:
    assert _strip(metrics(a)) == _strip(metrics(b))
    assert (a / "trajectory.csv").read_text() == (b / "trajectory.csv").read_text()
    pa = torch.load(a / "checkpoint.pt", weights_only=True)["task"]["point"]
    pb = torch.load(b / "checkpoint.pt", weights_only=True)["task"]["point"]
    assert torch.equal(pa, pb)


def test_sweep_summary_counts_every_outcome_and_relaunch_is_idempotent(tmp_path: Path) -> None:
    grid = ["-m", "task=toy2d", "task.steps=120", "task.eval_every=20", "optimizer=sgd",
            "optimizer.lr=0.001,1e4", "task.function=quadratic_rotated,l1", "+task.fault.raise_at_step=null,100",
            f"results_dir={tmp_path}"]
    first = cli(grid)
    assert first.returncode == 0, first.stderr
    statuses = sorted(summary(f)["status"] for f in run_folders(tmp_path))
    # lr 1e4 on the quadratic overflows near step 67, before the fault injected at step 100 (2 diverged);
    # the fault fails the 3 other runs that reach step 100; the remaining 3 complete
    assert statuses == ["completed"] * 3 + ["diverged"] * 2 + ["failed"] * 3
    line = next(line for line in first.stderr.splitlines() if line.startswith("sweep: 8 jobs"))
    assert "diverged" in line and "failed" in line and "completed" in line
    assert "fault injected at step 100" in first.stderr
    assert_table_matches_the_runs(first.stderr, tmp_path, jobs=8)

    second = cli(grid)
    assert second.returncode == 0, second.stderr
    line = next(line for line in second.stderr.splitlines() if line.startswith("sweep: 8 jobs"))
    # completed and diverged runs are not redone; failed ones are tried again (and fail again)
    assert "5 skipped" in line and "3 failed" in line
    table = assert_table_matches_the_runs(second.stderr, tmp_path, jobs=8, skipped=True)
    assert sorted(row[1] for row in table.values()) == ["failed"] * 3 + ["skipped"] * 5


def test_format_summary_table() -> None:
    from optrepro.sweep import format_summary

    rows = [
        {"job": 0, "status": "completed", "run_dir": "/r/toy2d_l1_adam_s0_aaa", "resumed": False, "metric": "loss",
         "value": 0.0047955},
        {"job": 1, "status": "completed", "run_dir": "/r/toy2d_l1_eadam_s0_bbb", "resumed": True, "metric": "loss",
         "value": 1e-5},
        {"job": 2, "status": "skipped", "run_dir": "/r/cifar10_resnet34_sgd_s1_ccc", "reason": None,
         "metric": "test_acc", "value": 95.25},
        {"job": 3, "status": "diverged", "run_dir": "/r/x_dd", "reason": "non-finite training loss at step 35",
         "metric": "loss", "value": None},
        {"job": 4, "status": "error", "run_dir": None, "reason": "optimizer.eps must be >= 0"},
    ]
    assert format_summary(rows).splitlines() == [
        "sweep: 5 jobs: 1 completed, 1 resumed, 1 skipped, 1 diverged, 1 error",
        "  run                          status     metric    value",
        "  toy2d_l1_adam_s0_aaa         completed  loss      0.004796",
        "  toy2d_l1_eadam_s0_bbb        resumed    loss      1e-05",
        "  cifar10_resnet34_sgd_s1_ccc  skipped    test_acc  95.25",
        "  x_dd                         diverged   loss      -         non-finite training loss at step 35",
        "  job 4                        error      -         -         optimizer.eps must be >= 0",
    ]
    assert format_summary([]) == "sweep: 0 jobs: no jobs"
    # rows written before outcomes carried the metric (an older outcomes.jsonl) still print
    assert format_summary([{"job": 0, "status": "completed", "run_dir": "/r/a", "resumed": False}]).splitlines()[2] \
        == "  a    completed  -       -"


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    proc = cli(["-m", *TOY, "optimizer=adam,sgd", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                f"results_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr
    folders = run_folders(tmp_path)
    assert len(folders) == 4 and {summary(f)["status"] for f in folders} == {"completed"}
    assert "sweep: 4 jobs: 4 completed" in proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = hydra_compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout == 5
    assert launcher.array_parallelism == 16


def test_kill_during_checkpoint_write_then_resume(tmp_path: Path) -> None:
    proc = cli([*SLOW_TOY, f"results_dir={tmp_path / 'whole'}"], check=True)
    assert proc.returncode == 0
    (whole,) = run_folders(tmp_path / "whole")
    killed = cli([*SLOW_TOY, f"results_dir={tmp_path / 'cut'}"], env={"OPTREPRO_TEST_KILL_IN_CHECKPOINT": "7"})
    assert killed.returncode == -signal.SIGKILL
    (folder,) = run_folders(tmp_path / "cut")
    assert list(folder.glob(".checkpoint.pt.tmp*")), "the kill should leave a half-written temp file"
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 150  # the 6th one is intact
    resumed = cli([*SLOW_TOY, f"results_dir={tmp_path / 'cut'}"], check=True)
    assert "resuming from step 150" in resumed.stderr
    assert not list(folder.glob(".checkpoint.pt.tmp*"))
    _same_result(folder, whole)


def test_corrupt_checkpoint_restarts_from_scratch_with_a_warning(tmp_path: Path) -> None:
    args = [*TOY, "checkpoint.every_steps=10"]
    cli([*args, f"results_dir={tmp_path / 'whole'}"], check=True)
    (whole,) = run_folders(tmp_path / "whole")
    shutil.copytree(whole, tmp_path / "cut" / whole.name)
    folder = tmp_path / "cut" / whole.name
    (folder / "summary.json").unlink()  # an interrupted run...
    (folder / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)  # ...whose checkpoint was damaged
    proc = cli([*args, f"results_dir={tmp_path / 'cut'}"], check=True)
    assert "unreadable" in proc.stderr and "restarting this run from scratch" in proc.stderr
    assert "resuming" not in proc.stderr
    assert list(folder.glob("checkpoint.corrupt.*.pt"))
    assert summary(folder)["status"] == "completed"
    _same_result(folder, whole)


def test_two_concurrent_launches_run_a_config_once(tmp_path: Path) -> None:
    # 300 steps of 30 ms: long enough for the second process to start while the first trains
    args = [sys.executable, "-m", "optrepro.train", *SLOW_TOY, "task.steps=300", "++task.fault.sleep_per_step=0.03",
            f"results_dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **fault_env()}
    first = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.rglob("run.lock")):
        time.sleep(0.02)
    second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    first_err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    assert "is being trained by pid" in second.stderr and "not starting it twice" in second.stderr
    (folder,) = run_folders(tmp_path)
    assert [r["step"] for r in metrics(folder)] == [100, 200, 300]
    assert summary(folder)["status"] == "completed"


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    from optrepro.runs import RunDir

    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rd.lock_path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0}))
    with rd.lock():
        assert rd.lock_path.exists()
    assert not rd.lock_path.exists()


def _in_readonly_mount(tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to make a read-only mount")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_read_only_results_dir_is_one_line_before_training(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    proc = _in_readonly_mount(
        tmp_path, f"mount --bind -o ro {results} {results} && {sys.executable} -m optrepro.train "
                  f"task=toy2d profile=smoke results_dir={results}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == [f"error: results_dir {results} is not writable (Read-only file system); set results_dir=..."]
    assert not any(results.iterdir())


def test_no_space_left_is_one_line_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    proc = _in_readonly_mount(
        tmp_path, f"mount -t tmpfs -o size=40k tmpfs {results} && {sys.executable} -m optrepro.train "
                  f"task=toy2d task.steps=4000 task.eval_every=5 results_dir={results} progress=false; "
                  f"echo rc=$?; ls {results}/*/")
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in proc.stderr
    assert "summary.json" not in proc.stdout  # not a result: no summary was written


def _pids_running(fragment: str) -> list[int]:
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fragment in cmdline:
            pids.append(int(proc_dir.name))
    return pids


def test_preempted_submitit_job_is_requeued_and_resumes(tmp_path: Path) -> None:
    """The SLURM path with submitit's local executor: a preemption signal mid-run checkpoints and
    requeues the job (hydra-submitit-launcher's checkpoint()), which resumes from the run's checkpoint."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [*SLOW_TOY, "++task.fault.sleep_per_step=0.01"]
    cli([*args, f"results_dir={tmp_path / 'whole'}"], check=True)
    (whole,) = run_folders(tmp_path / "whole")

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **fault_env()}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "optrepro.train", "-m", *args, "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", f"results_dir={tmp_path / 'cut'}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = tmp_path / "cut"
    deadline = time.time() + 120
    while time.time() < deadline:
        found = run_folders(folder)
        if found and (found[0] / "metrics.jsonl").exists() and len(metrics(found[0])) >= 2:
            break
        time.sleep(0.1)
    jobs = [pid for pid in _pids_running("submitit.core._submit") if str(tmp_path) in
            (Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore"))]
    assert len(jobs) == 1, "expected one running submitit job"
    os.kill(jobs[0], signal.SIGUSR2)  # what SLURM sends before preemption or timeout
    output = launcher.communicate(timeout=300)[0]
    assert launcher.returncode == 0, output
    (run,) = run_folders(folder)
    assert summary(run)["status"] == "completed"
    logs = "".join(p.read_text(errors="ignore") for p in folder.rglob("*_log.*"))
    assert "resuming from step" in logs, logs[-2000:]
    _same_result(run, whole)
