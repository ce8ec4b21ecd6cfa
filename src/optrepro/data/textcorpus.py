"""Word-level text corpora in the Penn Treebank (Mikolov) format, and a PTB-style corpus built
from English text that ships with Python.

The format: one sentence per line, tokens separated by spaces, rare words already replaced by
``<unk>``. Reading appends ``<eos>`` to every line and numbers the words in order of first
appearance, train -> valid -> test (as salesforce/awd-lstm-lm's ``data.Corpus`` does, so word ids
match the reference). ``batchify`` cuts a token stream into ``batch`` parallel columns and
``get_batch`` takes a window of it with the targets shifted by one token.

``build_pydoc_corpus`` turns the documentation topics of ``pydoc_data.topics`` (part of the
standard library) into such files with PTB's preprocessing, so ``make demo`` has a real English
language-modeling task without a download.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from optrepro.errors import DataMissingError

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------- corpus
@dataclass
class Vocabulary:
    """Word <-> id, ids given in order of first appearance."""

    idx2word: list[str] = field(default_factory=list)
    word2idx: dict[str, int] = field(default_factory=dict)

    def add(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


@dataclass
class Corpus:
    """Token-id streams of the three splits and the shared vocabulary."""

    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    files: dict[str, str] = field(default_factory=dict)  # split -> path it was read from

    def split(self, name: str) -> torch.Tensor:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def read_lines(path: Path) -> list[list[str]]:
    """Tokens of every line, each line closed by ``<eos>`` (empty lines give a lone ``<eos>``)."""
    with open(path, encoding="utf-8") as f:
        return [line.split() + [EOS] for line in f]


def load_corpus(paths: Mapping[str, Path]) -> Corpus:
    """Read PTB-format train/valid/test files into id streams (vocabulary built train -> valid -> test)."""
    vocab = Vocabulary()
    streams: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        lines = read_lines(Path(paths[split]))
        ids = [vocab.add(word) for line in lines for word in line]
        streams[split] = torch.tensor(ids, dtype=torch.long)
    return Corpus(vocab, streams["train"], streams["valid"], streams["test"],
                  files={s: str(paths[s]) for s in SPLITS})


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A 1-D stream as ``(T, batch_size)`` columns; the tail that does not fill a row is dropped."""
    n = data.numel() // batch_size
    if n < 2:
        raise ValueError(f"a stream of {data.numel()} tokens is too short for batch size {batch_size}")
    return data[: n * batch_size].view(batch_size, n).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[i : i+L]`` and targets ``source[i+1 : i+1+L]`` (both ``(L, batch)``),
    with ``L = min(seq_len, T - 1 - i)`` so the last window is cut short, never padded."""
    length = min(seq_len, source.size(0) - 1 - i)
    if length <= 0:
        raise ValueError(f"no window starts at row {i} of a stream with {source.size(0)} rows")
    return source[i : i + length], source[i + 1 : i + 1 + length]


def unigram_perplexity(train: torch.Tensor, evaluation: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on ``evaluation`` of the unigram model fit on ``train`` (add-one smoothing, so a
    word never seen in training still has a finite cost). The yardstick a language model must beat."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return math.exp(-float(logp[evaluation].mean()))


# ----------------------------------------------------------------------------- PTB-style preprocessing
_HEADING_RULE = re.compile(r"^\s*[*=\-~^#+]{3,}\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d")


def text_to_sentences(text: str) -> list[list[str]]:
    """English prose -> tokenized sentences, as Mikolov's PTB: lowercase, punctuation dropped,
    numbers -> ``N``. Indented blocks (code, grammar rules) and heading underlines are skipped."""
    sentences: list[list[str]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [ln for ln in paragraph.splitlines() if ln.strip() and not _HEADING_RULE.match(ln)]
        prose = [ln for ln in lines if not ln.startswith((" ", "\t"))]
        if not prose:
            continue
        for sentence in _SENTENCE_END.split(" ".join(ln.strip() for ln in prose)):
            tokens = ["N" if _NUMBER.match(t) else t for t in _TOKEN.findall(sentence.lower())]
            if len(tokens) >= 2:
                sentences.append(tokens)
    return sentences


def split_lines(lines: Sequence[list[str]], block: int = 20) -> dict[str, list[list[str]]]:
    """Deterministic split by blocks of consecutive lines: of every 10 blocks, the 9th goes to
    valid and the 10th to test (contiguous text, like PTB's section split)."""
    out: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    for k, line in enumerate(lines):
        slot = (k // block) % 10
        out["valid" if slot == 8 else "test" if slot == 9 else "train"].append(line)
    return out


def cap_vocabulary(splits: Mapping[str, list[list[str]]], vocab_size: int) -> dict[str, list[list[str]]]:
    """Keep the ``vocab_size - 2`` most frequent training words (ties alphabetical); every other
    word becomes ``<unk>`` in all splits. With ``<eos>`` and ``<unk>`` the vocabulary then has at
    most ``vocab_size`` entries, as PTB's 10k."""
    counts = Counter(w for line in splits["train"] for w in line if w != UNK)
    keep = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 2]}
    return {s: [[w if w in keep else UNK for w in line] for line in lines] for s, lines in splits.items()}


def pydoc_topics() -> list[tuple[str, str]]:
    """(topic, text) of the standard library's documentation topics, sorted by topic."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def build_ptb_style(texts: Iterable[str], vocab_size: int) -> dict[str, list[str]]:
    """Texts -> PTB-format lines (one sentence per line, space-separated) for each split."""
    sentences = [s for text in texts for s in text_to_sentences(text)]
    capped = cap_vocabulary(split_lines(sentences), vocab_size)
    return {s: [" ".join(line) for line in lines] for s, lines in capped.items()}


PYDOC_BUILDER_VERSION = 1


def _file_name(split: str) -> str:
    return f"ptb.{split}.txt"


def build_pydoc_corpus(root: Path, vocab_size: int) -> dict[str, Path]:
    """Write the pydoc corpus into ``root`` unless it is already there, built with the same
    settings and Python version (``meta.json`` records them and each file's sha256).

    The text of ``pydoc_data.topics`` changes between Python releases, so the Python version is
    part of the corpus's identity; the files' hashes go into each run's summary.
    """
    from optrepro.runs import atomic_write_json, atomic_write_text

    root = Path(root)
    paths = {s: root / _file_name(s) for s in SPLITS}
    settings = {"builder": "pydoc_data.topics", "version": PYDOC_BUILDER_VERSION,
                "vocab_size": int(vocab_size), "python": ".".join(map(str, sys.version_info[:3]))}
    meta_path = root / "meta.json"
    if meta_path.is_file() and all(p.is_file() for p in paths.values()):
        meta = json.loads(meta_path.read_text())
        hashes = {s: sha256_file(p) for s, p in paths.items()}
        if meta.get("settings") == settings and meta.get("sha256") == hashes:
            return paths
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataMissingError(f"cannot create the corpus folder {root} ({exc.strerror}); "
                               "set task.data.root") from None
    splits = build_ptb_style((text for _, text in pydoc_topics()), vocab_size)
    for split, lines in splits.items():
        atomic_write_text(paths[split], "\n".join(lines) + "\n")
    atomic_write_json(meta_path, {"settings": settings,
                                  "sha256": {s: sha256_file(p) for s, p in paths.items()},
                                  "lines": {s: len(v) for s, v in splits.items()}})
    return paths


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = [
    "EOS", "SPLITS", "UNK", "Corpus", "Vocabulary", "batchify", "build_ptb_style", "build_pydoc_corpus",
    "cap_vocabulary", "get_batch", "load_corpus", "read_lines", "sha256_file", "split_lines",
    "text_to_sentences", "unigram_perplexity",
]
