"""Machine translation: IWSLT14 de-en with ``transformer_iwslt_de_en``, and a synthetic demo task.

The recipe is fairseq's (the AdaBelief fork's ``run_adam.sh`` / ``run_adabelief.sh``):

* batches of at most ``max_tokens`` tokens (max(source, target) length incl. EOS times sentences,
  sentence counts rounded to a multiple of 8 where possible), built once from length-sorted
  sentences (ties in a seeded random order) and visited in a fresh seeded order every epoch;
* label-smoothed cross entropy (0.1) normalised per target token;
* inverse square-root schedule: linear warm-up from ``warmup_init_lr`` to the optimizer's lr over
  ``warmup_updates`` steps, then lr * sqrt(warmup / step); no gradient clipping (``clip_norm: 0``);
* the final model is the average of the last ``average_last`` epoch-end parameters (a running sum
  kept in the task state, so a resumed run averages the same snapshots);
* beam search (beam 5, length penalty 1, max length a * src + b) and BLEU on the tokenized,
  lowercased text after BPE removal (fairseq's number) plus detokenized sacreBLEU.

Batches are padded once at start-up and kept on the device, so a training step does no host work.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from optrepro.data.translation import Batch, Split, Vocab, collate, load_text, subset, text_provenance
from optrepro.errors import UserError
from optrepro.metrics.bleu import detok_bleu, remove_bpe, tokenized_bleu
from optrepro.models.transformer import Seq2SeqTransformer, TransformerConfig, beam_search, label_smoothed_nll
from optrepro.tasks.base import (
    BatchOrder,
    RunContext,
    Task,
    check_fits,
    derived_seed,
    seed_rank_stream,
    time_steps,
)


# ------------------------------------------------------------------------------- schedule
def inverse_sqrt_lr(step: int, peak: float, warmup: int, init: float) -> float:
    """fairseq ``inverse_sqrt``: the lr of the update that follows ``step`` finished updates."""
    if warmup > 0 and step < warmup:
        return init + step * (peak - init) / warmup
    return peak * math.sqrt(max(warmup, 1)) / math.sqrt(max(step, 1))


# ------------------------------------------------------------------------------- the task
class TranslationTask(Task):
    population_refusal = ("its token-budget batches differ in shape from member to member (each has its own "
                          "batch order), so members cannot be stacked")
    metric = "test_bleu"
    mode = "max"
    data_parallel = True
    state_attrs = ("step", "model", "optimizer", "order", "avg_sum", "avg_epochs", "final")

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        self.device = ctx.device
        text = load_text(cfg)
        self.data_provenance = text_provenance(cfg, {split: len(pair[0]) for split, pair in text.items()})
        for split in ("train", "test"):
            check_fits(f"data.{split}_subset", cfg.data.get(f"{split}_subset"), len(text[split][0]),
                       f"{split} sentence pairs")
        text["train"] = subset(text["train"], cfg.data.get("train_subset"))
        text["test"] = subset(text["test"], cfg.data.get("test_subset"))
        if cfg.data.joined_dictionary:  # fairseq-preprocess --joined-dictionary: counts over both sides
            self.src_vocab = self.tgt_vocab = Vocab.build([*text["train"][0], *text["train"][1]])
        else:
            self.src_vocab = Vocab.build(text["train"][0])
            self.tgt_vocab = Vocab.build(text["train"][1])
        self.data = {split: Split(*pair, self.src_vocab, self.tgt_vocab) for split, pair in text.items()}
        self.counts = {split: len(s) for split, s in self.data.items()}
        longest = max(int(max(s.src_lens.max(initial=0), s.tgt_lens.max(initial=0))) for s in self.data.values())
        if longest > int(cfg.model.max_positions):  # the model would refuse the first such batch mid-run
            raise UserError(f"task.model.max_positions={cfg.model.max_positions} but the longest sentence has "
                            f"{longest} tokens; use task.model.max_positions >= {longest}")

        self.max_tokens = int(cfg.max_tokens)
        self.dist = ctx.dist
        batches = self.data["train"].batches(self.max_tokens, derived_seed("mt-batches", ctx.seed), self.device)
        self.train_ntokens = [int(b[2].ne(Vocab.PAD).sum()) for b in batches]  # of the global batch
        # data parallel: each rank trains on its rows of every global batch (all of them alone)
        self.train_batches: list[Batch] = [
            batch if not self.dist.active else tuple(t[self.dist.rank :: self.dist.world] for t in batch)
            for batch in batches
        ]  # type: ignore[misc]
        self.last_batch = -1
        self.valid_batches = self.data["valid"].batches(self.max_tokens, None, self.device)
        self.order = BatchOrder(len(self.train_batches), 1, seed=ctx.seed, shuffle=True, drop_last=False)
        self.epochs = int(cfg.epochs)

        model_cfg = TransformerConfig(**OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
        model = Seq2SeqTransformer(len(self.src_vocab), len(self.tgt_vocab), Vocab.PAD, model_cfg)
        self.model = model.to(self.device)
        seed_rank_stream(ctx, "mt-rank")
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.peak_lr = float(self.optimizer.param_groups[0]["lr"])
        self.warmup = int(cfg.warmup_updates)
        self.warmup_init_lr = float(cfg.warmup_init_lr)
        self.schedule = str(cfg.get("lr_schedule", "inverse_sqrt"))
        if self.schedule not in ("inverse_sqrt", "constant"):
            raise UserError(f"task.lr_schedule must be inverse_sqrt or constant, got {self.schedule!r}")
        self._set_lr()
        self.smoothing = float(cfg.label_smoothing)
        self.clip_norm = float(cfg.clip_norm)
        self.average_last = int(cfg.average_last)
        self.avg_sum: dict[str, torch.Tensor] | None = None
        self.avg_epochs: list[int] = []
        self.final: dict[str, Any] = {}  # test metrics of the averaged model (kept in the checkpoint)
        self._test_hyps: list[str] | None = None

    # --- schedule --------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.peak_lr
        return inverse_sqrt_lr(step, self.peak_lr, self.warmup, self.warmup_init_lr)

    def _set_lr(self) -> None:
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # --- loop interface --------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.epochs * len(self.train_batches)

    @property
    def epoch(self) -> float:
        return self.order.epochs_done

    def done(self) -> bool:
        return self.step >= self.total_steps

    def eval_due(self) -> bool:
        if not self.order.epoch_finished:
            return False
        return (self.order.epoch + 1) % int(self.cfg.eval_every_epochs) == 0 or self.done()

    def train_step(self) -> dict[str, Any]:
        self.last_batch = int(self.order.next_indices()[0])
        source, prev, target = self.train_batches[self.last_batch]
        self._set_lr()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.dist.active:
            with self.ctx.autocast():
                logits = self.model(source, prev)
            loss_sum, _, ntokens = label_smoothed_nll(logits, target, self.smoothing, Vocab.PAD)
            loss = loss_sum / ntokens
            loss.backward()
        else:
            # this rank's share of the global loss (sum / global tokens), scaled by world because
            # average_gradients divides by it: the sum of the shares' gradients is the global gradient
            loss = torch.zeros((), device=self.device)
            if source.shape[0]:  # a global batch of fewer sentences than ranks leaves some empty
                with self.ctx.autocast():
                    logits = self.model(source, prev)
                loss_sum, _, _ = label_smoothed_nll(logits, target, self.smoothing, Vocab.PAD)
                loss = loss_sum / self.train_ntokens[self.last_batch]
                (loss * self.dist.world).backward()
            self.dist.average_gradients(self.model.parameters())
            loss = self.dist.all_reduce_sum(loss.detach().clone())
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        self.step += 1
        if self.order.epoch_finished:
            self._end_of_epoch(self.order.epoch + 1)
        return {"loss": loss.detach()}

    def _end_of_epoch(self, completed: int) -> None:
        """Add this epoch's parameters to the running sum when it is one of the last ``average_last``."""
        if completed <= self.epochs - self.average_last or completed in self.avg_epochs:
            return
        with torch.no_grad():
            params = {k: v.detach().float() for k, v in self.model.state_dict().items()}
            if self.avg_sum is None:
                self.avg_sum = {k: v.clone() for k, v in params.items()}
            else:
                for k, v in params.items():
                    self.avg_sum[k].add_(v)
        self.avg_epochs.append(completed)

    def averaged_model(self) -> Seq2SeqTransformer:
        """A copy of the model holding the average of the snapshots summed so far (or the model)."""
        model = copy.deepcopy(self.model)
        if self.avg_sum:
            n = len(self.avg_epochs)
            state = {k: (v / n).to(self.model.state_dict()[k].dtype) for k, v in self.avg_sum.items()}
            model.load_state_dict(state)
        return model

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def loss_on(self, model: Seq2SeqTransformer, batches: Sequence[Batch]) -> dict[str, float]:
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for source, prev, target in batches:
            with self.ctx.autocast():
                logits = model(source, prev)
            loss, nll, n = label_smoothed_nll(logits, target, self.smoothing, Vocab.PAD)
            totals += torch.stack([loss.double(), nll.double(), n.double()])
        loss, nll, n = totals.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "nll_loss": nll / n, "ppl": math.exp(min(nll / n, 50.0))}

    @torch.no_grad()
    def translate(self, model: Seq2SeqTransformer, sources: Sequence[Sequence[int]]) -> list[str]:
        """Beam-search translations (BPE text) of token-id sources, in input order."""
        model.eval()
        beam, out = int(self.cfg.beam), [""] * len(sources)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        size = int(self.cfg.eval_batch_size)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            src = collate([sources[i] for i in idx], [[Vocab.EOS]] * len(idx), Vocab.PAD, Vocab.EOS)[0]
            src = src.to(self.device)
            with self.ctx.autocast():
                memory, src_mask = model.encode(src)
            memory = memory.repeat_interleave(beam, dim=0)
            src_mask = src_mask.repeat_interleave(beam, dim=0)
            with self.ctx.autocast():
                caches = model.start_cache(memory)

            def step_fn(tokens: torch.Tensor, rows: torch.Tensor, src_mask: torch.Tensor = src_mask,
                        caches: list[dict[str, torch.Tensor]] = caches) -> torch.Tensor:
                model.reorder_cache(caches, rows)
                with self.ctx.autocast():
                    logits = model.decode_step(tokens[:, -1], tokens.shape[1] - 1, src_mask, caches)
                return F.log_softmax(logits.float(), dim=-1)

            # capped before int(): a huge max_len_a or max_len_b means "as long as the model allows"
            max_len = int(min(float(self.cfg.max_len_a) * src.shape[1] + float(self.cfg.max_len_b),
                              model.config.max_positions - 1))
            hyps = beam_search(step_fn, len(idx), beam, max_len, bos=Vocab.EOS, eos=Vocab.EOS, pad=Vocab.PAD,
                               device=self.device, lenpen=float(self.cfg.lenpen), forbid=(Vocab.BOS,))
            for i, h in zip(idx, hyps, strict=True):
                out[i] = self.tgt_vocab.decode(h)
        return out

    def bleu(self, hyps_bpe: Sequence[str], refs_bpe: Sequence[str]) -> dict[str, float]:
        hyps = [remove_bpe(h) for h in hyps_bpe]
        refs = [remove_bpe(r) for r in refs_bpe]
        return {"bleu": tokenized_bleu(hyps, refs),
                "bleu_detok": detok_bleu(hyps, refs, str(self.cfg.get("detok_lang", self.cfg.tgt_lang)))}

    def evaluate(self) -> dict[str, float]:
        start = time.perf_counter()
        metrics = {f"valid_{k}": v for k, v in self.loss_on(self.model, self.valid_batches).items()}
        n_bleu = self.cfg.get("valid_bleu_subset")
        valid = self.data["valid"]
        n_bleu = len(valid) if n_bleu is None else min(int(n_bleu), len(valid))
        if n_bleu > 0:
            hyps = self.translate(self.model, valid.src[:n_bleu])
            metrics["valid_bleu"] = self.bleu(hyps, valid.tgt_text[:n_bleu])["bleu"]
        if self.done():
            if not self.final:
                self.final = self.test_final()
            metrics.update({k: v for k, v in self.final.items() if isinstance(v, float)})
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics

    def test_final(self) -> dict[str, Any]:
        """Test BLEU of the averaged model (and its test loss)."""
        model = self.averaged_model()
        test = self.data["test"]
        test_batches = test.batches(self.max_tokens, None, self.device)
        hyps = self.translate(model, test.src)
        self._test_hyps = hyps
        scores = self.bleu(hyps, test.tgt_text)
        out: dict[str, Any] = {"test_bleu": scores["bleu"], "test_bleu_detok": scores["bleu_detok"]}
        out.update({f"test_{k}": v for k, v in self.loss_on(model, test_batches).items()})
        out["averaged_epochs"] = list(self.avg_epochs)
        return out

    # --- state -----------------------------------------------------------------------------
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._set_lr()

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        test = self.data["test"]
        copy_hyps = [remove_bpe(s) for s in test.src_text]
        copy_refs = [remove_bpe(r) for r in test.tgt_text]
        info: dict[str, Any] = {
            "data": dict(self.counts),
            "vocab": {"src": len(self.src_vocab), "tgt": len(self.tgt_vocab)},
            "params": sum(p.numel() for p in self.model.parameters()),
            "copy_baseline_bleu": tokenized_bleu(copy_hyps, copy_refs),
            **{k: v for k, v in self.final.items()},
        }
        artifacts = {}
        if self._test_hyps is not None:
            text = "".join(remove_bpe(h) + "\n" for h in self._test_hyps)
            (run_dir / "test_hypotheses.txt").write_text(text)
            artifacts["test_hypotheses"] = "test_hypotheses.txt"
        return {"translation": info, "copy_baseline_bleu": info["copy_baseline_bleu"],
                **({"artifacts": artifacts} if artifacts else {})}


# ------------------------------------------------------------------------------- benchmark
def benchmark_tokens_per_second(quick: bool) -> dict[str, Any]:
    """Target tokens per second of a full training step (batch pick, lr, forward, loss, backward,
    Adam step) of the synthetic_mt task's CPU-sized model, and the model-only ceiling (forward,
    loss and backward on the same pre-made batches, no optimizer)."""
    from optrepro.config import CONFIG_DIR, resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # the speed option where the GPU has it (the number is a throughput, not a paper result)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = resolve_precision("bf16" if bf16 else "fp32", device)
    task_cfg = OmegaConf.load(CONFIG_DIR / "task" / "synthetic_mt.yaml")
    task_cfg.pop("defaults", None)  # the family marker: recipes and profiles are not used here
    task_cfg.data.train_size = 2000 if quick else 20000
    opt_cfg = {"name": "adam", "lr": 5e-4, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 1e-4,
               "decoupled_weight_decay": True}
    cfg = OmegaConf.create({"optimizer": opt_cfg, "task": OmegaConf.to_container(task_cfg, resolve=True)})
    ctx = RunContext(cfg=cfg, device=device, precision=precision, seed=0)
    task = TranslationTask(cfg.task, ctx)
    warmup, steps = (3, 20) if quick else (10, 100)

    def train_step() -> int:
        task.train_step()
        return task.train_ntokens[task.last_batch]

    step_time, step_tokens = time_steps(train_step, steps, warmup, device)
    tokens = sum(step_tokens)

    batches = iter(task.train_batches[:warmup] + task.train_batches[:steps])
    model_tokens = sum(task.train_ntokens[:steps])
    task.model.train()

    def model_step() -> None:
        source, prev, target = next(batches)
        with ctx.autocast():
            logits = task.model(source, prev)
        loss_sum, _, n = label_smoothed_nll(logits, target, 0.1, Vocab.PAD)
        task.model.zero_grad(set_to_none=True)
        (loss_sum / n).backward()

    model_time, _ = time_steps(model_step, min(steps, len(task.train_batches)), warmup, device)
    return {
        "task": "synthetic_mt",
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "model": OmegaConf.to_container(task_cfg.model),
        "params": sum(p.numel() for p in task.model.parameters()),
        "max_tokens": task.max_tokens,
        "steps": steps,
        "train_step_tokens_per_s": tokens / step_time,
        "model_only_tokens_per_s": model_tokens / model_time,
        "step_ms": 1000 * step_time / steps,
    }
