"""Training entry point: ``python -m optrepro.train task=<task> optimizer=<opt> seed=<n> [profile=smoke]``.

compose (Hydra: recipes, profiles and experiments are configs) -> validate -> run folder -> train loop -> summary.
The loop below is the whole of training; tasks only supply steps and evaluations.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from optrepro.runs import RunDir, check_writable, config_hash, optimizer_label, remove_empty_dirs, run_name
from optrepro.status import FINAL_STATUSES, RunStatus

if TYPE_CHECKING:
    from optrepro.optim.diagnostics import TaskProbe
    from optrepro.tasks.base import Task
    from optrepro.tracking import Tracker

#: Reading the divergence flag (a device tensor) makes the host wait for the accelerator to finish
#: every queued kernel, so on a GPU it is read only every this many steps and at each eval point; the
#: step it names is exact all the same (the flag holds the first bad step). On CPU it is free: every step.
DIVERGENCE_CHECK_EVERY = 50
#: the errno of "cannot store results": not a result of the run, so not recorded as a failure
NO_SPACE = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


@dataclass
class Outcome:
    """What became of one job; a sweep prints a table of these (``optrepro.sweep.format_summary``)."""

    status: RunStatus
    run_dir: str | None = None
    reason: str | None = None
    resumed: bool = False
    metric: str | None = None  # the task's metric (summary.json "metric")
    value: float | None = None  # its final value, for a run that completed (now or before: skipped)
    #: the final value of the task's validation metric (``Task.val_metric``), for a run that completed:
    #: what a tuning sweep (hydra/sweeper=optuna) is told, never a test metric
    objective: float | None = None

    def __float__(self) -> float:
        """The Optuna sweeper's objective; a run without one (failed, diverged, no validation split)
        raises, which the sweeper records as a failed trial."""
        if self.objective is None:
            raise ValueError(f"no validation objective ({self.status}{': ' + self.reason if self.reason else ''})")
        return self.objective


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- one run
def run(cfg: DictConfig) -> Outcome:
    """Validate and train one composed config; never raises for a single job's failure.

    Folders this call creates are removed again if it ends without writing into them, so an error
    leaves nothing on disk. Ctrl-C (KeyboardInterrupt) is passed on: ``main`` says how to resume.
    """
    writer = rank() == 0
    created: list[Path] = []
    try:
        cfg = prepare_config(cfg)
        if writer:
            created = check_writable(Path(cfg.results_dir))
    except UserError as exc:
        say(f"error: {exc}")
        return Outcome(RunStatus.ERROR, reason=str(exc))
    run_dir = RunDir(Path(cfg.results_dir) / run_name(cfg), writer=writer)
    try:
        with store_errors_as_outcome(run_dir) as errors:
            skipped = previous_outcome(cfg, run_dir)
            if skipped is not None:
                return skipped
            with run_dir.lock():
                return train(cfg, run_dir)
        assert errors.outcome is not None  # reached only when the block above was ended by an error
        return errors.outcome
    finally:
        if writer:
            remove_empty_dirs([run_dir.path, *created])


def previous_outcome(cfg: DictConfig, run_dir: RunDir) -> Outcome | None:
    """Check the run folder belongs to this config; SKIPPED if the run already ended (completed,
    diverged), None if it is to be trained (a failed attempt's summary is set aside first)."""
    run_dir.verify(cfg)
    previous = run_dir.finished_summary()
    if previous is not None and previous.get("status") in FINAL_STATUSES:
        say(f"{run_dir.path.name}: already {previous['status']} ({run_dir.path}); nothing to do")
        metric = previous.get("metric")
        completed = previous["status"] == RunStatus.COMPLETED
        final = previous.get("final") or {}
        value = final.get(metric) if completed else None
        objective = final.get(previous.get("val_metric")) if completed and previous.get("val_metric") else None
        return Outcome(RunStatus.SKIPPED, str(run_dir.path), previous.get("reason"), metric=metric,
                       value=_number(value), objective=_number(objective))
    if previous is not None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if run_dir.writer:
            os.replace(run_dir.summary_path, run_dir.path / f"summary.failed.{stamp}.json")
        say(f"{run_dir.path.name}: last attempt failed ({previous.get('reason')}); trying again")
    return None


@dataclass
class _Caught:
    outcome: Outcome | None = None


@contextlib.contextmanager
def store_errors_as_outcome(run_dir: RunDir) -> Iterator[_Caught]:
    """A user error or a full/read-only disk ends the job as ERROR, said in one line (``.outcome``)."""
    caught = _Caught()
    try:
        yield caught
    except UserError as exc:
        say(f"error: {exc}")
        caught.outcome = Outcome(RunStatus.ERROR, str(run_dir.path), str(exc))
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        message = f"cannot write to {run_dir.path} ({os.strerror(exc.errno)}); free space and relaunch"
        say(f"error: {message}")
        caught.outcome = Outcome(RunStatus.ERROR, str(run_dir.path), message)


def prepare_config(cfg: DictConfig) -> DictConfig:
    """The composed config with interpolations resolved, validated; nothing else changes."""
    cfg = resolve_interpolations(cfg)
    validate_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------- the loop
def train(cfg: DictConfig, run_dir: RunDir) -> Outcome:
    """Set up, resume, run the loop, finish: metrics at eval points, checkpoints, summary.json last."""
    from optrepro.optim import describe
    from optrepro.tracking import Tracker

    task, probe = setup_run(cfg, run_dir)
    factors = describe(cfg.optimizer)
    if run_dir.writer:
        say(start_line(cfg, task, run_dir, factors))
    checkpoint = resume(task, run_dir)
    tracker = Tracker(cfg, run_dir.path, config_hash(cfg), factors) if run_dir.writer else Tracker.disabled()
    state = LoopState.begin(checkpoint, task.ctx.device)
    bar = bool(cfg.get("progress", True))
    with (Progress(run_dir.path.name, task.total_steps, task.step, bar=bar, show=run_dir.writer) as progress,
          failures_recorded(state, run_dir, stage="train")):
        train_loop(task, probe, state, run_dir, tracker, progress, every=int(cfg.checkpoint.every_steps))
    return finish(cfg, task, state, run_dir, tracker, factors)


def train_loop(task: Task, probe: TaskProbe, state: LoopState, run_dir: RunDir, tracker: Tracker,
               progress: Progress, every: int) -> None:
    """Step until the task is done or diverges; evaluate, record and checkpoint at its eval points."""
    while not task.done():
        logs = task.train_step()
        state.add_loss(logs["loss"], task.step)
        progress.update(1)
        evaluating = task.eval_due() or task.done()
        if check_divergence(state, task.step, evaluating):
            break
        if evaluating:
            metrics = task.evaluate()
            row = eval_row(task, state, metrics, probe)
            record_eval(task, state, row, metrics, run_dir, tracker, progress)
            save_checkpoint(task, state, run_dir)
        elif every and task.step % every == 0:
            save_checkpoint(task, state, run_dir)


@dataclass
class LoopState:
    """What the loop carries from step to step (all but the clock and the status go into checkpoints)."""

    best: dict[str, Any] | None
    last_eval: dict[str, Any]
    loss_sum: torch.Tensor  # running sum of the training loss since the last eval point, on the device
    loss_count: int
    first_bad: torch.Tensor  # first step with a non-finite loss, -1 while there is none, on the device
    start: float  # time.perf_counter() at which this run (counting its time before a resume) started
    resumed: bool
    status: RunStatus = RunStatus.COMPLETED
    reason: str | None = None
    diverged_step: int | None = None

    @classmethod
    def begin(cls, checkpoint: dict[str, Any] | None, device: torch.device) -> LoopState:
        """A fresh state, or the one the checkpoint saved; the wall clock goes on from the checkpoint's."""
        saved = checkpoint or {}
        elapsed = float(checkpoint["wall_time"]) if checkpoint else 0.0
        return cls(best=saved.get("best"), last_eval=saved.get("last_eval", {}),
                   loss_sum=torch.tensor(float(saved.get("loss_sum", 0.0)), dtype=torch.float64, device=device),
                   loss_count=int(saved.get("loss_count", 0)),
                   first_bad=torch.full((), -1, dtype=torch.int64, device=device),
                   start=time.perf_counter() - elapsed, resumed=checkpoint is not None)

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def add_loss(self, loss: Any, step: int) -> None:
        """Fold one step's loss into the running mean without a host sync (a NaN is flagged, not summed)."""
        loss = torch.as_tensor(loss, device=self.loss_sum.device).detach().to(torch.float64)
        finite = torch.isfinite(loss)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, step, self.first_bad)
        self.loss_sum += torch.where(finite, loss, 0.0)
        self.loss_count += 1

    def mean_loss(self) -> float:
        return float(self.loss_sum.item()) / max(self.loss_count, 1)

    def fail(self, reason: str) -> None:
        self.status, self.reason = RunStatus.FAILED, reason


def setup_run(cfg: DictConfig, run_dir: RunDir) -> tuple[Task, TaskProbe]:
    """Refuse what cannot run, take the device (one GPU per process under torchrun), seed, build the
    task (a missing dataset raises UserError before anything is written), turn on the optimizer
    diagnostics (before any checkpoint is loaded: it restores their sample), create the run folder."""
    from optrepro.optim import diagnostics as optimizer_diagnostics
    from optrepro.tasks import RunContext, build_task, task_class
    from optrepro.tasks.base import seed_everything

    refusal = distributed.refuse_reason(str(cfg.task.kind), task_class(str(cfg.task.kind)))
    if refusal:  # before any process group; every rank finds the same reason, rank 0 says it
        if rank() > 0:
            raise SystemExit(2)  # the exit status of a user error, without a second copy of the line
        raise UserError(refusal)
    dist, device = distributed.setup(resolve_device(str(cfg.device)))
    precision = resolve_precision(str(cfg.precision), device)
    seed_everything(int(cfg.seed))
    ctx = RunContext(cfg=cfg, device=device, precision=precision, seed=int(cfg.seed), run_dir=run_dir.path,
                     dist=dist)
    task = build_task(cfg.task, ctx)
    probe = optimizer_diagnostics.attach(task, cfg.get("diagnostics"), int(cfg.seed))
    run_dir.create(cfg, device, data=task.data_record())
    return task, probe


def resume(task: Task, run_dir: RunDir) -> dict[str, Any] | None:
    """Load the last sound checkpoint into the task and the RNGs; None (and no stale rows) if there is none."""
    from optrepro.tasks.base import set_rng_state

    checkpoint = run_dir.load_checkpoint() if run_dir.writer else None  # rank 0 verifies; sets aside what is bad
    distributed.barrier()  # data parallel: every other rank reads the checkpoint rank 0 has settled
    if not run_dir.writer:
        checkpoint = run_dir.load_checkpoint()
    if checkpoint is not None:
        task.load_state_dict(checkpoint["task"])
        set_rng_state(checkpoint["rng"])
        say(f"{run_dir.path.name}: resuming from step {task.step}")
    elif run_dir.writer and os.path.lexists(run_dir.metrics_path):
        run_dir.metrics_path.unlink()  # no sound checkpoint: start clean (its rows are recomputed)
    return checkpoint


def check_divergence(state: LoopState, step: int, evaluating: bool) -> bool:
    """True, with the state marked diverged, once a non-finite training loss has been seen."""
    on_cpu = state.first_bad.device.type == "cpu"
    if not (evaluating or on_cpu or step % DIVERGENCE_CHECK_EVERY == 0):
        return False
    bad_at = int(state.first_bad.item())
    if bad_at < 0:
        return False
    state.status, state.diverged_step = RunStatus.DIVERGED, bad_at
    state.reason = f"non-finite training loss at step {bad_at}"
    return True


def eval_row(task: Task, state: LoopState, metrics: dict[str, Any], probe: TaskProbe) -> dict[str, Any]:
    """The one place a metrics.jsonl row is assembled: the task's metrics, then the optimizer
    diagnostics (``opt/*``, present only when they are on)."""
    return {"step": task.step, "epoch": task.epoch, "wall_time": state.wall(), "train_loss": state.mean_loss(),
            "lr": task.current_lr(), **metrics, **probe.row()}


def record_eval(task: Task, state: LoopState, row: dict[str, Any], metrics: dict[str, Any], run_dir: RunDir,
                tracker: Tracker, progress: Progress) -> None:
    """Write the row (metrics.jsonl, wandb), restart the running loss, keep the best, show it (one line)."""
    state.loss_sum.zero_()
    state.loss_count = 0
    run_dir.append_metrics(row)
    tracker.log(row, task.step)
    state.last_eval = row
    value = metrics.get(task.metric)
    if task.track_best and value is not None and math.isfinite(value) and _better(value, state.best, task.mode):
        state.best = {"value": value, "step": task.step, "epoch": task.epoch}
    progress.line(eval_line(run_dir.path.name, task, row))


def save_checkpoint(task: Task, state: LoopState, run_dir: RunDir) -> None:
    """Everything a relaunch needs to go on as if uninterrupted (RunDir writes it atomically)."""
    from optrepro.tasks.base import compact, rng_state

    run_dir.save_checkpoint(
        {"task": compact(task.state_dict()), "rng": rng_state(), "wall_time": state.wall(), "best": state.best,
         "last_eval": state.last_eval, "step": task.step, "loss_sum": state.loss_sum.item(),
         "loss_count": state.loss_count}
    )


@contextlib.contextmanager
def failures_recorded(state: LoopState, run_dir: RunDir, stage: str) -> Iterator[None]:
    """The run's exception policy, in one place.

    - Ctrl-C and SystemExit pass on: interrupted, not failed; the checkpoint lets a relaunch resume.
    - A full or read-only disk while training is no result either: a one-line UserError.
    - Any other exception is a result: status failed, a one-line reason, the traceback in error.log.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a failed job is a recorded result, not a crash
        if stage == "train" and isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise UserError(f"cannot write to {run_dir.path} ({os.strerror(exc.errno)}); free space and "
                            "relaunch: the run resumes from its last checkpoint") from None
        state.fail(_failure_reason(exc, stage))
        run_dir.write_error_log(traceback.format_exc())


def _failure_reason(exc: Exception, stage: str) -> str:
    if stage != "train":
        return f"{stage}: {type(exc).__name__}: {exc}"
    text = str(exc)
    if not isinstance(exc, OSError):  # a step's error can run to many lines (CUDA's do): the first names it
        lines = text.strip().splitlines()
        text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}"


def finish(cfg: DictConfig, task: Task, state: LoopState, run_dir: RunDir, tracker: Tracker,
           factors: dict[str, Any], show: Callable[[str], None] = say) -> Outcome:
    """Let the task write its artifacts, then summary.json (last: it marks the run done), and say so
    (through ``show``: a population prints it above its progress bar)."""
    extras: dict[str, Any] = {}
    if state.status != RunStatus.FAILED and run_dir.writer:  # artifacts are written by rank 0 only
        run_dir.set_aside_symlinks()  # an artifact is never written through a link
        with failures_recorded(state, run_dir, stage="finalize"):
            extras = task.finalize(run_dir.path)
    summary = run_summary(cfg, task, state, run_dir, factors, extras)
    distributed.barrier()
    run_dir.write_summary(summary)
    tracker.finish(summary)
    distributed.teardown()
    if not run_dir.writer:
        return Outcome(state.status, str(run_dir.path), state.reason)
    shown = _number(state.last_eval.get(task.metric))
    shown_text = f" {task.metric}={shown:.4g}" if shown is not None else ""
    reason_text = f" ({state.reason})" if state.reason else ""
    show(f"{run_dir.path.name}: {state.status}{shown_text}{reason_text} -> {run_dir.path}")
    completed = state.status == RunStatus.COMPLETED
    value = shown if completed else None  # a diverged run's last value is no result
    objective = _number(state.last_eval.get(task.val_metric)) if completed and task.val_metric else None
    return Outcome(state.status, str(run_dir.path), state.reason, resumed=state.resumed, metric=task.metric,
                   value=value, objective=objective)


def run_summary(cfg: DictConfig, task: Task, state: LoopState, run_dir: RunDir, factors: dict[str, Any],
                extras: dict[str, Any]) -> dict[str, Any]:
    """summary.json: how the run ended, its last and best evaluations, and what it ran on."""
    return {
        "status": state.status,
        "reason": state.reason,
        "run": run_dir.path.name,
        "task": str(cfg.task.name),
        "optimizer": optimizer_label(cfg),
        "seed": int(cfg.seed),
        "metric": task.metric,
        "mode": task.mode,
        "final": state.last_eval,
        "best": state.best,
        "val_metric": task.val_metric,
        "gap": task.gap_summary(state.last_eval),
        "steps": task.step,
        "epochs": task.epoch,
        "wall_time": state.wall(),
        "diverged_step": state.diverged_step,
        "factors": factors,
        "device": str(task.ctx.device),
        "precision": task.ctx.precision,
        **extras,
    }


def _better(value: float, best: dict[str, Any] | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best["value"] if mode == "max" else value < best["value"]


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not a bool, a string or None), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# ---------------------------------------------------------------------------------- terminal
EPS_PLACES = {"outside": "outside sqrt", "inside": "inside sqrt", "both": "inside and outside sqrt"}


def start_line(cfg: DictConfig, task: Task, run_dir: RunDir, factors: dict[str, Any]) -> str:
    """The run's first line: what it trains, with which optimizer settings, on what, and where it writes."""
    return (f"{run_dir.path.name}: start {cfg.task.name} seed {cfg.seed} | {optimizer_text(cfg, factors)} | "
            f"{task.ctx.precision} on {task.ctx.device} -> {run_dir.path}")


def optimizer_text(cfg: DictConfig, factors: dict[str, Any]) -> str:
    """``adam lr=0.001 betas=(0.9, 0.999) eps=1e-08 outside sqrt weight_decay=0``: the settings the eps
    debate turns on, eps with its placement (and effective floor where it is not eps itself) from
    ``optim.describe``, which reads them off the optimizer the config builds."""
    opt = cfg.optimizer
    parts = [optimizer_label(cfg)]
    if opt.get("lr") is not None:
        parts.append(f"lr={opt.lr:g}")
    if opt.get("betas") is not None:
        parts.append(f"betas=({', '.join(f'{b:g}' for b in opt.betas)})")
    if opt.get("momentum") is not None:
        parts.append(f"momentum={opt.momentum:g}")
    place = factors.get("eps_placement")
    if place is not None and factors.get("eps") is not None:
        eps = f"eps={factors['eps']:g} {EPS_PLACES.get(place, place)}"
        floor = factors.get("effective_floor")
        if place != "outside" and floor is not None:
            eps += f" (floor {floor:.3g})"
        parts.append(eps)
    elif isinstance(opt.get("eps"), (int, float)):
        parts.append(f"eps={opt.eps:g}")
    if opt.get("weight_decay") is not None:
        parts.append(f"weight_decay={opt.weight_decay:g}")
    return " ".join(parts)


def eval_line(name: str, task: Task, row: dict[str, Any]) -> str:
    """One eval point: where the run is, the task's metric first, then every loss in the row."""
    where = f"step {task.step}/{task.total_steps}"
    if task.epoch != float(task.step):  # tasks without epochs report their steps as epochs
        where += f" epoch {task.epoch:.4g}"
    keys = [task.metric, *(k for k in row if k.endswith("loss") and k != task.metric)]
    values = " ".join(f"{k}={v:.4g}" for k in keys if (v := _number(row.get(k))) is not None)
    return f"{name}: {where} {values}".rstrip()


class Progress:
    """What a run (or a population) shows while it trains: lines that stay (one per eval point), and,
    only on a terminal, a progress bar below them. Piped to a file a bar would be one long line of
    carriage returns, so there the lines are all there is."""

    def __init__(self, desc: str, total: int, initial: int = 0, *, bar: bool = True, show: bool = True,
                 stream: Any = None) -> None:
        from tqdm.auto import tqdm

        self.stream = stream if stream is not None else sys.stderr
        self.show = show  # False on data-parallel ranks other than 0: they print nothing
        on_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not (show and bar and on_terminal),
                        dynamic_ncols=True, leave=False, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def line(self, text: str) -> None:
        """Print ``text`` on its own line, above the bar if there is one."""
        if not self.show:
            return
        if self.bar.disable:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.write(text, file=self.stream)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- entry point
def _hydra_job(cfg: DictConfig) -> Outcome:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from optrepro.sweep import job_resources, launcher_jobs

    hydra_cfg = HydraConfig.get()
    with job_resources(cfg) as device:
        if device is not None:
            cfg.device = device
        job = run_isolated if launcher_jobs() > 1 else run  # parallel: a killed job must not kill the worker
        outcome = job(cfg)
    if hydra_cfg.mode != RunMode.MULTIRUN and outcome.status in (RunStatus.FAILED, RunStatus.ERROR):
        sys.exit(1 if outcome.status == RunStatus.FAILED else 2)
    return outcome


def run_isolated(cfg: DictConfig) -> Outcome:
    """``run`` in a forked child: a job the OS kills (OOM killer, SIGKILL) becomes a failed outcome of
    that job, and the parallel launcher's worker lives on to run the other jobs of the sweep."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_run, args=(send, cfg), daemon=False)
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # the child died before it could answer
        result = None
    child.join()
    if result is not None:
        return Outcome(**result)
    code = child.exitcode or 0
    if code == 130:
        raise KeyboardInterrupt
    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    where = None
    with contextlib.suppress(Exception):  # name the run folder if the config still resolves
        resolved = prepare_config(cfg)
        where = str(Path(resolved.results_dir) / run_name(resolved))
    reason = f"process {why} (out of memory?); a relaunch resumes it from its last checkpoint"
    say(f"{Path(where).name if where else 'job'}: failed ({reason})")
    return Outcome(RunStatus.FAILED, where, reason)


def _child_run(send: Any, cfg: DictConfig) -> None:
    import dataclasses

    try:
        outcome = run(cfg)
    except KeyboardInterrupt:
        os._exit(130)
    send.send(dataclasses.asdict(outcome))
    send.close()


INTERRUPTED = "interrupted; relaunch the same command to resume (each run continues from its last checkpoint)"
#: Hydra's flags that each choose what the command does; Hydra takes one at a time
MODES = {"-m": "-m", "--multirun": "-m", "-r": "--run", "--run": "--run", "-c": "--cfg", "--cfg": "--cfg",
         "-i": "--info", "--info": "--info", "-sc": "-sc", "--shell-completion": "-sc"}
#: flags after which nothing trains, so the command line is not checked as a run's; and those that compose from
#: another config source than the one preflight checks (Hydra then says what is wrong itself)
NO_RUN = ("-h", "--help", "--hydra-help", "--version", "--cfg", "--info", "-sc", "-cp", "--config-path", "-cn",
          "--config-name", "-cd", "--config-dir", "--experimental-rerun")


def command_modes(argv: list[str]) -> list[str]:
    """The mode flags of ``argv`` (``-m``, ``--cfg``, ``--info``, ``-sc``, ``--run``) in their short spelling."""
    return [MODES[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in MODES]


def check_modes(modes: list[str]) -> None:
    """Two modes at once is Hydra's ValueError traceback; say it in one line with the fix."""
    distinct = sorted(set(modes))
    if len(distinct) < 2:
        return
    if "--cfg" in distinct and "-m" in distinct:
        raise UserError("--cfg shows one job's config and does not combine with -m; drop -m and give one "
                        "value per swept key (e.g. optimizer=adam) to see that job's config")
    raise UserError(f"{' and '.join(distinct)} cannot be combined: Hydra does one of --run, -m, --cfg, --info, "
                    "-sc at a time")


def main() -> None:
    """Console script ``optrepro-train``: one-line errors first, then hand over to Hydra."""
    import hydra

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    argv = sys.argv[1:]
    try:
        if not full_error:
            try:
                modes = command_modes(argv)
                check_modes(modes)
                if not any(a.split("=", 1)[0] in NO_RUN for a in [*argv, *modes]):
                    preflight(argv)
            except UserError as exc:
                say(f"error: {exc}")
                sys.exit(2)
        app = hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base=None)(_hydra_job)
        app()
    except KeyboardInterrupt:
        if full_error:
            raise
        say(INTERRUPTED)
        sys.exit(130)


if __name__ == "__main__":
    main()


__all__ = ["Outcome", "Progress", "main", "run", "train"]
