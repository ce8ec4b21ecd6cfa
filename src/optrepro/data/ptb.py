"""Penn Treebank, Mikolov's preprocessing (ptb.train.txt, ptb.valid.txt, ptb.test.txt).

10k-word vocabulary, 929k/73k/82k tokens with ``<eos>``. The files come from Mikolov's
``simple-examples.tgz`` (folder ``simple-examples/data/``); ``download_ptb`` fetches and unpacks
that archive and checks each file's md5 (the sums torchtext publishes for the same files).
salesforce/awd-lstm-lm's ``getdata.sh`` renames them to ``train.txt`` etc. in ``data/penn``; a
folder in that layout is read as well.

``write_fake_ptb`` writes tiny files in the same format for tests and smoke runs.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from optrepro.data.textcorpus import SPLITS, UNK, Corpus, load_corpus
from optrepro.errors import DataMissingError

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
#: where the files sit inside simple-examples.tgz
ARCHIVE_FOLDER = "simple-examples/data"
#: md5 of each file (as published by torchtext's PennTreebank dataset for the same files)
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}


def ptb_file_names(split: str) -> tuple[str, str]:
    """Accepted file names of a split: Mikolov's, then awd-lstm-lm's."""
    return f"ptb.{split}.txt", f"{split}.txt"


def find_ptb_files(root: Path) -> dict[str, Path] | None:
    """The three split files in ``root``, or None when any is missing."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        for name in ptb_file_names(split):
            if (Path(root) / name).is_file():
                found[split] = Path(root) / name
                break
        else:
            return None
    return found


def load_ptb(root: Path, download: bool = False, url: str = PTB_URL,
             md5: dict[str, str] | None = PTB_MD5) -> Corpus:
    """The PTB corpus from ``root``; downloads it first when asked and missing (md5 None: no check)."""
    root = Path(root)
    paths = find_ptb_files(root)
    if paths is None and download:
        download_ptb(root, url, md5)
        paths = find_ptb_files(root)
    if paths is None:
        raise DataMissingError(
            f"Penn Treebank files ptb.{{train,valid,test}}.txt not found in {root}; "
            f"add task.data.download=true to fetch {Path(url).name} (or set task.data.root)"
        )
    return load_corpus(paths)


def download_ptb(root: Path, url: str = PTB_URL, md5: dict[str, str] | None = PTB_MD5,
                 timeout: float = 60.0) -> dict[str, Path]:
    """Download Mikolov's archive, copy ``ptb.{train,valid,test}.txt`` into ``root``, check md5s.

    Fetched with urllib (any scheme it knows: http(s), file), unpacked with torchvision's
    ``extract_archive``. The archive and its other contents (34 MB unpacked) are removed
    afterwards. Any failure is a one-line :class:`DataMissingError`; nothing half-written is
    left in ``root``.
    """
    from torchvision.datasets.utils import calculate_md5, extract_archive

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / (Path(urllib.parse.urlparse(url).path).name or "simple-examples.tgz")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
            extract_archive(str(archive), tmp)
        except Exception as exc:  # noqa: BLE001 - network, HTTP and archive errors alike
            raise DataMissingError(
                f"could not download {url} into {root} ({type(exc).__name__}: {str(exc).strip()[:120]}); "
                f"fetch it by hand and put ptb.{{train,valid,test}}.txt into {root}"
            ) from None
        staged: dict[str, Path] = {}
        for split in SPLITS:
            source = Path(tmp) / ARCHIVE_FOLDER / f"ptb.{split}.txt"
            if not source.is_file():
                raise DataMissingError(f"{url} has no {ARCHIVE_FOLDER}/ptb.{split}.txt; "
                                       "is it Mikolov's simple-examples.tgz?")
            if md5 is not None and calculate_md5(str(source)) != md5[split]:
                raise DataMissingError(f"md5 of ptb.{split}.txt from {url} is not {md5[split]}; "
                                       "the download is corrupt")
            staged[split] = source
        out_paths = {}
        for split, source in staged.items():
            target = root / f"ptb.{split}.txt"
            part = root / f".{target.name}.part"
            shutil.copyfile(source, part)
            part.replace(target)
            out_paths[split] = target
    return out_paths


def write_fake_ptb(root: Path, lines: dict[str, int] | None = None, vocab_size: int = 50,
                   seed: int = 0) -> dict[str, Path]:
    """Tiny files in PTB's format: lowercase words, ``N`` for numbers, ``<unk>`` for rare words.

    Sentences follow a fixed random bigram chain, so there is structure for a model to learn.
    """
    lines = lines or {"train": 200, "valid": 30, "test": 30}
    gen = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(vocab_size - 2)] + ["N", UNK]
    successors = torch.randint(0, vocab_size, (vocab_size, 3), generator=gen)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        n = lines[split]
        lengths = torch.randint(3, 15, (n,), generator=gen).tolist()
        starts = torch.randint(0, vocab_size, (n,), generator=gen).tolist()
        choices = torch.randint(0, 3, (n, 15), generator=gen).tolist()
        table = successors.tolist()
        out = []
        for length, word, picks in zip(lengths, starts, choices, strict=True):
            sentence = []
            for k in range(length):
                sentence.append(words[word])
                word = table[word][picks[k]]
            out.append(" " + " ".join(sentence) + " ")  # PTB lines start and end with a space
        paths[split] = root / f"ptb.{split}.txt"
        paths[split].write_text("\n".join(out) + "\n")
    return paths


__all__ = ["PTB_MD5", "PTB_URL", "download_ptb", "find_ptb_files", "load_ptb", "write_fake_ptb"]
