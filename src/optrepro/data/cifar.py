"""CIFAR-10/100 through torchvision, and a writer of tiny fake files in the exact on-disk format.

torchvision's ``CIFAR10``/``CIFAR100`` check the md5 of every file even with ``download=False``,
so files written by :func:`write_fake_cifar` fail that check by design. ``verify_checksums=False``
loads them through the same torchvision classes with only the md5 comparison replaced by an
existence check (:class:`_NoMd5Mixin`); pickle parsing, reshaping and label handling stay
torchvision's own. Keep the check on for real data.

Command line (writes fake data for tests and smoke runs, or downloads the real data)::

    python -m optrepro.data.cifar --fake --root data/fake            # both CIFAR-10 and CIFAR-100
    python -m optrepro.data.cifar --download --root data             # the real thing (network)
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optrepro.errors import DataMissingError, UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
NAMES = ("cifar10", "cifar100")
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _dataset_class(name: str, verify_checksums: bool) -> type[Any]:
    from torchvision.datasets import CIFAR10, CIFAR100

    if name not in NAMES:
        raise UserError(f"unknown CIFAR dataset '{name}'; choose cifar10 or cifar100")
    base = CIFAR10 if name == "cifar10" else CIFAR100
    if verify_checksums:
        return base
    return type(f"{base.__name__}NoMd5", (_NoMd5Mixin, base), {})


class _NoMd5Mixin:
    """torchvision CIFAR minus the md5 comparison: files must exist, contents are not hashed.

    Overrides exactly the two places torchvision calls ``check_integrity``: the data files
    (``_check_integrity``) and the meta file (``_load_meta``).
    """

    root: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]

    def _check_integrity(self) -> bool:
        files = [f for f, _ in self.train_list + self.test_list]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not os.path.isfile(path):
            raise RuntimeError(f"Dataset metadata file not found: {path}")
        with open(path, "rb") as infile:
            data = pickle.load(infile, encoding="latin1")
        self.classes = data[self.meta["key"]]  # type: ignore[attr-defined]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}  # type: ignore[attr-defined]


def expected_files(name: str) -> list[str]:
    """File names torchvision reads for ``name`` (data files, then the meta file)."""
    cls = _dataset_class(name, True)
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def load_cifar(
    name: str, root: str | Path, train: bool, download: bool, verify_checksums: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 3, 32, 32) and labels as int64 (N,), read by torchvision.

    Raises DataMissingError (files absent, download off or failing) or UserError (files present
    but failing the md5 check, or not in the CIFAR pickle format), each one line.
    """
    root = Path(root)
    folder = root / FOLDERS[name]
    present = [f for f in expected_files(name) if (folder / f).is_file()]
    all_present = len(present) == len(expected_files(name))
    if verify_checksums and all_present:
        _check_md5(name, root)  # a clear message instead of a silent re-download over the user's files
    # files already verified above (or verification off): torchvision need not hash them again
    cls = _dataset_class(name, verify_checksums and not all_present)
    if not all_present and not download:
        raise DataMissingError(
            f"{name} not found under {folder} (missing {len(expected_files(name)) - len(present)} files); "
            f"fetch it with task.data.download=true or `python -m optrepro.data.cifar --download --root {root}`"
        )
    try:
        dataset = cls(root=str(root), train=train, download=download and not all_present)
    except (OSError, RuntimeError) as exc:
        if not all_present:  # the download itself failed (offline, proxy, disk)
            raise DataMissingError(
                f"{name} not found under {folder} and the download failed ({_first_line(exc)}); download "
                f"{cls.url} by hand and extract it into {root}, or run where there is network access"
            ) from None
        raise UserError(f"cannot read {name} under {folder}: {_first_line(exc)}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        UnicodeDecodeError,
        IndexError,
    ) as exc:
        raise UserError(
            f"{folder} does not hold CIFAR python pickles ({type(exc).__name__}: {_first_line(exc)}); "
            f"re-download with task.data.download=true into an empty folder"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(np.asarray(dataset.targets, dtype=np.int64))
    num_classes = 10 if name == "cifar10" else 100
    if (
        images.dtype != torch.uint8
        or labels.numel() != images.shape[0]
        or (labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes))
    ):
        raise UserError(
            f"{folder} holds data that is not {name} (dtype {images.dtype}, "
            f"{images.shape[0]} images, {labels.numel()} labels, classes {num_classes})"
        )
    return images, labels


def _check_md5(name: str, root: Path) -> None:
    from torchvision.datasets.utils import check_integrity

    cls = _dataset_class(name, True)
    folder = root / FOLDERS[name]
    files = list(cls.train_list + cls.test_list) + [[cls.meta["filename"], cls.meta["md5"]]]
    bad = [f for f, md5 in files if not check_integrity(str(folder / f), md5)]
    if bad:
        raise UserError(
            f"{folder}/{bad[0]} fails torchvision's md5 check ({len(bad)} of {len(files)} files); for files you "
            f"wrote yourself (e.g. fake data) set task.data.verify_checksums=false, otherwise delete {folder} "
            f"and re-download with task.data.download=true"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------- fake data


def _dump(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_cifar(
    root: str | Path, name: str = "cifar10", n_train: int = 64, n_test: int = 32, seed: int = 0
) -> Path:
    """Write random images in torchvision's on-disk CIFAR layout under ``root``; return the data folder.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta`` (the training images
    spread over the 5 batches). CIFAR-100: ``cifar-100-python/train, test, meta``. Each file is a
    python pickle with str keys: ``data`` uint8 (N, 3072) = R, G, B planes of 32x32 row-major, and
    ``labels`` (CIFAR-10) or ``fine_labels`` + ``coarse_labels`` (CIFAR-100) as lists of int.
    Images carry a class-dependent colour so a net can learn something from them.
    """
    if name not in NAMES:
        raise ValueError(f"name must be cifar10 or cifar100, got {name!r}")
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    folder = Path(root) / FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    tints = rng.integers(0, 256, size=(num_classes, 3, 1), dtype=np.int64)

    def make(n: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.integers(0, num_classes, size=n)
        noise = rng.integers(0, 256, size=(n, 3, 1024), dtype=np.int64)
        data = (noise + tints[labels]) // 2
        return data.reshape(n, 3072).astype(np.uint8), [int(v) for v in labels]

    if name == "cifar10":
        data, labels = make(n_train)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _dump(
                folder / f"data_batch_{i}",
                {
                    "batch_label": f"training batch {i} of 5",
                    "labels": [labels[j] for j in part],
                    "data": data[part],
                    "filenames": [f"fake_{j}.png" for j in part],
                },
            )
        data, labels = make(n_test)
        _dump(
            folder / "test_batch",
            {
                "batch_label": "testing batch 1 of 1",
                "labels": labels,
                "data": data,
                "filenames": [f"fake_test_{j}.png" for j in range(n_test)],
            },
        )
        _dump(
            folder / "batches.meta",
            {
                "label_names": [f"class{i}" for i in range(10)],
                "num_cases_per_batch": max(n_train // 5, 1),
                "num_vis": 3072,
            },
        )
    else:
        for split, n in (("train", n_train), ("test", n_test)):
            data, labels = make(n)
            _dump(
                folder / split,
                {
                    "filenames": [f"fake_{split}_{j}.png" for j in range(n)],
                    "batch_label": f"{split}ing batch 1 of 1",
                    "fine_labels": labels,
                    "coarse_labels": [v // 5 for v in labels],
                    "data": data,
                },
            )
        _dump(
            folder / "meta",
            {
                "fine_label_names": [f"class{i}" for i in range(100)],
                "coarse_label_names": [f"superclass{i}" for i in range(20)],
            },
        )
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m optrepro.data.cifar", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--fake", action="store_true", help="write tiny fake CIFAR files (no network)")
    action.add_argument("--download", action="store_true", help="download the real data through torchvision")
    parser.add_argument("--root", default="data", help="folder holding cifar-10-batches-py/ and cifar-100-python/")
    parser.add_argument("--name", choices=(*NAMES, "both"), default="both")
    parser.add_argument("--n-train", type=int, default=512, help="fake training images per dataset")
    parser.add_argument("--n-test", type=int, default=256, help="fake test images per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = NAMES if args.name == "both" else (args.name,)
    for name in names:
        if args.fake:
            folder = write_fake_cifar(args.root, name, args.n_train, args.n_test, args.seed)
            print(
                f"wrote fake {name} ({args.n_train} train / {args.n_test} test) to {folder}; "
                f"train with task.data.root={args.root} task.data.verify_checksums=false"
            )
        else:
            for train in (True, False):
                images, _ = load_cifar(name, args.root, train=train, download=True)
            print(f"{name} ready under {Path(args.root) / FOLDERS[name]}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


__all__ = ["CIFAR_MEAN", "CIFAR_STD", "expected_files", "load_cifar", "write_fake_cifar"]
