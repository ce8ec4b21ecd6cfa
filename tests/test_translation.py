"""Translation task: IWSLT14 preparation, batching, Transformer masks, beam search, BLEU, training, resume."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from optrepro.data import iwslt14
from optrepro.data.synthetic_mt import Lexicon, make_splits, translate
from optrepro.metrics.bleu import detok_bleu, remove_bpe, tokenized_bleu
from optrepro.models.transformer import Seq2SeqTransformer, TransformerConfig, beam_search, label_smoothed_nll

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- IWSLT14 preparation
def _fake_corpus() -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    words_de = ["Haus", "Baum", "Katze", "Hund", "groß", "klein", "schnell", "rot", "Auto", "Wasser"]
    words_en = ["house", "tree", "cat", "dog", "big", "small", "fast", "red", "car", "water"]
    train = []
    for i in range(60):
        n = 3 + i % 5
        de = " ".join(words_de[(i + j) % 10] for j in range(n))
        en = " ".join(words_en[(i + j) % 10] for j in range(n))
        train.append((f"Das {de}, sagt Anna!", f"The {en}, says Anna!"))
    train[5] = ("Ein Satz mit vielen vielen vielen vielen vielen Wörtern hier", "Short")  # ratio > 1.5
    train[9] = ("", "")  # empty
    train[11] = (" ".join(["wort"] * 176), " ".join(["word"] * 176))  # longer than 175
    train[12] = ("<url>http://example.com/a</url>", "<url>http://example.com/a</url>")  # dropped
    test = {name: [(f"Satz {k} aus {name[-7:]}.", f"Sentence {k} from {name[-7:]}.") for k in range(k0)]
            for name, k0 in zip(iwslt14.TEST_SETS, (2, 3, 1, 2, 4), strict=True)}
    test["IWSLT14.TED.tst2010"] = [("Das ist’s.", "That’s it.")]
    return train, test


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("iwslt")
    train, test = _fake_corpus()
    raw = iwslt14.write_fake_raw(root / "de-en.tgz", train, test, extra_xml=["IWSLT14.TED.dev2011"])
    counts = iwslt14.prepare(raw, root / "prep", merges=40, expected=None, log=lambda _: None)
    return root / "prep", counts


def test_prepare_gives_the_fairseq_splits(prepared: tuple[Path, dict[str, int]]) -> None:
    folder, counts = prepared
    # 60 pairs - 4 removed (ratio, empty, too long, <url>) + 3 kept header lines (speaker, title, description)
    kept = 60 - 4 + 3
    assert counts == {"train": kept - kept // 23, "valid": kept // 23, "test": 2 + 3 + 1 + 2 + 4}
    for split, n in counts.items():
        src, tgt = iwslt14.load_prepared(folder, split)
        assert len(src) == len(tgt) == n
    # valid = cleaned lines 23 and 46; the header comes first: speaker, title, description, then train pairs
    train, _ = _fake_corpus()
    survivors = [p for i, p in enumerate(train) if i not in (5, 9, 11, 12)]
    valid_de, valid_en = iwslt14.load_prepared(folder, "valid")
    assert remove_bpe(valid_en[0]) == _tok_lower(survivors[23 - 3 - 1][1], "en")
    assert remove_bpe(valid_de[1]) == _tok_lower(survivors[46 - 3 - 1][0], "de")
    train_de, train_en = iwslt14.load_prepared(folder, "train")
    assert remove_bpe(train_en[0]) == "&lt; speaker &gt; fake speaker &lt; / speaker &gt;"
    assert remove_bpe(train_en[1]) == "fake title en"  # <title> tags stripped, text kept
    assert remove_bpe(train_de[3]) == _tok_lower(train[0][0], "de")
    assert remove_bpe(train_de[3]).startswith("das ")  # lowercased, tokenized
    # test: the five sets in fairseq's order, ’ -> ', the extra XML set ignored
    test_de, test_en = iwslt14.load_prepared(folder, "test")
    assert remove_bpe(test_en[0]) == "sentence 0 from dev2010 ."
    assert remove_bpe(test_en[5]) == "that &apos;s it ."
    assert remove_bpe(test_en[-1]) == "sentence 3 from tst2012 ."
    assert not any("ignored" in line for line in test_en + test_de)


def _tok_lower(line: str, lang: str) -> str:
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang=lang).tokenize(line, return_str=True, escape=True).lower()


def test_bpe_round_trips(prepared: tuple[Path, dict[str, int]]) -> None:
    folder, _ = prepared
    codes = (folder / "code").read_text().splitlines()
    assert len([c for c in codes if not c.startswith("#")]) == 40
    train, _ = _fake_corpus()
    lines = [_tok_lower(line, "en") for line in ["The elephantine house, says Anna!", "Unseen words split"]]
    bpe = iwslt14.apply_bpe(lines, folder / "code")
    assert any("@@ " in b for b in bpe)  # unseen words are split into subwords
    assert [remove_bpe(b) for b in bpe] == lines
    train_de, _ = iwslt14.load_prepared(folder, "train")
    assert any("@@ " in line for line in train_de)  # 40 merges leave most German words split
    assert remove_bpe(train_de[3]) == _tok_lower(train[0][0], "de")


def test_prepare_warns_on_unexpected_sizes(tmp_path: Path) -> None:
    train, test = _fake_corpus()
    raw = iwslt14.write_fake_raw(tmp_path / "de-en.tgz", train[:30], test)
    with pytest.warns(UserWarning, match="differ from fairseq"):
        iwslt14.prepare(raw, tmp_path / "prep", merges=10, log=lambda _: None)
    assert iwslt14.main(["--raw", str(tmp_path / "missing.tgz"), "--out", str(tmp_path / "x")]) == 2


def test_missing_data_is_one_line_error(tmp_path: Path) -> None:
    from optrepro.data.translation import load_text
    from optrepro.errors import DataMissingError

    cfg = OmegaConf.create({"data": {"name": "iwslt14", "root": str(tmp_path / "none"),
                                     "raw": str(tmp_path / "x.tgz"), "bpe_merges": 10},
                            "src_lang": "de", "tgt_lang": "en"})
    with pytest.raises(DataMissingError) as info:
        load_text(cfg)
    assert "\n" not in str(info.value) and "python -m optrepro.data.iwslt14" in str(info.value)


# ------------------------------------------------------------------------------- vocabulary, batching
def test_vocab_is_fairseq_like() -> None:
    from optrepro.data.translation import Vocab

    v = Vocab.build(["b a b", "c b a"])
    assert v.symbols[:7] == ["<s>", "<pad>", "</s>", "<unk>", "b", "a", "c"]
    assert len(v) % 8 == 0
    assert v.encode("a zz") == [5, Vocab.UNK, Vocab.EOS]
    assert v.decode([5, 6, Vocab.EOS, Vocab.PAD]) == "a c"


def test_batches_respect_token_budget() -> None:
    from optrepro.data.translation import token_batches

    rng = np.random.default_rng(0)
    src = rng.integers(1, 60, size=2000)
    tgt = np.maximum(1, src + rng.integers(-10, 10, size=2000))
    batches = token_batches(src, tgt, max_tokens=512, seed=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(2000))  # every sentence exactly once
    for b in batches:
        assert len(b) * max(src[b].max(), tgt[b].max()) <= 512
    assert sum(len(b) % 8 == 0 for b in batches) >= 0.9 * len(batches)
    again = token_batches(src, tgt, max_tokens=512, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_collate_shifts_target() -> None:
    from optrepro.data.translation import collate

    source, prev, target = collate([[5, 6, 2], [7, 2]], [[8, 9, 2], [4, 2]], pad=1, eos=2)
    assert source.tolist() == [[5, 6, 2], [7, 2, 1]]
    assert target.tolist() == [[8, 9, 2], [4, 2, 1]]
    assert prev.tolist() == [[2, 8, 9], [2, 4, 1]]


def test_inverse_sqrt_schedule() -> None:
    from optrepro.tasks.translation import inverse_sqrt_lr

    assert inverse_sqrt_lr(0, 5e-4, 4000, 1e-7) == pytest.approx(1e-7)
    assert inverse_sqrt_lr(2000, 5e-4, 4000, 1e-7) == pytest.approx((5e-4 + 1e-7) / 2)
    assert inverse_sqrt_lr(4000, 5e-4, 4000, 1e-7) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(16000, 5e-4, 4000, 1e-7) == pytest.approx(2.5e-4)


# ------------------------------------------------------------------------------- model
def _tiny_model(dropout: float = 0.0) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, ffn_dim=64, heads=4, encoder_layers=2, decoder_layers=2,
                            dropout=dropout)
    return Seq2SeqTransformer(20, 24, pad=1, config=cfg).eval()


def test_padding_mask_makes_pads_invisible() -> None:
    model = _tiny_model()
    src = torch.tensor([[5, 6, 7, 2]])
    src_padded = torch.tensor([[5, 6, 7, 2, 1, 1, 1]])
    tgt = torch.tensor([[2, 8, 9]])
    with torch.no_grad():
        a = model(src, tgt)
        b = model(src_padded, tgt)
        mem_a, _ = model.encode(src)
        mem_b, mask_b = model.encode(src_padded)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mem_a, mem_b[:, :4], rtol=1e-5, atol=1e-5)
    assert mask_b.tolist() == [[True] * 4 + [False] * 3]
    # batched with a longer sentence, the short one still gets its unpadded result
    with torch.no_grad():
        both = model(torch.tensor([[5, 6, 7, 2, 1, 1, 1], [5, 6, 7, 8, 9, 10, 2]]), tgt.repeat(2, 1))
    torch.testing.assert_close(both[:1], a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both[1], a[0])  # sanity: the real tokens do matter


def test_decoder_is_causal() -> None:
    model = _tiny_model()
    src = torch.tensor([[5, 6, 7, 2]])
    with torch.no_grad():
        a = model(src, torch.tensor([[2, 8, 9, 10, 11]]))
        b = model(src, torch.tensor([[2, 8, 9, 15, 3]]))
    torch.testing.assert_close(a[:, :3], b[:, :3])  # positions 0..2 do not see tokens 3..4
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_incremental_decoding_matches_full_decoding() -> None:
    model = _tiny_model()
    src = torch.tensor([[5, 6, 7, 2], [8, 2, 1, 1]])
    tgt = torch.tensor([[2, 8, 9, 10], [2, 4, 5, 6]])
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(tgt, memory, mask)
        caches = model.start_cache(memory)
        steps = [model.decode_step(tgt[:, t], t, mask, caches) for t in range(tgt.shape[1])]
        torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
        # reordering rows (as beam search does) carries each row's history along
        caches = model.start_cache(memory)
        model.decode_step(tgt[:, 0], 0, mask, caches)
        swapped = torch.tensor([1, 0])
        model.reorder_cache(caches, swapped)
        caches_mem = model.start_cache(memory[swapped])  # cross-attention follows the rows too
        for c, cm in zip(caches, caches_mem, strict=True):
            c["cross_k"], c["cross_v"] = cm["cross_k"], cm["cross_v"]
        out = model.decode_step(tgt[swapped, 1], 1, mask[swapped], caches)
        torch.testing.assert_close(out, full[swapped, 1], rtol=1e-5, atol=1e-5)


def test_shared_decoder_embeddings_and_param_count() -> None:
    model = Seq2SeqTransformer(8848, 6632, pad=1)  # fairseq's IWSLT14 dictionaries
    assert model.output_proj is None
    n = sum(p.numel() for p in model.parameters())
    assert 39_000_000 < n < 40_000_000  # fairseq reports ~39.5M for transformer_iwslt_de_en


def test_label_smoothed_loss_matches_definition() -> None:
    logits = torch.randn(2, 3, 10)
    target = torch.tensor([[4, 5, 1], [6, 1, 1]])
    loss, nll, n = label_smoothed_nll(logits, target, 0.1, pad=1)
    lp = logits.log_softmax(-1)
    mask = target != 1
    ref_nll = -lp.gather(-1, target[..., None]).squeeze(-1)[mask].sum()
    eps_i = 0.1 / 9
    ref_all = (1 - 0.1 - eps_i) * -lp.gather(-1, target[..., None]).squeeze(-1) + eps_i * -lp.sum(-1)
    ref = ref_all[mask].sum()
    assert int(n) == 3
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(loss, ref)


# ------------------------------------------------------------------------------- beam search
TOY_V, EOS, PAD, BOS = 5, 2, 1, 0  # tokens 3 ("a") and 4 ("b")


def _toy_lprobs(prefix: tuple[int, ...]) -> torch.Tensor:
    """Greedy picks "a" first, but "b </s>" has the best length-normalised score."""
    p = torch.full((TOY_V,), 1e-9)
    if len(prefix) == 0:
        p[3], p[4] = 0.6, 0.4
    elif prefix[0] == 4:
        p[EOS], p[3], p[4] = 0.95, 0.03, 0.02
    else:
        p[EOS], p[3], p[4] = 0.3, 0.35, 0.35
    return (p / p.sum()).log()


def _toy_step(tokens: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
    return torch.stack([_toy_lprobs(tuple(row[1:].tolist())) for row in tokens])


def _brute_force_best(max_len: int) -> list[int]:
    best, best_seq = -math.inf, None
    for n in range(1, max_len + 1):
        for body in itertools.product((3, 4), repeat=n):
            score = sum(float(_toy_lprobs(body[:i])[body[i]]) for i in range(n))
            score += float(_toy_lprobs(body)[EOS])
            if score / (n + 1) > best:
                best, best_seq = score / (n + 1), list(body)
    assert best_seq is not None
    return best_seq


def test_beam_search_finds_the_known_best_sequence() -> None:
    expected = _brute_force_best(4)
    assert expected == [4]
    hyps = beam_search(_toy_step, batch_size=3, beam=3, max_len=4, bos=BOS, eos=EOS, pad=PAD,
                       device=torch.device("cpu"))
    assert hyps == [expected] * 3
    greedy = beam_search(_toy_step, batch_size=1, beam=1, max_len=4, bos=BOS, eos=EOS, pad=PAD,
                         device=torch.device("cpu"))
    assert greedy[0][0] == 3  # greedy commits to "a" and misses it


def test_beam_search_forces_eos_at_max_len() -> None:
    def never_stop(tokens: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
        lp = torch.full((tokens.shape[0], TOY_V), -20.0)
        lp[:, 3] = 0.0
        return lp

    hyps = beam_search(never_stop, batch_size=2, beam=2, max_len=6, bos=BOS, eos=EOS, pad=PAD,
                       device=torch.device("cpu"))
    assert hyps == [[3] * 6, [3] * 6]


# ------------------------------------------------------------------------------- BLEU, synthetic data
def test_bleu() -> None:
    text = ["the cat sat on the mat .", "a dog ran in the park today ."]
    assert tokenized_bleu(text, text) == pytest.approx(100.0)
    assert detok_bleu(text, text, "en") == pytest.approx(100.0)
    assert tokenized_bleu(["the cat sat on a hat ."] + text[1:], text) < 100.0
    assert remove_bpe("the ca@@ t sat@@") == "the cat sat"  # as fairseq: trailing marker dropped
    assert remove_bpe("ele@@ ph@@ ant") == "elephant"


def test_synthetic_data_follows_its_rule() -> None:
    splits = make_splits(200, 10, 10, seed=0)
    lex = Lexicon.build(0)
    src, tgt = splits["train"]
    assert all(translate(s, lex) == t for s, t in zip(src, tgt, strict=True))
    assert make_splits(200, 10, 10, seed=0) == splits  # deterministic
    assert src != make_splits(200, 10, 10, seed=1)["train"][0]
    assert tokenized_bleu(src, tgt) < 5.0  # copying the source is a poor translation


# ------------------------------------------------------------------------------- the task
def _task(overrides: dict | None = None, opt: dict | None = None, seed: int = 0):
    from conftest import composed_task
    from optrepro.tasks.base import RunContext
    from optrepro.tasks.translation import TranslationTask

    t = composed_task("synthetic_mt")
    t.data.update({"train_size": 200, "valid_size": 20, "test_size": 20})
    t.update({"max_tokens": 256, "warmup_updates": 5, "epochs": 3, "average_last": 2, "valid_bleu_subset": 8,
              "model": {**t.model, "d_model": 32, "ffn_dim": 64}})
    for k, v in (overrides or {}).items():
        OmegaConf.update(t, k, v)
    optimizer = opt or {"name": "adam", "lr": 3e-3, "betas": [0.9, 0.98], "weight_decay": 1e-4,
                        "decoupled_weight_decay": True}
    cfg = OmegaConf.create({"optimizer": optimizer, "task": OmegaConf.to_container(t)})
    ctx = RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=seed)
    return TranslationTask(cfg.task, ctx)


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    task = _task()
    before = task.loss_on(task.model, task.valid_batches)["loss"]
    for _ in range(25):
        task.train_step()
    after = task.loss_on(task.model, task.valid_batches)["loss"]
    assert after < before - 0.5


def test_exact_resume_through_epoch_ends_and_averaging() -> None:
    from optrepro.tasks.base import rng_state, set_rng_state

    torch.manual_seed(0)
    full = _task()
    n_first = len(full.train_batches) + 3  # past the first epoch end
    for _ in range(n_first):
        full.train_step()
    state = {k: v for k, v in full.state_dict().items()}
    state = torch.load(_roundtrip(state), weights_only=True)
    rng = rng_state()
    while not full.done():
        full.train_step()
    final_full = full.evaluate()

    resumed = _task()  # as the loop does: build, load the task state, then restore the RNG streams
    resumed.load_state_dict(state)
    set_rng_state(rng)
    assert resumed.step == n_first
    while not resumed.done():
        resumed.train_step()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert full.avg_epochs == resumed.avg_epochs == [2, 3]
    for k in full.avg_sum:
        assert torch.equal(full.avg_sum[k], resumed.avg_sum[k])
    final_resumed = resumed.evaluate()
    assert final_full["test_bleu"] == final_resumed["test_bleu"]
    assert final_full["valid_loss"] == final_resumed["valid_loss"]


def _roundtrip(obj: object):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_averaged_model_is_mean_of_last_epochs() -> None:
    torch.manual_seed(0)
    task = _task({"epochs": 2, "average_last": 2})
    snaps = []
    while not task.done():
        task.train_step()
        if task.order.epoch_finished:
            snaps.append({k: v.clone() for k, v in task.model.state_dict().items()})
    avg = task.averaged_model().state_dict()
    for k, v in avg.items():
        torch.testing.assert_close(v, (snaps[0][k] + snaps[1][k]) / 2)
    before = torch.get_rng_state()
    metrics = task.evaluate()
    assert torch.equal(before, torch.get_rng_state())  # evaluation leaves the training RNG alone
    assert {"valid_loss", "valid_bleu", "test_bleu", "test_bleu_detok"} <= set(metrics)


def test_benchmark_reports_tokens_per_second() -> None:
    from optrepro.tasks.translation import benchmark_tokens_per_second

    out = benchmark_tokens_per_second(quick=True)
    assert out["train_step_tokens_per_s"] > 0 and out["model_only_tokens_per_s"] > 0


# ------------------------------------------------------------------------------- configs and the CLI loop
def test_smoke_run_through_the_training_loop(tmp_path: Path) -> None:
    from conftest import metrics, run_folders, run_inprocess, summary

    outcome = run_inprocess(["task=synthetic_mt", "optimizer=adam", "profile=smoke"], tmp_path)
    assert outcome.status == "completed", outcome.reason
    (folder,) = run_folders(tmp_path)
    s = summary(folder)
    assert s["metric"] == "test_bleu" and s["mode"] == "max"
    assert {"test_bleu", "test_bleu_detok", "valid_bleu", "valid_loss"} <= set(s["final"])
    assert "copy_baseline_bleu" in s and s["translation"]["averaged_epochs"] == [1]
    rows = metrics(folder)
    assert rows and "valid_loss" in rows[-1]
    assert (folder / "test_hypotheses.txt").is_file()
    import yaml

    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["optimizer"]["lr"] == 2e-3 and cfg["optimizer"]["decoupled_weight_decay"] is True  # recipe


def test_recipes_and_experiment_compose() -> None:
    from conftest import compose
    from optrepro.config import resolve_interpolations

    cfg, _ = compose(["task=iwslt14_transformer", "optimizer=adabelief"])
    cfg = resolve_interpolations(cfg)
    assert cfg.optimizer.eps == 1e-16 and list(cfg.optimizer.betas) == [0.9, 0.999]
    assert cfg.optimizer.lr == 5e-4 and cfg.optimizer.weight_decay == 1e-4 and cfg.optimizer.weight_decouple
    cfg, _ = compose(["task=iwslt14_transformer", "optimizer=adam"])
    cfg = resolve_interpolations(cfg)
    assert list(cfg.optimizer.betas) == [0.9, 0.98] and cfg.optimizer.decoupled_weight_decay
    assert cfg.task.model.d_model == 512 and cfg.task.max_tokens == 4096 and cfg.task.warmup_updates == 4000
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        exp = hydra_compose(config_name="train", overrides=["experiment=adabelief_transformer"],
                            return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert exp.task.name == "iwslt14_transformer"
    assert "adabelief" in exp.hydra.sweeper.params.optimizer


def test_bad_config_is_one_line_error() -> None:
    from optrepro.errors import UserError
    from optrepro.tasks.schemas import validate

    t = OmegaConf.load(REPO / "configs" / "task" / "synthetic_mt.yaml")
    t.pop("defaults")  # the family marker, not a task key
    t.model.d_model = 30
    with pytest.raises(UserError, match="task.model.d_model"):
        validate(t)
    t.model.d_model = 32
    t.beam = 0
    with pytest.raises(UserError, match="task.beam"):
        validate(t)


def test_iwslt14_task_prepares_from_the_raw_archive(tmp_path: Path) -> None:
    from optrepro.tasks.base import RunContext
    from optrepro.tasks.translation import TranslationTask

    train, test = _fake_corpus()
    raw = iwslt14.write_fake_raw(tmp_path / "de-en.tgz", train, test)
    from conftest import composed_task

    t = composed_task("iwslt14_transformer")
    t.data.update({"root": str(tmp_path / "prep"), "raw": str(raw), "bpe_merges": 30})
    t.update({"epochs": 1,
              "average_last": 1, "valid_bleu_subset": 2, "warmup_updates": 2, "max_tokens": 512,
              "model": {**t.model, "encoder_layers": 1, "decoder_layers": 1, "d_model": 32, "ffn_dim": 64}})
    cfg = OmegaConf.create({"optimizer": {"name": "adam", "lr": 1e-3}, "task": OmegaConf.to_container(t)})
    ctx = RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0)
    with pytest.warns(UserWarning, match="differ from fairseq"):
        task = TranslationTask(cfg.task, ctx)
    assert iwslt14.is_prepared(tmp_path / "prep")
    assert task.counts == {"train": 57, "valid": 2, "test": 12}
    while not task.done():
        task.train_step()
    assert task.eval_due()
    metrics = task.evaluate()
    assert 0.0 <= metrics["test_bleu"] <= 100.0
    TranslationTask(cfg.task, ctx)  # second time: reads the prepared folder, no preparation (no warning)


# ------------------------------------------------------------------------------- --share-all-embeddings
def test_share_all_embeddings_is_one_parameter() -> None:
    cfg = TransformerConfig(d_model=32, ffn_dim=64, heads=4, encoder_layers=1, decoder_layers=1,
                            share_all_embeddings=True)
    model = Seq2SeqTransformer(24, 24, pad=1, config=cfg)
    assert model.src_embed.weight is model.tgt_embed.weight and model.output_proj is None
    separate = Seq2SeqTransformer(24, 24, pad=1, config=dataclasses.replace(cfg, share_all_embeddings=False))
    n_shared, n_separate = (sum(p.numel() for p in m.parameters()) for m in (model, separate))
    assert n_separate - n_shared == 24 * 32  # exactly one table fewer
    with pytest.raises(ValueError, match="one vocabulary"):
        Seq2SeqTransformer(20, 24, pad=1, config=cfg)


def test_joined_dictionary_and_shared_embeddings_in_the_task() -> None:
    from optrepro.data.translation import Vocab
    from optrepro.errors import UserError

    task = _task({"data.joined_dictionary": True, "model.share_all_embeddings": True})
    assert task.src_vocab is task.tgt_vocab
    train = task.data["train"]
    src_words = {w for line in train.src_text for w in line.split()}
    tgt_words = {w for line in train.tgt_text for w in line.split()}
    assert src_words - tgt_words and tgt_words - src_words  # the two sides have words of their own
    assert (src_words | tgt_words) <= set(task.src_vocab.symbols)  # all of them in the one Vocab
    assert len(task.src_vocab) == len(Vocab.build([*train.src_text, *train.tgt_text]))
    m = task.model
    assert m.src_embed.weight is m.tgt_embed.weight and m.output_proj is None
    names = [n for n, _ in m.named_parameters()]
    assert "src_embed.weight" in names and "tgt_embed.weight" not in names  # one Parameter, trained once
    assert sum(p is m.src_embed.weight for g in task.optimizer.param_groups for p in g["params"]) == 1
    before = m.src_embed.weight.detach().clone()
    task.train_step()
    assert not torch.equal(before, m.src_embed.weight)
    separate = _task()
    assert separate.src_vocab is not separate.tgt_vocab
    assert separate.model.src_embed.weight is not separate.model.tgt_embed.weight
    with pytest.raises(UserError, match="joined_dictionary"):
        _task({"model.share_all_embeddings": True})

