"""Encoder-decoder Transformer in the shape of fairseq's ``transformer_iwslt_de_en``.

Post-norm layers (``normalize_before=False``), sinusoidal positions (sin half then cos half,
numbered from ``pad + 1`` as fairseq does), token embeddings scaled by sqrt(d), decoder input and
output embeddings shared. Attention goes through ``F.scaled_dot_product_attention`` so a GPU gets
the fused kernels; the decoder's self-attention uses ``is_causal`` (targets are right-padded, so a
real position never sees a pad) and every other attention a key-padding mask.

Initialisation follows fairseq: embeddings N(0, d^-1/2) with a zero pad row, attention input
projections Xavier-uniform with gain 1/sqrt(2), output projections Xavier-uniform with zero bias,
feed-forward layers PyTorch's default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture hyper-parameters; the defaults are ``transformer_iwslt_de_en``."""

    d_model: int = 512
    ffn_dim: int = 1024
    heads: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.3
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    share_decoder_input_output: bool = True
    # fairseq's --share-all-embeddings: one table for encoder input, decoder input and output projection
    # (needs one vocabulary over both languages and share_decoder_input_output, checked at build time)
    share_all_embeddings: bool = False
    max_positions: int = 1024
    # pre-LN layers (LayerNorm before each sublayer, a final LayerNorm after the encoder and the
    # decoder): fairseq's --encoder/decoder-normalize-before, transformer_iwslt_de_en_v2
    normalize_before: bool = False


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """fairseq's table: row p = [sin(p w_0..w_{h-1}), cos(p w_0..w_{h-1})], w_i = 10000^(-i/(h-1))."""
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    return table


class Attention(nn.Module):
    """Multi-head attention (self or cross) on top of ``scaled_dot_product_attention``."""

    def __init__(self, d_model: int, heads: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads, self.dropout, self.self_attention = heads, dropout, self_attention
        if self_attention:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        else:
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.reset_parameters(d_model)

    def reset_parameters(self, d_model: int) -> None:
        weights = [self.qkv.weight] if self.self_attention else [self.q.weight, self.kv.weight]
        for w in weights:  # fairseq inits q, k and v separately, each d x d
            for chunk in w.split(d_model, dim=0):
                nn.init.xavier_uniform_(chunk, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """x [B, Tq, D]; memory [B, Tk, D] for cross-attention; key_mask [B, Tk] True = real token."""
        if self.self_attention:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            assert memory is not None
            q = self.q(x)
            k, v = self.kv(memory).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))

    # incremental decoding (inference only): keys/values of earlier steps are cached
    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def step(self, x: torch.Tensor, cache: dict[str, torch.Tensor], key_mask: torch.Tensor | None = None,
             prefix: str = "") -> torch.Tensor:
        """One new query position x [N, 1, D]. Self-attention appends its k/v to ``cache``;
        cross-attention reads the k/v that ``memory_kv`` made (stored under ``prefix``)."""
        if self.self_attention:
            q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            if prefix + "k" in cache:
                k = torch.cat([cache[prefix + "k"], k], dim=2)
                v = torch.cat([cache[prefix + "v"], v], dim=2)
            cache[prefix + "k"], cache[prefix + "v"] = k, v
        else:
            q = self._heads(self.q(x))
            k, v = cache[prefix + "k"], cache[prefix + "v"]
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        n, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(n, t, h * dh))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, ffn_dim), nn.Linear(ffn_dim, d_model)
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


class EncoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.attn = Attention(c.d_model, c.heads, c.attention_dropout, self_attention=True)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, c.activation_dropout)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.dropout, self.pre = c.dropout, c.normalize_before

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + F.dropout(self.attn(self.norm1(x), key_mask=src_mask), self.dropout, self.training)
            return x + F.dropout(self.ffn(self.norm2(x)), self.dropout, self.training)
        x = self.norm1(x + F.dropout(self.attn(x, key_mask=src_mask), self.dropout, self.training))
        return self.norm2(x + F.dropout(self.ffn(x), self.dropout, self.training))


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c.d_model, c.heads, c.attention_dropout, self_attention=True)
        self.cross_attn = Attention(c.d_model, c.heads, c.attention_dropout, self_attention=False)
        self.ffn = FeedForward(c.d_model, c.ffn_dim, c.activation_dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.dropout, self.pre = c.dropout, c.normalize_before

    def forward(self, x: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        drop = self.dropout
        if self.pre:
            x = x + F.dropout(self.self_attn(self.norm1(x), causal=True), drop, self.training)
            x = x + F.dropout(self.cross_attn(self.norm2(x), memory, key_mask=src_mask), drop, self.training)
            return x + F.dropout(self.ffn(self.norm3(x)), drop, self.training)
        x = self.norm1(x + F.dropout(self.self_attn(x, causal=True), drop, self.training))
        x = self.norm2(x + F.dropout(self.cross_attn(x, memory, key_mask=src_mask), drop, self.training))
        return self.norm3(x + F.dropout(self.ffn(x), drop, self.training))

    def step(self, x: torch.Tensor, src_mask: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inference on one new position (eval mode: no dropout)."""
        if self.pre:
            x = x + self.self_attn.step(self.norm1(x), cache, prefix="self_")
            x = x + self.cross_attn.step(self.norm2(x), cache, key_mask=src_mask, prefix="cross_")
            return x + self.ffn(self.norm3(x))
        x = self.norm1(x + self.self_attn.step(x, cache, prefix="self_"))
        x = self.norm2(x + self.cross_attn.step(x, cache, key_mask=src_mask, prefix="cross_"))
        return self.norm3(x + self.ffn(x))


class Seq2SeqTransformer(nn.Module):
    """Source tokens -> target logits. Inputs are right-padded LongTensors [B, T] with ``pad``."""

    def __init__(self, src_vocab: int, tgt_vocab: int, pad: int,
                 config: TransformerConfig | None = None) -> None:
        super().__init__()
        c = config or TransformerConfig()
        self.config, self.pad = c, pad
        self.embed_scale = math.sqrt(c.d_model)
        self.src_embed = nn.Embedding(src_vocab, c.d_model, padding_idx=pad)
        if c.share_all_embeddings:
            if src_vocab != tgt_vocab or not c.share_decoder_input_output:
                raise ValueError("share_all_embeddings needs one vocabulary for both sides (got sizes "
                                 f"{src_vocab} and {tgt_vocab}) and share_decoder_input_output=True")
            self.tgt_embed = self.src_embed  # the same module: one Parameter in parameters()
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab, c.d_model, padding_idx=pad)
        for emb in dict.fromkeys((self.src_embed, self.tgt_embed)):
            nn.init.normal_(emb.weight, mean=0.0, std=c.d_model**-0.5)
            nn.init.zeros_(emb.weight[pad])
        # positions are numbered pad+1, pad+2, ... as in fairseq's SinusoidalPositionalEmbedding
        self.register_buffer("positions", sinusoidal_table(c.max_positions + pad + 1, c.d_model),
                             persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        # pre-LN: the final LayerNorms of fairseq's encoder and decoder (None in the post-LN layout)
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.normalize_before else None
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.normalize_before else None
        if c.share_decoder_input_output:
            self.output_proj = None
        else:
            self.output_proj = nn.Linear(c.d_model, tgt_vocab, bias=False)
            nn.init.normal_(self.output_proj.weight, mean=0.0, std=c.d_model**-0.5)

    def _embed(self, emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.config.max_positions:
            raise ValueError(f"sequence of {t} tokens exceeds max_positions {self.config.max_positions}")
        pos = self.positions[self.pad + 1 : self.pad + 1 + t]
        x = self.embed_scale * emb(tokens) + pos.to(emb.weight.dtype)
        return F.dropout(x, self.config.dropout, self.training)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states [B, S, D] and the source key mask [B, S] (True = real token)."""
        src_mask = src.ne(self.pad)
        x = self._embed(self.src_embed, src) * src_mask.unsqueeze(-1).to(self.src_embed.weight.dtype)
        for layer in self.encoder:
            x = layer(x, src_mask)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x, src_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, V] for every target position (or [B, V] for the last one)."""
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, src_mask)
        return self._project(x[:, -1] if last_only else x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        weight = self.tgt_embed.weight if self.output_proj is None else self.output_proj.weight
        return F.linear(x, weight)

    def start_cache(self, memory: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per-layer caches for ``decode_step``, holding the cross-attention keys/values of ``memory``."""
        caches = []
        for layer in self.decoder:
            k, v = layer.cross_attn.memory_kv(memory)
            caches.append({"cross_k": k, "cross_v": v})
        return caches

    def reorder_cache(self, caches: list[dict[str, torch.Tensor]], rows: torch.Tensor) -> None:
        """Keep the self-attention history of the rows beam search continues (memory rows stay)."""
        for cache in caches:
            for key in ("self_k", "self_v"):
                if key in cache:
                    cache[key] = cache[key].index_select(0, rows)

    def decode_step(self, token: torch.Tensor, position: int, src_mask: torch.Tensor,
                    caches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Logits [N, V] of the position after ``token`` [N] (the ``position``-th decoder input)."""
        pos = self.positions[self.pad + 1 + position]
        x = self.embed_scale * self.tgt_embed(token[:, None]) + pos.to(self.tgt_embed.weight.dtype)
        for layer, cache in zip(self.decoder, caches, strict=True):
            x = layer.step(x, src_mask, cache)
        return self._project(x[:, 0])


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, epsilon: float,
                       pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fairseq's label-smoothed cross entropy, summed over non-pad targets.

    loss = (1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum_v(-log p_v). Returns (loss_sum, nll_sum,
    ntokens); divide by ntokens for the per-target-token normalisation fairseq uses.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)
    mask = target.ne(pad)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(dim=-1)
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return (loss * mask).sum(), (nll * mask).sum(), mask.sum()


# ------------------------------------------------------------------------------- beam search
@torch.no_grad()
def beam_search(step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int,
                beam: int, max_len: int, bos: int, eos: int, pad: int,
                device: torch.device, lenpen: float = 1.0, min_len: int = 1,
                forbid: tuple[int, ...] = ()) -> list[list[int]]:
    """Best hypothesis per sentence, fairseq-style (without the final EOS).

    ``step_fn(tokens [B*beam, t], beam_rows [B*beam]) -> log-probs [B*beam, V]`` scores the next
    token; row i of ``tokens`` belongs to sentence ``i // beam``; ``beam_rows`` says which row of the
    previous step each current row continues (so a caller can reorder cached encoder states).
    As in fairseq: each step takes the top 2*beam candidates; an EOS among the first ``beam`` ends
    a hypothesis with score sum(log p) / len^lenpen (len counts the EOS); the first ``beam``
    non-EOS candidates stay active; a sentence is done once ``beam`` hypotheses have ended; EOS is
    forced at ``max_len`` and forbidden before ``min_len``; ``pad`` and ``forbid`` are never emitted.
    """
    b, k = batch_size, beam
    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -math.inf  # step 0: only one live beam per sentence
    best_score = [-math.inf] * b
    best_tokens: list[list[int]] = [[] for _ in range(b)]
    finished = [0] * b
    done = torch.zeros(b, dtype=torch.bool, device=device)
    rows = torch.arange(b * k, device=device)
    for step in range(max_len + 1):
        lprobs = step_fn(tokens, rows).float()
        v = lprobs.shape[-1]
        lprobs[:, pad] = -math.inf
        for t in forbid:
            lprobs[:, t] = -math.inf
        if step < min_len:
            lprobs[:, eos] = -math.inf
        if step >= max_len:  # force EOS
            eos_col = lprobs[:, eos].clone()
            lprobs.fill_(-math.inf)
            lprobs[:, eos] = eos_col
        cand = (scores.view(b * k, 1) + lprobs).view(b, k * v)
        n_cand = min(2 * k, k * v)
        cand_scores, cand_idx = cand.topk(n_cand, dim=1)
        cand_beam, cand_tok = cand_idx // v, cand_idx % v
        is_eos = cand_tok.eq(eos) & torch.isfinite(cand_scores)
        # finalize EOS candidates among the first k (in rank order), for sentences still open
        final = (is_eos[:, :k] & ~done[:, None]).nonzero()
        if final.numel():
            sent, rank = final[:, 0], final[:, 1]
            prev_rows = cand_beam[sent, rank] + sent * k
            normed = (cand_scores[sent, rank] / float(step + 1) ** lenpen).tolist()
            prefixes = tokens[prev_rows, 1:].tolist()
            for i, score, prefix in zip(sent.tolist(), normed, prefixes, strict=True):
                if finished[i] >= k:
                    continue
                finished[i] += 1
                if score > best_score[i]:
                    best_score[i], best_tokens[i] = score, prefix
            done = torch.tensor([f >= k for f in finished], device=device)
        if bool(done.all()) or step >= max_len:
            break
        # the first k non-EOS candidates continue
        order = is_eos.long() * n_cand + torch.arange(n_cand, device=device)
        keep = order.topk(k, dim=1, largest=False).indices
        next_beam = cand_beam.gather(1, keep)
        next_tok = cand_tok.gather(1, keep)
        scores = cand_scores.gather(1, keep)
        rows = (next_beam + torch.arange(b, device=device)[:, None] * k).view(-1)
        tokens = torch.cat([tokens[rows], next_tok.view(-1, 1)], dim=1)
    return best_tokens
