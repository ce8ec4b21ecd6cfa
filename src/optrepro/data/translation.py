"""Parallel text for the translation task: fairseq's dictionary, token-count batching and padding.

``load_text`` gives {split: (source lines, target lines)} for IWSLT14 (:mod:`optrepro.data.iwslt14`,
prepared on first use) or the synthetic corpus (:mod:`optrepro.data.synthetic_mt`); ``Split`` holds
one split as text and token ids and cuts it into padded batches of at most ``max_tokens`` tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from optrepro.errors import DataMissingError, UserError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # source, decoder input, target


# ------------------------------------------------------------------------------- vocabulary
class Vocab:
    """fairseq's Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3, then symbols by count (ties alphabetical),
    padded with ``madeupwordNNNN`` to a multiple of 8."""

    BOS, PAD, EOS, UNK = 0, 1, 2, 3
    SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, lines: Iterable[str], pad_to_multiple: int = 8) -> Vocab:
        counts = Counter(word for line in lines for word in line.split())
        words = sorted(counts, key=lambda w: (-counts[w], w))
        symbols = [*cls.SPECIALS, *words]
        i = 0
        while pad_to_multiple > 1 and len(symbols) % pad_to_multiple:
            symbols.append(f"madeupword{i:04d}")
            i += 1
        return cls(symbols)

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, line: str) -> list[int]:
        """Token ids of a line, with the EOS fairseq appends."""
        return [self.index.get(w, self.UNK) for w in line.split()] + [self.EOS]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.symbols[i] for i in ids if i not in (self.BOS, self.PAD, self.EOS))


# ------------------------------------------------------------------------------- batching
def token_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int | None,
                  multiple: int = 8) -> list[np.ndarray]:
    """fairseq's ``batch_by_size`` over length-sorted sentences.

    Sentences are sorted by source length, then target length, ties in a random order drawn from
    ``seed`` (``None``: index order). A batch grows while (sentences x longest side) <= max_tokens;
    when it is full, a batch of more than ``multiple`` sentences is cut back to a multiple of it
    and the rest starts the next batch.
    """
    n = len(src_lens)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(tgt_lens[order], kind="stable")]
    order = order[np.argsort(src_lens[order], kind="stable")]
    sizes = np.maximum(src_lens, tgt_lens)
    if sizes.max(initial=0) > max_tokens:
        raise UserError(f"a sentence of {int(sizes.max())} tokens exceeds task.max_tokens={max_tokens}")
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for i in order.tolist():
        size = int(sizes[i])
        if current and (len(current) + 1) * max(longest, size) > max_tokens:
            cut = len(current)
            if cut > multiple:
                cut -= cut % multiple
            batches.append(np.asarray(current[:cut]))
            current = current[cut:]
            longest = int(sizes[current].max()) if current else 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(np.asarray(current))
    return batches


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], pad: int, eos: int) -> Batch:
    """Right-padded source, decoder input (EOS + target without its EOS, as fairseq) and target."""
    b = len(src)
    s_len, t_len = max(len(s) for s in src), max(len(t) for t in tgt)
    source = torch.full((b, s_len), pad, dtype=torch.long)
    prev = torch.full((b, t_len), pad, dtype=torch.long)
    target = torch.full((b, t_len), pad, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        source[i, : len(s)] = torch.as_tensor(s)
        target[i, : len(t)] = torch.as_tensor(t)
        prev[i, 0] = eos
        prev[i, 1 : len(t)] = torch.as_tensor(t[:-1])
    return source, prev, target


# ------------------------------------------------------------------------------- data
class Split:
    """One split as text (BPE) and token ids."""

    def __init__(self, src_text: list[str], tgt_text: list[str], src_vocab: Vocab, tgt_vocab: Vocab) -> None:
        self.src_text, self.tgt_text = src_text, tgt_text
        self.src = [src_vocab.encode(line) for line in src_text]
        self.tgt = [tgt_vocab.encode(line) for line in tgt_text]
        self.src_lens = np.asarray([len(s) for s in self.src], dtype=np.int64)
        self.tgt_lens = np.asarray([len(t) for t in self.tgt], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.src)

    def batches(self, max_tokens: int, seed: int | None, device: torch.device) -> list[Batch]:
        out = []
        for idx in token_batches(self.src_lens, self.tgt_lens, max_tokens, seed):
            batch = collate([self.src[i] for i in idx], [self.tgt[i] for i in idx], Vocab.PAD, Vocab.EOS)
            out.append(tuple(t.to(device) for t in batch))
        return out  # type: ignore[return-value]


def load_text(cfg: DictConfig) -> dict[str, tuple[list[str], list[str]]]:
    """{split: (source lines, target lines)} for the configured dataset."""
    data = cfg.data
    if data.name == "synthetic":
        from optrepro.data.synthetic_mt import make_splits

        syn = data
        return make_splits(int(syn.train_size), int(syn.valid_size), int(syn.test_size), int(syn.seed))
    from optrepro.data import iwslt14

    folder = Path(str(data.root))
    src, tgt = str(cfg.src_lang), str(cfg.tgt_lang)
    if not iwslt14.is_prepared(folder, src, tgt):
        raw = Path(str(data.raw)) if data.get("raw") else None
        if raw is None or not raw.exists():
            raise DataMissingError(
                f"IWSLT14 not found: {folder} has no {{train,valid,test}}.{{{src},{tgt}}} and task.data.raw={raw} "
                f"does not exist; download de-en.tgz ({iwslt14.URL.split()[0]}) to task.data.raw, or run "
                f"`python -m optrepro.data.iwslt14 --raw de-en.tgz --out {folder}`")
        iwslt14.prepare(raw, folder, merges=int(data.bpe_merges), workers=int(data.get("prepare_workers", 1)))
    return {split: iwslt14.load_prepared(folder, split, src, tgt) for split in ("train", "valid", "test")}


def text_provenance(cfg: DictConfig, counts: dict[str, int]) -> dict[str, Any]:
    """data.json of what :func:`load_text` read: the synthetic grammar, or the prepared IWSLT14 files."""
    from optrepro.data import provenance

    if cfg.data.name == "synthetic":
        return provenance.synthetic("synthetic_mt", f"a rule-based grammar, seed {int(cfg.data.seed)}")
    return provenance.iwslt14(Path(str(cfg.data.root)), counts)


def subset(pair: tuple[list[str], list[str]], n: Any) -> tuple[list[str], list[str]]:
    """The first ``n`` sentence pairs (all when ``n`` is None)."""
    return pair if n is None else (pair[0][: int(n)], pair[1][: int(n)])


__all__ = ["Batch", "Split", "Vocab", "collate", "load_text", "subset", "text_provenance", "token_batches"]
