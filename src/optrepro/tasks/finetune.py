"""Fine-tuning a pretrained checkpoint on a GLUE task (RTE, MRPC, CoLA, STS-B, SST-2).

Why: fine-tuning is where most practitioners meet an optimizer, and the RoBERTa GLUE recipe already runs
Adam at eps 1e-6, so an eps floor may matter most here. What it does, in the order a reader meets it:

* model: ``AutoModelForSequenceClassification.from_pretrained(task.model.name)`` (a hub name or a local
  folder; a new classifier head, 1 output for STS-B's regression, 2 otherwise) and its ``AutoTokenizer``;
  ``task.data.download=false`` reads both from the local HF cache only (never downloads).
* data (:mod:`optrepro.data.glue`): the train and dev splits from the hub or GLUE TSV files, tokenized once
  (truncated to ``task.max_seq_length``), padded per batch to the batch's longest. The dev split is the
  result (GLUE's test labels are not public), as RoBERTa and HF ``run_glue`` report it.
* batch order: :class:`~optrepro.tasks.base.BatchOrder` (seed, epoch) keeping the last partial batch, as
  both references do; dropout draws from the global RNG the loop checkpoints: a resumed run is exact.
  ``task.max_tokens`` (fairseq's ``--max-tokens``) caps each batch's padded size instead
  (:class:`TokenBudgetOrder`): at most ``batch_size`` sentences and ``max_tokens`` tokens (count x longest).
* optimizer: weight decay on matrices only (``task.decay_mask=matrices``: no decay on biases and norms, HF
  Trainer's rule, :func:`optrepro.models.param_kinds.weight_decay_groups`) or on everything (``all``: fairseq).
* schedule: linear warm-up to the optimizer's lr over ``warmup_steps`` (or ``warmup_ratio`` of the decay
  horizon), then linear decay to 0 at step ``decay_steps`` (null: the run's last step) -- fairseq's
  ``polynomial_decay`` (power 1, end lr 0) over its ``max_update``, which training may not reach (RoBERTa's
  RTE config: 2036 updates, 10 epochs are 1560), and HF's ``linear``; gradient clipping at ``clip_norm`` (0: off).
* metrics per epoch on dev: ``val_loss`` and the task's GLUE metrics (:mod:`optrepro.metrics.glue`), the
  primary one in ``metric``; the held-in subset of the training set as ``heldin_*`` (the generalization gap);
  summary.json says whether the run failed (its final primary metric at a constant predictor's level).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from optrepro.data import glue as glue_data
from optrepro.data import provenance
from optrepro.errors import DataMissingError, UserError
from optrepro.metrics.glue import LOGGED, PRIMARY, chance_level, failed, glue_metrics
from optrepro.tasks.base import BatchOrder, RunContext, Task, check_fits, derived_seed

DECAY_MASKS = ("matrices", "all")


class TokenBudgetOrder(BatchOrder):
    """fairseq's ``batch_by_size`` batching: the examples in one fixed seeded order (sentence_prediction's
    ``SortDataset(sort_order=[shuffle])``), cut greedily into batches of at most ``max_sentences`` examples
    whose padded size (count x longest) stays within ``max_tokens``; the batch list is fixed and shuffled
    per epoch from (seed, epoch), as fairseq's epoch iterator does. Position: (epoch, index), as BatchOrder."""

    def __init__(self, lengths: list[int], max_tokens: int, max_sentences: int, seed: int) -> None:
        super().__init__(len(lengths), max_sentences, seed, shuffle=True, drop_last=False)
        too_long = max(lengths)
        if too_long > max_tokens:
            raise UserError(f"task.max_tokens={max_tokens} is below the longest training example "
                            f"({too_long} tokens); raise it or lower task.max_seq_length")
        gen = torch.Generator().manual_seed(derived_seed("token-budget-order", seed))
        self.batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for i in torch.randperm(len(lengths), generator=gen).tolist():
            grown = max(longest, lengths[i])
            if batch and (len(batch) + 1 > max_sentences or (len(batch) + 1) * grown > max_tokens):
                self.batches.append(batch)
                batch, grown = [], lengths[i]
            batch.append(i)
            longest = grown
        self.batches.append(batch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)

    def next_indices(self) -> torch.Tensor:
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
        gen = torch.Generator().manual_seed(derived_seed("batch-order", self.seed, self.epoch))
        which = torch.randperm(len(self.batches), generator=gen)[self.index]
        self.index += 1
        return torch.tensor(self.batches[int(which)])


class GlueFinetuneTask(Task):
    mode = "max"
    state_attrs = ("step", "model", "optimizer", "order", "base_lrs", "_loss_sum", "_loss_count")
    population_refusal = "a pretrained HF model's forward is not split into member_batch / member_loss"

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        self.device = ctx.device
        self.glue = str(cfg.data.task)
        self.metric = f"val_{PRIMARY[self.glue]}"
        self.gap_pairs = {f"heldin_{m}": f"val_{m}" for m in LOGGED[self.glue]} | {"heldin_loss": "val_loss"}
        self.gap_metric = f"heldin_{PRIMARY[self.glue]}"
        self.regression = glue_data.num_labels(self.glue) == 1
        self.epochs, self.batch_size = int(cfg.epochs), int(cfg.batch_size)
        self.eval_batch_size = int(cfg.eval_batch_size)
        self.clip_norm = float(cfg.clip_norm)

        self.tokenizer, self.model = self._load_pretrained()
        self._build_data()
        check_fits("batch_size", self.batch_size, len(self.train), "training examples")
        seed = derived_seed("finetune-order", ctx.seed)
        if cfg.max_tokens is None:
            self.order = BatchOrder(len(self.train), self.batch_size, seed=seed, drop_last=False)
        else:  # fairseq's --max-tokens beside --batch-size
            lengths = [len(ex["input_ids"]) for ex in self.train]
            self.order = TokenBudgetOrder(lengths, int(cfg.max_tokens), self.batch_size, seed)
        self.decay_steps = int(cfg.decay_steps) if cfg.decay_steps is not None else self.total_steps
        self.warmup_steps = (int(cfg.warmup_steps) if cfg.warmup_steps is not None
                             else round(float(cfg.warmup_ratio) * self.decay_steps))

        from optrepro.models.param_kinds import weight_decay_groups

        weight_decay = float(ctx.cfg.optimizer.get("weight_decay") or 0.0)
        params: Any = (weight_decay_groups(self.model, weight_decay) if str(cfg.decay_mask) == "matrices"
                       else self.model.parameters())
        self.optimizer = ctx.make_optimizer(params)
        self.base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._last_eval: dict[str, float] = {}
        self._reset_interval()

    # --- model and data ------------------------------------------------------------------------
    def _load_pretrained(self) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_cfg, local_only = self.cfg.model, not bool(self.cfg.data.download)
        name = str(model_cfg.name)
        kw: dict[str, Any] = {"revision": model_cfg.revision, "local_files_only": local_only}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_cfg.tokenizer or name), **kw)
            model = AutoModelForSequenceClassification.from_pretrained(
                name, num_labels=glue_data.num_labels(self.glue), **kw)
        except (OSError, ValueError) as exc:  # ValueError: huggingface_hub's 'not a repo id' (a missing path)
            how = "task.data.download=true" if local_only else "a network connection or a local folder"
            raise DataMissingError(f"task.model.name={name}: no checkpoint there or in the HF cache "
                                   f"({str(exc).splitlines()[0][:120]}); it needs {how}") from None
        return tokenizer, model.to(self.device)

    def _build_data(self) -> None:
        data = self.cfg.data
        source, root = str(data.source), data.get("root")
        splits = {s: glue_data.load_split(self.glue, s, source, root, bool(data.download))
                  for s in ("train", "dev")}
        if data.train_subset is not None:
            check_fits("data.train_subset", data.train_subset, len(splits["train"].labels), "training examples")
        self.train = self._encode(splits["train"], data.train_subset, "train")
        self.dev = self._encode(splits["dev"], data.dev_subset, "dev")
        self.dev_labels = [ex["labels"] for ex in self.dev]
        heldin = len(self.dev) if self.cfg.heldin_size is None else int(self.cfg.heldin_size)
        self.heldin_index = self._subset_index(len(self.train), min(heldin, len(self.train)), "heldin")
        files = {s: sp.files for s, sp in splits.items()}
        self.data_provenance = provenance.glue(self.glue, source, root, files,
                                               {s: len(sp.labels) for s, sp in splits.items()})

    def _subset_index(self, n: int, size: int, tag: str) -> list[int]:
        """A fixed random subset (the same for every seed and optimizer), sorted."""
        gen = torch.Generator().manual_seed(derived_seed("finetune-subset", self.glue, tag))
        return sorted(torch.randperm(n, generator=gen)[:size].tolist())

    def _encode(self, split: glue_data.GlueSplit, subset: int | None, tag: str) -> list[dict[str, Any]]:
        n = len(split.labels)
        check_fits(f"data.{tag}_subset", subset, n, f"{tag} examples of {self.glue}")
        index = list(range(n)) if subset is None or int(subset) == n else self._subset_index(n, int(subset), tag)
        a = [split.text_a[i] for i in index]
        b = [split.text_b[i] for i in index] if split.text_b is not None else None
        enc = self.tokenizer(a, b, truncation=True, max_length=int(self.cfg.max_seq_length))
        keys = [k for k in enc if k in ("input_ids", "attention_mask", "token_type_ids")]
        return [{**{k: enc[k][j] for k in keys}, "labels": split.labels[i]} for j, i in enumerate(index)]

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [{k: v for k, v in ex.items() if k != "labels"} for ex in examples]
        batch = dict(self.tokenizer.pad(features, return_tensors="pt"))
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([ex["labels"] for ex in examples], dtype=dtype)
        return {k: v.to(self.device) for k, v in batch.items()}

    # --- the step -------------------------------------------------------------------------------
    def _set_lr(self) -> None:
        s, total, warm = self.step, self.decay_steps, self.warmup_steps
        factor = (s + 1) / warm if s < warm else max(0.0, (total - s) / max(total - warm, 1))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with self.ctx.autocast():
            logits = self.model(**inputs).logits
        logits = logits.float()
        if self.regression:
            return F.mse_loss(logits.squeeze(-1), batch["labels"]), logits.squeeze(-1)
        return F.cross_entropy(logits, batch["labels"]), logits

    def train_step(self) -> dict[str, Any]:
        self._set_lr()
        self.model.train()
        batch = self._collate([self.train[i] for i in self.order.next_indices().tolist()])
        loss, _ = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        self.step += 1
        self._loss_sum += float(loss.detach()) * len(batch["labels"])
        self._loss_count += len(batch["labels"])
        return {"loss": loss.detach()}

    # --- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, examples: list[dict[str, Any]], prefix: str) -> dict[str, float]:
        self.model.eval()
        preds: list[float] = []
        loss_sum = 0.0
        for s in range(0, len(examples), self.eval_batch_size):
            batch = self._collate(examples[s : s + self.eval_batch_size])
            loss, out = self._loss(batch)
            loss_sum += float(loss) * len(batch["labels"])
            preds += (out if self.regression else out.argmax(-1)).tolist()
        labels = [ex["labels"] for ex in examples]
        metrics = glue_metrics(self.glue, preds, labels)
        return {f"{prefix}_loss": loss_sum / max(len(examples), 1), **{f"{prefix}_{k}": v for k, v in metrics.items()}}

    def evaluate(self) -> dict[str, float]:
        train_time = time.perf_counter() - self._interval_start
        out = self._score(self.dev, "val")
        out.update(self.heldin_metrics())
        if self._loss_count:
            out["train_loss_epoch"] = self._loss_sum / self._loss_count
            out["examples_per_s"] = self._loss_count / max(train_time, 1e-9)
        self._last_eval = out
        self._reset_interval()
        return out

    def heldin_metrics(self) -> dict[str, float]:
        """The dev metrics on a fixed subset of the training set (``task.heldin_size``; 0: off)."""
        if not self.heldin_index:
            return {}
        return self._score([self.train[i] for i in self.heldin_index], "heldin")

    def _reset_interval(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        self._interval_start = time.perf_counter()

    # --- the loop's interface ---------------------------------------------------------------------
    def done(self) -> bool:
        return self.order.epochs_done >= self.epochs

    def eval_due(self) -> bool:
        return self.order.epoch_finished

    @property
    def total_steps(self) -> int:
        return self.epochs * self.order.batches_per_epoch

    @property
    def epoch(self) -> float:
        return float(self.order.epochs_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._interval_start = time.perf_counter()

    def finalize(self, run_dir: Any) -> dict[str, Any]:
        from optrepro.models.param_kinds import parameter_kinds

        last = self._last_eval if self.metric in self._last_eval else self.evaluate()
        final = last.get(self.metric)  # 0.0 is a value (a Matthews correlation at chance), not a missing one
        chance = chance_level(self.glue, self.dev_labels)
        kinds: dict[str, int] = {}
        named = dict(self.model.named_parameters())
        for name, kind in parameter_kinds(self.model).items():
            kinds[kind] = kinds.get(kind, 0) + named[name].numel()
        return {"chance_level": chance,  # the analysis' per-seed failure count (analysis/tables.py at_chance)
                "finetune": {"glue_task": self.glue, "model": str(self.cfg.model.name), "metric": self.metric,
                             "chance": chance, "failed": failed(final, chance), "final": final,
                             "train_examples": len(self.train), "dev_examples": len(self.dev),
                             "warmup_steps": self.warmup_steps, "parameters_by_kind": kinds}}


__all__ = ["DECAY_MASKS", "GlueFinetuneTask"]
