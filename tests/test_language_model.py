"""Language modeling: PTB-format data, AWD-LSTM pieces, the task's training/evaluation/resume."""

from __future__ import annotations

import hashlib
import io
import math
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import compose
from optrepro.config import resolve_interpolations
from optrepro.data.ptb import download_ptb, load_ptb, write_fake_ptb
from optrepro.data.textcorpus import (
    EOS,
    batchify,
    build_pydoc_corpus,
    get_batch,
    text_to_sentences,
    unigram_perplexity,
)
from optrepro.errors import DataMissingError
from optrepro.models.awd_lstm import AWDLSTM, LockedDropout, WeightDropLSTM
from optrepro.tasks import RunContext, build_task
from optrepro.tasks.base import rng_state, seed_everything, set_rng_state
from optrepro.tasks.language_model import LanguageModelTask, benchmark_tokens_per_second

PTB_TEXT = {
    "train": " the cat sat \n a dog ran N times \n",
    "valid": " the dog sat \n",
    "test": " a <unk> cat \n",
}


def write_ptb(root: Path, names: str = "ptb.{}.txt") -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, text in PTB_TEXT.items():
        (root / names.format(split)).write_text(text)


# ---------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("names", ["ptb.{}.txt", "{}.txt"])
def test_ptb_loader_reads_mikolov_format(tmp_path: Path, names: str) -> None:
    write_ptb(tmp_path, names)
    corpus = load_ptb(tmp_path)
    words = corpus.vocab.idx2word
    # <eos> closes every line; ids in order of first appearance, train -> valid -> test
    assert words == ["the", "cat", "sat", EOS, "a", "dog", "ran", "N", "times", "<unk>"]
    def text(ids: torch.Tensor) -> str:
        return " ".join(words[i] for i in ids.tolist())

    assert text(corpus.train) == "the cat sat <eos> a dog ran N times <eos>"
    assert text(corpus.valid) == "the dog sat <eos>"
    assert text(corpus.test) == "a <unk> cat <eos>"
    assert corpus.train.dtype == torch.long


def test_missing_ptb_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_ptb(tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "task.data.download=true" in message


def _archive(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"simple-examples/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_download_extracts_the_archive(tmp_path: Path) -> None:
    files = {f"ptb.{s}.txt": t for s, t in PTB_TEXT.items()}
    files["ptb.char.train.txt"] = "c a t\n"  # other archive content is not copied
    archive = tmp_path / "simple-examples.tgz"
    _archive(archive, files)
    md5 = {s: hashlib.md5(t.encode()).hexdigest() for s, t in PTB_TEXT.items()}
    root = tmp_path / "ptb"
    download_ptb(root, url=archive.as_uri(), md5=md5)
    assert sorted(p.name for p in root.iterdir()) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert (root / "ptb.valid.txt").read_text() == PTB_TEXT["valid"]
    # the task path: download=true on an empty folder fetches, then loads
    corpus = load_ptb(tmp_path / "fresh", download=True, url=archive.as_uri(), md5=None)
    assert len(corpus.vocab) == 10
    # a corrupt download is refused and leaves nothing behind
    with pytest.raises(DataMissingError, match="md5"):
        download_ptb(tmp_path / "bad", url=archive.as_uri(), md5={**md5, "test": "0" * 32})
    assert list((tmp_path / "bad").iterdir()) == []
    with pytest.raises(DataMissingError, match="could not download"):
        download_ptb(tmp_path / "net", url=(tmp_path / "missing.tgz").as_uri())


def test_batchify_and_get_batch() -> None:
    stream = torch.arange(23)
    data = batchify(stream, 4)  # 5 rows x 4 columns, the last 3 tokens dropped
    assert data.shape == (5, 4)
    assert data[:, 1].tolist() == [5, 6, 7, 8, 9]  # each column is a contiguous piece of the stream
    x, y = get_batch(data, 0, 3)
    assert x.shape == y.shape == (3, 4)
    assert torch.equal(y, data[1:4]) and torch.equal(x, data[0:3])  # targets: inputs shifted by one
    x, y = get_batch(data, 2, 70)  # the last window is cut short
    assert x.shape == (2, 4) and torch.equal(y[-1], data[-1])


def test_pydoc_corpus_is_ptb_style(tmp_path: Path) -> None:
    assert text_to_sentences('The "if" statement\n***\n\nIt has 2 parts. Code:\n\n   x = 1\n') == [
        ["the", "if", "statement"], ["it", "has", "N", "parts"]]
    paths = build_pydoc_corpus(tmp_path, vocab_size=500)
    stamp = paths["train"].stat().st_mtime_ns
    assert build_pydoc_corpus(tmp_path, vocab_size=500) == paths  # written once, then reused
    assert paths["train"].stat().st_mtime_ns == stamp
    text = paths["train"].read_text()
    tokens = text.split()
    assert "N" in tokens and all(t == "N" or t == t.lower() for t in tokens)  # lowercase, numbers -> N
    assert not any(c.isdigit() for c in text)
    from optrepro.data.textcorpus import load_corpus

    corpus = load_corpus(paths)
    assert len(corpus.vocab) <= 500 and 6 < corpus.train.numel() / corpus.valid.numel() < 11
    assert unigram_perplexity(corpus.train, corpus.test, len(corpus.vocab)) < len(corpus.vocab)


# ---------------------------------------------------------------------------------------- model
def test_weight_tying_shares_storage() -> None:
    model = AWDLSTM(50, emsize=8, nhid=12, nlayers=3)
    assert model.decoder.weight is model.encoder.weight
    assert model.decoder.weight.data_ptr() == model.encoder.weight.data_ptr()
    assert [rnn.lstm.hidden_size for rnn in model.rnns] == [12, 12, 8]  # the last layer outputs emsize
    assert sum(1 for p in model.parameters() if p is model.encoder.weight) == 1
    one = AWDLSTM(50, emsize=8, nhid=12, nlayers=1)
    assert one.rnns[0].lstm.input_size == one.rnns[0].lstm.hidden_size == 8


def test_locked_dropout_uses_one_mask_across_time() -> None:
    drop = LockedDropout().train()
    x = torch.ones(30, 4, 16)
    y = drop(x, 0.5)
    assert torch.equal(y, y[:1].expand_as(y))  # the same mask at every time step
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(x, 0.5), x)


def test_dropconnect_drops_the_raw_hidden_weight() -> None:
    torch.manual_seed(0)
    layer = WeightDropLSTM(6, 5, p=0.5).train()
    names = [n for n, _ in layer.named_parameters()]
    assert "lstm.weight_hh_l0" in names and len(names) == 4  # the raw weight is the optimizer's parameter
    x = torch.randn(7, 3, 6)
    hx = (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))
    torch.manual_seed(1)
    out, _ = layer(x, hx)
    # the same mask drawn by hand, applied to a copy of the LSTM
    torch.manual_seed(1)
    dropped = F.dropout(layer.lstm.weight_hh_l0.detach(), p=0.5, training=True)
    plain = torch.nn.LSTM(6, 5)
    plain.load_state_dict(layer.lstm.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.copy_(dropped)
    expected, _ = plain(x, hx)
    assert torch.allclose(out, expected, atol=1e-6)
    out.square().sum().backward()
    grad = layer.lstm.weight_hh_l0.grad
    assert grad is not None and torch.equal(grad == 0, dropped == 0)  # no gradient through dropped weights
    assert not torch.equal(layer.lstm.weight_hh_l0, plain.weight_hh_l0)  # the raw weight is untouched
    layer.eval()
    assert torch.equal(layer(x, hx)[0], layer.lstm(x, hx)[0])


# ---------------------------------------------------------------------------------------- task
def make_task(tmp_path: Path, overrides: list[str], optimizer: str = "adam") -> LanguageModelTask:
    """A LanguageModelTask from the real configs (fake PTB files written into tmp_path/ptb)."""
    root = tmp_path / "ptb"
    if not root.exists():
        write_fake_ptb(root, lines={"train": 300, "valid": 40, "test": 40}, vocab_size=40, seed=0)
    ov = ["task=ptb_lstm1", f"optimizer={optimizer}", "profile=smoke", f"task.data.root={root}",
          "task.data.train_tokens=null", "task.data.eval_tokens=null", *overrides]  # the fake corpus is smaller
    cfg, _ = compose(ov)
    cfg = resolve_interpolations(cfg)
    seed_everything(0)
    ctx = RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0)
    task = build_task(cfg.task, ctx)
    assert isinstance(task, LanguageModelTask)
    return task


def test_uniform_model_perplexity_equals_vocabulary_size(tmp_path: Path) -> None:
    task = make_task(tmp_path, [])
    with torch.no_grad():
        task.model.encoder.weight.zero_()  # tied: the decoder weight too, so every logit is 0
        task.model.decoder.bias.zero_()
    vocab = task.model.ntoken
    for split in ("valid", "test"):
        assert math.exp(task.split_loss(split)) == pytest.approx(vocab, rel=1e-5)


def test_variable_bptt_draws(tmp_path: Path) -> None:
    task = make_task(tmp_path, ["task.bptt=70"])
    draws = [task.draw_seq_len() for _ in range(2000)]
    assert min(draws) >= 5
    near_full = sum(55 <= d <= 85 for d in draws) / len(draws)
    near_half = sum(20 <= d <= 50 for d in draws) / len(draws)
    assert 0.9 < near_full < 0.99 and 0.01 < near_half < 0.1
    again = make_task(tmp_path, ["task.bptt=70"])
    assert [again.draw_seq_len() for _ in range(2000)] == draws


def test_training_steps_lower_the_loss_and_follow_the_schedule(tmp_path: Path) -> None:
    task = make_task(tmp_path, ["task.epochs=6", "task.lr_milestones=[5]", "task.bptt=20",
                                "optimizer.lr=0.01"])
    before = task.split_loss("valid")
    lrs, rows = [], []
    while not task.done():
        out = task.train_step()
        assert task.optimizer.param_groups[0]["lr"] in (0.01, pytest.approx(0.001))  # per-step scaling undone
        assert int(out["seq_len"]) >= 5
        if task.eval_due():
            rows.append(task.evaluate())
            lrs.append(task.optimizer.param_groups[0]["lr"])
    assert len(rows) == 6 and task.epoch == 6.0
    assert lrs[:4] == [0.01] * 4 and lrs[4:] == [pytest.approx(0.001)] * 2  # from 0-based epoch 5 (the 6th)
    assert rows[-1]["valid_loss"] < before - 0.3
    for row in rows:
        assert {"valid_ppl", "test_ppl", "valid_loss", "test_ppl_at_best_valid", "best_test_ppl"} <= set(row)
        assert row["valid_ppl"] == pytest.approx(math.exp(row["valid_loss"]))
    best = min(range(6), key=lambda i: rows[i]["valid_loss"])
    assert rows[-1]["test_ppl_at_best_valid"] == pytest.approx(rows[best]["test_ppl"])
    assert rows[-1]["best_test_ppl"] == pytest.approx(min(r["test_ppl"] for r in rows))


def test_sgd_switches_to_asgd_on_the_nonmonotonic_trigger(tmp_path: Path) -> None:
    task = make_task(tmp_path, ["task.nonmono=1", "task.epochs=3"], optimizer="sgd")
    assert task.optimizer.param_groups[0]["lr"] == 30.0 and task.optimizer.param_groups[0]["momentum"] == 0.0
    task.valid_history = [-1.0, -1.0]  # any real valid loss is worse than the one before the window
    while not task.eval_due():
        task.train_step()
    assert task.using_asgd and isinstance(task.optimizer, torch.optim.ASGD) and task.asgd_epoch == 1
    group = task.optimizer.param_groups[0]
    assert (group["lr"], group["t0"], group["lambd"], group["weight_decay"]) == (30.0, 0, 0.0, 1.2e-6)
    task.train_step()
    state = roundtrip(task.state_dict())
    fresh = make_task(tmp_path, ["task.nonmono=1", "task.epochs=3"], optimizer="sgd")
    fresh.load_state_dict(state)
    assert isinstance(fresh.optimizer, torch.optim.ASGD)
    first = next(iter(task.optimizer.state.values()))
    assert torch.equal(next(iter(fresh.optimizer.state.values()))["ax"], first["ax"])
    # evaluating the averaged weights swaps them in and back out (torch's ASGD copies the weights
    # into the average for two steps, then averages)
    task.train_step()
    task.train_step()
    weights = [p.detach().clone() for p in task.params]
    raw = task.split_loss("valid")
    task.asgd_average_eval = True
    averaged = task.split_loss("valid")
    assert averaged != raw
    assert all(torch.equal(p, w) for p, w in zip(task.params, weights, strict=True))


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through bytes, as the checkpoint goes (torch.load with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def textlm_smoke_task(tmp_path: Path) -> LanguageModelTask:
    ov = ["task=textlm_lstm1", "optimizer=adabelief", "profile=smoke", "task.epochs=2",
          f"task.data.root={tmp_path / 'pydoc'}"]
    cfg, _ = compose(ov)
    cfg = resolve_interpolations(cfg)
    seed_everything(0)
    task = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0))
    assert isinstance(task, LanguageModelTask)
    return task


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Uninterrupted vs. stopped mid-epoch, saved, rebuilt and continued: bitwise equal on CPU."""
    straight = textlm_smoke_task(tmp_path)
    while not straight.done():
        straight.train_step()
    total = straight.step
    assert straight.epochs_done == 2 and total > 6

    first = textlm_smoke_task(tmp_path)
    stop = total // 2 + 2  # in the second epoch, with hidden state and the epoch's loss sum in flight
    while first.step < stop:
        first.train_step()
    assert first.pos > 0 and first.epochs_done == 1
    saved, rng = roundtrip(first.state_dict()), rng_state()
    torch.manual_seed(1234)  # a relaunched process starts with different global RNG state
    second = textlm_smoke_task(tmp_path)
    second.load_state_dict(saved)
    set_rng_state(rng)
    while not second.done():
        second.train_step()
    assert second.step == total
    expected, got = straight.model.state_dict(), second.model.state_dict()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    assert second.history == straight.history
    assert second.evaluate() == straight.evaluate()


def test_benchmark_reports_throughput() -> None:
    out = benchmark_tokens_per_second(quick=True)
    assert out["train_step_tokens_per_s"] > 0 and out["model_only_tokens_per_s"] > 0
    assert out["device"] == "cpu" and out["config"]["nlayers"] == 2
