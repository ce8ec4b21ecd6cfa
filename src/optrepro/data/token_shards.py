"""Token shards for language-model pretraining: the nanoGPT/llm.c ``.bin`` layout, written once, memory-mapped.

A shard is a header of 256 little-endian int32 -- ``[20240520 (magic), 1 (version), token count, 0, ...]``
-- followed by the tokens as uint16, as llm.c's ``dev/data/data_common.py`` writes them (so shards made
by llm.c's ``fineweb.py`` are read as they are, and ours by llm.c). A split is the sorted list of its
shards ``<prefix>_<split>_NNNNNN.bin``; :class:`TokenStream` reads them as one memory-mapped stream, and a
training position in it is one integer (the task keeps it in the checkpoint).

Documents are written as in llm.c: each starts with the ``<|endoftext|>`` token.

Encodings (``task.data.encoding``, recorded in every shard folder's ``meta.json`` and the run's data.json):

* ``gpt2``: tiktoken's GPT-2 BPE (50257 tokens). tiktoken downloads its two BPE files on first use into
  ``TIKTOKEN_CACHE_DIR``; offline, copy them there first.
* ``gpt2_bytes``: a tiktoken ``Encoding`` built here, offline: GPT-2's pre-tokenisation pattern with the 256
  byte-level ranks and no merges, plus ``<|endoftext|>`` = 256 (257 tokens). Token ids are not GPT-2's; it is
  the CPU task's encoding, so the CPU run needs no download and exercises the same code path.

Preparation: ``python -m optrepro.data.token_shards hf --dataset HuggingFaceFW/fineweb-edu --name sample-10BT
--out data/fineweb_edu`` (HF ``datasets``, streamed; the first ``--val-tokens`` go to the val split, as
llm.c's shard 0), or ``... pydoc --out data/pydoc_tokens`` for the corpus that ships with Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optrepro.errors import DataMissingError, UserError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
ENCODINGS = ("gpt2", "gpt2_bytes")
EOT = "<|endoftext|>"
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------- encodings
def get_encoding(name: str) -> Any:
    """The tiktoken ``Encoding`` a shard folder was (or will be) written with."""
    import tiktoken

    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as exc:  # no cache and no network: requests' or tiktoken's own error
            raise DataMissingError(
                f"tiktoken's gpt2 encoding is not cached and could not be fetched ({type(exc).__name__}); put "
                "vocab.bpe/encoder.json's cache files into TIKTOKEN_CACHE_DIR or use task.data.encoding=gpt2_bytes"
            ) from None
    if name == "gpt2_bytes":
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's split pattern (no download)

        ranks = {bytes([i]): i for i in range(256)}
        return tiktoken.Encoding(name="gpt2_bytes", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={EOT: 256})
    raise UserError(f"unknown encoding {name!r}; choose one of: {', '.join(ENCODINGS)}")


def encode_documents(texts: Iterable[str], encoding: Any) -> Iterator[np.ndarray]:
    """Each document as uint16 ids, led by ``<|endoftext|>`` (llm.c's fineweb.py layout)."""
    eot = encoding.eot_token
    if encoding.n_vocab > 2**16:
        raise UserError(f"encoding {encoding.name} has {encoding.n_vocab} tokens: more than uint16 shards hold")
    for text in texts:
        yield np.array([eot, *encoding.encode_ordinary(text)], dtype=np.uint16)


# ----------------------------------------------------------------------------- one shard
def write_shard(path: Path, tokens: np.ndarray | Sequence[int]) -> Path:
    """Write ``tokens`` as one ``.bin`` shard (atomically: a crash leaves no half shard under the name)."""
    toks = np.asarray(tokens)
    if toks.size and (toks.min() < 0 or toks.max() >= 2**16):
        raise ValueError("shard tokens must lie in [0, 65536) (uint16)")
    if toks.size >= 2**31:
        raise ValueError("a shard holds fewer than 2**31 tokens")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, toks.size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())
    tmp.replace(path)
    return path


def read_header(path: Path) -> int:
    """The token count of a shard, after checking its magic, version and size (one-line errors)."""
    path = Path(path)
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    if header.size < 3 or int(header[0]) != MAGIC:
        raise DataMissingError(f"{path} is not a token shard (magic {MAGIC} missing); rewrite it with "
                               "python -m optrepro.data.token_shards")
    if int(header[1]) != VERSION:
        raise DataMissingError(f"{path} has shard version {int(header[1])}; only version {VERSION} (uint16) is read")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if path.stat().st_size != expected:
        raise DataMissingError(f"{path} is {path.stat().st_size} bytes but its header promises {expected} "
                               "(truncated?); rewrite it")
    return count


def open_shard(path: Path) -> np.memmap:
    """The tokens of a shard, memory-mapped read-only (nothing is loaded until sliced)."""
    count = read_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_paths(root: Path, prefix: str, split: str) -> list[Path]:
    return sorted(Path(root).glob(f"{prefix}_{split}_*.bin"))


# ----------------------------------------------------------------------------- a split
class TokenStream:
    """The shards of one split as one stream of tokens; ``window(pos, n)`` copies ``n`` of them from ``pos``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise DataMissingError("no token shards given")
        self.paths = [Path(p) for p in paths]
        self.shards = [open_shard(p) for p in self.paths]
        self.starts = np.cumsum([0] + [s.size for s in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, pos: int, n: int) -> np.ndarray:
        """Tokens ``[pos, pos + n)`` as int64 (across shard boundaries)."""
        if pos < 0 or pos + n > len(self):
            raise IndexError(f"window [{pos}, {pos + n}) outside a stream of {len(self)} tokens")
        out = np.empty(n, dtype=np.int64)
        k = int(np.searchsorted(self.starts, pos, side="right")) - 1
        filled = 0
        while filled < n:
            lo = pos + filled - int(self.starts[k])
            take = min(n - filled, self.shards[k].size - lo)
            out[filled : filled + take] = self.shards[k][lo : lo + take]
            filled += take
            k += 1
        return out


class ShardWriter:
    """Accumulates documents and writes ``<prefix>_<split>_NNNNNN.bin`` shards of ``shard_tokens`` tokens."""

    def __init__(self, root: Path, prefix: str, split: str, shard_tokens: int) -> None:
        self.root, self.prefix, self.split, self.shard_tokens = Path(root), prefix, split, int(shard_tokens)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.index = 0
        self.total = 0
        self.written: list[Path] = []

    def add(self, tokens: np.ndarray) -> None:
        self.buffer.append(tokens)
        self.buffered += tokens.size
        while self.buffered >= self.shard_tokens:
            flat = np.concatenate(self.buffer)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens :]
            self.buffer, self.buffered = ([rest] if rest.size else []), rest.size

    def close(self) -> list[Path]:
        if self.buffered:
            self._write(np.concatenate(self.buffer))
            self.buffer, self.buffered = [], 0
        return self.written

    def _write(self, tokens: np.ndarray) -> None:
        path = self.root / f"{self.prefix}_{self.split}_{self.index:06d}.bin"
        self.written.append(write_shard(path, tokens))
        self.index += 1
        self.total += tokens.size


def write_splits(texts: Iterable[str], root: Path, prefix: str, encoding: Any, val_tokens: int,
                 shard_tokens: int, max_tokens: int | None = None, source: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Tokenize ``texts`` in order: whole documents to val until it holds ``val_tokens``, the rest to train
    (until ``max_tokens`` in all); write the shards and ``<prefix>_meta.json`` (encoding, counts, source)."""
    root = Path(root)
    writers = {s: ShardWriter(root, prefix, s, shard_tokens) for s in SPLITS}
    total = 0
    for doc in encode_documents(texts, encoding):
        split = "val" if writers["val"].total + writers["val"].buffered < val_tokens else "train"
        writers[split].add(doc)
        total += doc.size
        if max_tokens is not None and total >= max_tokens:
            break
    paths = {s: w.close() for s, w in writers.items()}
    if not paths["train"] or not paths["val"]:
        raise UserError(f"the source gave {total} tokens: too few for both splits (val_tokens={val_tokens})")
    meta = {"layout": {"magic": MAGIC, "version": VERSION, "dtype": "uint16"},
            "encoding": encoding.name, "n_vocab": int(encoding.n_vocab), "eot": int(encoding.eot_token),
            "tokens": {s: int(writers[s].total) for s in SPLITS},
            "shards": {s: [p.name for p in paths[s]] for s in SPLITS}, "source": source or {}}
    from optrepro.runs import atomic_write_json

    atomic_write_json(meta_path(root, prefix), meta)
    return meta


def meta_path(root: Path, prefix: str) -> Path:
    return Path(root) / f"{prefix}_meta.json"


def read_meta(root: Path, prefix: str) -> dict[str, Any] | None:
    path = meta_path(root, prefix)
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- the corpora
PYDOC_VERSION = 1


def pydoc_source() -> dict[str, Any]:
    return {"builder": "pydoc_data.topics", "version": PYDOC_VERSION,
            "python": ".".join(map(str, sys.version_info[:3]))}


def prepare_pydoc(root: Path, encoding_name: str, val_tokens: int, shard_tokens: int = 10_000_000) -> dict[str, Any]:
    """The documentation topics of ``pydoc_data.topics`` (one document each, in topic order) as shards,
    written unless the folder already holds them for this encoding, Python version and val size."""
    from optrepro.data.textcorpus import pydoc_topics

    prefix = f"pydoc_{encoding_name}"
    source = {**pydoc_source(), "val_tokens": int(val_tokens)}
    meta = read_meta(root, prefix)
    if meta is not None and meta.get("source") == source and all(
            (Path(root) / name).is_file() for names in meta["shards"].values() for name in names):
        return meta
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataMissingError(f"cannot create the token folder {root} ({exc.strerror}); set task.data.root") from None
    texts = (text for _, text in pydoc_topics())
    return write_splits(texts, root, prefix, get_encoding(encoding_name), val_tokens, shard_tokens, source=source)


def prepare_hf(dataset: str, name: str | None, split: str, out: Path, encoding_name: str, val_tokens: int,
               shard_tokens: int, max_tokens: int | None, text_key: str = "text",
               data_files: str | None = None) -> dict[str, Any]:
    """A Hugging Face dataset (streamed: FineWeb-Edu's sample-10BT, OpenWebText, or a local ``json`` file)
    tokenized into shards under ``out`` with prefix = the dataset's last path part."""
    from datasets import load_dataset

    encoding = get_encoding(encoding_name)  # before the download: a missing BPE file fails at once
    kwargs: dict[str, Any] = {"split": split, "streaming": True}
    if data_files:
        kwargs["data_files"] = data_files
    try:
        ds = load_dataset(dataset, name, **kwargs)
    except (ConnectionError, FileNotFoundError, ValueError) as exc:  # offline, a wrong name or config
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataMissingError(f"cannot read the dataset {dataset!r} (name {name!r}): {first}") from None
    prefix = f"{Path(dataset).name.replace('-', '_')}_{encoding_name}"
    source = {"builder": "huggingface datasets", "dataset": dataset, "name": name, "split": split,
              "max_tokens": max_tokens, "val_tokens": int(val_tokens)}
    texts = (row[text_key] for row in ds)
    return write_splits(texts, out, prefix, encoding, val_tokens, shard_tokens, max_tokens, source)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optrepro.data.token_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    hf = sub.add_parser("hf", help="a Hugging Face dataset (FineWeb-Edu, OpenWebText, a local json file)")
    hf.add_argument("--dataset", default="HuggingFaceFW/fineweb-edu")
    hf.add_argument("--name", default="sample-10BT", help="the dataset's config (empty: none)")
    hf.add_argument("--split", default="train")
    hf.add_argument("--data-files", default=None, help="for --dataset json: the file(s)")
    hf.add_argument("--text-key", default="text")
    hf.add_argument("--max-tokens", type=float, default=None, help="stop after this many tokens (e.g. 1e9)")
    hf.add_argument("--val-tokens", type=float, default=1e7)
    hf.add_argument("--shard-tokens", type=float, default=1e8, help="tokens per shard (llm.c: 1e8)")
    pd = sub.add_parser("pydoc", help="Python's pydoc_data.topics (ships with the interpreter)")
    pd.add_argument("--val-tokens", type=float, default=40_000)
    for p in (hf, pd):
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--encoding", default="gpt2", choices=ENCODINGS)
    args = parser.parse_args(argv)
    try:
        if args.source == "hf":
            meta = prepare_hf(args.dataset, args.name or None, args.split, args.out, args.encoding,
                              int(args.val_tokens), int(args.shard_tokens),
                              None if args.max_tokens is None else int(args.max_tokens), args.text_key,
                              args.data_files)
        else:
            meta = prepare_pydoc(args.out, args.encoding, int(args.val_tokens))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {meta['tokens']['train']} train / {meta['tokens']['val']} val tokens "
          f"({meta['encoding']}, {sum(len(v) for v in meta['shards'].values())} shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
