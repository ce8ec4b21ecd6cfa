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


__all__ = ["DeviceImages", "crop_flip_params", "normalize_batch"]
