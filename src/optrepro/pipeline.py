"""Run a list of Hydra multiruns with one progress display, then the analysis.

``make demo``, ``make reproduce-table`` and ``make sweep-eps`` are each a list of :class:`Sweep` (a
multirun command line) followed by ``optrepro.analyze``. Every job is a run folder, so running a
pipeline again skips what is done and resumes what was interrupted.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optrepro.config import parse_overrides


@dataclass(frozen=True)
class Sweep:
    """One ``python -m optrepro.train -m ...`` command line."""

    label: str
    overrides: tuple[str, ...]
    #: extra sweep dimensions that come from an experiment preset's hydra.sweeper.params
    preset_grid: dict[str, str] = field(default_factory=dict)

    def values(self, key: str) -> list[str]:
        """The values this sweep gives ``key``: the command line's, else the preset grid's, else none."""
        for o in parse_overrides(list(self.overrides)):
            if o.key_or_group == key:
                return list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
        return str(self.preset_grid[key]).split(",") if key in self.preset_grid else []

    def n_runs(self) -> int:
        keys = {o.key_or_group for o in parse_overrides(list(self.overrides))} | set(self.preset_grid)
        return math.prod(len(self.values(key)) for key in keys)


def matched_outside_eps(task: str, eps_values: Sequence[float] = ()) -> str:
    """The outside ε equal to each inside ε's floor √(ε/(1−β2)) (optim.describe's effective_floor), as a sweep
    value list: the runs the analysis pairs with the inside corners for "placement at a matched floor".

    β2 (and ε when ``eps_values`` is empty) come from the task's composed ``ablation_eadam`` config, since a
    task's recipe may set them (the Transformer recipes use β2 = 0.98: floor √(1e-8/0.02) = 7.1e-4).
    """
    from optrepro.config import compose_train

    opt = compose_train([f"task={task}", "optimizer=ablation_eadam"]).optimizer
    beta2 = float(opt.betas[1])
    return ",".join(repr(math.sqrt(float(eps) / (1.0 - beta2))) for eps in (eps_values or [opt.eps]))


def preset_grid(experiment: str) -> dict[str, str]:
    """The grid an experiment preset declares in ``hydra.sweeper.params``."""
    from optrepro.config import compose_train

    cfg = compose_train([f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    return {str(k): str(v) for k, v in params.items()}


def measure_step_seconds(task: str, steps: int = 10, warmup: int = 3,
                         overrides: Sequence[str] = ()) -> tuple[float, int] | str:
    """Time ``steps`` training steps of ``task`` (with Adam) on this machine's default device.

    Returns (seconds per step, steps per run), or the reason it could not be timed (e.g. the dataset
    is not downloaded). Used to estimate a sweep's device-hours before it starts, so it never downloads:
    where the task has a ``task.data.download`` switch the estimate composes it as false (the runs keep
    theirs). ``overrides`` are the pipeline's extra run overrides (``task.data.root=...``); Hydra's are
    left out.
    """
    from hydra.errors import HydraException

    from optrepro.config import _first_line, resolve_device, resolve_interpolations, train_composer
    from optrepro.errors import UserError
    from optrepro.tasks import RunContext, build_task
    from optrepro.tasks.base import time_steps

    run_overrides = [f"task={task}", "optimizer=adam",
                     *(o for o in overrides if not o.lstrip("+~").startswith("hydra"))]
    try:
        with train_composer() as compose:
            cfg = compose(run_overrides)
            if "download" in (cfg.task.get("data") or {}):
                cfg = compose([*run_overrides, "task.data.download=false"])
    except HydraException as exc:  # an extra override this task has no key for: its runs will be refused too
        return f"its config does not compose: {_first_line(exc)}"
    try:
        cfg = resolve_interpolations(cfg)
        device = resolve_device("auto")
        task_obj = build_task(cfg.task, RunContext(cfg, device, str(cfg.precision), 0))
    except UserError as exc:
        return str(exc)
    seconds, _ = time_steps(task_obj.train_step, steps, warmup, device)
    return seconds / steps, int(task_obj.total_steps)


def count_outcomes(results_dir: Path, since: float) -> int:
    """Jobs finished (run, skipped or rejected) by the sweeps started after ``since``."""
    total = 0
    for path in (Path(results_dir) / ".sweeps").glob("*/outcomes.jsonl"):
        if path.parent.stat().st_mtime >= since - 1:
            total += sum(1 for _ in path.open())
    return total


def joins_populations(task: str) -> bool:
    """True when runs of ``task`` can train as population members (``hydra/launcher=population``)."""
    from optrepro.config import compose_train
    from optrepro.tasks import task_class

    cfg = compose_train([f"task={task}"])
    return not task_class(str(cfg.task.kind)).population_refusal_for(cfg.task)


def sweep_launcher(sweep: Sweep, jobs: int, populations: bool) -> list[str]:
    """The launcher overrides of one sweep: populations where its task joins them (its other jobs then run
    one after another in that process), else joblib with ``jobs`` processes, else the basic launcher."""
    if populations and joins_populations(sweep.overrides[0].split("=", 1)[1]):
        return ["hydra/launcher=population"]
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []


#: ``--launcher`` / ``LAUNCHER=`` choices of the pipelines; ``auto`` is :func:`sweep_launcher` without populations
LAUNCHERS = ("auto", "basic", "joblib", "population", "local", "slurm")


def launcher_overrides(name: str, jobs: int = 1, partition: str | None = None, gpus_per_job: int | None = None,
                       time_limit_min: int | None = None) -> list[str] | None:
    """The Hydra launcher overrides every sweep of a pipeline gets, or None where they depend on the sweep
    (``auto``, ``population``: :func:`sweep_launcher`).

    ``local`` and ``slurm`` are hydra-submitit-launcher (configs/hydra/launcher/local.yaml, slurm.yaml):
    the same submitit job on this machine or on the cluster, so ``local`` tries the cluster path here.
    """
    from optrepro.errors import UserError

    if name not in LAUNCHERS:
        raise UserError(f"unknown launcher '{name}'; choose one of: {', '.join(LAUNCHERS)}")
    if partition is not None and name != "slurm":
        raise UserError(f"a partition is for the slurm launcher, not '{name}'; add LAUNCHER=slurm (--launcher slurm)")
    if (gpus_per_job is not None or time_limit_min is not None) and name not in ("local", "slurm"):
        raise UserError(f"GPUs per job and a time limit are for the slurm and local launchers, not '{name}'; "
                        f"add LAUNCHER=slurm (--launcher slurm)")
    if gpus_per_job is not None and gpus_per_job < 0:
        raise UserError(f"GPUs per job must be 0 or more, got {gpus_per_job}")
    if time_limit_min is not None and time_limit_min < 1:
        raise UserError(f"the time limit is in minutes and must be at least 1, got {time_limit_min}")
    if name in ("local", "slurm") and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise UserError(f"the {name} launcher needs hydra-submitit-launcher; pip install 'optrepro[slurm]'")
    if name in ("auto", "population"):
        return None
    if name == "basic":
        return ["hydra/launcher=basic"]
    if name == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    overrides = [f"hydra/launcher={name}"]
    if partition is not None:
        overrides.append(f"hydra.launcher.partition={partition}")
    if gpus_per_job is not None:
        overrides.append(f"hydra.launcher.gpus_per_node={gpus_per_job}")
    if time_limit_min is not None:
        overrides.append(f"hydra.launcher.timeout_min={time_limit_min}")
    return overrides


def run_sweeps(sweeps: Sequence[Sweep], results_dir: Path, jobs: int = 1, extra: Sequence[str] = (),
               show_progress: bool = True, populations: bool = False, launcher: Sequence[str] | None = None) -> int:
    """Run each sweep as a subprocess multirun; show one overall progress bar. Returns failures.

    ``launcher``: the launcher overrides of every sweep (:func:`launcher_overrides`); None: each sweep's own
    (:func:`sweep_launcher`). ``populations``: sweeps of tasks that batch run under
    ``hydra/launcher=population``. A sweep's first override must then be its ``task=...``."""
    from tqdm.auto import tqdm

    results_dir = Path(results_dir)
    total = sum(s.n_runs() for s in sweeps)
    started = time.time()
    bar = tqdm(total=total, desc="runs", unit="run", disable=not show_progress, dynamic_ncols=True)
    failures = 0
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    for sweep in sweeps:
        bar.set_postfix_str(sweep.label)
        log = results_dir / ".sweeps" / f"{sweep.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        launch = sweep_launcher(sweep, jobs, populations) if launcher is None else list(launcher)
        command = [sys.executable, "-m", "optrepro.train", "-m", *sweep.overrides, *launch,
                   f"results_dir={results_dir}", "progress=false", *extra]
        with open(log, "w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            while proc.poll() is None:
                time.sleep(1.0)
                bar.n = min(total, count_outcomes(results_dir, started))
                bar.refresh()
        if proc.returncode != 0:
            failures += 1
            tail = log.read_text().strip().splitlines()[-3:]
            tqdm.write(f"sweep {sweep.label} exited {proc.returncode}: {' | '.join(tail)} (log: {log})")
        else:
            summary_line = next((line for line in log.read_text().splitlines() if line.startswith("sweep:")), "")
            tqdm.write(f"{sweep.label}: {summary_line}")
    bar.n = min(total, count_outcomes(results_dir, started))
    bar.close()
    return failures


def analyze(runs: Path, out: Path) -> int:
    return subprocess.call([sys.executable, "-m", "optrepro.analyze", "--runs", str(runs), "--out", str(out)])
