"""Word-level language modeling with AWD-LSTM: the AdaBelief repo's PTB experiment
(PyTorch_Experiments/LSTM, derived from salesforce/awd-lstm-lm), and a CPU-sized demo corpus.

One ``train_step`` is one BPTT window of the training stream, as in the reference ``train()``:

* window length drawn per step: ``bptt`` w.p. 0.95 else ``bptt/2``, then ``N(that, 5)``, at least
  5 (from a ``torch.Generator`` kept in the checkpoint, so a resumed run draws the same lengths);
* the lr of every group is scaled by ``seq_len / bptt`` for that step only;
* the hidden state is carried over from the previous window and detached;
* loss = cross entropy + AR (alpha * mean square of the dropped last-layer output) + TAR
  (beta * mean square of the change of the raw last-layer output over time); grads clipped to
  ``clip`` (global norm).

An epoch is one pass over the stream. At its end (inside the step that finishes it, so the
checkpoint that follows the evaluation is consistent) the task evaluates valid and test
perplexity, applies SGD's switch to averaged SGD on the non-monotonic trigger, and divides the lr
at ``lr_milestones`` -- in the reference's order. ``evaluate`` only reports what that produced.

Perplexity = exp(mean cross entropy per target token, ``<eos>`` included) over the whole split,
run in windows of ``bptt`` with the state carried, batch ``eval_batch_size`` (valid) and
``test_batch_size`` (test); the reference used 10 and 1.

Model selection differs from the reference on purpose: the reference evaluated (and selected its
checkpoint, and triggered ASGD) on the *test* split. Here selection and the ASGD trigger use
valid; the primary metric ``test_ppl_at_best_valid`` is the test perplexity at the epoch with the
best valid perplexity so far, and ``best_test_ppl`` (the reference's selection on test) is
reported beside it. ``task.asgd_trigger_split=test`` makes the ASGD trigger watch the test loss as
the reference's did (main.py:314,326-328 of the AdaBelief repo's LSTM); the schema's default is valid.

Generalization gap: at each epoch end the same perplexity on a fixed held-in span of the training
stream (a contiguous block as long as the test split, ``task.heldin_size`` tokens otherwise; its
start is seed-independent; batch ``eval_batch_size``, no dropout) is logged as ``heldin_loss`` /
``heldin_ppl``; summary.json's ``gap`` is held-in minus test (negative = test worse than train).
``valid_ppl`` is the validation metric ``make tune`` selects on.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from optrepro.data.textcorpus import (
    Corpus,
    batchify,
    build_pydoc_corpus,
    get_batch,
    load_corpus,
    sha256_file,
    unigram_perplexity,
)
from optrepro.errors import UserError
from optrepro.models.awd_lstm import AWDLSTM, Hidden, detach_hidden
from optrepro.tasks.base import RunContext, Task, check_fits, derived_seed, seed_rank_stream, time_steps

CORPORA = ("ptb", "pydoc")


def load_task_corpus(data: DictConfig) -> Corpus:
    """The corpus ``task.data`` names: PTB files under ``root`` (downloaded on request) or the
    pydoc corpus, written into ``root`` on first use."""
    root = Path(str(data.root)).expanduser()
    if data.name == "ptb":
        from optrepro.data.ptb import PTB_URL, load_ptb

        return load_ptb(root, download=bool(data.get("download", False)), url=str(data.get("url") or PTB_URL))
    return load_corpus(build_pydoc_corpus(root, int(data.get("vocab_size", 2000))))


def corpus_provenance(data: DictConfig, corpus: Corpus) -> dict[str, Any]:
    """data.json of the corpus read: PTB checked against its published md5s, the pydoc corpus as generated."""
    from optrepro.data import provenance

    files = {s: Path(p) for s, p in corpus.files.items()}
    root = Path(str(data.root)).expanduser()
    if data.name == "ptb":
        return provenance.ptb(files, root)
    return provenance.generated("pydoc", files, root, f"PTB-style corpus built from Python {sys.version.split()[0]}'s "
                                "pydoc_data.topics")


def _truncate(stream: torch.Tensor, limit: Any) -> torch.Tensor:
    return stream if limit is None else stream[: int(limit)]


class LanguageModelTask(Task):
    population_refusal = ("variable-length BPTT windows (random per member) and the carried LSTM state do not "
                          "stack across members")
    metric = "test_ppl_at_best_valid"
    mode = "min"
    track_best = False  # the metric is already a selection (on valid); its minimum over epochs means nothing
    data_parallel = True
    state_attrs = ("step", "epochs_done", "pos", "model", "using_asgd", "asgd_epoch", "optimizer", "bptt_gen",
                   "hidden", "loss_sum", "loss_tokens", "valid_history", "history")
    gap_pairs = {"heldin_ppl": "test_ppl", "heldin_loss": "test_loss"}
    val_metric = "valid_ppl"

    # ------------------------------------------------------------------------ setup
    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        device = ctx.device
        corpus = load_task_corpus(cfg.data)
        self.data_provenance = corpus_provenance(cfg.data, corpus)
        self.corpus_info = {
            "files": corpus.files,
            "sha256": {s: sha256_file(Path(p)) for s, p in corpus.files.items()},
            "vocab_size": len(corpus.vocab),
            "tokens": {s: int(corpus.split(s).numel()) for s in ("train", "valid", "test")},
        }
        check_fits("data.train_tokens", cfg.data.get("train_tokens"), corpus.train.numel(), "training tokens")
        check_fits("data.eval_tokens", cfg.data.get("eval_tokens"), min(corpus.valid.numel(), corpus.test.numel()),
                   "tokens in the shorter of valid and test")
        train = _truncate(corpus.train, cfg.data.get("train_tokens"))
        valid = _truncate(corpus.valid, cfg.data.get("eval_tokens"))
        test = _truncate(corpus.test, cfg.data.get("eval_tokens"))
        ntoken = len(corpus.vocab)
        self.unigram = {"valid": unigram_perplexity(train, valid, ntoken),
                        "test": unigram_perplexity(train, test, ntoken)}
        self.batch_size, self.bptt = int(cfg.batch_size), int(cfg.bptt)
        self.eval_batch_size, self.test_batch_size = int(cfg.eval_batch_size), int(cfg.test_batch_size)
        streams = {"train": (train, self.batch_size, "batch_size"),
                   "valid": (valid, self.eval_batch_size, "eval_batch_size"),
                   "test": (test, self.test_batch_size, "test_batch_size")}
        batched = {}
        for split, (stream, size, key) in streams.items():
            try:
                batched[split] = batchify(stream, size).to(device)
            except ValueError:
                raise UserError(f"the {split} split ({stream.numel()} tokens) is too short for "
                                f"task.{key}={size}; lower it or raise task.data.*_tokens") from None
        self.train_data, self.valid_data, self.test_data = batched["train"], batched["valid"], batched["test"]
        self.heldin_data, self.n_heldin = self._heldin_stream(train, test.numel(), device)
        if self.train_data.size(0) < 3:
            raise UserError(f"the training stream has {self.train_data.size(0)} rows; lower task.batch_size")
        # data parallel: each rank trains on its columns of the stream (the same windows, its share of
        # the batch); evaluation runs whole on every rank (deterministic, so all ranks agree)
        self.dist = ctx.dist
        if self.batch_size % self.dist.world:
            raise UserError(f"task.batch_size={self.batch_size} (the global batch) must be divisible by the "
                            f"number of processes ({self.dist.world})")
        self.local_batch_size = self.batch_size // self.dist.world
        if self.dist.active:
            self.train_data = self.train_data[:, self.dist.rank :: self.dist.world].contiguous()

        m = cfg.model
        self.model = AWDLSTM(ntoken, emsize=int(m.emsize), nhid=int(m.nhid), nlayers=int(m.nlayers),
                             dropout=float(m.dropout), dropouth=float(m.dropouth), dropouti=float(m.dropouti),
                             dropoute=float(m.dropoute), wdrop=float(m.wdrop), tied=bool(m.get("tied", True)),
                             init_range=float(m.get("init_range", 0.1)),
                             freeze_weight_hh=bool(m.get("freeze_weight_hh", False))).to(device)
        # the tied matrix appears once; frozen hidden-to-hidden weights (task.model.freeze_weight_hh)
        # are left out, as the reference's optimizer never stepped them (they never had a grad)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        seed_rank_stream(ctx, "lm-rank")
        self.optimizer = ctx.make_optimizer(self.params)
        self.optimizer_name = str(ctx.cfg.optimizer.get("name"))
        self.initial_lr = float(ctx.cfg.optimizer.get("lr"))
        self.using_asgd = False

        self.variable_bptt = bool(cfg.get("variable_bptt", True))
        self.bptt_gen = torch.Generator().manual_seed(derived_seed("lm-bptt", ctx.seed))
        self.epochs = int(cfg.epochs)
        self.milestones = {int(e) for e in (cfg.get("lr_milestones") or [])}
        self.lr_gamma = float(cfg.get("lr_gamma", 0.1))
        self.clip = float(cfg.clip) if cfg.get("clip") else 0.0
        self.alpha, self.beta = float(cfg.get("alpha") or 0.0), float(cfg.get("beta") or 0.0)
        self.asgd_switch = bool(cfg.get("asgd", True))
        self.asgd_average_eval = bool(cfg.get("asgd_average_eval", False))
        self.nonmono = int(cfg.nonmono)

        # position and history (all in the checkpoint)
        self.epochs_done = 0
        self.pos = 0  # row of the training stream where the next window starts
        self.hidden: Hidden | None = None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # this epoch's CE * tokens
        self.loss_tokens = 0
        # the losses the non-monotonic trigger watches: valid (default) or test (task.asgd_trigger_split)
        self.trigger_split = str(cfg.get("asgd_trigger_split", "valid"))
        self.valid_history: list[float] = []
        self.history: list[dict[str, float]] = []  # per-epoch metrics
        self.asgd_epoch: int | None = None
        self._epoch_ended = False

    # ------------------------------------------------------------------------ training
    @property
    def rows_per_epoch(self) -> int:
        """Window starts run over rows 0 .. T-3 (the reference's ``while i < T - 1 - 1``)."""
        return self.train_data.size(0) - 2

    def draw_seq_len(self) -> int:
        """The reference's variable BPTT, from the task's own generator."""
        if not self.variable_bptt:
            return self.bptt
        base = self.bptt if float(torch.rand((), generator=self.bptt_gen)) < 0.95 else self.bptt / 2.0
        return max(5, int(base + 5.0 * float(torch.randn((), generator=self.bptt_gen))))

    def train_step(self) -> dict[str, Any]:
        self._epoch_ended = False
        seq_len = self.draw_seq_len()
        inputs, targets = get_batch(self.train_data, self.pos, seq_len)
        if self.hidden is None:
            self.hidden = self.model.init_hidden(self.local_batch_size)
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * seq_len / self.bptt
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            logits, hidden, raw_outputs, outputs = self.model(inputs, self.hidden)
            raw_loss = F.cross_entropy(logits.float(), targets.reshape(-1))
            loss = raw_loss
            if self.alpha:
                loss = loss + self.alpha * outputs[-1].float().pow(2).mean()
            if self.beta:
                last = raw_outputs[-1].float()
                loss = loss + self.beta * (last[1:] - last[:-1]).pow(2).mean()
        loss.backward()
        self.dist.average_gradients(self.params)  # equal shares: the mean of means is the global mean
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr
        self.hidden = detach_hidden(hidden)
        self.loss_sum += raw_loss.detach().double() * targets.numel()
        self.loss_tokens += targets.numel()
        self.pos += seq_len
        self.step += 1
        if self.pos >= self.rows_per_epoch:
            self._end_epoch()
        return {"loss": self.dist.mean(raw_loss.detach()), "seq_len": seq_len}

    def _end_epoch(self) -> None:
        """Evaluate, then the reference's epoch-end schedule: ASGD switch, lr division."""
        self.epochs_done += 1
        self.pos = 0
        self.hidden = None  # the reference starts every epoch from a zero state
        if self.dist.active:
            totals = torch.stack([self.loss_sum, torch.tensor(float(self.loss_tokens), dtype=torch.float64,
                                                              device=self.loss_sum.device)])
            total_loss, total_tokens = self.dist.all_reduce_sum(totals).tolist()
            train_loss = total_loss / max(total_tokens, 1.0)
        else:
            train_loss = float(self.loss_sum) / max(self.loss_tokens, 1)
        self.loss_sum.zero_()
        self.loss_tokens = 0
        valid_loss = self.split_loss("valid")
        test_loss = self.split_loss("test")
        trigger_loss = test_loss if self.trigger_split == "test" else valid_loss
        if (self.asgd_switch and self.optimizer_name == "sgd" and not self.using_asgd
                and len(self.valid_history) > self.nonmono
                and trigger_loss > min(self.valid_history[: -self.nonmono])):
            self._switch_to_asgd()
        self.valid_history.append(trigger_loss)
        if self.epochs_done in self.milestones:  # the next epoch (0-based index epochs_done) runs decayed
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.lr_gamma
        self.history.append({"epoch": float(self.epochs_done), "train_loss": train_loss,
                             "valid_loss": valid_loss, "test_loss": test_loss, **self.heldin_metrics()})
        self._epoch_ended = True

    def _switch_to_asgd(self) -> None:
        """As the reference: a fresh ``ASGD(lr=<the configured initial lr>, t0=0, lambd=0)`` with
        the same weight decay (averaging from the switch on; the reference then evaluated the raw,
        not the averaged, weights -- ``asgd_average_eval`` selects the averaged ones)."""
        weight_decay = float(self.ctx.cfg.optimizer.get("weight_decay") or 0.0)
        self.optimizer = torch.optim.ASGD(self.params, lr=self.initial_lr, t0=0, lambd=0.0,
                                          weight_decay=weight_decay)
        self.using_asgd = True
        self.asgd_epoch = self.epochs_done

    # ------------------------------------------------------------------------ evaluation
    def _heldin_stream(self, train: torch.Tensor, n_test: int,
                       device: torch.device) -> tuple[torch.Tensor | None, int]:
        """The held-in span of the training stream, batched like valid; (None, 0) when it is off."""
        size = self.cfg.get("heldin_size")
        want = min(train.numel(), n_test if size is None else int(size))
        if want == 0:
            return None, 0
        gen = torch.Generator().manual_seed(derived_seed("heldin", f"lm-{self.cfg.data.name}", train.numel()))
        start = int(torch.randint(0, train.numel() - want + 1, (1,), generator=gen))
        try:
            return batchify(train[start : start + want], self.eval_batch_size).to(device), want
        except ValueError:
            raise UserError(f"the held-in span ({want} tokens) is too short for task.eval_batch_size="
                            f"{self.eval_batch_size}; raise task.heldin_size or set it to 0") from None

    def heldin_metrics(self) -> dict[str, float]:
        if self.heldin_data is None:
            return {}
        loss = self.split_loss("heldin")
        return {"heldin_loss": loss, "heldin_ppl": math.exp(loss)}

    @torch.no_grad()
    def split_loss(self, split: str) -> float:
        """Mean cross entropy per target token of a whole split (no dropout, no global RNG)."""
        data = {"valid": self.valid_data, "test": self.test_data, "heldin": self.heldin_data}[split]
        assert data is not None
        batch = self.test_batch_size if split == "test" else self.eval_batch_size
        with self._averaged_weights():
            self.model.eval()
            hidden = self.model.init_hidden(batch)
            total = torch.zeros((), dtype=torch.float64, device=data.device)
            count = 0
            for i in range(0, data.size(0) - 1, self.bptt):
                inputs, targets = get_batch(data, i, self.bptt)
                with self.ctx.autocast():
                    logits, hidden, _, _ = self.model(inputs, hidden)
                total += F.cross_entropy(logits.float(), targets.reshape(-1), reduction="sum").double()
                count += targets.numel()
        return float(total) / count

    @contextlib.contextmanager
    def _averaged_weights(self) -> Iterator[None]:
        """Swap ASGD's running averages into the model for the duration, when asked to evaluate them."""
        if not (self.using_asgd and self.asgd_average_eval):
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p in self.params:
                ax = self.optimizer.state.get(p, {}).get("ax")
                if ax is not None:
                    p.copy_(ax)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, kept in zip(self.params, saved, strict=True):
                    p.copy_(kept)

    def selection(self) -> dict[str, Any]:
        """Best-valid selection (ours) and best-test selection (the reference's) over the epochs so far."""
        if not self.history:
            return {}
        best_valid = min(self.history, key=lambda r: (r["valid_loss"], r["epoch"]))
        best_test = min(self.history, key=lambda r: (r["test_loss"], r["epoch"]))
        return {
            "test_ppl_at_best_valid": math.exp(best_valid["test_loss"]),
            "best_valid_ppl": math.exp(best_valid["valid_loss"]),
            "best_valid_epoch": best_valid["epoch"],
            "best_test_ppl": math.exp(best_test["test_loss"]),
            "best_test_epoch": best_test["epoch"],
        }

    def evaluate(self) -> dict[str, float]:
        if self.history and self._epoch_ended:
            row = self.history[-1]
            out = {"valid_loss": row["valid_loss"], "valid_ppl": math.exp(row["valid_loss"]),
                   "test_loss": row["test_loss"], "test_ppl": math.exp(row["test_loss"]),
                   "train_ppl": math.exp(row["train_loss"]), **self.selection(),
                   **{k: row[k] for k in ("heldin_loss", "heldin_ppl") if k in row}}
        else:  # called between epoch ends: measure, change nothing
            valid_loss, test_loss = self.split_loss("valid"), self.split_loss("test")
            out = {"valid_loss": valid_loss, "valid_ppl": math.exp(valid_loss),
                   "test_loss": test_loss, "test_ppl": math.exp(test_loss), **self.selection(),
                   **self.heldin_metrics()}
        out["asgd"] = float(self.using_asgd)
        return {k: float(v) for k, v in out.items()}

    # ------------------------------------------------------------------------ loop interface
    def done(self) -> bool:
        return self.epochs_done >= self.epochs

    def eval_due(self) -> bool:
        return self._epoch_ended

    @property
    def total_steps(self) -> int:
        """Estimate: a window averages about ``bptt`` rows."""
        return self.epochs * math.ceil(self.rows_per_epoch / self.bptt)

    @property
    def epoch(self) -> float:
        return self.epochs_done + min(self.pos / self.rows_per_epoch, 1.0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["using_asgd"] and not self.using_asgd:
            self._switch_to_asgd()  # before the optimizer's state is loaded into it
        super().load_state_dict(state)
        if self.hidden is not None:  # stored as lists
            self.hidden = [(h, c) for h, c in self.hidden]
        self._epoch_ended = False

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        """Summary extras: both selections, ASGD switch epoch, the unigram yardstick, the corpus."""
        chosen = self.selection()
        lm = {**chosen, "asgd_epoch": self.asgd_epoch,
              "unigram_valid_ppl": self.unigram["valid"], "unigram_test_ppl": self.unigram["test"],
              "final_test_ppl": math.exp(self.history[-1]["test_loss"]) if self.history else None}
        if chosen:
            print(f"{self.cfg.name}: test ppl {chosen['test_ppl_at_best_valid']:.2f} at best valid "
                  f"(epoch {chosen['best_valid_epoch']:.0f}), best test ppl {chosen['best_test_ppl']:.2f}; "
                  f"unigram test ppl {self.unigram['test']:.2f}", file=sys.stderr, flush=True)
        return {"lm": lm, "corpus": self.corpus_info}


# ---------------------------------------------------------------------------- benchmark
def benchmark_tokens_per_second(quick: bool, device: str = "cpu") -> dict[str, Any]:
    """Training throughput of the language-model task at a CPU-sized configuration.

    ``train_step_tokens_per_s``: whole ``train_step`` calls (window slicing, variable BPTT, AR/TAR,
    clipping, lr scaling, Adam) on a synthetic PTB-format corpus. ``model_only_tokens_per_s``: the
    ceiling -- forward, cross entropy, backward and Adam step of the same model on pre-made
    tensors of the mean window size. Tokens = target tokens (window length x batch).
    """
    import tempfile

    from optrepro.data.ptb import write_fake_ptb

    size = {"vocab": 2000, "emsize": 200, "nhid": 400, "nlayers": 2, "batch_size": 20, "bptt": 70}
    warmup, steps = (1, 3) if quick else (5, 40)
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        # enough training text that the timed steps never reach an epoch end (no evaluation inside)
        lines = {"train": (warmup + steps + 2) * 220, "valid": 20, "test": 20}
        write_fake_ptb(Path(tmp), lines=lines, vocab_size=size["vocab"], seed=0)
        cfg = OmegaConf.create({
            "name": "lm_bench", "kind": "language_model",
            "data": {"name": "ptb", "root": tmp, "download": False},
            "model": {"emsize": size["emsize"], "nhid": size["nhid"], "nlayers": size["nlayers"],
                      "dropout": 0.4, "dropouth": 0.25, "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5},
            "batch_size": size["batch_size"], "eval_batch_size": 10, "test_batch_size": 1,
            "bptt": size["bptt"], "variable_bptt": True, "epochs": 1, "lr_milestones": [],
            "clip": 0.25, "alpha": 2.0, "beta": 1.0, "asgd": False, "nonmono": 5,
        })
        run_cfg = OmegaConf.create({"optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1.2e-6}})
        torch.manual_seed(0)
        ctx = RunContext(cfg=run_cfg, device=dev, precision="fp32", seed=0)
        task = LanguageModelTask(cfg, ctx)

    step_time, lengths = time_steps(lambda: int(task.train_step()["seq_len"]), steps, warmup, dev)
    tokens = sum(lengths) * size["batch_size"]
    mean_len = tokens // (steps * size["batch_size"])

    model, optimizer = task.model, task.optimizer
    gen = torch.Generator().manual_seed(1)
    ntoken = model.ntoken
    inputs = torch.randint(0, ntoken, (mean_len, size["batch_size"]), generator=gen).to(dev)
    targets = torch.randint(0, ntoken, (mean_len * size["batch_size"],), generator=gen).to(dev)
    hidden = model.init_hidden(size["batch_size"])
    model.train()

    def model_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, _, _, _ = model(inputs, hidden)
        F.cross_entropy(logits, targets).backward()
        optimizer.step()

    model_time, _ = time_steps(model_step, steps, warmup, dev)
    train_rate = tokens / step_time
    model_rate = mean_len * size["batch_size"] * steps / model_time
    return {
        "task": "language_model",
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "config": {**{k: v for k, v in size.items() if k != "vocab"}, "optimizer": "adam",
                   "vocab_size": model.ntoken},
        "steps": steps,
        "mean_seq_len": mean_len,
        "train_step_tokens_per_s": train_rate,
        "model_only_tokens_per_s": model_rate,
        "train_step_fraction_of_ceiling": train_rate / model_rate,
    }


__all__ = ["LanguageModelTask", "benchmark_tokens_per_second", "load_task_corpus"]
