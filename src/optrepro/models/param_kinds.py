"""Which kind of weight each parameter is: embedding, attention, MLP, classifier head, or norm/bias.

Why: the eps floor's share of the step is expected to differ most between these kinds (embeddings
see sparse gradients, norms and biases tiny ones), so the Transformer families report the mechanism
diagnostics per kind, and weight decay follows the kinds (no decay on norms and biases, as in the
GPT-2/nanoGPT and HF ``run_glue`` recipes). The rule reads module types first and names second, so it
covers our models, HF ``transformers`` (BERT/RoBERTa/GPT-2 names) and timm ViTs alike.
"""

from __future__ import annotations

from typing import Any

from torch import nn

KINDS = ("embedding", "attention", "mlp", "head", "norm_bias")

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
_ATTENTION_PARTS = {"attn", "attention", "self_attn", "c_attn", "q_proj", "k_proj", "v_proj", "out_proj",
                    "query", "key", "value", "qkv"}
_HEAD_PARTS = {"classifier", "lm_head", "score", "head", "pre_classifier", "fc"}  # fc: torchvision/timm ResNets
#: ViT's token embeddings: the patch projection (a conv) and the learned tokens/positions the model holds itself
_EMBEDDING_PARTS = {"patch_embed"}
_EMBEDDING_TENSORS = {"pos_embed", "cls_token", "dist_token", "reg_token"}


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """Map each name of ``model.named_parameters()`` (tied weights once, under their first name) to a kind.

    norm_bias: every parameter of a normalisation layer and every vector (biases, gains, scalars);
    embedding: the weight of an ``nn.Embedding`` (also when tied to an output layer), a ViT's patch projection
    and its position/class tokens;
    head: matrices under a module named like a classifier/output head; attention: matrices under an
    attention module (or an ``nn.MultiheadAttention``); mlp: every other matrix (linear or conv).
    """
    owners: dict[str, tuple[str, nn.Module]] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            owners[full] = (mod_name, module)
    kinds: dict[str, str] = {}
    for name, param in model.named_parameters():
        mod_name, module = owners[name]
        parts = set(mod_name.split(".")) if mod_name else set()
        if isinstance(module, _NORMS) or param.ndim <= 1:
            kinds[name] = "norm_bias"
        elif (isinstance(module, nn.Embedding) or parts & _EMBEDDING_PARTS
              or name.rsplit(".", 1)[-1] in _EMBEDDING_TENSORS):
            kinds[name] = "embedding"
        elif parts & _HEAD_PARTS:
            kinds[name] = "head"
        elif parts & _ATTENTION_PARTS or isinstance(module, nn.MultiheadAttention):
            kinds[name] = "attention"
        else:
            kinds[name] = "mlp"
    return kinds


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups: ``weight_decay`` on matrices (ndim >= 2, embeddings included), 0 on norms and biases.

    The GPT-2/nanoGPT recipe ("decay matrices only") and HF ``run_glue``'s no-decay list (bias,
    LayerNorm.weight) are the same rule on these models. Empty groups are left out.
    """
    kinds = parameter_kinds(model)
    named = dict(model.named_parameters())
    decay = [p for n, p in named.items() if kinds[n] != "norm_bias"]
    no_decay = [p for n, p in named.items() if kinds[n] == "norm_bias"]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
