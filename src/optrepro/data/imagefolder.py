"""ImageNet-style ImageFolder trees (``root/train/<class>/*.JPEG``, ``root/val/<class>/*.JPEG``).

Loading is torchvision's ``ImageFolder`` with the standard ImageNet transforms (train:
RandomResizedCrop + flip; val: resize + center crop). Transforms stop at a uint8 tensor; the task
normalizes on the device, so workers move 4x fewer bytes. :func:`write_fake_imagefolder` writes a
tiny tree of real JPEG files for tests and smoke runs::

    python -m optrepro.data.imagefolder --fake --root data/fake/imagenet
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from optrepro.errors import DataMissingError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")


def imagenet_transform(train: bool, image_size: int = 224, resize: int = 256) -> Any:
    """torchvision v2 transforms ending in a uint8 CHW tensor (normalization happens on the device)."""
    from torchvision.transforms import v2

    if train:
        return v2.Compose(
            [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
        )
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()])


def load_imagefolder(root: str | Path, split: str, transform: Any = None) -> Any:
    """torchvision ImageFolder for ``root/split``; one-line errors for a missing or malformed tree."""
    from torchvision.datasets import ImageFolder

    folder = Path(root) / split
    if not folder.is_dir():
        raise DataMissingError(
            f"no ImageFolder tree at {folder}; ImageNet cannot be downloaded automatically: get ILSVRC2012 from "
            f"https://image-net.org, arrange it as {Path(root)}/train/<wnid>/*.JPEG and {Path(root)}/val/<wnid>/*.JPEG "
            f"and set task.data.root (or write fake data: python -m optrepro.data.imagefolder --fake --root {root})"
        )
    try:
        dataset = ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{folder} is not an ImageFolder tree (<class>/<image> files): {text}") from None
    try:  # fail early and clearly on a tree of non-images rather than in a DataLoader worker later
        from PIL import Image

        with Image.open(dataset.samples[0][0]) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise UserError(
            f"{dataset.samples[0][0]} is not a readable image ({type(exc).__name__}); "
            f"check the ImageFolder tree under {folder}"
        ) from None
    return dataset


def write_fake_imagefolder(
    root: str | Path, classes: int = 3, per_class: int = 4, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/{train,val}/classK/imgJ.JPEG`` (RGB, ``size`` x ``size``); return ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in SPLITS:
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            tint = rng.integers(0, 256, size=3)
            for j in range(per_class):
                noise = rng.integers(0, 256, size=(size, size, 3))
                pixels = ((noise + tint) // 2).astype(np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"img{j}.JPEG", format="JPEG", quality=90)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m optrepro.data.imagefolder", description="write a tiny fake ImageFolder tree (train/ and val/)"
    )
    parser.add_argument("--fake", action="store_true", required=True)
    parser.add_argument("--root", default="data/fake/imagenet")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    root = write_fake_imagefolder(args.root, args.classes, args.per_class, args.size)
    print(
        f"wrote a fake ImageFolder tree to {root}; train with task=imagenet_resnet18 task.data.root={root} "
        f"task.num_classes={args.classes}"
    )


if __name__ == "__main__":
    main()


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imagenet_transform", "load_imagefolder", "write_fake_imagefolder"]
