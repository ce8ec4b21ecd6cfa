"""What every task provides to the training loop, and small shared pieces (batch order, RNG state).

A task owns its data, model(s), optimizer(s) and schedule, and keeps its own step/epoch counters,
so the loop in :mod:`optrepro.train` stays the same for a 2-D toy, a CIFAR net, an LSTM with
variable-length BPTT and a GAN with two optimizers. The loop only calls, in order::

    task = TaskClass(cfg.task, ctx)      # build data, model, optimizer(s)
    task.load_state_dict(...)            # when resuming
    while not task.done():
        logs = task.train_step()         # one optimizer step; logs["loss"] is a scalar
        if task.eval_due(): task.evaluate()
    task.finalize(run_dir)               # write artifacts (trajectories, sample grids)

A task declares its checkpointed state as ``state_attrs`` (attribute names); the one
``state_dict``/``load_state_dict`` here saves and restores modules, optimizers, schedulers, batch
orders, generators, tensors and plain values alike. Data parallel: a task with ``data_parallel =
True`` trains on its share of each global batch (``ctx.dist``, see :mod:`optrepro.distributed`);
the loop refuses the others under torchrun.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from optrepro.distributed import Dist
from optrepro.errors import UserError
from optrepro.optim import build_optimizer


@dataclass
class RunContext:
    """What a task needs from the run: the whole config, where to compute, how to make optimizers."""

    cfg: DictConfig
    device: torch.device
    precision: str  # "fp32" | "bf16" | "fp16"
    seed: int
    run_dir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: this process's place in a torchrun job (the loop sets it; one process of one otherwise)
    dist: Dist = field(default_factory=Dist)

    def make_optimizer(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        """The optimizer the config names (with the task's per-optimizer recipe already applied)."""
        return build_optimizer(params, self.cfg.optimizer)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward passes when the config asks for it (``precision=bf16|fp16``; fp32 by default)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


class Task(abc.ABC):
    """Base class of all tasks. Subclasses set ``metric``, ``mode`` and ``state_attrs``, say whether
    they train data-parallel, and implement the abstract methods."""

    #: name of the primary metric reported in summary.json (e.g. "test_acc")
    metric: str = "loss"
    #: "max" when larger is better, "min" otherwise
    mode: str = "min"
    #: False when the metric is itself a model selection (e.g. test ppl at the best valid ppl): then
    #: summary.json's ``best`` is null and the final value is the result
    track_best: bool = True
    #: True when the task splits every global batch across torchrun processes (``ctx.dist``);
    #: otherwise the loop refuses WORLD_SIZE > 1 with ``data_parallel_refusal`` as the reason
    data_parallel: bool = False
    data_parallel_refusal: str = ""
    #: the attributes that make up the checkpoint, in order; a leading "_" is dropped from the key
    state_attrs: tuple[str, ...] = ("step",)
    #: why this task cannot train as a member of a population (:mod:`optrepro.population`); empty when
    #: it can, i.e. when it implements the three ``member_*`` methods below
    population_refusal: str = "its training step is not split into member_batch / member_loss / member_end_step"
    #: what the task's loaders read (:mod:`optrepro.data.provenance`), set while building the data;
    #: None for a task whose data is drawn from its seed
    data_provenance: dict[str, Any] | None = None
    #: the generalization gap (README "Generalization gap"): {held-in key: the eval key it is compared
    #: with}, e.g. {"heldin_acc": "test_acc"}; the task's ``evaluate`` logs both (``heldin_metrics``) and
    #: summary.json's ``gap`` holds held-in minus eval at the last eval point. Empty: no held-in metric.
    gap_pairs: dict[str, str] = {}
    #: the pair the analysis compares across optimizers (default: the first of ``gap_pairs``)
    gap_metric: str | None = None
    #: the key of the metric on a validation split distinct from test (``make tune`` selects on it
    #: and nothing else); None when the task has no validation split
    val_metric: str | None = None

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        from optrepro.tasks.schemas import validate

        self.cfg = validate(cfg)  # the typed, checked copy (tasks/schemas.py); subclasses read self.cfg
        self.ctx = ctx
        self.step = 0  # optimizer steps done

    # --- the loop's interface --------------------------------------------------
    @abc.abstractmethod
    def train_step(self) -> dict[str, Any]:
        """Do one optimization step and advance ``self.step``; return at least {"loss": scalar}."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Evaluation metrics at the current step; must not touch the training RNG streams."""

    @abc.abstractmethod
    def done(self) -> bool:
        """True when training is over."""

    @abc.abstractmethod
    def eval_due(self) -> bool:
        """True when an evaluation should follow the step just taken (the last step included)."""

    @property
    @abc.abstractmethod
    def total_steps(self) -> int:
        """Number of steps of the whole run (an estimate where steps vary, e.g. variable BPTT)."""

    @property
    def epoch(self) -> float:
        """Epochs done, possibly fractional; tasks without epochs report steps."""
        return float(self.step)

    def current_lr(self) -> float | None:
        opt = getattr(self, "optimizer", None)
        return float(opt.param_groups[0]["lr"]) if opt is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (``state_attrs``): models, optimizers, counters, data position."""
        return {attr.lstrip("_"): export_state(getattr(self, attr)) for attr in self.state_attrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_attrs``; a key the checkpoint lacks keeps its freshly built value."""
        for attr in self.state_attrs:
            key = attr.lstrip("_")
            if key in state:
                setattr(self, attr, import_state(getattr(self, attr), state[key], self.ctx.device))

    def data_record(self) -> dict[str, Any]:
        """The run folder's data.json: ``data_provenance``, or a synthetic record for a task without files."""
        if self.data_provenance is not None:
            return self.data_provenance
        from optrepro.data import provenance

        return provenance.synthetic(str(self.cfg.get("name", "task")), "drawn by the task from its seed")

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        """Write task artifacts into the run folder; return extra entries for summary.json."""
        return {}

    def heldin_metrics(self) -> dict[str, float]:
        """The ``gap_pairs`` keys measured on the fixed held-in subset of the training set (no
        augmentation, eval mode, no training RNG touched); {} when the task has none or it is off.
        A task calls it inside its own ``evaluate`` so it sees the same weights as the test evaluation."""
        return {}

    def gap_summary(self, last_eval: dict[str, Any]) -> dict[str, Any] | None:
        """summary.json's ``gap``: held-in minus eval value of every pair present in ``last_eval``."""
        pairs = {h: float(last_eval[h]) - float(last_eval[t]) for h, t in self.gap_pairs.items()
                 if isinstance(last_eval.get(h), (int, float)) and isinstance(last_eval.get(t), (int, float))}
        if not pairs:
            return None
        metric = self.gap_metric or next(iter(self.gap_pairs))
        return {"sign": "heldin - test (train minus test)", "metric": metric,
                "test_metric": self.gap_pairs[metric], "value": pairs.get(metric), "pairs": pairs,
                "heldin_size": getattr(self, "n_heldin", None)}

    # --- population members (optrepro.population): one training step in three parts ----------
    #: the optimizers (attribute names) a population stacks, each an Adam-family preset
    member_optimizers: tuple[str, ...] = ("optimizer",)

    @classmethod
    def population_refusal_for(cls, cfg: DictConfig) -> str:
        """Why a run of this task config cannot join a population ("" when it can)."""
        return cls.population_refusal

    def member_phases(self) -> list[str]:
        """The updates of one training step, in order: which of ``member_optimizers`` each updates
        (a GAN: the critic's, n_critic times, then the generator's). One phase for most tasks."""
        return list(self.member_optimizers)

    def member_phase_loss(self, phase: int, params: list[torch.Tensor], buffers: list[torch.Tensor],
                          batch: Any) -> tuple[torch.Tensor, Any]:
        """The loss of ``phase``; ``params`` are all of ``member_optimizers``' parameters, in that
        order. With one phase: ``member_loss``."""
        return self.member_loss(params, buffers, batch)

    def member_batch(self) -> Any:
        """Start a step: set the schedule's lr, take this run's next batch (its own data order,
        augmentation and noise streams). A pytree of tensors, or None for tasks without data."""
        raise NotImplementedError

    def member_buffers(self) -> list[torch.Tensor]:
        """What the training step updates in place besides the parameters (batch norm's running
        statistics), in the order ``member_loss`` receives them; a population stacks them too."""
        return []

    def member_loss(self, params: list[torch.Tensor], buffers: list[torch.Tensor],
                    batch: Any) -> tuple[torch.Tensor, Any]:
        """The training loss of ``batch`` as a function of ``params`` (the optimizer's parameters, in its
        order) and ``buffers`` (``member_buffers``' order, updated in place), and per-step statistics for
        ``member_end_step``; vmapped over members."""
        raise NotImplementedError

    def member_end_step(self, loss: Any, stats: Any) -> dict[str, Any]:
        """Finish a step after the optimizer's update: counters and statistics; what ``train_step``
        returns. With several phases ``loss`` and ``stats`` are lists, one entry per phase, and each
        phase's stats carry ``grad_norm`` (the norm of the gradient that phase stepped on)."""
        raise NotImplementedError


class FixedStepsTask(Task):
    """A task trained for ``cfg.steps`` optimizer steps and evaluated every ``cfg.eval_every`` steps."""

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg
        self.steps = int(cfg.steps)
        self.eval_every = int(cfg.eval_every)

    def done(self) -> bool:
        return self.step >= self.steps

    def eval_due(self) -> bool:
        return self.step % self.eval_every == 0

    @property
    def total_steps(self) -> int:
        return self.steps


# ------------------------------------------------------------------------------- batch order
#: warm-up formulas of :func:`cosine_lr`: llm.c's ``peak (step+1)/warmup``, nanoGPT's ``peak (step+1)/(warmup+1)``
WARMUP_FORMULAS = ("llmc", "nanogpt")


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float,
              warmup_formula: str = "llmc") -> float:
    """The lr of the update that follows ``step`` finished updates: linear warm-up, then cosine to ``min_ratio``.

    Shared by every warm-up + cosine task (lm_pretrain, the vision fine-tune), so there is one copy.
    ``warmup_formula="nanogpt"`` divides by ``warmup + 1`` (nanoGPT's get_lr: the warm-up ends one step
    below the peak); the default ``"llmc"`` divides by ``warmup`` (llm.c's train_gpt2.py).
    """
    if step < warmup:
        if warmup_formula not in WARMUP_FORMULAS:
            raise ValueError(f"warmup_formula={warmup_formula!r}; expected one of {WARMUP_FORMULAS}")
        return peak * (step + 1) / (warmup + 1 if warmup_formula == "nanogpt" else warmup)
    if step >= total:
        return peak * min_ratio
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def heldin_indices(n_train: int, size: int | None, default: int, tag: str) -> torch.Tensor:
    """The fixed held-in subset of a training set of ``n_train`` examples: ``size`` of them (``default``,
    the test set's size, when None; capped at ``n_train``), sorted, the same for every seed and run."""
    want = min(n_train, default if size is None else int(size))
    gen = torch.Generator().manual_seed(derived_seed("heldin", tag, n_train))
    return torch.randperm(n_train, generator=gen)[:want].sort().values


def check_fits(key: str, value: Any, available: int, what: str) -> None:
    """``task.<key>`` asks for no more than the data has. A subset larger than its split would silently be
    all of it, a batch larger than the training set would give epochs of no batch: both refused in one line
    while the task is built, before the run folder is made."""
    if value is not None and int(value) > available:
        raise UserError(f"task.{key}={value} but there are only {available} {what}; use task.{key} <= {available}")


class BatchOrder:
    """Deterministic per-epoch shuffling whose position is part of the checkpoint.

    The permutation of epoch ``e`` depends only on (seed, e), so a run resumed mid-epoch sees
    exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True):
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"BatchOrder needs n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0
        self.index = 0  # batches already taken in the current epoch

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(derived_seed("batch-order", self.seed, epoch))
        return torch.randperm(self.n, generator=gen)

    def next_indices(self) -> torch.Tensor:
        """Indices of the next batch; rolls over to the next epoch after the last batch."""
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
        perm = self.permutation(self.epoch)
        start = self.index * self.batch_size
        self.index += 1
        return perm[start : start + self.batch_size]

    @property
    def epoch_finished(self) -> bool:
        return self.index >= self.batches_per_epoch

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.index / self.batches_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class GroupedBatchOrder(BatchOrder):
    """Batches each drawn from one group (mmdetection's ``GroupSampler``: images of one aspect-ratio
    group share a batch, so little of a padded batch is padding).

    Every epoch, from (seed, epoch) alone: each group's indices are shuffled and padded to a multiple
    of ``batch_size`` with indices of that group drawn at random (with replacement), the groups are
    concatenated in ascending group id, cut into batches, and the batch order is shuffled. An epoch
    is ``sum_g ceil(n_g / batch_size)`` batches and holds every index at least once. Position and
    resume: (epoch, index), as :class:`BatchOrder`.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int) -> None:
        super().__init__(len(groups), batch_size, seed, shuffle=True, drop_last=False)
        flags = torch.as_tensor(list(groups), dtype=torch.int64)
        #: the indices of each non-empty group, in ascending group id
        self.members = [torch.nonzero(flags == g).flatten() for g in torch.unique(flags).tolist()]

    @property
    def batches_per_epoch(self) -> int:
        return sum(math.ceil(len(m) / self.batch_size) for m in self.members)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's ``batches_per_epoch * batch_size`` indices, batch after batch."""
        gen = torch.Generator().manual_seed(derived_seed("grouped-batch-order", self.seed, epoch))
        padded = []
        for members in self.members:
            extra = -len(members) % self.batch_size
            padded.append(members[torch.randperm(len(members), generator=gen)])
            padded.append(members[torch.randint(len(members), (extra,), generator=gen)])
        batches = torch.cat(padded).view(-1, self.batch_size)
        return batches[torch.randperm(len(batches), generator=gen)].flatten()


# ------------------------------------------------------------------------------- state
def export_state(value: Any) -> Any:
    """A checkpointable copy of one state attribute (types ``torch.load(weights_only=True)`` reads)."""
    if hasattr(value, "state_dict"):  # modules, optimizers, schedulers, BatchOrder
        return value.state_dict()
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: export_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [export_state(v) for v in value]
    return value  # int, float, str, bool, None


def compact(value: Any) -> Any:
    """``value`` with every tensor that views a larger storage (a population member's slice of its
    stacked tensors) replaced by a copy of its own, so a checkpoint holds only what is its own."""
    if isinstance(value, torch.Tensor):
        own = value.numel() * value.element_size()
        return value.clone() if value.untyped_storage().nbytes() > own else value
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(compact(v) for v in value)
    return value


def import_state(current: Any, saved: Any, device: torch.device) -> Any:
    """The attribute's value after restoring ``saved`` into it: objects with state and tensors are
    restored in place (keeping their device and dtype), plain values are replaced (tensors inside
    them moved to ``device``)."""
    if hasattr(current, "load_state_dict"):
        current.load_state_dict(saved)
        return current
    if isinstance(current, torch.Generator):
        current.set_state(saved.cpu())
        return current
    if isinstance(current, torch.Tensor):
        with torch.no_grad():
            current.copy_(saved)
        return current
    return _plain_to(saved, device)


def _plain_to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, copy=True)
    if isinstance(value, dict):
        return {k: _plain_to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_to(v, device) for v in value]
    return value


# ------------------------------------------------------------------------------- timing
def time_steps(step: Callable[[], Any], steps: int, warmup: int = 0,
               device: torch.device | None = None) -> tuple[float, list[Any]]:
    """Time ``steps`` calls of ``step`` after ``warmup`` untimed ones, synchronizing CUDA around the
    timed ones (kernels are asynchronous). Returns (seconds, what the timed calls returned)."""

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    out = [step() for _ in range(steps)]
    sync()
    return time.perf_counter() - start, out


# ------------------------------------------------------------------------------- RNG state
def seed_rank_stream(ctx: RunContext, tag: str) -> None:
    """Under data parallel, give ranks > 0 their own global RNG stream (distinct dropout masks);
    rank 0 keeps the single-process stream."""
    if ctx.dist.rank > 0:
        torch.manual_seed(derived_seed(tag, ctx.seed, ctx.dist.rank))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All global RNG streams, as types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
