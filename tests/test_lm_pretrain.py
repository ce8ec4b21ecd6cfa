"""GPT-style pretraining (lm_pretrain): the decoder, the llm.c-layout token shards, the task's recipe,
training below the unigram yardstick, exact resume, precision, and the transformer_scale preset."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import cli, compose, metrics, run_folders, run_inprocess, summary
from optrepro.config import resolve_interpolations
from optrepro.data import token_shards as shards
from optrepro.errors import DataMissingError, UserError
from optrepro.models.gpt import GPT, GPTConfig
from optrepro.models.param_kinds import parameter_kinds
from optrepro.tasks import RunContext, build_task
from optrepro.tasks.base import rng_state, seed_everything, set_rng_state
from optrepro.tasks.lm_pretrain import LMPretrainTask, cosine_lr


# ---------------------------------------------------------------------------------------- model
def tiny_gpt(vocab: int = 50, **kw: Any) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw))


def test_shapes_and_tied_weights() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 50, (3, 11))
    assert model(idx).shape == (3, 11, 50)
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names  # listed once
    # a gradient through the output layer reaches the embedding matrix
    model(idx).sum().backward()
    assert model.transformer.wte.weight.grad is not None
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gpt2_small_preset_has_gpt2s_parameter_count() -> None:
    """GPT-2 small's published size, 124,439,808 parameters (Hugging Face's ``gpt2``; the slow test below builds
    that model to compare), from the 124M preset's shape with the exact vocabulary, on the meta device."""
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768))
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters(non_embedding=True) == 124_439_808 - (50257 + 1024) * 768


@pytest.mark.slow
def test_gpt2_small_preset_matches_hugging_face_gpt2() -> None:
    """Built on the meta device (no memory): the same count as Hugging Face's GPT-2 (an independent build)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        ours = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768))
        theirs = GPT2LMHeadModel(GPT2Config())
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())


def test_causal_mask_a_token_never_sees_a_later_one() -> None:
    model = tiny_gpt().eval()
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    for j in (1, 6, 11):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 7) % 50
        with torch.no_grad():
            a, b = model(idx), model(changed)
        assert torch.equal(a[:, :j], b[:, :j]), j  # masked scores get weight exactly 0
        assert not torch.allclose(a[:, j:], b[:, j:])  # the test could fail: the change is seen from j on


def test_parameter_kinds_of_the_decoder() -> None:
    kinds = parameter_kinds(tiny_gpt())
    assert kinds["transformer.wte.weight"] == kinds["transformer.wpe.weight"] == "embedding"
    assert kinds["transformer.h.0.attn.c_attn.weight"] == kinds["transformer.h.1.attn.c_proj.weight"] == "attention"
    assert kinds["transformer.h.0.mlp.c_fc.weight"] == "mlp"
    assert kinds["transformer.h.0.ln_1.weight"] == kinds["transformer.h.0.mlp.c_fc.bias"] == "norm_bias"


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    lrs = [cosine_lr(s, 1.0, 10, 100, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[55] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------- shards
def test_shard_round_trip_in_llmc_layout(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 65535, 50256, 7], dtype=np.uint16)
    path = shards.write_shard(tmp_path / "x_train_000000.bin", tokens)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:3]) == [20240520, 1, 5] and not header[3:].any() and len(raw) == 1024 + 2 * 5
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    mapped = shards.open_shard(path)
    assert isinstance(mapped, np.memmap) and mapped.tolist() == tokens.tolist()


def test_stream_reads_across_shards_and_refuses_bad_files(tmp_path: Path) -> None:
    for k, part in enumerate([np.arange(0, 10), np.arange(10, 13), np.arange(13, 30)]):
        shards.write_shard(tmp_path / f"p_train_{k:06d}.bin", part)
    stream = shards.TokenStream(shards.shard_paths(tmp_path, "p", "train"))
    assert len(stream) == 30
    assert stream.window(8, 8).tolist() == list(range(8, 16))  # spans all three shards
    with pytest.raises(IndexError):
        stream.window(25, 6)
    bad = tmp_path / "p_train_000001.bin"
    bad.write_bytes(bad.read_bytes()[:-2])  # truncated
    with pytest.raises(DataMissingError, match="truncated") as info:
        shards.open_shard(bad)
    assert "\n" not in str(info.value)
    bad.write_bytes(b"\0" * 1030)
    with pytest.raises(DataMissingError, match="magic"):
        shards.open_shard(bad)


def test_hf_preparation_of_a_local_json_corpus(tmp_path: Path) -> None:
    """The real preparation path (HF datasets, streamed; tiktoken) on a tiny json file written here."""
    docs = [f"Document {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(40)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    meta = shards.prepare_hf("json", None, "train", tmp_path / "out", "gpt2_bytes", val_tokens=200,
                             shard_tokens=700, max_tokens=None, data_files=str(source))
    enc = shards.get_encoding("gpt2_bytes")
    assert meta["encoding"] == "gpt2_bytes" and meta["n_vocab"] == 257 and enc.eot_token == 256
    out = tmp_path / "out"
    streams = {s: shards.TokenStream(shards.shard_paths(out, "json_gpt2_bytes", s)) for s in ("val", "train")}
    assert len(streams["train"].paths) > 1 and meta["tokens"]["val"] >= 200
    text = [enc.decode(streams[s].window(0, len(streams[s])).tolist()) for s in ("val", "train")]
    assert "".join(text) == "".join("<|endoftext|>" + d for d in docs)  # every document, in order, led by EOT


# ---------------------------------------------------------------------------------------- the task
@pytest.fixture(scope="module")
def token_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pydoc_tokens")
    shards.prepare_pydoc(root, "gpt2_bytes", 40_000)
    return root


def lm_task(root: Path, *extra: str, optimizer: str = "adamw", precision: str = "fp32") -> LMPretrainTask:
    cfg, _ = compose(["task=lm_pretrain_tiny", f"optimizer={optimizer}", f"task.data.root={root}", *extra])
    cfg = resolve_interpolations(cfg)
    seed_everything(0)
    task = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision=precision, seed=0))
    assert isinstance(task, LMPretrainTask)
    return task


SMALL = ("task.steps=40", "task.eval_every=20", "task.warmup_steps=4", "task.batch_size=4", "task.seq_len=32",
         "task.data.eval_tokens=2048")


def test_recipe_decay_groups_and_provenance(token_root: Path) -> None:
    task = lm_task(token_root, *SMALL)
    (decay, no_decay) = task.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert task.optimizer.defaults["betas"] == (0.9, 0.95)
    record = task.data_record()
    assert record["kind"] == "generated" and record["encoding"] == "gpt2_bytes" and len(record["files"]) == 2
    assert task.model.cfg.vocab_size == 320  # 257 padded to a multiple of 64


def test_pretraining_beats_the_unigram_entropy(token_root: Path) -> None:
    task = lm_task(token_root, "task.steps=150", "task.warmup_steps=15", "task.batch_size=8",
                   "task.data.eval_tokens=4096", "optimizer.lr=3e-3")
    first = task.evaluate()["val_loss"]
    assert first > math.log(257) - 0.5  # an untrained model is near uniform over the bytes
    while not task.done():
        task.train_step()
    final = task.evaluate()["val_loss"]
    assert final < task.unigram_val_loss < first, (final, task.unigram_val_loss, first)


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _stop_save_resume(token_root: Path, extra: tuple[str, ...], opt: str, stop_at: int) -> tuple[Any, Any]:
    """A run stopped at ``stop_at``, saved, and rebuilt from its state in a fresh RNG state: (first, second)."""
    first = lm_task(token_root, *extra, optimizer=opt)
    while first.step < stop_at:
        first.train_step()
    saved, rng = roundtrip(first.state_dict()), rng_state()
    torch.manual_seed(1234)
    second = lm_task(token_root, *extra, optimizer=opt)
    second.load_state_dict(saved)
    set_rng_state(rng)
    return first, second


def _finish_and_compare(straight: Any, resumed: Any) -> None:
    """Run the resumed task to its end: its weights equal the uninterrupted run's, bit for bit."""
    while not resumed.done():
        resumed.train_step()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_resume_continues_exactly(token_root: Path) -> None:
    """Stopped mid-run past a wrap of the stream, saved, rebuilt in a fresh RNG state, continued: bitwise equal."""
    extra = (*SMALL, "task.data.train_tokens=3000")  # 3000 tokens: the stream wraps every 23 steps
    opt = "ablation_belief_inside"
    straight = lm_task(token_root, *extra, optimizer=opt)
    while not straight.done():
        straight.train_step()
    assert straight.epochs_done == 1
    first, second = _stop_save_resume(token_root, extra, opt, stop_at=27)
    assert (second.pos, second.epochs_done) == (first.pos, 1)
    _finish_and_compare(straight, second)
    assert second.evaluate() == straight.evaluate()


def test_bf16_autocast_keeps_weights_and_optimizer_state_fp32(token_root: Path) -> None:
    task = lm_task(token_root, *SMALL, optimizer="ablation_belief_inside", precision="bf16")
    for _ in range(3):
        assert torch.isfinite(task.train_step()["loss"])
    states = [t for s in task.optimizer.state.values() for t in s.values()
              if torch.is_tensor(t) and t.is_floating_point()]
    assert states and {t.dtype for t in states} == {torch.float32}
    assert {p.dtype for p in task.model.parameters()} == {torch.float32}


def test_fp16_state_that_rounds_eps_to_zero_is_refused(token_root: Path) -> None:
    with pytest.raises(UserError) as info:
        lm_task(token_root, *SMALL, "task.param_dtype=fp16", "optimizer.eps=1e-16")  # torch AdamW: fp16 state
    line = str(info.value)
    assert "optimizer.eps=1e-16" in line and "fp16" in line and "\n" not in line
    # our Adam-family classes keep fp32 state for fp16 weights: the same eps is fine there
    lm_task(token_root, *SMALL, "task.param_dtype=fp16", optimizer="adabelief")
    lm_task(token_root, *SMALL, "task.param_dtype=fp16", "optimizer.eps=1e-7")  # representable in fp16


ADAM_FAMILY = ("adam", "adamw", "radam", "eadam", "adabelief", "adabelief_v005", "adabelief_v010",
               "ablation_adam", "ablation_eadam", "ablation_belief_outside", "ablation_belief_inside")


@pytest.mark.parametrize("optimizer", ADAM_FAMILY)
def test_every_adam_family_preset_trains_with_the_recipe(token_root: Path, optimizer: str) -> None:
    task = lm_task(token_root, *SMALL, "task.model.n_layer=1", optimizer=optimizer)
    cfg = task.ctx.cfg.optimizer
    assert list(cfg.betas) == [0.9, 0.95] and cfg.weight_decay == 0.1 and cfg.lr == 6e-4
    assert [g["weight_decay"] for g in task.optimizer.param_groups] == [0.1, 0.0]
    before = task.evaluate()["val_loss"]
    for _ in range(8):
        task.train_step()
    assert task.evaluate()["val_loss"] < before


def test_smoke_run_with_per_kind_diagnostics(tmp_path: Path, token_root: Path) -> None:
    outcome = run_inprocess(["task=lm_pretrain_tiny", "optimizer=ablation_belief_inside", "profile=smoke",
                             f"task.data.root={token_root}", "diagnostics.enabled=true"], tmp_path / "runs")
    assert outcome.status == "completed", outcome
    (folder,) = run_folders(tmp_path / "runs")
    rows = metrics(folder)
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[-1]["heldin_ppl"] == pytest.approx(math.exp(rows[-1]["heldin_loss"]))  # the gap's held-in side
    for kind in ("embedding", "attention", "mlp", "norm_bias"):
        assert 0.0 <= rows[-1][f"opt/floor_share/{kind}"] <= 1.0, kind
    s = summary(folder)
    assert s["metric"] == "val_loss" and s["lm_pretrain"]["encoding"] == "gpt2_bytes"
    assert s["lm_pretrain"]["unigram_val_loss"] > 0
    assert json.loads((folder / "data.json").read_text())["encoding"] == "gpt2_bytes"


def test_missing_shards_are_one_line(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=lm_pretrain_fineweb", "profile=smoke", f"task.data.root={tmp_path / 'none'}"],
                            tmp_path / "runs")
    assert outcome.status == "error" and "optrepro.data.token_shards" in outcome.reason
    assert "\n" not in outcome.reason and run_folders(tmp_path / "runs") == []


def test_transformer_scale_cfg_job_shows_its_recipe() -> None:
    proc = cli(["experiment=transformer_scale", "--cfg", "job"], check=True)
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["task"]["kind"] == "lm_pretrain" and cfg["task"]["name"] == "lm_pretrain_fineweb"
    assert cfg["optimizer"]["betas"] == [0.9, 0.95] and cfg["optimizer"]["weight_decay"] == 0.1
    assert cfg["optimizer"]["weight_decay_mode"] == "decoupled" and cfg["precision"] == "bf16"
    assert cfg["task"]["grad_clip"] == 1.0 and cfg["task"]["weight_decay_on"] == "matrices"
    full, _ = compose(["experiment=transformer_scale"])
    assert full.task.model.n_layer == 12  # gpt_124m unless the grid says otherwise


# ---------------------------------------------------------------------------------------- the plan
def test_transformer_scale_plan_has_every_size_and_the_matched_floors() -> None:
    from optrepro import reproduce

    sweeps = reproduce.plan("transformer_scale", "0,1,2")
    labels = [s.label for s in sweeps]
    assert labels == [f"{kind}-{size}" for size in ("gpt_30m", "gpt_60m", "gpt_124m", "gpt_350m")
                      for kind in ("transformer_scale", "matched")]
    grid, matched = sweeps[0], sweeps[1]
    eps = [float(e) for e in grid.values("optimizer.eps")]
    assert min(eps) == 1e-25 and 1e-4 in eps and grid.n_runs() == 4 * len(eps) * 3
    floors = sorted(float(e) for e in matched.values("optimizer.eps"))
    expected = sorted(math.sqrt(e / (1 - 0.95)) for e in eps if e <= 1e-4 and e != 1e-8)  # 1e-8's is in the grid
    assert floors == pytest.approx(expected, rel=1e-12) and matched.n_runs() == 2 * len(floors) * 3
    # sizes are estimated apart; a GPU preset on a CPU machine says its compute instead of a time
    assert reproduce.runs_per_task(grid) == {"lm_pretrain_fineweb[gpt_30m]": grid.n_runs()}
    if not torch.cuda.is_available():
        assert "PFLOP per run" in str(reproduce.measure("lm_pretrain_fineweb[gpt_124m]", []))


def test_the_size_timing_runs_on_random_gpt2_tokens() -> None:
    """The path a GPU takes (gpt_tiny is timed on a CPU too): shards of the GPT-2 vocabulary, made here."""
    from optrepro import reproduce

    timing = reproduce.measure("lm_pretrain_fineweb[gpt_tiny]", ["task.seq_len=64", "task.batch_size=4",
                                                                  "task.grad_accum_steps=2"])
    assert isinstance(timing, tuple), timing
    seconds, steps = timing
    assert seconds > 0 and steps == compose(["task=lm_pretrain_fineweb"])[0].task.steps


# ---------------------------------------------------------------------------------------- populations
def test_population_steps_match_runs_alone_with_clipping(token_root: Path) -> None:
    """Two corners as one population vs each alone, clipping active (a small grad_clip): the first steps'
    losses and the parameters after them agree to float32 rounding."""
    from optrepro.population import Population

    corners = ("ablation_adam", "ablation_belief_inside")
    extra = (*SMALL, "task.grad_clip=0.05", "task.model.n_layer=1", "task.seq_len=16")
    members = [lm_task(token_root, *extra, optimizer=c) for c in corners]
    solos = [lm_task(token_root, *extra, optimizer=c) for c in corners]
    assert not LMPretrainTask.population_refusal_for(members[0].cfg)
    population = Population(members)
    active = torch.ones(len(members), dtype=torch.bool)
    for step in range(3):
        results = population.step([task.member_batch() for task in members], active)
        for k, (member, solo, result) in enumerate(zip(members, solos, results, strict=True)):
            together = member.member_end_step(*result)["loss"]
            out = solo.train_step()
            assert out["grad_norm"] > 0.05  # the clip is active in every step
            assert torch.allclose(together, out["loss"], rtol=1e-5, atol=0), (step, k)
    for member, solo in zip(members, solos, strict=True):
        assert (member.step, member.pos) == (solo.step, solo.pos)
        for (name, p), q in zip(member.model.named_parameters(), solo.model.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name


# ---------------------------------------------------------------------------------------- nanoGPT knobs
def test_nanogpt_warmup_formula_at_known_steps() -> None:
    """nanoGPT's get_lr: lr (it+1)/(warmup+1) in the warm-up; llm.c's (the default): lr (step+1)/warmup."""
    assert cosine_lr(0, 1.0, 4, 10, 0.1, "nanogpt") == pytest.approx(1 / 5, rel=1e-15)
    assert cosine_lr(3, 1.0, 4, 10, 0.1, "nanogpt") == pytest.approx(4 / 5, rel=1e-15)
    assert cosine_lr(3, 1.0, 4, 10, 0.1) == pytest.approx(1.0, rel=1e-15)  # default unchanged: llm.c's
    assert cosine_lr(0, 1.0, 4, 10, 0.1) == pytest.approx(1 / 4, rel=1e-15)
    for step in (4, 7, 10, 12):  # the cosine after the warm-up is the same in both
        assert cosine_lr(step, 1.0, 4, 10, 0.1, "nanogpt") == cosine_lr(step, 1.0, 4, 10, 0.1)
    with pytest.raises(ValueError, match="warmup_formula"):
        cosine_lr(0, 1.0, 4, 10, 0.1, "other")


def test_the_fineweb_preset_composes_nanogpts_batch_schedule_and_sampler() -> None:
    fine = compose(["task=lm_pretrain_fineweb"])[0].task
    assert fine.batch_size * fine.grad_accum_steps * fine.seq_len == 491_520  # nanoGPT's 12 x 40 x 1024
    assert (fine.batch_size, fine.grad_accum_steps) == (12, 40)
    assert fine.warmup_formula == "nanogpt" and fine.data.sampler == "random"
    tiny = compose(["task=lm_pretrain_tiny"])[0].task
    assert (tiny.grad_accum_steps, tiny.warmup_formula, tiny.data.sampler) == (1, "llmc", "sequential")


def test_accumulated_micro_batches_give_the_gradient_of_one_batch(token_root: Path) -> None:
    """k=4 micro-batches of 2 read the same rows as one batch of 8 (sequential); the averaged gradient equals
    the full batch's up to float32 summation order (a few ulps of the largest entry)."""
    extra = (*SMALL, "task.grad_clip=0")
    one = lm_task(token_root, *extra, "task.batch_size=8", optimizer="sgd")
    acc = lm_task(token_root, *extra, "task.batch_size=2", "task.grad_accum_steps=4", optimizer="sgd")
    for task in (one, acc):
        task.optimizer.step = lambda *a, **k: None  # keep the gradients to compare
    loss_one, loss_acc = one.train_step()["loss"], acc.train_step()["loss"]
    assert float(loss_acc) == pytest.approx(float(loss_one), rel=1e-5)
    assert one.tokens_seen == acc.tokens_seen == 8 * 32 and one.pos == acc.pos
    worst = 0.0
    for p, q in zip(one.model.parameters(), acc.model.parameters(), strict=True):
        scale = float(p.grad.abs().max()) + 1e-12
        worst = max(worst, float((p.grad - q.grad).abs().max()) / scale)
    assert worst < 1e-4, worst  # measured 6.7e-7 (~6 float32 ulps); 150x margin for BLAS orders
    # the test can fail: accumulating without dividing by k gives k times the gradient
    half = lm_task(token_root, *extra, "task.batch_size=4", optimizer="sgd")
    half.optimizer.step = lambda *a, **k: None
    half.train_step()
    far = max(float((p.grad - q.grad).abs().max()) for p, q in
              zip(one.model.parameters(), half.model.parameters(), strict=True))
    assert far > 1e-3 * max(float(p.grad.abs().max()) for p in one.model.parameters())


def test_random_sampler_windows_depend_on_seed_and_step_only(token_root: Path) -> None:
    task = lm_task(token_root, *SMALL, "task.data.sampler=random")
    x0, y0 = task._next_batch()
    assert torch.equal(x0[:, 1:], y0[:, :-1])  # targets are the next tokens of the same window
    again, _ = task._next_batch()
    assert torch.equal(again, x0)  # no hidden state: the same step draws the same windows
    other, _ = task._next_batch(micro=1)
    assert not torch.equal(other, x0)
    task.step = 1
    assert not torch.equal(task._next_batch()[0], x0)
    task.step, task.seed = 0, 1
    assert not torch.equal(task._next_batch()[0], x0)
    # windows are the stream's tokens at some start in [0, train_len - seq_len)
    task.seed = 0
    stream = torch.from_numpy(task.train.window(0, task.train_len - 1))  # windows starting below train_len - seq_len
    windows = stream.unfold(0, task.seq_len, 1)
    for row in x0:
        assert (windows == row).all(dim=1).any(), row


def test_random_sampler_with_accumulation_resumes_exactly(token_root: Path) -> None:
    extra = (*SMALL, "task.steps=12", "task.data.sampler=random", "task.grad_accum_steps=2",
             "task.warmup_formula=nanogpt")
    opt = "ablation_belief_inside"
    straight = lm_task(token_root, *extra, optimizer=opt)
    while not straight.done():
        straight.train_step()
    _, second = _stop_save_resume(token_root, extra, opt, stop_at=5)
    _finish_and_compare(straight, second)
    assert second.evaluate() == straight.evaluate()
    assert straight.tokens_seen == 12 * 2 * 4 * 32
