"""PASCAL VOC detection data (``VOCdevkit/VOC{2007,2012}/{JPEGImages,Annotations,ImageSets/Main}``).

Reading is torchvision's ``VOCDetection`` (its split files, image/annotation paths, XML parser and
archive download). On top of it, :class:`VOCDetectionData` turns each annotation into tensors once:

* boxes as continuous coordinates ``[xmin - 1, ymin - 1, xmax, ymax]``: VOC's are 1-based,
  pixel-inclusive, so this box has the devkit's ``(xmax - xmin + 1)`` width and the plain IoU of
  two such boxes equals the devkit's ``+1`` IoU (mmdetection subtracts 1 and adds it back in its
  legacy-coordinate evaluation: the same numbers);
* labels 1..20 in the devkit's class order (0 is the detector's background);
* ``difficult`` flags. As mmdetection's ``XMLDataset`` (what EAdam trained with), difficult objects
  are *not* training targets (they go to ``bboxes_ignore``, which Faster R-CNN does not use; set
  ``task.data.train_difficult=true`` to keep them) and in evaluation a detection matched to one is
  neither a true nor a false positive (:mod:`optrepro.metrics.map`).

:func:`write_fake_voc` writes a tiny tree in the real format (JPEGs, XML with a difficult object,
split files) for tests and smoke runs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optrepro.errors import DataMissingError, UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: split names the config accepts: "<year>-<image set>"
VOC_SPLITS = ("2007-trainval", "2007-train", "2007-val", "2007-test", "2012-trainval", "2012-train", "2012-val")


def parse_split(name: str) -> tuple[str, str]:
    if name not in VOC_SPLITS:
        raise UserError(f"unknown VOC split '{name}'; choose from {', '.join(VOC_SPLITS)}")
    year, image_set = name.split("-")
    return year, image_set


@dataclass
class VOCTarget:
    """One image's annotation as tensors (all objects, difficult ones flagged)."""

    boxes: torch.Tensor  # (n, 4) float32, continuous xyxy
    labels: torch.Tensor  # (n,) int64 in 1..20
    difficult: torch.Tensor  # (n,) bool
    width: int
    height: int


def target_from_xml(annotation: dict[str, Any]) -> VOCTarget:
    """torchvision's parsed XML dict -> tensors (see the module docstring for the box convention)."""
    ann = annotation["annotation"]
    objects = ann.get("object", [])
    if isinstance(objects, dict):  # older torchvision returned a dict for a single object
        objects = [objects]
    boxes, labels, difficult = [], [], []
    for obj in objects:
        name = str(obj["name"]).strip()
        if name not in VOC_CLASSES:
            continue
        box = obj["bndbox"]
        x1, y1, x2, y2 = (float(box[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
        labels.append(VOC_CLASSES.index(name) + 1)
        difficult.append(int(obj.get("difficult", 0) or 0) == 1)
    size = ann["size"]
    return VOCTarget(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        difficult=torch.tensor(difficult, dtype=torch.bool),
        width=int(size["width"]),
        height=int(size["height"]),
    )


def open_voc_split(root: Path, split: str, download: bool) -> Any:
    """torchvision ``VOCDetection`` for ``split``; a one-line error when the files are not there."""
    from torchvision.datasets import VOCDetection

    year, image_set = parse_split(split)
    split_file = root / "VOCdevkit" / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
    if not split_file.is_file() and not download:
        raise DataMissingError(
            f"VOC {split} not found ({split_file} is missing); set task.data.download=true to fetch the VOC "
            f"2007 trainval/test and 2012 trainval archives into {root} (about 3.6 GB), or point task.data.root "
            f"at the folder that holds VOCdevkit/"
        )
    try:  # download only what is missing: torchvision would re-extract the archive on every run
        return VOCDetection(str(root), year=year, image_set=image_set, download=download and not split_file.is_file())
    except (RuntimeError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataMissingError(f"cannot read VOC {split} under {root}: {text}") from None


class VOCDetectionData:
    """Several VOC splits as one indexable set of (uint8 CHW image, target) pairs.

    Annotations are parsed once at construction (a few seconds for 07+12 trainval); images are
    decoded on access.
    """

    def __init__(self, root: str | Path, splits: list[str], download: bool = False, limit: int | None = None):
        self.root = Path(root).expanduser()
        self.images: list[str] = []
        self.targets: list[VOCTarget] = []
        #: per split, the (image, annotation) files read: the run's data provenance
        self.files: dict[str, list[tuple[str, str]]] = {}
        for split in splits:
            ds = open_voc_split(self.root, split, download)
            read = self.files.setdefault(split, [])
            for image, xml in zip(ds.images, ds.annotations, strict=True):
                if limit is not None and len(self.images) >= limit:
                    break
                if not Path(xml).is_file():
                    raise DataMissingError(f"VOC annotation {xml} is missing (listed in {split}); "
                                           f"re-extract the archive or set task.data.download=true")
                self.images.append(image)
                read.append((image, xml))
                self.targets.append(target_from_xml(ds.parse_voc_xml(ET.parse(xml).getroot())))
        if not self.images:
            raise UserError(f"the VOC splits {', '.join(splits)} under {self.root} list no images")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        """RGB uint8 tensor (3, H, W)."""
        from torchvision.io import ImageReadMode, decode_image, read_file

        return decode_image(read_file(self.images[index]), mode=ImageReadMode.RGB)

    def target(self, index: int) -> VOCTarget:
        return self.targets[index]


# ------------------------------------------------------------------------------- fake data
def _xml(name: str, width: int, height: int, objects: list[tuple[str, list[int], int]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for cls, (x1, y1, x2, y2), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(difficult)
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, key).text = str(value)
    return ET.tostring(root, encoding="unicode")


def write_fake_voc(
    root: str | Path,
    n_images: int = 4,
    years: tuple[str, ...] = ("2007", "2012"),
    size: tuple[int, int] = (96, 128),
    classes: tuple[str, ...] = ("person", "car", "dog"),
    seed: int = 0,
) -> Path:
    """Write ``root/VOCdevkit/VOC<year>/...`` in the real layout; return ``root``.

    Every year gets ``n_images`` trainval images (2007 also ``n_images`` test images, split files
    ``trainval.txt``, ``train.txt``, ``val.txt``, ``test.txt``). Each image holds 1-2 filled boxes of
    a class-specific colour on noise; the first image of each split also holds a ``difficult``
    object. ``size`` is (height, width).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    height, width = size
    colours = {cls: rng.integers(0, 256, size=3) for cls in classes}
    for year in years:
        base = root / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        image_sets = ("trainval", "test") if year == "2007" else ("trainval",)
        names: dict[str, list[str]] = {}
        for image_set in image_sets:
            names[image_set] = []
            for j in range(n_images):
                name = f"{year}_{image_set[:2]}{j:04d}"
                pixels = rng.integers(0, 80, size=(height, width, 3)).astype(np.uint8)
                objects = []
                for k in range(1 + j % 2 + (j == 0)):
                    cls = classes[int(rng.integers(len(classes)))]
                    w, h = (int(v) for v in rng.integers(16, min(width, height) // 2, size=2))
                    x1, y1 = int(rng.integers(1, width - w)), int(rng.integers(1, height - h))
                    pixels[y1 - 1 : y1 - 1 + h, x1 - 1 : x1 - 1 + w] = colours[cls]
                    difficult = int(j == 0 and k == 0)
                    objects.append((cls, [x1, y1, x1 + w - 1, y1 + h - 1], difficult))
                Image.fromarray(pixels).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
                (base / "Annotations" / f"{name}.xml").write_text(_xml(name, width, height, objects))
                names[image_set].append(name)
        (base / "ImageSets/Main/trainval.txt").write_text("".join(f"{n}\n" for n in names["trainval"]))
        half = max(1, len(names["trainval"]) // 2)
        (base / "ImageSets/Main/train.txt").write_text("".join(f"{n}\n" for n in names["trainval"][:half]))
        (base / "ImageSets/Main/val.txt").write_text("".join(f"{n}\n" for n in names["trainval"][half:]))
        if "test" in names:
            (base / "ImageSets/Main/test.txt").write_text("".join(f"{n}\n" for n in names["test"]))
    return root


__all__ = ["VOC_CLASSES", "VOC_SPLITS", "VOCDetectionData", "VOCTarget", "open_voc_split", "parse_split",
           "target_from_xml", "write_fake_voc"]
