"""A synthetic translation task with a known answer (for the demo: no download, CPU-sized).

Two small word-level "languages". Source grammar (SVO, adjectives before the noun)::

    SENT   := CLAUSE [CONJ CLAUSE] "."
    CLAUSE := NP VERB NP
    NP     := DET ADJ{0,2} NOUN | NAME

Translation rule (deterministic, so the reference is the only right answer):

* every word maps through a fixed dictionary (a seeded permutation within its class);
* names are cognates: copied unchanged (so copying the source scores a little BLEU);
* adjectives follow the noun, in reverse order (``d a1 a2 n`` -> ``D N A2 A1``);
* the verb moves to the end of its clause (SVO -> SOV);
* the target determiner agrees with the noun's gender (``noun index % 2``), so a determiner
  can only be translated by looking at its noun.

Sentences have 5-19 words. ``make_splits`` returns text lines like the prepared IWSLT folders.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

N_DET, N_ADJ, N_NOUN, N_VERB, N_CONJ, N_NAME = 4, 20, 40, 20, 2, 10


@dataclass(frozen=True)
class Lexicon:
    """The fixed source -> target dictionary (a function of ``seed`` only)."""

    adj: list[int]
    noun: list[int]
    verb: list[int]
    conj: list[int]

    @classmethod
    def build(cls, seed: int = 0) -> Lexicon:
        rng = random.Random(f"synthetic-mt-lexicon-{seed}")

        def perm(n: int) -> list[int]:
            p = list(range(n))
            rng.shuffle(p)
            return p

        return cls(adj=perm(N_ADJ), noun=perm(N_NOUN), verb=perm(N_VERB), conj=perm(N_CONJ))


def _noun_phrase(rng: random.Random) -> list[tuple[str, int]]:
    if rng.random() < 0.15:
        return [("name", rng.randrange(N_NAME))]
    adjs = [("adj", rng.randrange(N_ADJ)) for _ in range(rng.choice((0, 0, 1, 1, 2)))]
    return [("det", rng.randrange(N_DET)), *adjs, ("noun", rng.randrange(N_NOUN))]


def _clause(rng: random.Random) -> tuple[list[tuple[str, int]], tuple[str, int], list[tuple[str, int]]]:
    return _noun_phrase(rng), ("verb", rng.randrange(N_VERB)), _noun_phrase(rng)


_SRC_PREFIX = {"det": "de", "adj": "ad", "noun": "no", "verb": "ve", "conj": "co"}
_TGT_PREFIX = {"det": "DT", "adj": "AJ", "noun": "NN", "verb": "VB", "conj": "CC"}


def _src_np(np_: list[tuple[str, int]]) -> list[str]:
    return [f"name{i}" if kind == "name" else f"{_SRC_PREFIX[kind]}{i}" for kind, i in np_]


def _tgt_np(np_: list[tuple[str, int]], lex: Lexicon) -> list[str]:
    if np_[0][0] == "name":
        return [f"name{np_[0][1]}"]
    det = np_[0][1]
    noun = np_[-1][1]
    adjs = [f"AJ{lex.adj[i]}" for _, i in reversed(np_[1:-1])]
    return [f"DT{2 * det + noun % 2}", f"NN{lex.noun[noun]}", *adjs]


def sentence_pair(rng: random.Random, lex: Lexicon) -> tuple[str, str]:
    """One random source sentence and its translation."""
    clauses = [_clause(rng)]
    conj = None
    if rng.random() < 0.4:
        conj = rng.randrange(N_CONJ)
        clauses.append(_clause(rng))
    src: list[str] = []
    tgt: list[str] = []
    for n, (subj, (_, verb), obj) in enumerate(clauses):
        if n == 1:
            assert conj is not None
            src.append(f"co{conj}")
            tgt.append(f"CC{lex.conj[conj]}")
        src += [*_src_np(subj), f"ve{verb}", *_src_np(obj)]
        tgt += [*_tgt_np(subj, lex), *_tgt_np(obj, lex), f"VB{lex.verb[verb]}"]
    return " ".join([*src, "."]), " ".join([*tgt, "."])


def translate(src: str, lex: Lexicon) -> str:
    """The reference translation of a source sentence (inverse of the generator's bookkeeping)."""
    words = src.split()
    assert words[-1] == "."
    out: list[str] = []
    clause: list[str] = []

    def flush() -> None:
        # clause = NP VERB NP; find the verb
        v = next(i for i, w in enumerate(clause) if w.startswith("ve"))
        nps = [_parse_np(clause[:v]), _parse_np(clause[v + 1 :])]
        out.extend([*_tgt_np(nps[0], lex), *_tgt_np(nps[1], lex), f"VB{lex.verb[int(clause[v][2:])]}"])

    for w in words[:-1]:
        if w.startswith("co"):
            flush()
            clause = []
            out.append(f"CC{lex.conj[int(w[2:])]}")
        else:
            clause.append(w)
    flush()
    return " ".join([*out, "."])


def _parse_np(words: list[str]) -> list[tuple[str, int]]:
    kinds = {v: k for k, v in _SRC_PREFIX.items()}
    return [("name", int(w[4:])) if w.startswith("name") else (kinds[w[:2]], int(w[2:])) for w in words]


def make_splits(train_size: int, valid_size: int, test_size: int,
                seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """{split: (source lines, target lines)}; a function of the sizes and ``seed`` only."""
    lex = Lexicon.build(seed)
    out = {}
    for split, size in (("train", train_size), ("valid", valid_size), ("test", test_size)):
        rng = random.Random(f"synthetic-mt-{split}-{seed}")
        pairs = [sentence_pair(rng, lex) for _ in range(size)]
        out[split] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return out
