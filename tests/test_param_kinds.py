"""Parameter kinds on a small Transformer-like model, an HF BERT and the weight-decay groups."""

from __future__ import annotations

import torch
from torch import nn

from optrepro.models.param_kinds import KINDS, parameter_kinds, weight_decay_groups


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(d, 3 * d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.block = _Block(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one Parameter, listed once


def test_kinds_of_a_tiny_lm() -> None:
    kinds = parameter_kinds(_TinyLM())
    assert kinds == {
        "wte.weight": "embedding",
        "block.ln_1.weight": "norm_bias",
        "block.ln_1.bias": "norm_bias",
        "block.attn.c_attn.weight": "attention",
        "block.attn.c_attn.bias": "norm_bias",
        "block.mlp.0.weight": "mlp",
        "block.mlp.0.bias": "norm_bias",
        "block.mlp.2.weight": "mlp",
        "block.mlp.2.bias": "norm_bias",
    }
    assert set(kinds.values()) <= set(KINDS)


def test_kinds_of_an_hf_bert() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, num_labels=2)
    kinds = parameter_kinds(BertForSequenceClassification(cfg))
    assert kinds["bert.embeddings.word_embeddings.weight"] == "embedding"
    assert kinds["bert.encoder.layer.0.attention.self.query.weight"] == "attention"
    assert kinds["bert.encoder.layer.0.attention.output.dense.weight"] == "attention"
    assert kinds["bert.encoder.layer.0.intermediate.dense.weight"] == "mlp"
    assert kinds["bert.encoder.layer.0.output.LayerNorm.weight"] == "norm_bias"
    assert kinds["classifier.weight"] == "head"
    assert kinds["classifier.bias"] == "norm_bias"


def test_weight_decay_groups_split_matrices_from_norms_and_biases() -> None:
    model = _TinyLM()
    groups = weight_decay_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model.wte.weight), id(model.block.attn.c_attn.weight),
                       id(model.block.mlp[0].weight), id(model.block.mlp[2].weight)}
    n_all = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_all
    opt = torch.optim.AdamW(groups, lr=1e-3)
    assert opt.param_groups[1]["weight_decay"] == 0.0
