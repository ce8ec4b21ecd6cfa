"""BLEU the two ways translation papers report it.

* ``tokenized_bleu``: the number fairseq's ``generate.py --remove-bpe`` prints — BLEU on the
  Moses-tokenized, lowercased text after BPE removal, no further tokenization
  (``sacrebleu.corpus_bleu(..., tokenize="none")``).
* ``detok_bleu``: sacreBLEU's standard signature (13a) on Moses-detokenized hypotheses and
  references (what fairseq's ``--eval-bleu-detok moses`` computes during training).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import sacrebleu


def remove_bpe(line: str, marker: str = "@@ ") -> str:
    """Undo subword-nmt segmentation ("wor@@ d" -> "word"), as fairseq's ``--remove-bpe``."""
    return (line + " ").replace(marker, "").rstrip()


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU on already tokenized text (the fairseq/multi-bleu number)."""
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="none", force=True).score)


@lru_cache(maxsize=4)
def _detokenizer(lang: str):  # noqa: ANN202 - sacremoses has no type hints
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def detokenize(line: str, lang: str) -> str:
    return _detokenizer(lang).detokenize(line.split())


def detok_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str) -> float:
    """sacreBLEU (default 13a tokenization) after Moses detokenization of both sides."""
    hyp = [detokenize(h, lang) for h in hyps]
    ref = [detokenize(r, lang) for r in refs]
    return float(sacrebleu.corpus_bleu(hyp, [ref]).score)
