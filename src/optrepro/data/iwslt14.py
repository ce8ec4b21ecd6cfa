"""IWSLT14 German-English as fairseq's ``examples/translation/prepare-iwslt14.sh`` prepares it.

``python -m optrepro.data.iwslt14 --raw de-en.tgz --out DIR`` reproduces the script step by step
in Python (sacremoses for the Moses perl scripts, subword-nmt for BPE):

1. train: ``train.tags.de-en.{de,en}`` minus lines containing ``<url>``, ``<talkid>`` or
   ``<keywords>``, with ``<title>``/``<description>`` tags removed (their text kept);
   Moses-tokenized (``tokenizer.perl -l L``: escaping on, no aggressive dashes);
   ``clean-corpus-n.perl -ratio 1.5 ... 1 175`` (drop pairs with an empty side, more than 175
   tokens on a side, or a token-count ratio above 1.5); lowercased.
2. valid = every 23rd line of that (lines 23, 46, ...), train = the rest.
3. test = the ``<seg id=...>`` lines of IWSLT14.TED.dev2010, IWSLT14.TEDX.dev2012,
   IWSLT14.TED.tst2010, .tst2011, .tst2012 (``’`` -> ``'``), tokenized and lowercased, in that order.
4. joint BPE: 10,000 merges learned on train.de + train.en, applied to every split.

Output: ``DIR/{train,valid,test}.{de,en}`` (BPE text, one sentence per line), ``DIR/code`` and
``DIR/prepare.json`` (counts). fairseq's numbers are 160,239 / 7,283 / 6,750 pairs; different
counts are printed as a warning (they usually mean a different archive or tokenizer version).

Also writes tiny fake archives in the real layout for tests (``write_fake_raw``).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

SRC, TGT, PAIR = "de", "en", "de-en"
EXPECTED = {"train": 160239, "valid": 7283, "test": 6750}
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
SPLITS = ("train", "valid", "test")
DROP_MARKERS = ("<url>", "<talkid>", "<keywords>")
STRIP_TAGS = ("<title>", "</title>", "<description>", "</description>")
URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz (originally https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz)"
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


# ------------------------------------------------------------------------------- reading raw files
class RawArchive:
    """The ``de-en.tgz`` archive, or a folder holding its files (``de-en/`` or flat)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._members: dict[str, str] = {}
        if self.path.is_file():
            with tarfile.open(self.path) as tar:
                self._members = {Path(m.name).name: m.name for m in tar.getmembers() if m.isfile()}
        elif self.path.is_dir():
            inner = self.path / PAIR if (self.path / PAIR).is_dir() else self.path
            self._members = {p.name: str(p) for p in inner.iterdir() if p.is_file()}
        else:
            raise FileNotFoundError(str(self.path))

    def names(self) -> list[str]:
        return sorted(self._members)

    def read_lines(self, name: str) -> list[str]:
        if name not in self._members:
            raise FileNotFoundError(f"{name} not found in {self.path}")
        if self.path.is_file():
            with tarfile.open(self.path) as tar:
                member = tar.extractfile(self._members[name])
                assert member is not None
                text = io.TextIOWrapper(member, encoding="utf-8").read()
        else:
            text = Path(self._members[name]).read_text(encoding="utf-8")
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def train_text(lines: Iterable[str]) -> list[str]:
    """The grep/sed part of the script for ``train.tags.*``."""
    out = []
    for line in lines:
        if any(marker in line for marker in DROP_MARKERS):
            continue
        for tag in STRIP_TAGS:
            line = line.replace(tag, "")
        out.append(line)
    return out


def xml_segments(lines: Iterable[str]) -> list[str]:
    """The grep/sed part of the script for the dev/test XML files."""
    out = []
    for line in lines:
        if "<seg id" not in line:
            continue
        line = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
        out.append(line.replace("\u2019", "'"))
    return out


# ------------------------------------------------------------------------------- Moses steps
_TOKENIZERS: dict[str, object] = {}


def _tokenize_one(args: tuple[str, str]) -> str:
    line, lang = args
    tok = _TOKENIZERS.get(lang)
    if tok is None:
        from sacremoses import MosesTokenizer

        tok = _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    return tok.tokenize(line, return_str=True, escape=True)  # type: ignore[attr-defined]


def tokenize(lines: Sequence[str], lang: str, workers: int = 1) -> list[str]:
    """``tokenizer.perl -l lang`` (defaults: escape special characters, no aggressive dash split)."""
    jobs = [(line, lang) for line in lines]
    if workers <= 1 or len(jobs) < 10_000:
        return [_tokenize_one(j) for j in jobs]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(_tokenize_one, jobs, chunksize=2000)


def clean_corpus(src: Sequence[str], tgt: Sequence[str], ratio: float = 1.5, min_len: int = 1,
                 max_len: int = 175) -> tuple[list[str], list[str]]:
    """``clean-corpus-n.perl -ratio R corpus L1 L2 out MIN MAX`` (whitespace normalised)."""
    if len(src) != len(tgt):
        raise ValueError(f"parallel files differ in length: {len(src)} vs {len(tgt)} lines")
    keep_src, keep_tgt = [], []
    for s, t in zip(src, tgt, strict=True):
        s_words, t_words = s.replace("|", "").split(), t.replace("|", "").split()
        ns, nt = len(s_words), len(t_words)
        if ns == 0 or nt == 0 or not (min_len <= ns <= max_len and min_len <= nt <= max_len):
            continue
        if ns / nt > ratio or nt / ns > ratio:
            continue
        keep_src.append(" ".join(s_words))
        keep_tgt.append(" ".join(t_words))
    return keep_src, keep_tgt


def lowercase(lines: Iterable[str]) -> list[str]:
    return [line.lower() for line in lines]


# ------------------------------------------------------------------------------- BPE
def learn_bpe(lines: Iterable[str], merges: int, codes_path: Path) -> None:
    """subword-nmt ``learn_bpe.py -s merges`` (min frequency 2, its default)."""
    from subword_nmt.learn_bpe import learn_bpe as _learn

    with codes_path.open("w", encoding="utf-8") as out:
        _learn(io.StringIO("".join(line + "\n" for line in lines)), out, merges)


def apply_bpe(lines: Iterable[str], codes_path: Path) -> list[str]:
    """subword-nmt ``apply_bpe.py -c codes`` (separator ``@@``)."""
    from subword_nmt.apply_bpe import BPE

    with codes_path.open(encoding="utf-8") as f:
        bpe = BPE(f)
    return [bpe.process_line(line) for line in lines]


# ------------------------------------------------------------------------------- the pipeline
def prepare(raw: Path, out: Path, merges: int = 10_000, workers: int = 1,
            expected: dict[str, int] | None = EXPECTED,
            log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run the whole preparation; returns the sentence-pair count of each split."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    archive = RawArchive(raw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenized: dict[str, list[str]] = {}
    for lang in (SRC, TGT):
        say(f"tokenizing train.tags.{PAIR}.{lang} ...")
        tokenized[lang] = tokenize(train_text(archive.read_lines(f"train.tags.{PAIR}.{lang}")), lang, workers)
    src, tgt = clean_corpus(tokenized[SRC], tokenized[TGT])
    cleaned = {SRC: lowercase(src), TGT: lowercase(tgt)}
    text: dict[tuple[str, str], list[str]] = {}
    for lang in (SRC, TGT):
        lines = cleaned[lang]
        text[("valid", lang)] = [line for i, line in enumerate(lines, 1) if i % 23 == 0]
        text[("train", lang)] = [line for i, line in enumerate(lines, 1) if i % 23 != 0]
        test: list[str] = []
        for name in TEST_SETS:
            say(f"tokenizing {name}.{PAIR}.{lang}.xml ...")
            segs = xml_segments(archive.read_lines(f"{name}.{PAIR}.{lang}.xml"))
            test.extend(lowercase(tokenize(segs, lang, workers)))
        text[("test", lang)] = test
    counts = {split: len(text[(split, SRC)]) for split in SPLITS}
    for split in SPLITS:
        if len(text[(split, TGT)]) != counts[split]:
            n_tgt = len(text[(split, TGT)])
            raise ValueError(f"{split}: {counts[split]} {SRC} lines but {n_tgt} {TGT} lines")
    say(f"learning joint BPE ({merges} merges) on train.{SRC} + train.{TGT} ...")
    codes = out / "code"
    learn_bpe(text[("train", SRC)] + text[("train", TGT)], merges, codes)
    for (split, lang), lines in text.items():
        _write_atomic(out / f"{split}.{lang}", apply_bpe(lines, codes))
    _write_atomic(out / "prepare.json", [json.dumps({"counts": counts, "bpe_merges": merges,
                                                      "raw": str(raw)}, indent=1)])
    report_counts(counts, expected, say)
    return counts


def report_counts(counts: dict[str, int], expected: dict[str, int] | None,
                  say: Callable[[str], None]) -> None:
    say("sentence pairs: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if expected and any(counts.get(k) != v for k, v in expected.items()):
        message = ("IWSLT14 split sizes differ from fairseq's "
                   + ", ".join(f"{k} {v:,}" for k, v in expected.items())
                   + "; check the archive and the sacremoses version")
        warnings.warn(message, stacklevel=2)
        say(f"warning: {message}")


def _write_atomic(path: Path, lines: Sequence[str]) -> None:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,
                                     prefix=f".{path.name}.") as f:
        f.write("".join(line + "\n" for line in lines))
        tmp = Path(f.name)
    tmp.replace(path)


# ------------------------------------------------------------------------------- prepared folders
def is_prepared(folder: Path, src: str = SRC, tgt: str = TGT) -> bool:
    return all((Path(folder) / f"{split}.{lang}").is_file() for split in SPLITS for lang in (src, tgt))


def load_prepared(folder: Path, split: str, src: str = SRC, tgt: str = TGT) -> tuple[list[str], list[str]]:
    """Source and target lines of one split of a prepared (BPE text) folder."""
    pair = []
    for lang in (src, tgt):
        text = (Path(folder) / f"{split}.{lang}").read_text(encoding="utf-8")
        pair.append(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"))
    if len(pair[0]) != len(pair[1]):
        raise ValueError(f"{folder}/{split}.{src} and .{tgt} differ in length "
                         f"({len(pair[0])} vs {len(pair[1])})")
    return pair[0], pair[1]


# ------------------------------------------------------------------------------- fake archives for tests
def write_fake_raw(path: Path, train_pairs: Sequence[tuple[str, str]],
                   test_pairs: dict[str, Sequence[tuple[str, str]]], extra_xml: Sequence[str] = ()) -> Path:
    """A ``de-en.tgz`` in the real layout: ``de-en/train.tags.de-en.{de,en}`` with the talk header
    lines around the text, and ``de-en/<set>.de-en.{de,en}.xml`` with ``<seg id="N">`` lines.
    ``extra_xml`` names further XML sets that the preparation must ignore."""
    files: dict[str, str] = {}
    for side, lang in enumerate((SRC, TGT)):
        lines = [
            "<url>http://www.ted.com/talks/fake_talk.html</url>",
            f"<keywords>talks, fake, {lang}</keywords>",
            "<speaker>Fake Speaker</speaker>",
            "<talkid>1</talkid>",
            f"<title>Fake title {lang}</title>",
            f"<description>Fake description {lang}</description>",
        ]
        lines += [pair[side] for pair in train_pairs]
        files[f"train.tags.{PAIR}.{lang}"] = "\n".join(lines) + "\n"
        for name in [*test_pairs, *extra_xml]:
            pairs = test_pairs.get(name, [("ignored satz", "ignored sentence")])
            xml = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
                   f'<{"srcset" if lang == SRC else "refset"} setid="{name}" srclang="german">',
                   '<doc docid="1" genre="lectures">', "<talkid>1</talkid>", "<title>Fake</title>"]
            xml += [f'<seg id="{i}"> {pair[side]} </seg>' for i, pair in enumerate(pairs, 1)]
            xml += ["</doc>", "</srcset>" if lang == SRC else "</refset>", "</mteval>"]
            files[f"{name}.{PAIR}.{lang}.xml"] = "\n".join(xml) + "\n"
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in sorted(files.items()):
            data = content.encode("utf-8")
            info = tarfile.TarInfo(f"{PAIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optrepro.data.iwslt14",
                                     description="Prepare IWSLT14 de-en like fairseq's prepare-iwslt14.sh.")
    parser.add_argument("--raw", type=Path, required=True,
                        help=f"de-en.tgz (or its extracted folder); from {URL}")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder for {train,valid,test}.{de,en}")
    parser.add_argument("--merges", type=int, default=10_000, help="BPE merges (fairseq: 10000)")
    parser.add_argument("--workers", type=int, default=1, help="processes for Moses tokenization")
    args = parser.parse_args(argv)
    if not args.raw.exists():
        print(f"error: {args.raw} does not exist; download it from {URL}", file=sys.stderr)
        return 2
    prepare(args.raw, args.out, merges=args.merges, workers=args.workers)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
