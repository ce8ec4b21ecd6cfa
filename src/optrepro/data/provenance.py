"""What data a run read, and whether it is the real published dataset: the run folder's ``data.json``.

A number is only comparable with a paper's when it was computed on the paper's data. Each task
describes what its loaders read (:func:`record`); the training loop writes that record into the run
folder beside config.yaml, and the analysis compares a run with a published number only when the
record says ``real: true`` (README, "Analysis").

Kinds: ``real`` (an on-disk copy of a published dataset), ``bundled`` (shipped inside a package,
e.g. scikit-learn's digits), ``generated`` (files this project builds from other material, e.g. the
pydoc corpus) and ``synthetic`` (drawn by the task from its seed). Only ``real`` can be verified:

* CIFAR-10/100: the md5 of every file against torchvision's ``CIFAR10``/``CIFAR100`` classes
  (read from torchvision at run time, not copied here);
* Penn Treebank: the md5 of the three files against :data:`optrepro.data.ptb.PTB_MD5`;
* IWSLT14, PASCAL VOC, ImageNet: no reference checksum of what the loaders read exists (prepared
  BPE text depends on the tokenizer and BPE versions; VOC and ImageNet checksums are published for
  the archives, not for extracted folders), so they are recorded but ``unverified`` and never
  ``real``; the record says why and gives the counts beside the published ones.

Tests stand in for the real data by monkeypatching :func:`reference_md5`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

KINDS = ("real", "bundled", "generated", "synthetic")
#: what a verified record's check is called; anything else is not comparable
VERIFIED = "verified"
_CHUNK = 1 << 20

#: published sizes of the datasets without a usable checksum, for the record's counts
IMAGENET_COUNTS = {"train": 1_281_167, "val": 50_000, "classes": 1000}
VOC_COUNTS = {"2007-trainval": 5011, "2007-test": 4952, "2012-trainval": 11540}


def hash_file(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (CIFAR's batches are 30 MB each)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path, root: Path, algorithm: str = "sha256") -> dict[str, Any]:
    """One file read: its path relative to the data root, its size and its digest."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        rel = str(path)
    return {"path": rel, "size": path.stat().st_size, algorithm: hash_file(path, algorithm)}


def manifest(paths: Iterable[Path], root: Path) -> dict[str, Any]:
    """sha256 over the sorted (relative path, size) of many files, with their count and total size.

    For folders of many thousands of images (ImageNet: 1.28 M files, 140 GB; VOC: 27 k files)
    hashing every byte on every run would take minutes to hours; a path/size manifest still tells
    two trees apart when a file is missing, added or truncated, at the cost of one stat per file.
    """
    root = Path(root)
    entries = []
    for p in paths:
        p = Path(p)
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = str(p)
        entries.append((rel, p.stat().st_size))
    entries.sort()
    h = hashlib.sha256()
    for rel, size in entries:
        h.update(f"{rel}\t{size}\n".encode())
    return {"files": len(entries), "bytes": sum(s for _, s in entries), "sha256": h.hexdigest()}


def record(dataset: str, kind: str, real: bool, check: str, summary: str, root: Path | str | None = None,
           files: Sequence[Mapping[str, Any]] = (), **extra: Any) -> dict[str, Any]:
    """The data.json content: what was read, the verdict (``real``, ``check``) and one line for reports."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {"dataset": dataset, "kind": kind, "real": bool(real), "check": check, "summary": summary,
            "root": None if root is None else str(root), "files": [dict(f) for f in files], **extra}


def synthetic(dataset: str, how: str) -> dict[str, Any]:
    """Data the task draws itself (toy functions, a ring of Gaussians, the synthetic MT/detection sets)."""
    return record(dataset, "synthetic", False, "synthetic", f"{dataset}: synthetic ({how})")


# ------------------------------------------------------------------------------ the registry
def reference_md5(dataset: str) -> dict[str, str]:
    """The real dataset's md5 per file name (CIFAR) or split (PTB); {} when none is known."""
    if dataset in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if dataset == "cifar10" else CIFAR100
        sums = {name: md5 for name, md5 in cls.train_list + cls.test_list}
        sums[cls.meta["filename"]] = cls.meta["md5"]
        return sums
    if dataset == "ptb":
        from optrepro.data.ptb import PTB_MD5

        return dict(PTB_MD5)
    return {}


def _verdict(label: str, entries: Mapping[str, Mapping[str, Any]], reference: Mapping[str, str],
             source: str) -> tuple[bool, str, str]:
    """(real, check, summary) of files keyed like ``reference``, each compared by md5."""
    missing = [k for k in reference if k not in entries]
    bad = [k for k in reference if k in entries and entries[k].get("md5") != reference[k]]
    if not reference:
        return False, "unverified", f"{label}: unverified (no reference checksum known)"
    if not missing and not bad:
        return True, VERIFIED, f"{label}: real (all {len(reference)} files match the md5 of {source})"
    wrong = [*bad, *missing]
    what = f"{len(bad)} of {len(reference)} files fail the md5 of {source}" + (
        f", {len(missing)} missing" if missing else "")
    return False, "mismatch", f"{label} files are fake or modified: {what} (first: {wrong[0]})"


# ------------------------------------------------------------------------------ per loader
CIFAR_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def cifar(name: str, root: Path | str) -> dict[str, Any]:
    """The CIFAR files torchvision reads under ``root``, md5 against torchvision's own sums."""
    from optrepro.data.cifar import FOLDERS, expected_files

    root = Path(root)
    folder = root / FOLDERS[name]
    entries = {f: file_entry(folder / f, root, "md5") for f in expected_files(name) if (folder / f).is_file()}
    real, check, summary = _verdict(CIFAR_LABELS[name], entries, reference_md5(name),
                                    f"torchvision's {'CIFAR10' if name == 'cifar10' else 'CIFAR100'}")
    return record(name, "real", real, check, summary, root, list(entries.values()))


def ptb(paths: Mapping[str, Path], root: Path | str) -> dict[str, Any]:
    """The three Penn Treebank files read, md5 against the published sums."""
    entries = {split: file_entry(p, Path(root), "md5") for split, p in paths.items()}
    real, check, summary = _verdict("Penn Treebank", entries, reference_md5("ptb"), "the published PTB (torchtext)")
    return record("ptb", "real", real, check, summary, root, list(entries.values()))


def generated(dataset: str, paths: Mapping[str, Path], root: Path | str, how: str) -> dict[str, Any]:
    """Files this project builds (the pydoc corpus): recorded by sha256; no published dataset to verify."""
    files = [file_entry(p, Path(root)) for p in paths.values()]
    return record(dataset, "generated", False, "generated", f"{dataset}: generated ({how})", root, files)


def iwslt14(folder: Path | str, counts: Mapping[str, int]) -> dict[str, Any]:
    """The prepared BPE files read (sha256) and their sentence-pair counts beside fairseq's."""
    from optrepro.data.iwslt14 import EXPECTED, SPLITS

    folder = Path(folder)
    names = [f"{s}.{lang}" for s in SPLITS for lang in ("de", "en")] + ["code"]
    files = [file_entry(folder / n, folder) for n in names if (folder / n).is_file()]
    shown = ", ".join(f"{k} {counts.get(k, 0):,}" for k in SPLITS)
    fairseq = ", ".join(f"{k} {v:,}" for k, v in EXPECTED.items())
    same = all(counts.get(k) == v for k, v in EXPECTED.items())
    summary = (f"IWSLT14 de-en: unverified ({shown} pairs; fairseq: {'the same' if same else fairseq}; prepared "
               "BPE text has no reference checksum: it depends on the sacremoses and subword-nmt versions)")
    return record("iwslt14", "real", False, "unverified", summary, folder, files, counts=dict(counts),
                  published_counts=dict(EXPECTED))


def voc(root: Path | str, splits: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """Per split the (image, annotation) files read as a path/size manifest; unverified (see module doc)."""
    root = Path(root)
    per_split = {split: {"images": len(pairs), **manifest([Path(f) for pair in pairs for f in pair], root)}
                 for split, pairs in splits.items()}
    shown = ", ".join(f"{s} {m['images']:,} images" for s, m in per_split.items())
    published = ", ".join(f"{s} {VOC_COUNTS[s]:,}" for s in per_split if s in VOC_COUNTS)
    summary = (f"PASCAL VOC: unverified ({shown}; published: {published or 'n/a'}; checksums exist only for "
               "the archives, not for an extracted VOCdevkit)")
    return record("voc", "real", False, "unverified", summary, root, manifest=per_split)


def imagefolder(root: Path | str, datasets: Mapping[str, Any]) -> dict[str, Any]:
    """Per split (torchvision ImageFolder) a path/size manifest, class and image counts; unverified."""
    root = Path(root)
    per_split = {}
    for split, ds in datasets.items():
        per_split[split] = {"classes": len(ds.classes), "images": len(ds.samples),
                            **manifest([Path(p) for p, _ in ds.samples], root)}
    shown = ", ".join(f"{s} {m['images']:,} images in {m['classes']} classes" for s, m in per_split.items())
    summary = (f"ImageFolder: unverified ({shown}; ILSVRC2012 has {IMAGENET_COUNTS['train']:,} train / "
               f"{IMAGENET_COUNTS['val']:,} val in {IMAGENET_COUNTS['classes']}; no reference checksum of an "
               "extracted ImageNet tree exists)")
    return record("imagefolder", "real", False, "unverified", summary, root, manifest=per_split)


def glue(task: str, source: str, root: Path | str | None, files: Mapping[str, Sequence[Path]],
         counts: Mapping[str, int]) -> dict[str, Any]:
    """A GLUE task's TSV files read (sha256), or the hub dataset; unverified either way (GLUE publishes no
    checksums of its files), with the example counts per split."""
    from optrepro.data.glue import HUB_DATASET

    shown = ", ".join(f"{s} {n:,}" for s, n in counts.items())
    if source == "hub":
        return record(task, "real", False, "unverified",
                      f"GLUE {task}: unverified ({HUB_DATASET} from the HF hub; {shown} examples)", None,
                      counts=dict(counts))
    entries = [file_entry(p, Path(root or ".")) for ps in files.values() for p in ps]
    return record(task, "real", False, "unverified",
                  f"GLUE {task}: unverified (GLUE TSV files under {root}; {shown} examples; no published checksums)",
                  root, entries, counts=dict(counts))


def digits() -> dict[str, Any]:
    """scikit-learn's bundled digits file: the package is the source, so it is the real data."""
    import sklearn
    from sklearn.datasets import load_digits  # noqa: F401 - the loader that reads the file below

    path = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    files = [file_entry(path, path.parent)] if path.is_file() else []
    return record("digits", "bundled", True, "bundled",
                  f"digits: bundled with scikit-learn {sklearn.__version__} (UCI handwritten digits)",
                  path.parent, files)


__all__ = ["KINDS", "VERIFIED", "cifar", "digits", "file_entry", "generated", "hash_file", "imagefolder",
           "iwslt14", "manifest", "ptb", "record", "reference_md5", "synthetic", "voc"]
