"""Data loaders and fake-data writers in the real on-disk formats (CIFAR pickles, ImageFolder, digits)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from optrepro.data.cifar import CIFAR_MEAN, CIFAR_STD, FOLDERS, expected_files, load_cifar, write_fake_cifar
from optrepro.data.cifar import main as cifar_cli
from optrepro.data.digits import load_digits_split
from optrepro.data.imagefolder import load_imagefolder, write_fake_imagefolder
from optrepro.errors import DataMissingError, UserError


def test_cifar_constants() -> None:
    assert CIFAR_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR_STD == (0.2023, 0.1994, 0.2010)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_cifar_is_the_torchvision_layout(tmp_path: Path, name: str) -> None:
    folder = write_fake_cifar(tmp_path, name, n_train=23, n_test=7, seed=1)
    assert folder == tmp_path / FOLDERS[name]
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected_files(name))
    train_file = folder / ("data_batch_1" if name == "cifar10" else "train")
    with open(train_file, "rb") as f:
        entry = pickle.load(f)
    assert all(isinstance(k, str) for k in entry)
    assert entry["data"].dtype == np.uint8 and entry["data"].shape[1] == 3072
    labels = entry["labels"] if name == "cifar10" else entry["fine_labels"]
    assert isinstance(labels, list) and all(isinstance(v, int) for v in labels)
    if name == "cifar100":
        assert len(entry["coarse_labels"]) == len(labels)
    # read back through torchvision (md5 check replaced by an existence check only)
    images, targets = load_cifar(name, tmp_path, train=True, download=False, verify_checksums=False)
    assert images.shape == (23, 3, 32, 32) and images.dtype == torch.uint8
    assert targets.shape == (23,) and targets.dtype == torch.int64
    assert int(targets.max()) < (10 if name == "cifar10" else 100)
    # row-major RGB planes: pixel (c, y, x) of image 0 is data[0, c*1024 + y*32 + x]
    assert int(images[0, 2, 5, 7]) == int(entry["data"][0, 2 * 1024 + 5 * 32 + 7])
    test_images, _ = load_cifar(name, tmp_path, train=False, download=False, verify_checksums=False)
    assert test_images.shape[0] == 7


def test_cifar_md5_is_checked_by_default(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar10")
    with pytest.raises(UserError, match="md5.*task.data.verify_checksums=false") as info:
        load_cifar("cifar10", tmp_path, train=True, download=True)
    assert "\n" not in str(info.value)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_1").is_file()  # not replaced by a download


def test_cifar_missing_data_is_one_line_naming_root_and_flag(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_cifar("cifar100", tmp_path / "nowhere", train=True, download=False)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message and "task.data.download=true" in message


@pytest.mark.parametrize("damage", ["not_a_pickle", "wrong_keys", "wrong_shape"])
def test_cifar_wrong_format_is_a_user_error(tmp_path: Path, damage: str) -> None:
    folder = write_fake_cifar(tmp_path, "cifar10")
    target = folder / "data_batch_2"
    if damage == "not_a_pickle":
        target.write_bytes(b"this is not a pickle")
    elif damage == "wrong_keys":
        target.write_bytes(pickle.dumps({"pixels": [1, 2, 3]}))
    else:
        target.write_bytes(pickle.dumps({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}))
    with pytest.raises(UserError) as info:
        load_cifar("cifar10", tmp_path, train=True, download=False, verify_checksums=False)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_cifar_cli_writes_fake_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cifar_cli(["--fake", "--root", str(tmp_path), "--n-train", "10", "--n-test", "5"])
    assert "task.data.verify_checksums=false" in capsys.readouterr().out
    for name in ("cifar10", "cifar100"):
        images, _ = load_cifar(name, tmp_path, train=True, download=False, verify_checksums=False)
        assert images.shape[0] == 10


def test_fake_imagefolder_round_trip_and_errors(tmp_path: Path) -> None:
    root = write_fake_imagefolder(tmp_path / "imnet", classes=3, per_class=4, size=64)
    for split in ("train", "val"):
        dataset = load_imagefolder(root, split)
        assert len(dataset) == 12 and len(dataset.classes) == 3
        image, label = dataset[5]
        assert image.size == (64, 64) and image.mode == "RGB" and label == 1
    with pytest.raises(DataMissingError, match="image-net.org"):
        load_imagefolder(tmp_path / "absent", "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="not an ImageFolder tree"):
        load_imagefolder(tmp_path / "empty", "train")
    bad = tmp_path / "bad" / "train" / "c0"
    bad.mkdir(parents=True)
    (bad / "x.JPEG").write_text("not a jpeg")
    with pytest.raises(UserError, match="not a readable image"):
        load_imagefolder(tmp_path / "bad", "train")


def test_digits_split_is_fixed_and_stratified() -> None:
    x_train, y_train = load_digits_split(train=True)
    x_test, y_test = load_digits_split(train=False)
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == torch.float32 and float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    counts = torch.bincount(y_test, minlength=10).double()
    totals = counts + torch.bincount(y_train, minlength=10).double()
    assert torch.all((counts - totals * 450 / 1797).abs() <= 1.0)  # stratified: each class in proportion
    again, _ = load_digits_split(train=False)
    assert torch.equal(again, x_test)
