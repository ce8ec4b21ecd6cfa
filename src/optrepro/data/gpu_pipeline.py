"""Device-resident input pipeline: the whole (small) dataset lives on the device as uint8.

For CIFAR on a GPU the standard DataLoader (per-sample PIL/tensor ops in worker processes, pinned
host copies) can cost as much as a ResNet-18 step. Here every batch is one gather on the device:
the dataset is stored once zero-padded by ``pad`` pixels, and a random crop + horizontal flip is
an index computation (rows ``i..i+H``, columns ``j..j+W``, reversed when flipped). Semantics match
torchvision's ``RandomCrop(H, padding=pad)`` (fill 0, offsets uniform on ``0..2*pad``) followed by
``RandomHorizontalFlip(0.5)``; tests/test_vision_pipeline.py compares both pipelines' statistics.

Randomness comes from a generator seeded per batch from (run seed, epoch, batch index), never from
the global RNG, so a resumed run draws the same crops and a data-parallel run draws the same crops
as a single process (the draws are made for the global batch, then each rank takes its share).
The same code runs on CPU (tests, and the digits task, where it is simply the fastest path).

``task.data.augment=inception_crop`` (the ViT fine-tuning recipe's augmentation) is
:func:`inception_crop_params` + :func:`crop_resize_flip`, applied by the task to either pipeline's
unaugmented batch with draws seeded the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def normalize_batch(
    x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None, channels_last: bool = False
) -> torch.Tensor:
    """uint8 images -> float in [0, 1] -> (x - mean) / std per channel; float input skips the /255."""
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if mean is not None and std is not None:
        m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        x = x.sub_(m).div_(s)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def crop_flip_params(
    n: int, pad: int, flip: bool, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top/left offsets uniform on 0..2*pad and flip flags with probability 1/2, for ``n`` images."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    flips = (
        torch.rand(n, generator=generator, device=device) < 0.5
        if flip
        else torch.zeros(n, dtype=torch.bool, device=device)
    )
    return offsets[0], offsets[1], flips


def inception_crop_params(
    n: int, height: int, width: int, generator: torch.Generator,
    area_range: tuple[float, float] = (0.05, 1.0), aspect_range: tuple[float, float] = (0.75, 1.33),
    attempts: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer crop boxes (top, left, crop height, crop width; int64 on the CPU) for ``n`` images.

    The sampling rules of TF's ``sample_distorted_bounding_box`` with no boxes given
    (``use_image_if_no_bounding_boxes``, ``min_object_covered=0``), which vit_jax's Inception crop
    calls: per attempt an aspect ratio w/h uniform on ``aspect_range``; the crop height an integer
    uniform between round(sqrt(min_area / ratio)) and the largest height whose width
    round(height * ratio) fits (at most ``height``); width = round(height * ratio); one step up or
    down when rounding put the area outside ``area_range``; the attempt fails if it still is, or
    the box does not fit. The first successful attempt is kept, the whole image when all fail. The
    offsets are uniform on 0..H-h-1 (TF's ``Uniform(H - h)``; 0 when h = H), so a smaller crop
    never touches the last row / column, as in TF. Float32 arithmetic and round-half-even like
    TF's lrintf. Attempts are drawn in parallel (the first valid one has the distribution of TF's
    sequential loop); the random bits are torch's, not TF's Philox stream.
    """
    f32 = torch.float32
    min_area = torch.tensor(area_range[0], dtype=f32) * width * height
    max_area = torch.tensor(area_range[1], dtype=f32) * width * height
    lo, hi = torch.tensor(aspect_range[0], dtype=f32), torch.tensor(aspect_range[1], dtype=f32)
    ratio = torch.rand((n, attempts), generator=generator, dtype=f32) * (hi - lo) + lo
    u_height = torch.rand((n, attempts), generator=generator, dtype=torch.float64)
    u_top = torch.rand(n, generator=generator, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, dtype=torch.float64)

    def rounded_width(h: torch.Tensor) -> torch.Tensor:
        return torch.round(h.to(f32) * ratio).long()

    h = torch.round(torch.sqrt(min_area / ratio)).long()
    max_h = torch.round(torch.sqrt(max_area / ratio)).long()
    # the largest height whose rounded width fits: TF's (W + 0.5 - eps) / ratio, in double, truncated
    eps = float(torch.tensor(1e-7, dtype=f32))
    fit = ((width + 0.5 - eps) / ratio.double()).long()
    fit = torch.where(rounded_width(fit) > width, fit - 1, fit)
    max_h = torch.where(rounded_width(max_h) > width, fit, max_h).clamp(max=height)
    h = torch.minimum(h, max_h)
    span = max_h - h + 1  # h += Uniform(span), only when h < max_h (span 1 draws 0 anyway)
    h = h + torch.minimum((u_height * span).floor().long(), span - 1)
    w = rounded_width(h)
    small = (w * h).to(f32) < min_area
    h = torch.where(small, h + 1, h)
    w = rounded_width(h)
    big = (w * h).to(f32) > max_area
    h = torch.where(big, h - 1, h)
    w = rounded_width(h)
    area = (w * h).to(f32)
    ok = (area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0) & (area >= 1)
    first = ok.int().argmax(1, keepdim=True)  # the first successful attempt
    found = ok.any(1)
    crop_h = torch.where(found, h.gather(1, first)[:, 0], height)
    crop_w = torch.where(found, w.gather(1, first)[:, 0], width)
    top = (u_top * (height - crop_h)).floor().long().clamp(min=0)
    left = (u_left * (width - crop_w)).floor().long().clamp(min=0)
    top = torch.minimum(top, (height - crop_h - 1).clamp(min=0))
    left = torch.minimum(left, (width - crop_w - 1).clamp(min=0))
    return top, left, crop_h, crop_w


def crop_resize_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, crop_h: torch.Tensor, crop_w: torch.Tensor,
    flips: torch.Tensor, size: int,
) -> torch.Tensor:
    """Each image cropped to its box, resized to ``size`` x ``size`` and flipped where ``flips``.

    The resize is TF2's ``tf.image.resize`` bilinear (half-pixel centres, no antialias):
    ``F.interpolate(align_corners=False, antialias=False)`` of the crop alone, so the crop's edge
    pixels are clamped, never blended with pixels outside the box (torchvision's ``roi_align``
    would blend them, hence one interpolate per image). The flip follows the resize, as in vit_jax.
    """
    out = images.new_empty((images.shape[0], images.shape[1], size, size))
    boxes = zip(top.tolist(), left.tolist(), crop_h.tolist(), crop_w.tolist(), strict=True)
    for i, (t, s, h, w) in enumerate(boxes):
        crop = images[i : i + 1, :, t : t + h, s : s + w]
        out[i : i + 1] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    flipped = flips.nonzero()[:, 0].to(images.device)
    out[flipped] = out[flipped].flip(-1)
    return out


class DeviceImages:
    """A labelled image set held on ``device``; batches are gathered (and augmented) there.

    ``images``: (N, C, H, W) uint8 (or float, e.g. digits). ``pad`` > 0 enables random crops,
    ``flip`` random horizontal flips; both off gives plain batches (evaluation, digits).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        *,
        pad: int = 0,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = False,
    ) -> None:
        if images.ndim != 4 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"need images (N, C, H, W) and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.n, self.channels, self.height, self.width = images.shape
        self.device, self.pad, self.flip = device, int(pad), bool(flip)
        self.mean, self.std, self.channels_last = mean, std, channels_last
        stored = F.pad(images, (self.pad,) * 4) if self.pad else images  # zero fill, like RandomCrop(padding=)
        self.images = stored.contiguous().to(device)
        self.labels = labels.to(device)
        self.generator = torch.Generator(device=device)
        self._rows = torch.arange(self.height, device=device)
        self._cols = torch.arange(self.width, device=device)

    def __len__(self) -> int:
        return self.n

    @property
    def augments(self) -> bool:
        return self.pad > 0 or self.flip

    def batch(
        self, indices: torch.Tensor, seed: int | None = None, rank: int = 0, world: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized images and labels of ``indices[rank::world]``; augmented when ``seed`` is given.

        The random draws are made for all of ``indices`` (the global batch) so that every rank's
        share gets exactly the crops a single process would have drawn.
        """
        idx = indices.to(self.device, non_blocking=True)
        if seed is None or not self.augments:
            idx = idx[rank::world]
            raw = self.images[idx]
            if self.pad:
                p = self.pad
                raw = raw[:, :, p : p + self.height, p : p + self.width]
            return normalize_batch(raw, self.mean, self.std, self.channels_last), self.labels[idx]
        self.generator.manual_seed(seed)
        top, left, flips = crop_flip_params(idx.numel(), self.pad, self.flip, self.generator, self.device)
        idx, top, left, flips = idx[rank::world], top[rank::world], left[rank::world], flips[rank::world]
        rows = top[:, None] + self._rows  # (B, H)
        cols = left[:, None] + torch.where(flips[:, None], self.width - 1 - self._cols, self._cols)  # (B, W)
        raw = self.images[idx]  # (B, C, H + 2p, W + 2p)
        b = torch.arange(idx.numel(), device=self.device)[:, None, None, None]
        c = torch.arange(self.channels, device=self.device)[None, :, None, None]
        out = raw[b, c, rows[:, None, :, None], cols[:, None, None, :]]
        return normalize_batch(out, self.mean, self.std, self.channels_last), self.labels[idx]


__all__ = ["DeviceImages", "crop_flip_params", "crop_resize_flip", "inception_crop_params", "normalize_batch"]
