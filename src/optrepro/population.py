"""Population training: many runs of one task trained together, in one process, as one batched model.

A multirun under ``hydra/launcher=population`` (``hydra_plugins/optrepro_population``) groups its
jobs with :func:`group_key`: jobs of the same task config (model shapes, data, schedule, profile)
whose optimizers are Adam-family presets of the same structure form one group; seed, preset, every
continuous hyperparameter and both ablation factors may differ. :func:`train_population` then trains
a group as K members:

* each member is a run: the same folder, hash, ``config.yaml``, ``metrics.jsonl``, checkpoint,
  ``summary.json`` and wandb run as when it runs alone; its task is built the same way (its own seed,
  init, data order and augmentation), and its optimizer is the one its config names;
* their parameters and optimizer states are stacked (``optim.population.PopulationAdam``); one
  vmapped forward/backward (``torch.func``) over the members' batches and one batched optimizer
  step train all of them;
* a member that diverges is recorded as diverged at its step and frozen; an exception in one member's
  bookkeeping or evaluation fails that member only; each member is checkpointed into its own folder,
  so a relaunch resumes every member where it stopped (members need not be at the same step) and
  skips the members that ended.

The loop below mirrors :func:`optrepro.train.train_loop` member by member.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from optrepro import distributed
from optrepro.errors import UserError
from optrepro.runs import RunDir, check_writable, config_hash, remove_empty_dirs, run_name
from optrepro.status import RunStatus
from optrepro.train import (
    LoopState,
    Outcome,
    Progress,
    check_divergence,
    eval_row,
    failures_recorded,
    finish,
    prepare_config,
    previous_outcome,
    record_eval,
    resume,
    save_checkpoint,
    say,
    setup_run,
    start_line,
    store_errors_as_outcome,
)

if TYPE_CHECKING:
    from optrepro.optim.diagnostics import TaskProbe
    from optrepro.tasks.base import Task
    from optrepro.tracking import Tracker

#: top-level keys that may differ between members of one population (all others must agree)
MEMBER_KEYS = ("seed", "optimizer", "wandb", "progress")


# ---------------------------------------------------------------------------------- grouping
def group_key(cfg: DictConfig) -> tuple[str | None, str]:
    """(key, "") for a job that can join a population (jobs with equal keys batch together), or
    (None, why not) for one that runs alone."""
    from optrepro.optim import build_optimizer
    from optrepro.optim.adam_family import AdamFamilyOptimizer
    from optrepro.optim.population import structure_key
    from optrepro.tasks import task_class

    try:
        cfg = prepare_config(cfg)
        refusal = task_class(str(cfg.task.kind)).population_refusal_for(cfg.task)
        if refusal:
            return None, f"task {cfg.task.name}: {refusal}"
        probe = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optimizer)
    except (UserError, ValueError, TypeError) as exc:
        return None, f"its config does not build ({exc})"  # the run itself will say so, in its own words
    if not isinstance(probe, AdamFamilyOptimizer):
        return None, (f"optimizer {cfg.optimizer.name} ({type(probe).__name__}) is not one of the Adam-family "
                      "presets the batched step runs (eadam, adabelief, ablation)")
    if distributed.env_world_size() > 1:
        return None, "it runs data parallel under torchrun"
    shared = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in MEMBER_KEYS}
    amsgrad = [spec[:2] for spec in structure_key(probe)]
    return json.dumps([shared, amsgrad], sort_keys=True, default=str), ""


# ---------------------------------------------------------------------------------- members
@dataclass
class Member:
    """One run of the population and everything its loop carries."""

    index: int
    cfg: DictConfig
    run_dir: RunDir
    task: Task | None = None
    probe: TaskProbe | None = None
    state: LoopState | None = None
    tracker: Tracker | None = None
    factors: dict[str, Any] = field(default_factory=dict)
    batch: Any = None  # its last batch (a frozen member's forward reuses it; its result is discarded)
    outcome: Outcome | None = None  # set once the member has ended

    @property
    def active(self) -> bool:
        return self.outcome is None


def train_population(cfgs: list[DictConfig], show_progress: bool = True) -> list[Outcome]:
    """Train the composed configs ``cfgs`` (one group of :func:`group_key`) as one population;
    one Outcome per config, in order. Never raises for one member's failure."""
    members: list[Member] = []
    outcomes: list[Outcome | None] = [None] * len(cfgs)
    created: list[Path] = []
    with contextlib.ExitStack() as stack:
        for i, raw in enumerate(cfgs):
            try:
                cfg = prepare_config(raw)
                created += check_writable(Path(cfg.results_dir))
            except UserError as exc:
                say(f"error: {exc}")
                outcomes[i] = Outcome(RunStatus.ERROR, reason=str(exc))
                continue
            member = Member(i, cfg, RunDir(Path(cfg.results_dir) / run_name(cfg)))
            with store_errors_as_outcome(member.run_dir) as errors:
                outcomes[i] = previous_outcome(cfg, member.run_dir)
                if outcomes[i] is None:
                    stack.enter_context(member.run_dir.lock())
                    _set_up(member)
                    members.append(member)
            if errors.outcome is not None:
                outcomes[i] = errors.outcome
        try:
            if members:
                _train(members, show_progress)
        finally:
            remove_empty_dirs([m.run_dir.path for m in members] + created)
    for member in members:
        outcomes[member.index] = member.outcome
    return [o if o is not None else Outcome(RunStatus.FAILED, reason="population ended early") for o in outcomes]


def _set_up(member: Member) -> None:
    """What ``train.train`` does before its loop: build (seeded as when alone), resume, track."""
    from optrepro.optim import describe
    from optrepro.tracking import Tracker

    cfg, run_dir = member.cfg, member.run_dir
    member.task, member.probe = setup_run(cfg, run_dir)
    member.factors = describe(cfg.optimizer)
    say(start_line(cfg, member.task, run_dir, member.factors))
    checkpoint = resume(member.task, run_dir)
    member.tracker = Tracker(cfg, run_dir.path, config_hash(cfg), member.factors)
    member.state = LoopState.begin(checkpoint, member.task.ctx.device)


# ---------------------------------------------------------------------------------- the loop
def _train(members: list[Member], show_progress: bool) -> None:
    """Step every active member until all have ended; each member's bookkeeping as in ``train_loop``
    (its eval lines printed above the one bar the population shows)."""
    for member in members:
        if member.task.done():  # resumed from its last checkpoint, killed before its summary
            _end(member)
    live = [m for m in members if m.active]
    if not live:
        return
    population = Population([m.task for m in live])
    total = sum(m.task.total_steps - m.task.step for m in live)
    name = f"population of {len(live)} ({live[0].cfg.task.name})"
    with Progress(name, total, bar=show_progress) as progress:
        while any(m.active for m in live):
            for member in live:
                if member.active:
                    with _member_failures(member, progress.line):
                        member.batch = member.task.member_batch()
            active = torch.tensor([m.active for m in live])
            if not bool(active.any()):
                break
            stand_in = next((m.batch for m in live if m.batch is not None), None)  # for one that never had one
            try:
                results = population.step([stand_in if m.batch is None else m.batch for m in live], active)
            except Exception as exc:  # noqa: BLE001 - the shared step failed: every member it carried failed
                _fail_all([m for m in live if m.active], exc, progress.line)
                break
            for k, member in enumerate(live):
                if member.active:
                    with _member_failures(member, progress.line):
                        _after_step(member, progress, *results[k])
                    progress.update(1)
                    if not member.active or member.task.done():
                        _end(member, progress.line)


@contextlib.contextmanager
def _member_failures(member: Member, show: Callable[[str], None]) -> Iterator[None]:
    """The run's own exception policy (``train.failures_recorded``); a failed member ends now."""
    with failures_recorded(member.state, member.run_dir, stage="train"):
        yield
    if member.state.status == RunStatus.FAILED:
        _end(member, show)


def _fail_all(members: list[Member], exc: Exception, show: Callable[[str], None]) -> None:
    for member in members:
        with _member_failures(member, show):
            raise exc


def _after_step(member: Member, progress: Progress, loss: Any, stats: Any) -> None:
    task, state, run_dir = member.task, member.state, member.run_dir
    logs = task.member_end_step(loss, stats)
    state.add_loss(logs["loss"], task.step)
    evaluating = task.eval_due() or task.done()
    if check_divergence(state, task.step, evaluating):
        _end(member, progress.line)
        return
    if evaluating:
        metrics = task.evaluate()
        row = eval_row(task, state, metrics, member.probe)
        record_eval(task, state, row, metrics, run_dir, member.tracker, progress)
        save_checkpoint(task, state, run_dir)
    elif (every := int(member.cfg.checkpoint.every_steps)) and task.step % every == 0:
        save_checkpoint(task, state, run_dir)


def _end(member: Member, show: Callable[[str], None] = say) -> None:
    """Write the member's artifacts and summary (``train.finish``); it takes no further steps. Its
    last line goes through ``show`` (above the population's bar while there is one)."""
    if member.outcome is None:
        member.outcome = finish(member.cfg, member.task, member.state, member.run_dir, member.tracker,
                                member.factors, show=show)


def _index(tree: Any, k: int) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree[k]
    if isinstance(tree, dict):
        return {key: _index(value, k) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_index(value, k) for value in tree)
    return tree


def _stack(batches: list[Any]) -> Any:
    first = batches[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.stack(batches)
    if isinstance(first, dict):
        return {key: _stack([b[key] for b in batches]) for key in first}
    return type(first)(_stack(list(parts)) for parts in zip(*batches, strict=True))


class Population:
    """The shared part of a population step. For each phase of the step (``Task.member_phases``):
    every member's loss at once (``torch.func.vmap`` of the first member's ``member_phase_loss``; all
    members share the task config, so its function serves all), one backward into the stacked leaves
    of the phase's optimizer, one batched optimizer step.

    Buffers the step updates in place (batch norm's running statistics) are stacked like the
    parameters and the members' own buffers become views of them."""

    def __init__(self, tasks: list[Task]) -> None:
        from optrepro.optim.population import PopulationAdam

        template = tasks[0]
        self.optimizers = {name: PopulationAdam([getattr(task, name) for task in tasks])
                           for name in template.member_optimizers}
        self.phases = template.member_phases()
        self.buffers = [torch.stack([b.detach() for b in own]) for own in
                        zip(*(task.member_buffers() for task in tasks), strict=True)]
        for k, task in enumerate(tasks):
            for buffer, stacked in zip(task.member_buffers(), self.buffers, strict=True):
                buffer.data = stacked[k]
        self._losses = [functools.partial(template.member_phase_loss, i) for i in range(len(self.phases))]
        #: a task that clips its gradient to a global norm (``Task.member_clip_norm``) is clipped member by member
        self.clip_norm = float(getattr(template, "member_clip_norm", 0.0) or 0.0)

    @property
    def optimizer(self) -> Any:
        """The one stacked optimizer of a single-optimizer task."""
        (only,) = self.optimizers.values()
        return only

    def step(self, batches: list[Any], active: torch.Tensor) -> list[tuple[Any, Any]]:
        """Train every member with ``active[k]`` one step on its batch; per member, what its
        ``member_end_step`` takes: (loss, stats), or (losses, stats) per phase with several phases."""
        from torch.func import vmap

        stacked = _stack(batches)
        in_dims = (0, 0, None if stacked is None else 0)  # tasks without data (toy2d) have no batch to map
        frozen = (~active).nonzero().flatten()
        kept = [b[frozen].clone() for b in self.buffers] if frozen.numel() else []
        phase_losses, phase_stats = [], []
        for i, name in enumerate(self.phases):
            opt = self.optimizers[name]
            opt.zero_grad()
            params = [p if owner == name else p.detach()
                      for owner, stacked_opt in self.optimizers.items() for p in stacked_opt.parameters]
            losses, stats = vmap(self._losses[i], in_dims=in_dims, randomness="different")(params, self.buffers,
                                                                                          stacked)
            # a frozen member's loss may be NaN; the sum's gradient with respect to each member is its own
            losses.sum().backward()
            if self.clip_norm:
                opt.clip_member_grads(self.clip_norm)
            opt.before_member_steps(active)
            opt.step(active)
            opt.after_member_steps(active)
            if len(self.phases) > 1:
                stats = {**stats, "grad_norm": opt.grad_norms()}
            phase_losses.append(losses.detach())
            phase_stats.append(stats)
        for buffer, old in zip(self.buffers if kept else [], kept, strict=False):
            buffer[frozen] = old
        members = range(active.numel())
        if len(self.phases) == 1:
            return [(phase_losses[0][k], _index(phase_stats[0], k)) for k in members]
        return [([losses[k] for losses in phase_losses], [_index(stats, k) for stats in phase_stats])
                for k in members]


# ---------------------------------------------------------------------------------- groups
def plan_groups(cfgs: list[DictConfig], max_members: int) -> tuple[list[list[int]], list[tuple[int, str]]]:
    """Split job indices into populations and the jobs that run alone, each with its reason. A group
    larger than ``max_members`` is split into the fewest populations of (nearly) equal size, in order;
    a group of one runs alone (nothing to batch)."""
    groups: dict[str, list[int]] = {}
    alone: list[tuple[int, str]] = []
    for i, cfg in enumerate(cfgs):
        key, reason = group_key(cfg)
        if key is None:
            alone.append((i, reason))
        else:
            groups.setdefault(key, []).append(i)
    populations = []
    for indices in groups.values():
        n_chunks = -(-len(indices) // max_members)  # as few populations as the cap allows, of equal size
        bounds = [round(i * len(indices) / n_chunks) for i in range(n_chunks + 1)]
        for start, stop in itertools.pairwise(bounds):
            chunk = indices[start:stop]
            if len(chunk) == 1:
                alone.append((chunk[0], "no other job of the sweep batches with it"))
            else:
                populations.append(chunk)
    return populations, sorted(alone)
