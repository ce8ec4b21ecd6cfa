"""Fault injection: every file of a run folder damaged in several ways, at several points of a run.

Each case copies a run folder at one point of its life (``done``: completed; ``cut``: interrupted at
step 50, after the checkpoint of step 40), damages one file one way, relaunches the same config
in-process and asserts the promised outcome (README, "Reliability"): never a traceback; a damaged
file is kept beside under a new name with one ``warning:`` line; the run ends identical to an
uninterrupted one (or, for a sound config.yaml of another config, refuses in one line); a completed
run elsewhere in results_dir and every file outside it stay byte-identical.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fault_hooks
from conftest import REPO, cli, fault_env, metrics, run_folders, run_inprocess, summary

TOY = ["task=toy2d", "profile=smoke", "optimizer=adam", "task.function=quadratic_rotated"]
OTHER = [*TOY, "seed=7"]  # a completed run beside the damaged one: it must not change


# ----------------------------------------------------------------------------------- damage kinds
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(path.name).randbytes(max(64, path.stat().st_size)))


def non_utf8(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"\xff\xfe\x80" + data[8:])


def bit_flip(path: Path) -> None:
    """One bit flipped: in a checkpoint inside the tensor data of the toy's point (the file still
    loads), in a text file in its first digit (the file still parses, with another value)."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".pt":
        point = torch.load(path, weights_only=True)["task"]["point"].numpy().tobytes()
        at = data.index(point) + 3
    else:
        at = next(i for i, byte in enumerate(data) if chr(byte).isdigit())
    data[at] ^= 0x04
    path.write_bytes(bytes(data))


def wrong_structure(path: Path) -> None:
    """The right format with the wrong content."""
    if path.suffix == ".pt":
        state = torch.load(path, weights_only=True)
        del state["step"]
        torch.save(state, path)
    elif path.suffix == ".yaml":
        path.write_text("- just\n- a list\n")
    elif path.suffix == ".jsonl":
        path.write_text("[1, 2]\n" + path.read_text())
    else:
        path.write_text("[]\n")


def symlink(path: Path) -> None:
    """Replaced by a link to a copy outside results_dir: nothing may be read or written through it."""
    outside = path.parent.parent.parent / "outside" / path.name
    outside.parent.mkdir(exist_ok=True)
    shutil.copy2(path, outside)
    path.unlink()
    path.symlink_to(outside)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncate": truncate, "empty": empty, "random": random_bytes, "bitflip": bit_flip,
    "structure": wrong_structure, "symlink": symlink, "non_utf8": non_utf8,
}
FILES = ("checkpoint.pt", "metrics.jsonl", "summary.json", "config.yaml", "env.json")

#: What a relaunch does for (file, point): "skip" = the run is complete and does not need that file,
#: "resume" = it continues from the checkpoint, "restart" = it starts over; all end identical.
EXPECTED = {
    ("checkpoint.pt", "done"): "skip",  # a finished run never reads its checkpoint
    ("checkpoint.pt", "cut"): "restart",
    ("metrics.jsonl", "done"): "restart",  # summary and checkpoint no longer match it: trained again
    ("metrics.jsonl", "cut"): "restart",
    ("summary.json", "done"): "resume",  # resumes from the final checkpoint: nothing to train
    ("summary.json", "cut"): "resume",  # a summary planted in an interrupted run
    ("config.yaml", "done"): "skip",  # written anew (the folder's hash names the config)
    ("config.yaml", "cut"): "resume",
    ("env.json", "done"): "skip",
    ("env.json", "cut"): "resume",
}


# ----------------------------------------------------------------------------------- run folders
def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.is_symlink()}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A completed run (``done``), the same config interrupted at step 50 (``cut``), another completed run."""
    root = tmp_path_factory.mktemp("templates")
    assert run_inprocess(TOY, root / "done").status == "completed"
    assert run_inprocess(OTHER, root / "other").status == "completed"
    fault_hooks.interrupt_at_step = 50
    try:
        with pytest.raises(KeyboardInterrupt):
            run_inprocess(TOY, root / "cut")
    finally:
        fault_hooks.interrupt_at_step = None
    (cut,) = run_folders(root / "cut")
    assert not (cut / "summary.json").exists() and not (cut / "run.lock").exists()
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["step"] == 40
    (done,) = run_folders(root / "done")
    (other,) = run_folders(root / "other")
    return {"done": done, "cut": cut, "other": other}


def _case_dir(tmp_path: Path, templates: dict[str, Path], point: str) -> tuple[Path, Path]:
    """results/<run> at ``point`` beside a completed other run; returns (results_dir, run folder)."""
    results = tmp_path / "a" / "results"
    folder = results / templates["done"].name
    shutil.copytree(templates[point], folder, symlinks=True)
    shutil.copytree(templates["other"], results / templates["other"].name)
    return results, folder


def _assert_same_result(folder: Path, reference: Path) -> None:
    assert summary(folder)["status"] == "completed"
    assert _strip(metrics(folder)) == _strip(metrics(reference))
    assert (folder / "trajectory.csv").read_text() == (reference / "trajectory.csv").read_text()
    assert _strip([summary(folder)["final"]]) == _strip([summary(reference)["final"]])
    for key in ("best", "steps", "status"):
        assert summary(folder)[key] == summary(reference)[key], key


def _kept_aside(folder: Path, name: str) -> list[Path]:
    stem, suffix = name.rsplit(".", 1)
    return sorted(folder.glob(f"{stem}.corrupt.*.{suffix}")) + sorted(folder.glob(f"{stem}.symlink.*.{suffix}"))


def _damage_and_relaunch(tmp_path: Path, templates: dict[str, Path], name: str, damage: str, point: str,
                         capsys: pytest.CaptureFixture[str]) -> tuple[Any, Path, str]:
    results, folder = _case_dir(tmp_path, templates, point)
    target = folder / name
    if not target.exists():  # e.g. summary.json of an interrupted run: plant a copy of a real one
        shutil.copy2(templates["done"] / name, target)
    DAMAGES[damage](target)
    damaged_bytes = target.read_bytes() if not target.is_symlink() else None
    others_before = _snapshot(results / templates["other"].name)
    outside_before = _snapshot(tmp_path / "a" / "outside") if (tmp_path / "a" / "outside").exists() else {}
    capsys.readouterr()
    outcome = run_inprocess(TOY, results)  # must not raise
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _snapshot(results / templates["other"].name) == others_before, "a completed run elsewhere changed"
    if outside_before:
        assert _snapshot(tmp_path / "a" / "outside") == outside_before, "a file outside results_dir changed"
    kept = _kept_aside(folder, name)
    if kept and damaged_bytes is not None and not kept[0].is_symlink():
        assert kept[0].read_bytes() == damaged_bytes, "the damaged file must be kept as it was"
    return outcome, folder, err


# ----------------------------------------------------------------------------------- the grid
CASES = [(f, d, p) for f in FILES for d in DAMAGES for p in ("done", "cut")]


@pytest.mark.parametrize(("name", "damage", "point"), CASES, ids=[f"{f}-{d}-{p}" for f, d, p in CASES])
def test_damaged_file(tmp_path: Path, templates: dict[str, Path], capsys: pytest.CaptureFixture[str],
                      name: str, damage: str, point: str) -> None:
    outcome, folder, err = _damage_and_relaunch(tmp_path, templates, name, damage, point, capsys)
    expected = EXPECTED[(name, point)]
    if expected == "skip":
        assert outcome.status == "skipped", err
    else:
        assert outcome.status == "completed", err
        assert outcome.resumed == (expected == "resume"), err
    _assert_same_result(folder, templates["done"])
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if name == "checkpoint.pt" and point == "done" and damage != "symlink":
        assert not warnings, err  # not read, so not noticed: the run is complete without it
        return
    # noticed: one line per file set aside, naming it; the damaged file kept beside
    assert any(name in w for w in warnings), err
    assert _kept_aside(folder, name), sorted(p.name for p in folder.iterdir())


def test_garbled_first_metrics_row_does_not_shorten_history(tmp_path: Path, templates: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    results, folder = _case_dir(tmp_path, templates, "cut")
    lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
    (folder / "metrics.jsonl").write_text("{garbled\n" + "".join(lines[1:]))
    outcome = run_inprocess(TOY, results)
    assert outcome.status == "completed" and not outcome.resumed
    assert [r["step"] for r in metrics(folder)] == [20, 40, 60, 80, 100]
    assert "does not hold the rows logged up to the checkpoint at step 40" in capsys.readouterr().err
    _assert_same_result(folder, templates["done"])


def test_symlinked_run_folder_is_refused_and_its_target_untouched(tmp_path: Path, templates: dict[str, Path],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.mkdir()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(templates["cut"], elsewhere)
    before = _snapshot(elsewhere)
    (results / templates["cut"].name).symlink_to(elsewhere)
    outcome = run_inprocess(TOY, results)
    assert outcome.status == "error" and "is a symlink" in outcome.reason
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: {outcome.reason}"]
    assert _snapshot(elsewhere) == before


def test_symlinked_artifact_and_error_log_are_not_written_through(tmp_path: Path, templates: dict[str, Path]) -> None:
    results, folder = _case_dir(tmp_path, templates, "cut")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    for name in ("trajectory.csv", "error.log", ".checkpoint.pt.tmp1"):
        (folder / name).symlink_to(outside)
    assert run_inprocess(TOY, results).status == "completed"
    assert outside.read_text() == "keep me"
    assert not (folder / "trajectory.csv").is_symlink()
    _assert_same_result(folder, templates["done"])


# ----------------------------------------------------------------------------------- locks, leftovers
def _lock(folder: Path, **fields: Any) -> None:
    (folder / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "since": 0, **fields}))


@pytest.mark.parametrize("kind", ["dead_pid", "live_unrelated_pid", "reused_pid", "garbage", "empty", "symlink"])
def test_stale_lock_is_taken_over(tmp_path: Path, templates: dict[str, Path], kind: str) -> None:
    results, folder = _case_dir(tmp_path, templates, "cut")
    lock = folder / "run.lock"
    sleeper = None
    if kind == "dead_pid":
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        _lock(folder, pid=int(dead.stdout))
    elif kind == "live_unrelated_pid":  # alive, but not optrepro (a hand-written or very old lock)
        sleeper = subprocess.Popen(["sleep", "60"])
        _lock(folder, pid=sleeper.pid)
    elif kind == "reused_pid":  # our pid, but the process that wrote the lock started at another time
        _lock(folder, pid=os.getpid(), start=1)
    elif kind == "garbage":
        lock.write_bytes(b"\x00\xff not json")
    elif kind == "empty":
        lock.write_bytes(b"")
    else:
        lock.symlink_to(tmp_path / "nowhere")
    if kind in ("garbage", "empty"):
        os.utime(lock, (time.time() - 60, time.time() - 60))  # older than a write in progress
    try:
        outcome = run_inprocess(TOY, results)
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    assert outcome.status == "completed" and outcome.resumed
    assert not os.path.lexists(lock)
    _assert_same_result(folder, templates["done"])


def test_live_lock_of_this_program_refuses(tmp_path: Path, templates: dict[str, Path]) -> None:
    from optrepro.runs import RunDir

    results, folder = _case_dir(tmp_path, templates, "cut")
    with RunDir(folder).lock():  # this very process holds it (pid and start time match)
        outcome = run_inprocess(TOY, results)
    assert outcome.status == "error" and "not starting it twice" in outcome.reason


def test_failed_write_leaves_no_temporary(tmp_path: Path, templates: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk during a checkpoint write: one error line, the temp file removed, the old checkpoint kept."""
    import errno

    from optrepro import runs

    results, folder = _case_dir(tmp_path, templates, "cut")
    (folder / ".checkpoint.pt.tmp99999").write_bytes(b"left by a kill")
    before = (folder / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f".checkpoint.pt.tmp{os.getpid()}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", full_disk)
    capsys.readouterr()
    outcome = run_inprocess(TOY, results)
    assert outcome.status == "error" and "No space left on device" in outcome.reason
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "warning:"))]
    assert len(err) == 1 and err[0].startswith("error:")
    assert not list(folder.glob(".*.tmp*")), list(folder.iterdir())
    assert (folder / "checkpoint.pt").read_bytes() == before
    monkeypatch.undo()
    assert run_inprocess(TOY, results).resumed  # and the run goes on once there is space
    _assert_same_result(folder, templates["done"])


# ----------------------------------------------------------------------------------- the analysis
def test_analysis_lists_damaged_folders_and_analyses_the_rest(tmp_path: Path, templates: dict[str, Path]) -> None:
    from optrepro.analysis.load import load_runs

    results = tmp_path / "results"
    for n, (name, damage) in enumerate([("summary.json", "truncate"), ("summary.json", "non_utf8"),
                                        ("metrics.jsonl", "bitflip"), ("metrics.jsonl", "random"),
                                        ("config.yaml", "random"), ("summary.json", "symlink")]):
        folder = results / f"{templates['done'].name[:-1]}{n}"
        shutil.copytree(templates["done"], folder)
        DAMAGES[damage](folder / name)
    shutil.copytree(templates["other"], results / templates["other"].name)
    data = load_runs(results)
    assert list(data.runs.run) == [templates["other"].name]
    assert len(data.incomplete) == 6
    assert data.incomplete.state.str.startswith("damaged: ").all(), data.incomplete.state.tolist()
    states = " | ".join(data.incomplete.state)
    for reason in ("summary.json unreadable", "not UTF-8", "metrics.jsonl", "config.yaml", "symlink"):
        assert reason in states, states


# ----------------------------------------------------------------------------------- processes
def test_sigkilled_joblib_job_is_failed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    grid = ["-m", *TOY, "seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "+task.fault.kill_at_step=30", "+task.fault.kill_seed=1", f"+task.fault.kill_marker={tmp_path / 'k'}",
            f"results_dir={tmp_path / 'runs'}", "progress=false"]
    first = cli(grid)
    assert first.returncode == 0, first.stderr
    assert "sweep: 3 jobs: 2 completed, 1 failed" in first.stderr, first.stderr
    assert "killed by SIGKILL" in first.stderr and "Traceback" not in first.stderr
    folders = {summary(f)["seed"] if (f / "summary.json").exists() else "cut": f
               for f in run_folders(tmp_path / "runs")}
    assert set(folders) == {0, 2, "cut"}
    second = cli([a for a in grid if not a.startswith("hydra")])  # the relaunch: sequential is enough here
    assert second.returncode == 0, second.stderr
    assert "sweep: 3 jobs: 1 resumed, 2 skipped" in second.stderr, second.stderr
    assert summary(folders["cut"])["status"] == "completed"


def test_ctrl_c_is_one_line_and_resumes(tmp_path: Path) -> None:
    from optrepro.train import INTERRUPTED

    args = [*TOY, "task.steps=400", "task.eval_every=20", "+task.fault.sleep_per_step=0.01",
            f"results_dir={tmp_path}", "progress=false"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **fault_env()}
    # SIGINT's default action restored in the child: a test run started in the background (bash '&' without
    # job control) inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "optrepro.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any((f / "checkpoint.pt").exists() for f in run_folders(tmp_path)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    (folder,) = run_folders(tmp_path)
    # the run's own lines (its start line, one per eval point, all "<run>: ..."), then the one line that says it
    assert lines[-1] == INTERRUPTED and all(line.startswith(f"{folder.name}: ") for line in lines[:-1]), lines
    assert "Traceback" not in err
    resumed = cli(args, check=True)
    assert "resuming from step" in resumed.stderr


# ----------------------------------------------------------------------------------- randomized
@pytest.mark.slow
@pytest.mark.parametrize("trial", range(40))
def test_random_damage(tmp_path: Path, templates: dict[str, Path], capsys: pytest.CaptureFixture[str],
                       trial: int) -> None:
    """Random file, damage, point and a random byte range overwritten: never a traceback, and the
    relaunch ends identical or refuses in one line."""
    rng = random.Random(trial)
    name, damage, point = rng.choice(FILES), rng.choice([*DAMAGES, "overwrite"]), rng.choice(["done", "cut"])
    if damage == "overwrite":
        def overwrite(path: Path) -> None:
            data = bytearray(path.read_bytes())
            at = rng.randrange(len(data))
            data[at:at + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
            path.write_bytes(bytes(data))
        DAMAGES["overwrite"] = overwrite
    try:
        outcome, folder, err = _damage_and_relaunch(tmp_path, templates, name, damage, point, capsys)
    finally:
        DAMAGES.pop("overwrite", None)
    print(f"trial {trial}: {name} {damage} {point} -> {outcome.status}{' (resumed)' if outcome.resumed else ''}")
    if outcome.status == "error":
        assert "config.yaml" in outcome.reason and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
        return
    assert outcome.status in ("completed", "skipped"), err
    _assert_same_result(folder, templates["done"])


# ----------------------------------------------------------------------------------- bad inputs
#: Command-line values that must give exactly one ``error:`` line, exit 2 and nothing on disk.
BAD_INPUTS = [
    ["optimizer.lr=inf"], ["optimizer.lr=-inf"], ["optimizer.lr=nan"], ["optimizer.eps=1e400"],
    ["optimizer.weight_decay=nan"], ["task.tolerance=inf"], ["optimizer.lr=abc"], ["optimizer.lr=[1,2]"],
    ["optimizer.lr="], ["optimizer.eps=-1e-8"], ["optimizer.betas=[0.9,1.5]"], ["optimizer.betas=abc"],
    ["seed=true"], ["seed=2**70"], ["seed=1180591620717411303424"], ["seed=1.5"], ["seed=abc"], ["seed=null"],
    ["task.steps=abc"], ["task.steps=1.5"], ["task.steps=true"], ["task.steps=null"], ["task.eval_every=-1"],
    ["task.function=sphere"], ["checkpoint.every_steps=-5"], ["checkpoint.every_steps=abc"], ["progress=maybe"],
    ["precision=fp8"], ["device=tpu"], ["optimizer.lr=${nope}"], ["task.steps=${oc.env:OPTREPRO_NOT_SET}"],
    ["task=nope"], ["optimizer=nope"], ["profile=nope"], ["optimizer.nonsense=1"], ["task.steps=1=2"],
    ["-m", "task.steps=10,abc"], ["-m", "seed=0,true"], ["-m", "optimizer.lr=0.1,inf"],
    ["-m", "optimizer=adam,nope"], ["-m", "optimizer.eps=1e-8,-1"], ["-m", "task.function=l1,sphere"],
]
if not torch.cuda.is_available():
    BAD_INPUTS.append(["device=cuda"])


#: the cases of issue 16 and one of each kind run by default; all of them under -m slow
DEFAULT_BAD = {"optimizer.lr=inf", "optimizer.lr=nan", "seed=true", "seed=2**70", "seed=1180591620717411303424",
               "task.steps=abc", "task.steps=null", "optimizer.lr=${nope}", "-m task.steps=10,abc", "device=cuda",
               "progress=maybe", "-m optimizer.lr=0.1,inf"}
BAD_PARAMS = [pytest.param(a, id=" ".join(a), marks=() if " ".join(a) in DEFAULT_BAD else pytest.mark.slow)
              for a in BAD_INPUTS]


@pytest.mark.parametrize("args", BAD_PARAMS)
def test_bad_input_is_one_line_in_process(tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    """The CLI's check (optrepro.train.main) in this process: fast enough for every case by default."""
    from optrepro.train import main

    results = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["optrepro-train", *args, f"results_dir={results}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not any(tmp_path.iterdir()), "an error must leave nothing on disk"


@pytest.mark.slow
def test_bad_inputs_through_the_cli_count(tmp_path: Path) -> None:
    """Every bad input through a real ``python -m optrepro.train``; prints the count of one-line errors."""
    one_line = []
    for n, args in enumerate(BAD_INPUTS):
        proc = cli([*args, f"results_dir={tmp_path / str(n) / 'runs'}"])
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        ok = proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
        ok = ok and not (tmp_path / str(n)).exists()
        one_line.append(ok)
        print(f"{'ok ' if ok else 'BAD'} {' '.join(args)!r}: {lines[-1] if lines else ''}")
    print(f"bad inputs: {len(BAD_INPUTS)}, exactly one error line and exit 2: {sum(one_line)}")
    assert all(one_line)
