"""Training entry point: ``python -m optrepro.train task=<task> optimizer=<opt> seed=<n> [profile=smoke]``.

compose (Hydra: recipes, profiles and experiments are configs) -> validate -> run folder -> train loop -> summary.
The loop below is the whole of training; tasks only supply steps and evaluations.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from optrepro import distributed
from optrepro.config import (
    CONFIG_DIR,
    preflight,
    resolve_device,
    resolve_interpolations,
    resolve_precision,
    validate_config,
)
from optrepro.distributed import env_rank as rank  # only rank 0 writes results
from optrepro.errors import UserError
from optrepro.runs import RunDir, check_writable, config_hash, optimizer_label, run_name

SKIP_STATUSES = ("completed", "diverged")  # a failed run is retried on relaunch


@dataclass
class Outcome:
    """What became of one job; a sweep prints a table of these."""

    status: str  # completed | diverged | failed | skipped | error
    run_dir: str | None = None
    reason: str | None = None
    resumed: bool = False


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- one run
def run(cfg: DictConfig, cli_overrides: list[str] | None = None, choices: dict[str, str] | None = None) -> Outcome:
    """Validate and train one composed config; never raises for a single job's failure.

    ``cli_overrides`` and ``choices`` are not needed any more (the composed config is complete; the
    optimizer yaml records its own ``config_name``); accepted so existing callers keep working.
    """
    writer = rank() == 0
    try:
        cfg = prepare_config(cfg)
        if writer:
            check_writable(Path(cfg.results_dir))
    except UserError as exc:
        say(f"error: {exc}")
        return Outcome("error", reason=str(exc))
    run_dir = RunDir(Path(cfg.results_dir) / run_name(cfg), writer=writer)
    if run_dir.is_complete():
        previous = run_dir.read_summary()
        if previous.get("status") in SKIP_STATUSES:
            say(f"{run_dir.path.name}: already {previous['status']} ({run_dir.path}); nothing to do")
            return Outcome("skipped", str(run_dir.path), previous.get("reason"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if writer:
            os.replace(run_dir.summary_path, run_dir.path / f"summary.failed.{stamp}.json")
        say(f"{run_dir.path.name}: last attempt failed ({previous.get('reason')}); trying again")
    try:
        with run_dir.lock():
            return train(cfg, run_dir)
    except UserError as exc:
        say(f"error: {exc}")
        return Outcome("error", str(run_dir.path), str(exc))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            raise
        message = f"cannot write to {run_dir.path} ({os.strerror(exc.errno)}); free space and relaunch"
        say(f"error: {message}")
        return Outcome("error", str(run_dir.path), message)
    finally:
        if writer:
            _remove_if_empty(run_dir.path)


def prepare_config(cfg: DictConfig) -> DictConfig:
    """The composed config with interpolations resolved, validated; nothing else changes."""
    cfg = resolve_interpolations(cfg)
    validate_config(cfg)
    return cfg


def _remove_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def train(cfg: DictConfig, run_dir: RunDir) -> Outcome:
    """The training loop. Writes metrics at eval points, checkpoints, and summary.json last."""
    from optrepro.optim import describe
    from optrepro.tasks import RunContext, build_task, task_class
    from optrepro.tasks.base import rng_state, seed_everything, set_rng_state
    from optrepro.tracking import Tracker

    refusal = distributed.refuse_reason(str(cfg.task.kind), task_class(str(cfg.task.kind)))
    if refusal:  # before any process group; every rank finds the same reason, rank 0 says it
        if rank() > 0:
            raise SystemExit(2)  # the exit status of a user error, without a second copy of the line
        raise UserError(refusal)
    dist, device = distributed.setup(resolve_device(str(cfg.device)))  # torchrun: one GPU per process
    precision = resolve_precision(str(cfg.precision), device)
    seed_everything(int(cfg.seed))
    ctx = RunContext(cfg=cfg, device=device, precision=precision, seed=int(cfg.seed), run_dir=run_dir.path,
                     dist=dist)
    task = build_task(cfg.task, ctx)  # a missing dataset raises UserError before anything is written
    run_dir.create(cfg, device)
    distributed.barrier()  # data parallel: every rank reads the checkpoint rank 0 has settled

    state = run_dir.load_checkpoint()
    best: dict[str, Any] | None = None
    last_eval: dict[str, Any] = {}
    elapsed = 0.0
    if state is not None:
        task.load_state_dict(state["task"])
        set_rng_state(state["rng"])
        best, last_eval, elapsed = state.get("best"), state.get("last_eval", {}), float(state["wall_time"])
        run_dir.truncate_metrics(task.step)
        say(f"{run_dir.path.name}: resuming from step {task.step}")
    elif run_dir.metrics_path.exists():
        run_dir.metrics_path.unlink()  # killed before the first checkpoint: start clean

    factors = describe(cfg.optimizer)
    tracker = Tracker(cfg, run_dir.path, config_hash(cfg), factors) if run_dir.writer else Tracker.disabled()
    every = int(cfg.checkpoint.every_steps)
    # running mean of the training loss since the last eval point (part of the checkpoint)
    loss_sum = torch.tensor(float(state.get("loss_sum", 0.0)) if state else 0.0, dtype=torch.float64,
                            device=device)
    loss_count = int(state.get("loss_count", 0)) if state else 0
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    status, reason, diverged_step = "completed", None, None
    start = time.perf_counter() - elapsed

    def wall() -> float:
        return time.perf_counter() - start

    def checkpoint() -> None:
        run_dir.save_checkpoint(
            {"task": task.state_dict(), "rng": rng_state(), "wall_time": wall(), "best": best,
             "last_eval": last_eval, "step": task.step, "loss_sum": loss_sum.item(), "loss_count": loss_count}
        )

    progress = _progress_bar(cfg, run_dir.path.name, task.total_steps, task.step)
    try:
        while not task.done():
            logs = task.train_step()
            loss = torch.as_tensor(logs["loss"], device=device).detach().to(torch.float64)
            finite = torch.isfinite(loss)
            first_bad = torch.where((first_bad < 0) & ~finite, task.step, first_bad)
            loss_sum += torch.where(finite, loss, 0.0)
            loss_count += 1
            progress.update(1)
            evaluating = task.eval_due() or task.done()
            if evaluating or device.type == "cpu" or task.step % 50 == 0:
                bad_at = int(first_bad.item())
                if bad_at >= 0:
                    status, diverged_step = "diverged", bad_at
                    reason = f"non-finite training loss at step {bad_at}"
                    break
            if evaluating:
                metrics = task.evaluate()
                row = {"step": task.step, "epoch": task.epoch, "wall_time": wall(),
                       "train_loss": float(loss_sum.item()) / max(loss_count, 1), "lr": task.current_lr(),
                       **metrics}
                loss_sum.zero_()
                loss_count = 0
                run_dir.append_metrics(row)
                tracker.log(row, task.step)
                last_eval = row
                value = metrics.get(task.metric)
                if task.track_best and value is not None and math.isfinite(value) and _better(value, best, task.mode):
                    best = {"value": value, "step": task.step, "epoch": task.epoch}
                progress.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()
                                      if k == task.metric or k.endswith("loss")})
                checkpoint()
            elif every and task.step % every == 0:
                checkpoint()
    except (KeyboardInterrupt, SystemExit):
        progress.close()
        raise  # interrupted, not failed: the checkpoint lets a relaunch resume
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):  # cannot store results: not a result
            progress.close()
            raise UserError(f"cannot write to {run_dir.path} ({os.strerror(exc.errno)}); free space and "
                            "relaunch: the run resumes from its last checkpoint") from None
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
        _write_error_log(run_dir, traceback.format_exc())
    except Exception as exc:  # noqa: BLE001 - a failed job is a recorded result, not a crash
        message = str(exc).strip().splitlines()
        status, reason = "failed", f"{type(exc).__name__}: {message[0] if message else ''}"
        _write_error_log(run_dir, traceback.format_exc())
    progress.close()

    extras: dict[str, Any] = {}
    if status != "failed" and run_dir.writer:  # artifacts are written by rank 0 only
        try:
            extras = task.finalize(run_dir.path)
        except Exception as exc:  # noqa: BLE001
            status, reason = "failed", f"finalize: {type(exc).__name__}: {exc}"
            _write_error_log(run_dir, traceback.format_exc())
    summary = {
        "status": status,
        "reason": reason,
        "run": run_dir.path.name,
        "task": str(cfg.task.name),
        "optimizer": optimizer_label(cfg),
        "seed": int(cfg.seed),
        "metric": task.metric,
        "mode": task.mode,
        "final": last_eval,
        "best": best,
        "steps": task.step,
        "epochs": task.epoch,
        "wall_time": wall(),
        "diverged_step": diverged_step,
        "factors": factors,
        "device": str(device),
        "precision": precision,
        **extras,
    }
    distributed.barrier()
    run_dir.write_summary(summary)
    tracker.finish(summary)
    distributed.teardown()
    shown = last_eval.get(task.metric)
    shown_text = f" {task.metric}={shown:.4g}" if isinstance(shown, (int, float)) else ""
    if not run_dir.writer:
        return Outcome(status, str(run_dir.path), reason)
    say(f"{run_dir.path.name}: {status}{shown_text}{f' ({reason})' if reason else ''} -> {run_dir.path}")
    return Outcome(status, str(run_dir.path), reason, resumed=state is not None)


def _write_error_log(run_dir: RunDir, text: str) -> None:
    if run_dir.writer:
        (run_dir.path / "error.log").write_text(text)


def _better(value: float, best: dict[str, Any] | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best["value"] if mode == "max" else value < best["value"]


def _progress_bar(cfg: DictConfig, name: str, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    show = bool(cfg.get("progress", True)) and rank() == 0
    return tqdm(total=total, initial=initial, desc=name, disable=not show,
                dynamic_ncols=True, leave=False, file=sys.stderr)


# ---------------------------------------------------------------------------------- entry point
def _hydra_job(cfg: DictConfig) -> Outcome:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from optrepro.sweep import job_resources

    hydra_cfg = HydraConfig.get()
    with job_resources(cfg) as device:
        if device is not None:
            cfg.device = device
        outcome = run(cfg, list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices))
    if hydra_cfg.mode != RunMode.MULTIRUN and outcome.status in ("failed", "error"):
        sys.exit(1 if outcome.status == "failed" else 2)
    return outcome


def main() -> None:
    """Console script ``optrepro-train``: one-line errors first, then hand over to Hydra."""
    import hydra

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    argv = sys.argv[1:]
    if not full_error and not any(a in ("-h", "--help", "--hydra-help", "--info", "-i") or
                                  a.startswith(("--cfg", "-c")) for a in argv):
        try:
            preflight(argv)
        except UserError as exc:
            say(f"error: {exc}")
            sys.exit(2)
    app = hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base=None)(_hydra_job)
    app()


if __name__ == "__main__":
    main()


__all__ = ["Outcome", "main", "run", "train"]
