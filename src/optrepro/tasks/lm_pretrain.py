"""GPT-style language-model pretraining (the ``lm_pretrain`` family): where the eps factorial meets scale.

The recipe of the LLM-pretraining optimizer studies and of nanoGPT / llm.c's GPT-2 runs:

* a GPT-2 decoder (:mod:`optrepro.models.gpt`), size from ``task/model=<preset>`` (gpt_tiny ... gpt_350m);
* next-token cross entropy on contiguous windows of ``seq_len`` tokens read in order from memory-mapped
  uint16 shards (:mod:`optrepro.data.token_shards`, llm.c's layout and loader order): step ``k`` reads the
  ``batch_size * seq_len + 1`` tokens from the stream position, which then advances by
  ``batch_size * seq_len`` and wraps to 0 at the end (an epoch). The position is in the checkpoint.
  ``task.data.sampler=random`` draws each row's start uniformly instead (nanoGPT's get_batch, torch.randint),
  from a generator seeded by (run seed, step, micro-batch), so a resumed run draws the same windows;
* ``task.grad_accum_steps`` micro-batches of ``batch_size`` per optimizer step (nanoGPT: 40 x 12 x 1024),
  each loss divided by their number (the gradient of the mean), one clip and one step per accumulated step;
* weight decay on matrices only (``weight_decay_groups``: embeddings and projections decay, LayerNorm
  gains and biases do not), at the optimizer's ``weight_decay``;
* lr: linear warm-up over ``warmup_steps`` (``task.warmup_formula``: ``llmc`` is ``peak * (step + 1) / warmup``,
  ``nanogpt`` is ``peak * (step + 1) / (warmup + 1)``), then cosine decay to ``min_lr_ratio * peak`` at
  ``steps``; gradients clipped to global norm ``grad_clip``;
* metric: ``val_loss`` (mean cross entropy per token, nats) on a fixed held-out set -- the first
  ``eval_tokens`` of the val split in windows of ``seq_len`` -- and ``val_ppl = exp(val_loss)``.

Precision: ``precision=bf16`` autocasts the forward pass; the weights and the optimizer state stay fp32
(the GPU presets' setting, ``experiment=transformer_scale``). ``task.param_dtype=fp16|bf16`` stores the
weights themselves in that dtype (no fp32 master copy); then an optimizer whose state follows the weights'
dtype (torch's Adam/AdamW) holds fp16 state, and an eps that fp16 rounds to zero is refused before the run
starts (the AdaBelief tracker's fp16 report). Our Adam-family classes keep fp32 state for low-precision
weights.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from optrepro.data import token_shards as shards
from optrepro.errors import UserError
from optrepro.models.gpt import GPT, GPTConfig, next_token_loss
from optrepro.models.param_kinds import parameter_kinds, weight_decay_groups
from optrepro.tasks.base import RunContext, Task, check_fits, cosine_lr, derived_seed, time_steps

SOURCES = ("pydoc", "shards")
#: task.data.sampler: llm.c's sequential windows from a checkpointed position, or nanoGPT's random offsets
SAMPLERS = ("sequential", "random")
PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: training tokens the unigram yardstick is counted on (the whole split when shorter)
UNIGRAM_TOKENS = 20_000_000


def check_state_eps(optimizer: torch.optim.Optimizer) -> None:
    """Refuse (one line) an fp16 optimizer state in which the configured eps rounds to zero.

    The state dtype is the one the optimizer will allocate: fp32 for our Adam-family classes
    (``optim._common.state_dtype``), the weight's dtype for torch's optimizers."""
    from optrepro.optim._common import state_dtype
    from optrepro.optim.adam_family import AdamFamilyOptimizer

    ours = isinstance(optimizer, AdamFamilyOptimizer)
    for group in optimizer.param_groups:
        eps = group.get("eps")
        if not isinstance(eps, (int, float)) or eps <= 0:
            continue
        for p in group["params"]:
            dtype = state_dtype(p) if ours else p.dtype
            if dtype == torch.float16 and float(torch.tensor(float(eps), dtype=torch.float16)) == 0.0:
                raise UserError(f"optimizer.eps={eps:g} rounds to 0 in the fp16 optimizer state "
                                f"({type(optimizer).__name__} keeps its state in the weights' dtype, "
                                f"task.param_dtype=fp16); use task.param_dtype=fp32 or eps >= 6e-8")


class LMPretrainTask(Task):
    metric = "val_loss"
    mode = "min"
    population_refusal = ""
    data_parallel_refusal = "runs on one device (the GPU presets fit one H100/H200); no data parallel yet"
    state_attrs = ("step", "model", "optimizer", "pos", "epochs_done", "tokens_seen")
    #: held-in (training) metrics beside the val ones: the generalization gap is held-in minus val
    gap_pairs = {"heldin_loss": "val_loss", "heldin_ppl": "val_ppl"}
    gap_metric = "heldin_loss"

    @classmethod
    def population_refusal_for(cls, cfg: DictConfig) -> str:
        if int(cfg.get("grad_accum_steps", 1)) > 1:
            return "a population member takes one micro-batch per step; set task.grad_accum_steps=1"
        return cls.population_refusal

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        self.device = ctx.device
        self.batch_size, self.seq_len = int(cfg.batch_size), int(cfg.seq_len)
        self.eval_batch_size = int(cfg.eval_batch_size)
        self.steps, self.eval_every = int(cfg.steps), int(cfg.eval_every)
        self.warmup, self.min_lr_ratio = int(cfg.warmup_steps), float(cfg.min_lr_ratio)
        self.warmup_formula = str(cfg.warmup_formula)
        self.grad_accum_steps = int(cfg.grad_accum_steps)
        self.sampler, self.seed = str(cfg.data.sampler), int(ctx.seed)
        self.grad_clip = float(cfg.grad_clip)
        self.member_clip_norm = self.grad_clip  # a population clips each member's gradient the same way

        self.encoding_name = str(cfg.data.encoding)
        root, prefix, meta = self._prepare(cfg.data)
        self.meta = meta
        train = shards.TokenStream(shards.shard_paths(root, prefix, "train"))
        val = shards.TokenStream(shards.shard_paths(root, prefix, "val"))
        self.data_provenance = self._provenance(cfg.data, root, prefix, meta)
        window = self.batch_size * self.seq_len + 1
        check_fits("data.train_tokens", cfg.data.train_tokens, len(train), "training tokens")
        self.train_len = int(cfg.data.train_tokens or len(train))
        if self.train_len < window:
            raise UserError(f"the training split has {self.train_len} tokens, fewer than one batch "
                            f"(task.batch_size * task.seq_len + 1 = {window})")
        check_fits("data.eval_tokens", cfg.data.eval_tokens, len(val) - 1, "val tokens (one is the last target)")
        self.train, self.val = train, val
        eval_rows = int(cfg.data.eval_tokens) // self.seq_len
        if eval_rows < 1:
            raise UserError(f"task.data.eval_tokens={cfg.data.eval_tokens} is shorter than one window "
                            f"(task.seq_len={self.seq_len})")
        held_out = val.window(0, eval_rows * self.seq_len + 1)
        self.eval_x = torch.from_numpy(held_out[:-1].reshape(eval_rows, self.seq_len)).to(self.device)
        self.eval_y = torch.from_numpy(held_out[1:].reshape(eval_rows, self.seq_len)).to(self.device)
        self.unigram_val_loss = self._unigram(held_out[1:])
        # held-in set (the generalization gap: heldin_loss - val_loss): the first tokens of the training stream,
        # the first windows every run trains on, as many as the val set unless task.heldin_size says (0: off)
        size = int(cfg.data.eval_tokens) if cfg.heldin_size is None else int(cfg.heldin_size)
        heldin_rows = min(size, self.train_len - 1) // self.seq_len
        self.heldin_x = self.heldin_y = None
        if heldin_rows:
            seen = train.window(0, heldin_rows * self.seq_len + 1)
            self.heldin_x = torch.from_numpy(seen[:-1].reshape(heldin_rows, self.seq_len)).to(self.device)
            self.heldin_y = torch.from_numpy(seen[1:].reshape(heldin_rows, self.seq_len)).to(self.device)

        m = cfg.model
        n_vocab = int(meta["n_vocab"])
        multiple = int(m.vocab_multiple)
        vocab = -(-n_vocab // multiple) * multiple  # padded for fast matmuls (nanoGPT: 50257 -> 50304)
        if self.seq_len > int(m.block_size):
            raise UserError(f"task.seq_len={self.seq_len} exceeds task.model.block_size={m.block_size}")
        gcfg = GPTConfig(vocab_size=vocab, block_size=int(m.block_size), n_layer=int(m.n_layer),
                         n_head=int(m.n_head), n_embd=int(m.n_embd), dropout=float(m.dropout), bias=bool(m.bias))
        self.model = GPT(gcfg).to(self.device, dtype=PARAM_DTYPES[str(cfg.param_dtype)])
        self.n_params = self.model.num_parameters()
        kinds = parameter_kinds(self.model)
        #: id(parameter) -> kind, read by the optimizer diagnostics (opt/<metric>/<kind>)
        self.param_kinds = {id(p): kinds[n] for n, p in self.model.named_parameters()}
        weight_decay = float(ctx.cfg.optimizer.get("weight_decay") or 0.0)
        if str(cfg.weight_decay_on) == "matrices":
            params: Any = weight_decay_groups(self.model, weight_decay)
        else:
            params = list(self.model.parameters())
        self.optimizer = ctx.make_optimizer(params)
        check_state_eps(self.optimizer)
        name_of = {id(p): n for n, p in self.model.named_parameters()}
        #: names in the optimizer's order (its groups in turn): the order population members receive them
        self._param_names = [name_of[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        self.peak_lr = float(self.optimizer.param_groups[0]["lr"])
        self._set_lr()
        self.pos = 0  # stream position of the next window
        self.epochs_done = 0
        self.tokens_seen = 0

    # --- data --------------------------------------------------------------------------
    def _prepare(self, data: DictConfig) -> tuple[Path, str, dict[str, Any]]:
        root = Path(str(data.root)).expanduser()
        if data.name == "pydoc":
            return root, f"pydoc_{self.encoding_name}", shards.prepare_pydoc(root, self.encoding_name,
                                                                              int(data.val_tokens))
        prefix = str(data.prefix)
        meta = shards.read_meta(root, prefix)
        if meta is None:
            found = shards.shard_paths(root, prefix, "train")
            if not found:
                raise UserError(f"no token shards {prefix}_train_*.bin in {root}; prepare them with "
                                f"python -m optrepro.data.token_shards hf --out {root} (README, LM pretraining)")
            meta = {"encoding": self.encoding_name, "n_vocab": int(data.n_vocab or 50257),
                    "source": {"builder": "unknown (no meta.json: shards written elsewhere, e.g. by llm.c)"}}
        if meta["encoding"] != self.encoding_name:
            raise UserError(f"the shards in {root} were written with encoding {meta['encoding']}, but "
                            f"task.data.encoding={self.encoding_name}")
        return root, prefix, meta

    def _provenance(self, data: DictConfig, root: Path, prefix: str, meta: dict[str, Any]) -> dict[str, Any]:
        from optrepro.data import provenance

        paths = shards.shard_paths(root, prefix, "train") + shards.shard_paths(root, prefix, "val")
        extra = {"encoding": self.encoding_name, "tokens": meta.get("tokens"), "source": meta.get("source")}
        if data.name == "pydoc":
            files = [provenance.file_entry(p, root) for p in paths]
            how = (f"Python {meta['source']['python']}'s pydoc_data.topics tokenized with {self.encoding_name} "
                   "into llm.c-layout uint16 shards")
            return provenance.record("pydoc_tokens", "generated", False, "generated",
                                     f"pydoc_tokens: generated ({how})", root, files, **extra)
        # shards of a published corpus: no reference checksum exists for tokenized shards, so
        # recorded by a path/size manifest (hashing billions of tokens every run would take minutes)
        name = str(meta.get("source", {}).get("dataset") or prefix)
        return provenance.record(name, "real", False, "unverified",
                                 f"{name}: unverified (tokenized shards, {self.encoding_name}; no reference checksum)",
                                 root, [provenance.manifest(paths, root)], **extra)

    def _unigram(self, targets: np.ndarray) -> float:
        """Cross entropy (nats/token) on the held-out targets of the unigram model of the training tokens
        (add-one smoothing): the yardstick a language model must beat."""
        counted = self.train.window(0, min(self.train_len, UNIGRAM_TOKENS))
        counts = np.bincount(counted, minlength=int(self.meta["n_vocab"])).astype(np.float64) + 1.0
        logp = np.log(counts) - np.log(counts.sum())
        return float(-logp[targets].mean())

    def _next_batch(self, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampler == "random":
            return self._random_batch(micro)
        n = self.batch_size * self.seq_len
        if self.pos + n + 1 > self.train_len:
            self.pos, self.epochs_done = 0, self.epochs_done + 1
        tokens = torch.from_numpy(self.train.window(self.pos, n + 1))
        self.pos += n
        if self.device.type == "cuda":
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        return tokens[:-1].view(self.batch_size, self.seq_len), tokens[1:].view(self.batch_size, self.seq_len)

    def _random_batch(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """nanoGPT's get_batch: ``batch_size`` windows at uniform starts in [0, train_len - seq_len), drawn
        from a generator of (seed, step, micro) alone, so resume needs no sampler state."""
        gen = torch.Generator().manual_seed(derived_seed("lm-random-batch", self.seed, self.step, micro))
        starts = torch.randint(self.train_len - self.seq_len, (self.batch_size,), generator=gen)
        rows = np.stack([self.train.window(int(i), self.seq_len + 1) for i in starts])
        tokens = torch.from_numpy(rows)
        if self.device.type == "cuda":
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        return tokens[:, :-1], tokens[:, 1:]

    # --- training ----------------------------------------------------------------------
    def _set_lr(self) -> None:
        lr = cosine_lr(self.step, self.peak_lr, self.warmup, self.steps, self.min_lr_ratio, self.warmup_formula)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def member_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._set_lr()
        self.model.train()
        return self._next_batch()

    def member_loss(self, params: list[torch.Tensor], buffers: list[torch.Tensor],
                    batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        from torch.func import functional_call

        x, y = batch
        named = dict(zip(self._param_names, params, strict=True))  # the tied head follows the embedding
        with self.ctx.autocast():
            logits = functional_call(self.model, named, (x,))
        return next_token_loss(logits, y), {}

    def member_end_step(self, loss: torch.Tensor, stats: dict[str, Any]) -> dict[str, Any]:
        self.step += 1
        self.tokens_seen += self.batch_size * self.seq_len
        return {"loss": loss.detach()}

    def train_step(self) -> dict[str, Any]:
        self._set_lr()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum_steps):
            x, y = self._next_batch(micro)
            with self.ctx.autocast():
                logits = self.model(x)
            part = next_token_loss(logits, y) / self.grad_accum_steps  # the gradient of the mean
            part.backward()
            loss += part.detach()
            self.tokens_seen += x.numel()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip) if self.grad_clip else None
        self.optimizer.step()
        self.step += 1
        out: dict[str, Any] = {"loss": loss}
        if norm is not None:
            out["grad_norm"] = norm.detach()
        return out

    @torch.no_grad()
    def split_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean next-token cross entropy over fixed windows (eval mode, no RNG touched)."""
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, x.size(0), self.eval_batch_size):
            with self.ctx.autocast():
                logits = self.model(x[i : i + self.eval_batch_size])
            total += next_token_loss(logits, y[i : i + self.eval_batch_size], reduction="sum").double()
        self.model.train()
        return float(total) / y.numel()

    def evaluate(self) -> dict[str, float]:
        val_loss = self.split_loss(self.eval_x, self.eval_y)
        out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)), "tokens": float(self.tokens_seen)}
        if self.heldin_x is not None:
            heldin = self.split_loss(self.heldin_x, self.heldin_y)
            out.update({"heldin_loss": heldin, "heldin_ppl": math.exp(min(heldin, 700.0))})
        return out

    # --- loop interface ----------------------------------------------------------------
    def done(self) -> bool:
        return self.step >= self.steps

    def eval_due(self) -> bool:
        return self.step % self.eval_every == 0 or self.done()

    @property
    def total_steps(self) -> int:
        return self.steps

    @property
    def epoch(self) -> float:
        if self.sampler == "random":
            return self.tokens_seen / self.train_len
        return self.epochs_done + self.pos / self.train_len

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        info = {"unigram_val_loss": self.unigram_val_loss, "params": self.n_params,
                "non_embedding_params": self.model.num_parameters(non_embedding=True),
                "tokens_seen": self.tokens_seen, "encoding": self.encoding_name,
                "vocab_size": self.model.cfg.vocab_size, "eval_tokens": int(self.eval_y.numel())}
        print(f"{self.cfg.name}: {self.n_params / 1e6:.2f}M params, {self.tokens_seen} tokens; unigram val loss "
              f"{self.unigram_val_loss:.3f}", file=sys.stderr, flush=True)
        return {"lm_pretrain": info}


# ---------------------------------------------------------------------------- benchmark
def benchmark_step_seconds(task: LMPretrainTask, steps: int = 5, warmup: int = 2) -> float:
    """Seconds per training step of a built task (the device-hour estimates time the same way)."""
    seconds, _ = time_steps(task.train_step, steps, warmup, task.device)
    return seconds / steps


__all__ = ["LMPretrainTask", "check_state_eps", "cosine_lr"]
