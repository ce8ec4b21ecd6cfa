"""Shared helpers: compose configs in-process, run the CLI as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

# torch.compile's on-disk kernel cache is not keyed on ATEN_CPU_CAPABILITY: a cache filled on this CPU's
# own kernels fails to compile under ATEN_CPU_CAPABILITY=default ("'at::vec' has not been declared",
# seen in test_fused_agrees_with_foreach), so each capability gets its own cache (.ci/run uses both)
if os.environ.get("ATEN_CPU_CAPABILITY"):
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR",
        os.path.join(tempfile.gettempdir(), f"torchinductor_{os.getuid()}_{os.environ['ATEN_CPU_CAPABILITY']}"),
    )

import torch  # noqa: E402

import fault_hooks

REPO = Path(__file__).resolve().parents[1]

# keep tests quiet and light on a 2-core machine: one thread unless OMP_NUM_THREADS says otherwise
# (.ci/run runs the suite with 1 and with 2, so a result that depends on the thread split shows up)
TEST_THREADS = os.environ.get("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(TEST_THREADS))

# fault injection (tests/fault_hooks.py): here for in-process runs, through sitecustomize for subprocesses
fault_hooks.install()
FAULT_SITE = REPO / "tests" / "fault_site"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compose(overrides: Sequence[str] = ()) -> Any:
    """The composed (not yet resolved) config for ``overrides``, like the CLI would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    choices = dict(cfg.hydra.runtime.choices)
    from omegaconf import open_dict

    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def composed_task(name: str, profile: str = "default") -> Any:
    """``task=<name> profile=<profile>`` as Hydra composes it, interpolations resolved (a DictConfig)."""
    from optrepro.config import resolve_interpolations

    cfg, _ = compose([f"task={name}", f"profile={profile}"])
    return resolve_interpolations(cfg).task


def run_inprocess(overrides: Sequence[str], results_dir: Path) -> Any:
    """optrepro.train.run on a composed config: the job body without Hydra's process overhead."""
    from optrepro.train import run

    overrides = [*overrides, f"results_dir={results_dir}", "wandb.mode=disabled", "progress=false"]
    cfg, _ = compose(overrides)
    return run(cfg)


def cli(args: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m optrepro.train ARGS`` in a fresh process."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": TEST_THREADS, **fault_env(), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "optrepro.train", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def fault_env() -> dict[str, str]:
    """Environment that gives a subprocess the test-only fault hooks (tests/fault_hooks.py)."""
    path = os.pathsep.join(p for p in (str(FAULT_SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "OPTREPRO_TEST_FAULTS": "1"}


def run_folders(results_dir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(results_dir).rglob("config.yaml") if ".sweeps" not in p.parts)


def whole_and_resumed(overrides: Sequence[str], folder: Path, monkeypatch: pytest.MonkeyPatch, task_class: type,
                      stop_at_step: int) -> tuple[Path, Path]:
    """The same run twice, in process: straight through into ``folder/whole``, and into ``folder/split``
    stopped as Ctrl-C would before train step ``stop_at_step + 1``, then relaunched (it must resume)."""
    assert run_inprocess(overrides, folder / "whole").status == "completed"
    original = task_class.train_step

    def interrupted(self: Any) -> Any:
        if self.step == stop_at_step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(task_class, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(overrides, folder / "split")
    monkeypatch.setattr(task_class, "train_step", original)
    outcome = run_inprocess(overrides, folder / "split")
    assert outcome.status == "completed" and outcome.resumed
    (whole,) = run_folders(folder / "whole")
    (split,) = run_folders(folder / "split")
    return whole, split


def summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


def metrics(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]


def sweep_table(stderr: str) -> dict[str, list[str]]:
    """The end-of-sweep table (the lines after ``sweep: N jobs: ...``), by run: its cells split on runs of
    two or more spaces (run, status, metric, value, and the reason where there is one)."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sweep: "))
    assert re.split(r" {2,}", lines[start + 1].strip()) == ["run", "status", "metric", "value"], lines[start + 1]
    rows = [re.split(r" {2,}", line.strip()) for line in lines[start + 2:] if line.startswith("  ")]
    return {row[0]: row for row in rows}


def assert_table_matches_the_runs(stderr: str, results: Path, jobs: int, skipped: bool = False) -> dict[str, list[str]]:
    """One table row per run folder with the run's status (or skipped), its metric and, for a run that
    completed, the final value summary.json holds; "-" and the reason for one that did not."""
    table = sweep_table(stderr)
    folders = run_folders(results)
    assert len(table) == len(folders) == jobs, stderr
    for folder in folders:
        run = summary(folder)
        row = table[folder.name]
        assert row[2] == run["metric"]
        if run["status"] == "completed":
            assert row[1] == ("skipped" if skipped else "completed")
            assert row[3] == f"{run['final'][run['metric']]:.4g}" and len(row) == 4, row
        else:
            assert row[1] == ("skipped" if skipped and run["status"] == "diverged" else run["status"]), row
            assert row[3] == "-" and row[4] == run["reason"], row
    return table
