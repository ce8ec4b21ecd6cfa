"""Multirun support: per-job resources under parallel launchers, and the end-of-sweep summary.

Each job appends its outcome to ``<sweep dir>/outcomes.jsonl`` (jobs may run in other processes or
on other SLURM nodes); when the sweep ends the launcher process prints one screen: how many runs
completed, were skipped (already done), resumed, diverged, failed or were rejected, then a table of
every run with its status and its final metric (the failed runs with their one-line reasons).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from optrepro.status import RunStatus

if TYPE_CHECKING:
    from optrepro.train import Outcome

OUTCOMES_FILE = "outcomes.jsonl"


# --------------------------------------------------------------------------- per-job resources
def launcher_jobs() -> int:
    """How many jobs the current launcher runs at once (1 for the sequential launcher)."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return 1
    if "Joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs", 1) or 1)
    return os.cpu_count() or 1 if n_jobs < 0 else n_jobs


@contextlib.contextmanager
def job_resources(cfg: DictConfig) -> Iterator[str | None]:
    """Give a parallel job its share of the machine; yields a device override or None.

    On CPU the threads are divided between the jobs running at once. With GPUs, a job takes one of
    ``n_gpus * sweep.jobs_per_gpu`` slots through a flock'ed file (released when the process dies),
    so each GPU runs at most ``jobs_per_gpu`` jobs whatever order joblib dispatches them in.
    """
    import torch

    n_jobs = launcher_jobs()
    if n_jobs <= 1:
        yield None
        return
    if str(cfg.device) in ("auto", "cuda") and torch.cuda.is_available():
        per_gpu = int(cfg.sweep.get("jobs_per_gpu", 1))
        slots = torch.cuda.device_count() * per_gpu
        slot_dir = Path(cfg.results_dir) / ".gpu_slots"
        slot_dir.mkdir(parents=True, exist_ok=True)
        while True:
            for slot in range(slots):
                handle = open(slot_dir / f"slot{slot}", "w")  # noqa: SIM115 - held for the job's life
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                try:
                    yield f"cuda:{slot // per_gpu}"
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
            import time

            time.sleep(1.0)  # more workers than slots: wait for one to free
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_jobs))
        yield None


# --------------------------------------------------------------------------- sweep summary
def outcome_row(outcome: Outcome, job: int) -> dict[str, Any]:
    """The outcomes.jsonl row of one job (every launcher records the same fields)."""
    return {"status": outcome.status, "run_dir": outcome.run_dir, "reason": outcome.reason,
            "resumed": outcome.resumed, "metric": outcome.metric, "value": outcome.value, "job": job}


def record_outcome(sweep_dir: Path, row: dict[str, Any]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / OUTCOMES_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)


def read_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    path = sweep_dir / OUTCOMES_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The one-screen end-of-sweep report: the counts line (``sweep: N jobs: ...``, which
    ``optrepro.pipeline`` reads from the log), then one row per job: run, status, metric, final value
    (of a run that completed), and the reason of one that did not (a skipped run: why it ended before)."""
    counts: Counter[str] = Counter()
    for row in rows:
        counts[_status(row)] += 1
    order = (RunStatus.COMPLETED, "resumed", RunStatus.SKIPPED, RunStatus.DIVERGED, RunStatus.FAILED, RunStatus.ERROR)
    head = ", ".join(f"{counts[s]} {s}" for s in order if counts[s]) or "no jobs"
    lines = [f"sweep: {len(rows)} jobs: {head}"]
    if not rows:
        return lines[0]
    table = [("run", "status", "metric", "value", "")]
    for row in rows:
        run = Path(row["run_dir"]).name if row.get("run_dir") else f"job {row.get('job')}"
        value = row.get("value")
        shown = f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
        table.append((run, _status(row), row.get("metric") or "-", shown, row.get("reason") or ""))
    widths = [max(len(str(r[i])) for r in table) for i in range(4)]
    for r in table:
        cells = [str(r[i]).ljust(widths[i]) for i in range(4)]
        lines.append(("  " + "  ".join(cells) + ("  " + r[4] if r[4] else "")).rstrip())
    return "\n".join(lines)


def _status(row: dict[str, Any]) -> str:
    """A row's status, with a completed run that went on from a checkpoint counted as resumed."""
    return "resumed" if row["status"] == RunStatus.COMPLETED and row.get("resumed") else str(row["status"])


class SweepSummary(Callback):
    """Hydra callback (configs/train.yaml, hydra.callbacks) that collects and prints job outcomes."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        from optrepro.train import Outcome

        value = getattr(job_return, "_return_value", None)
        if not hasattr(value, "status"):  # the job raised past optrepro.train.run (should not happen)
            # (not isinstance: under ``python -m optrepro.train`` the class is __main__.Outcome)
            value = Outcome(RunStatus.FAILED, reason=repr(value)[:300])
        record_outcome(Path(hydra_cfg.sweep.dir), outcome_row(value, int(hydra_cfg.job.num)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sorted(read_outcomes(sweep_dir), key=lambda r: r.get("job", 0))
        text = format_summary(rows)
        print(text, file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            (sweep_dir / "summary.txt").write_text(text + "\n")
