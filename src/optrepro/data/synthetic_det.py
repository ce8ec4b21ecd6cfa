"""Synthetic detection data with a known answer: coloured shapes on noise.

Each image (``size`` x ``size``, RGB uint8) is uniform noise in [0, ``noise``) with 1 to
``max_objects`` filled shapes of a random bright colour. Classes (labels 1..3; 0 is background):
1 rectangle, 2 ellipse (inscribed in its box), 3 triangle (apex at the top centre, base along the
bottom edge). The box is the shape's tight box in continuous pixel coordinates (a shape that covers
columns ``x0..x1-1`` has ``xmin=x0, xmax=x1``). Shapes of one image overlap with IoU <= 0.3.

Everything is a function of ``(seed, index)`` (numpy's ``default_rng``), so the training and test
sets are the same on every machine and run; the test set uses a different seed stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("rectangle", "ellipse", "triangle")


@dataclass
class SyntheticDetections:
    images: torch.Tensor  # (n, 3, size, size) uint8
    boxes: list[torch.Tensor]  # per image (k, 4) float32 xyxy
    labels: list[torch.Tensor]  # per image (k,) int64 in 1..3

    def __len__(self) -> int:
        return self.images.shape[0]


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def shape_mask(kind: int, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) mask of shape ``kind`` (1..3) filling a w x h box (pixel centres tested)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    if kind == 1:
        return np.ones((h, w), dtype=bool)
    if kind == 2:
        return ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2 <= 1.0
    # triangle: apex (w/2, 0), base from (0, h) to (w, h); inside where |x - w/2| <= (w/2) * y/h
    inside = np.abs(xs - w / 2) <= (w / 2) * ys / h
    inside[-1, :] = True  # keep the full base row so the tight box is the whole box
    inside[0, int(w // 2)] = True  # and the apex pixel
    return inside


def make_image(rng: np.random.Generator, size: int, max_objects: int, min_side: int, max_side: int,
               noise: int) -> tuple[np.ndarray, list[list[int]], list[int]]:
    image = rng.integers(0, noise, size=(size, size, 3)).astype(np.uint8)
    boxes: list[list[int]] = []
    labels: list[int] = []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(wanted * 10):  # rejection sampling against overlaps, deterministic per rng
        if len(boxes) == wanted:
            break
        kind = int(rng.integers(1, len(SHAPES) + 1))
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = [x0, y0, x0 + w, y0 + h]
        if any(_iou(box, other) > 0.3 for other in boxes):
            continue
        colour = rng.integers(120, 256, size=3).astype(np.uint8)
        colour[int(rng.integers(3))] = int(rng.integers(0, 80))  # saturated: one channel low
        mask = shape_mask(kind, w, h)
        image[y0 : y0 + h, x0 : x0 + w][mask] = colour
        boxes.append(box)
        labels.append(kind)
    return image, boxes, labels


def make_synthetic_detections(n: int, seed: int, size: int = 128, max_objects: int = 3, min_side: int = 16,
                              max_side: int = 56, noise: int = 100) -> SyntheticDetections:
    """``n`` images from the stream ``seed``; image ``i`` depends only on (seed, i)."""
    if not 0 < min_side <= max_side <= size:
        raise ValueError(f"need 0 < min_side <= max_side <= size, got {min_side}, {max_side}, {size}")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes, labels = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, bx, lb = make_image(rng, size, max_objects, min_side, max_side, noise)
        images[i] = image
        boxes.append(torch.tensor(bx, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(lb, dtype=torch.int64))
    return SyntheticDetections(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), boxes, labels)


__all__ = ["SHAPES", "SyntheticDetections", "make_synthetic_detections", "shape_mask"]
