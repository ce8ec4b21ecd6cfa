"""The training entry point and the run-folder contract (README, "Single runs"), on the toy2d task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, cli, compose, fault_env, metrics, run_folders, run_inprocess, summary

SMOKE = ["task=toy2d", "profile=smoke"]


def test_run_folder_contract(tmp_path: Path) -> None:
    outcome = run_inprocess([*SMOKE, "optimizer=adam", "seed=3"], tmp_path)
    assert outcome.status == "completed"
    (folder,) = run_folders(tmp_path)
    assert folder.name.startswith("toy2d_l1_adam_s3_")
    for name in ("config.yaml", "env.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "trajectory.csv"):
        assert (folder / name).is_file(), name
    assert not (folder / "run.lock").exists()
    s = summary(folder)
    assert s["status"] == "completed" and s["reason"] is None
    assert s["metric"] == "loss" and s["mode"] == "min"
    assert s["steps"] == 100  # profile=smoke
    rows = metrics(folder)
    assert [r["step"] for r in rows] == [20, 40, 60, 80, 100]
    for row in rows:
        assert {"step", "epoch", "wall_time", "loss", "distance", "train_loss", "lr"} <= set(row)
    assert s["final"]["loss"] == rows[-1]["loss"]
    assert s["best"]["value"] == min(r["loss"] for r in rows)
    env = json.loads((folder / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "git_sha" in env and env["device"] == "cpu"
    # the saved config shows the recipe values actually used; the family marker adds no key
    saved = OmegaConf.load(folder / "config.yaml")
    assert "family" not in saved.task and "recipe_key" not in saved.optimizer
    assert saved.optimizer.lr == 0.01  # toy2d recipe for adaptive methods
    assert saved.task.steps == 100 and saved.task.name == "toy2d_l1"
    trajectory = (folder / "trajectory.csv").read_text().splitlines()
    assert trajectory[0] == "step,x,y,loss" and len(trajectory) == 102
    assert trajectory[1].startswith("0,-2.5,0.0,")
    # the optimizer moved the point towards the optimum
    assert rows[-1]["distance"] < 2.5


def test_identity_excludes_paths_but_includes_seed_and_values(tmp_path: Path) -> None:
    run_inprocess([*SMOKE, "seed=0"], tmp_path / "a")
    run_inprocess([*SMOKE, "seed=0"], tmp_path / "b")
    run_inprocess([*SMOKE, "seed=1"], tmp_path / "b")
    run_inprocess([*SMOKE, "seed=1", "optimizer.eps=1e-12"], tmp_path / "b")
    (a,) = run_folders(tmp_path / "a")
    b = run_folders(tmp_path / "b")
    assert a.name in {p.name for p in b}
    assert len({p.name for p in b}) == 3


def test_completed_run_is_not_rerun(tmp_path: Path) -> None:
    first = run_inprocess(SMOKE, tmp_path)
    (folder,) = run_folders(tmp_path)
    before = (folder / "summary.json").stat().st_mtime_ns, (folder / "metrics.jsonl").read_text()
    second = run_inprocess(SMOKE, tmp_path)
    assert first.status == "completed" and second.status == "skipped"
    assert ((folder / "summary.json").stat().st_mtime_ns, (folder / "metrics.jsonl").read_text()) == before


def test_cli_override_beats_task_recipe(tmp_path: Path) -> None:
    run_inprocess([*SMOKE, "optimizer=adam", "optimizer.lr=0.05"], tmp_path)
    run_inprocess([*SMOKE, "optimizer=sgd"], tmp_path)
    texts = {p.name.split("_s0")[0]: (p / "config.yaml").read_text() for p in run_folders(tmp_path)}
    assert "lr: 0.05" in texts["toy2d_l1_adam"]
    assert "lr: 0.001" in texts["toy2d_l1_sgd"]  # the task's recipe for SGD, not SGD's yaml default


def test_divergence_is_a_result(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=toy2d", "task.function=quadratic_rotated", "optimizer=sgd",
                             "optimizer.lr=10", "task.steps=200"], tmp_path)
    assert outcome.status == "diverged"
    (folder,) = run_folders(tmp_path)
    s = summary(folder)
    assert s["status"] == "diverged"
    assert isinstance(s["diverged_step"], int) and 1 < s["diverged_step"] < 200
    assert str(s["diverged_step"]) in s["reason"]
    # relaunching a diverged config does not train it again
    assert run_inprocess(["task=toy2d", "task.function=quadratic_rotated", "optimizer=sgd",
                          "optimizer.lr=10", "task.steps=200"], tmp_path).status == "skipped"


def test_exception_is_recorded_as_failed_and_retried(tmp_path: Path) -> None:
    args = [*SMOKE, "+task.fault.raise_at_step=30"]
    outcome = run_inprocess(args, tmp_path)
    assert outcome.status == "failed"
    (folder,) = run_folders(tmp_path)
    s = summary(folder)
    assert s["status"] == "failed" and "fault injected at step 30" in s["reason"]
    assert "Traceback" in (folder / "error.log").read_text()
    # a failed run is tried again on relaunch; the old summary is kept beside it
    again = run_inprocess(args, tmp_path)
    assert again.status == "failed"
    assert len(list(folder.glob("summary.failed.*.json"))) == 1


# ------------------------------------------------------------------------------- CLI behaviour
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["task=nope"], "unknown task 'nope' (task=nope); choose one of:"),
        (["optimizer=nope"], "unknown optimizer 'nope' (optimizer=nope); choose one of:"),
        (["optimizer.eps=-1e-8"], "optimizer.eps"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas[1] must be in [0, 1)"),
        (["optimizer.lr=abc"], "optimizer.lr must be a number"),
        (["task.function=sphere"], "unknown task.function 'sphere'"),
        (["optimizer.nonsense=1"], "unknown config key 'optimizer.nonsense'"),
        (["-m", "optimizer=adam,nope"], "unknown optimizer 'nope'"),
        (["-m", "optimizer.eps=1e-8,-1"], "optimizer.eps"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    proc = cli([*args, f"results_dir={tmp_path}"])
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert run_folders(tmp_path) == []


def test_single_run_from_the_readme_command(tmp_path: Path) -> None:
    proc = cli(["task=toy2d", "optimizer=adam", "optimizer.eps=1e-16", "seed=0", "profile=smoke",
                f"results_dir={tmp_path}"], check=True)
    assert "completed" in proc.stderr
    (folder,) = run_folders(tmp_path)
    assert summary(folder)["status"] == "completed"
    again = cli(["task=toy2d", "optimizer=adam", "optimizer.eps=1e-16", "seed=0", "profile=smoke",
                 f"results_dir={tmp_path}"], check=True)
    assert "nothing to do" in again.stderr


def test_multirun_two_optimizers_two_eps_gives_four_folders(tmp_path: Path) -> None:
    proc = cli(["-m", "task=toy2d", "profile=smoke", "optimizer=adam,adabelief", "optimizer.eps=1e-16,1e-8",
                f"results_dir={tmp_path}"], check=True)
    folders = run_folders(tmp_path)
    assert len(folders) == 4, proc.stderr
    assert {summary(f)["status"] for f in folders} == {"completed"}
    eps = sorted((summary(f)["optimizer"], json.loads(json.dumps(summary(f)["factors"]))["eps"]) for f in folders)
    assert eps == [("adabelief", 1e-16), ("adabelief", 1e-8), ("adam", 1e-16), ("adam", 1e-8)]


def test_failed_job_does_not_stop_a_sweep(tmp_path: Path) -> None:
    proc = cli(["-m", "task=toy2d", "profile=smoke", "+task.fault.raise_at_step=5,null", f"results_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr
    statuses = sorted(summary(f)["status"] for f in run_folders(tmp_path))
    assert statuses == ["completed", "failed"]


def _without_wandb_silent() -> dict[str, str]:
    """This environment minus WANDB_SILENT, which would hide wandb's lines whatever wandb.verbose says."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}


def test_wandb_offline_writes_its_run_files_and_says_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "optrepro.train", *SMOKE, f"results_dir={tmp_path}",
                           "wandb.mode=offline"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**_without_wandb_silent(), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    (folder,) = run_folders(tmp_path)
    offline = list((folder / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("run-*.wandb")), list(offline[0].iterdir())
    assert summary(folder)["status"] == "completed"
    # wandb.verbose=false (the default): not a line of wandb's, only the run's own seven (start, 5 evals, end)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(said) == 7 and all(line.startswith(f"{folder.name}: ") for line in said), said


def test_wandb_verbose_gives_back_wandbs_own_lines(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "optrepro.train", *SMOKE, f"results_dir={tmp_path}",
                           "wandb.mode=offline", "wandb.verbose=true"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**_without_wandb_silent(), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    wandb_lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("wandb:")]
    assert len(wandb_lines) >= 5, proc.stderr  # its banner, history, summary and sync hint (some 30 lines)
    assert any("wandb sync" in line for line in wandb_lines)


def test_wandb_settings_follow_verbose() -> None:
    from optrepro.tracking import settings

    assert settings(False).silent is True
    assert settings(True).silent is False


def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    args = ["task=toy2d", "task.function=quadratic_rotated", "optimizer=adam", "task.steps=1200",
            "task.eval_every=100", "+task.fault.sleep_per_step=0.002", "checkpoint.every_steps=25"]
    cli([*args, f"results_dir={tmp_path / 'whole'}"], check=True)
    (whole,) = run_folders(tmp_path / "whole")

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **fault_env()}
    proc = subprocess.Popen([sys.executable, "-m", "optrepro.train", *args, f"results_dir={tmp_path / 'cut'}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    folder = None
    while time.time() < deadline:
        found = run_folders(tmp_path / "cut")
        if found and (found[0] / "metrics.jsonl").exists() and len(metrics(found[0])) >= 4:
            folder = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert folder is not None, "the run never reached step 400"
    assert not (folder / "summary.json").exists(), "run finished before it could be killed"
    assert (folder / "checkpoint.pt").exists()

    resumed = cli([*args, f"results_dir={tmp_path / 'cut'}"], check=True)
    assert "resuming from step" in resumed.stderr

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]

    assert strip(metrics(folder)) == strip(metrics(whole))
    assert (folder / "trajectory.csv").read_text() == (whole / "trajectory.csv").read_text()
    a = torch.load(folder / "checkpoint.pt", weights_only=True)["task"]["point"]
    b = torch.load(whole / "checkpoint.pt", weights_only=True)["task"]["point"]
    assert torch.equal(a, b)


def test_torchrun_two_ranks_write_one_run_folder_once(tmp_path: Path) -> None:
    """Data parallel through the real entry point: only rank 0 writes the run store."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "optrepro.train",
                           "task=digits_cnn", "profile=smoke", "device=cpu", f"results_dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(tmp_path)
    assert summary(folder)["status"] == "completed"
    rows = metrics(folder)
    assert [r["epoch"] for r in rows] == [1.0, 2.0]  # smoke: 2 epochs, each logged once, not once per rank
    assert proc.stderr.count("completed test_acc=") == 1


def test_run_status_is_stored_as_its_plain_string() -> None:
    """RunStatus members write and print as the strings summary.json, outcomes.jsonl and the CSVs always
    held (a plain ``(str, Enum)`` would print ``RunStatus.FAILED`` in messages and the sweep table)."""
    import json

    from optrepro.status import RunStatus

    assert json.dumps({"status": RunStatus.DIVERGED}) == '{"status": "diverged"}'
    assert f"{RunStatus.FAILED} {RunStatus.ERROR:>6}" == "failed  error"
    assert RunStatus("completed") is RunStatus.COMPLETED and RunStatus.SKIPPED == "skipped"


# ------------------------------------------------------------------------------- terminal output
def _start_words(optimizer: str) -> str:
    from optrepro.config import resolve_interpolations
    from optrepro.optim import describe
    from optrepro.train import optimizer_text

    cfg = resolve_interpolations(compose(["task=toy2d", f"optimizer={optimizer}"])[0])
    return optimizer_text(cfg, describe(cfg.optimizer))


def test_start_line_names_the_optimizer_settings_and_where_eps_sits() -> None:
    assert _start_words("adam") == "adam lr=0.01 betas=(0.9, 0.999) eps=1e-08 outside sqrt weight_decay=0"
    # eps inside the sqrt: its effective floor sqrt(eps / (1 - b2)) = sqrt(1e-5)
    assert _start_words("eadam") == ("eadam lr=0.01 betas=(0.9, 0.999) eps=1e-08 inside sqrt (floor 0.00316) "
                                     "weight_decay=0")
    assert _start_words("adabelief") == ("adabelief lr=0.01 betas=(0.9, 0.999) eps=1e-16 inside and outside sqrt "
                                         "(floor 3.16e-07) weight_decay=0")
    assert _start_words("sgd") == "sgd lr=0.001 momentum=0.9 weight_decay=0"  # no eps to speak of
    assert _start_words("fromage") == "fromage lr=0.01"


def _terminal_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_piped_run_prints_a_start_line_then_one_plain_line_per_eval_point(tmp_path: Path) -> None:
    """stderr is a pipe here: no progress bar (no carriage return anywhere), and every eval point's
    line stays, between the start line and the end line."""
    proc = cli([*SMOKE, "optimizer=eadam", f"results_dir={tmp_path}"], check=True)
    assert "\r" not in proc.stderr
    (folder,) = run_folders(tmp_path)
    lines = _terminal_lines(proc.stderr)
    assert lines[0] == (f"{folder.name}: start toy2d_l1 seed 0 | {_start_words('eadam')} | fp32 on cpu -> {folder}")
    rows = metrics(folder)
    assert lines[1:-1] == [f"{folder.name}: step {r['step']}/100 loss={r['loss']:.4g} train_loss={r['train_loss']:.4g}"
                           for r in rows]
    assert lines[-1] == f"{folder.name}: completed loss={rows[-1]['loss']:.4g} -> {folder}"


def test_progress_false_keeps_the_eval_lines(tmp_path: Path) -> None:
    outcome_lines = _terminal_lines(cli([*SMOKE, f"results_dir={tmp_path}", "progress=false"], check=True).stderr)
    assert len(outcome_lines) == 1 + 5 + 1  # start, the smoke profile's 5 eval points, end


def test_on_a_terminal_the_eval_lines_stay_above_a_progress_bar(tmp_path: Path) -> None:
    """stderr a pseudo-terminal (80 columns): the bar is drawn (carriage returns) and erased at the end,
    and each eval point's line is written whole on its own line above it."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "optrepro.train", *SMOKE, f"results_dir={tmp_path}"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    shown = b"".join(chunks).decode()
    assert "\r" in shown and "%|" in shown  # a tqdm bar was drawn
    (folder,) = run_folders(tmp_path)
    screen = [line.rsplit("\r", 1)[-1] for line in shown.replace("\r\n", "\n").split("\n")]  # what stays
    evals = [line for line in screen if ": step " in line]
    assert evals == [f"{folder.name}: step {r['step']}/100 loss={r['loss']:.4g} train_loss={r['train_loss']:.4g}"
                     for r in metrics(folder)]


def test_progress_draws_a_bar_only_on_a_terminal() -> None:
    import io

    from optrepro.train import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def shown(stream: io.StringIO, **options: bool) -> str:
        with Progress("run", 10, stream=stream, **options) as progress:
            for step in range(10):
                progress.update(1)
                if step == 4:
                    progress.line("run: step 5/10 loss=1")
        return stream.getvalue()

    on_terminal = shown(Terminal())
    assert "\r" in on_terminal and "\rrun: step 5/10 loss=1\n" in on_terminal
    assert shown(io.StringIO()) == "run: step 5/10 loss=1\n"  # a pipe or a file: the line, nothing else
    assert shown(Terminal(), bar=False) == "run: step 5/10 loss=1\n"  # progress=false
    assert shown(Terminal(), show=False) == ""  # data-parallel ranks other than 0
