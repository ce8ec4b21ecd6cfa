"""The DataLoader input pipeline: per-sample torchvision transforms in worker processes.

The other pipeline, the whole dataset on the device, is :mod:`optrepro.data.gpu_pipeline`.
Here the task plans each pass as a list of batches of (index, seed) keys (:class:`BatchPlan`, the
DataLoader's batch sampler) and every sample's augmentation is seeded by its key, so the images a
batch yields depend only on (run seed, epoch, position): not on worker count, process or resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from optrepro.data.gpu_pipeline import normalize_batch


class SeededTransformDataset(Dataset[tuple[torch.Tensor, int]]):
    """Items are keyed by (index, seed); the transform's random draws are seeded by ``seed``.

    torchvision transforms draw from the global torch RNG; forking it and seeding it per sample
    makes the augmentation a function of (run seed, epoch, position) only: independent of worker
    count and process, and exactly reproducible after a resume.
    """

    def __init__(self, source: Any, transform: Any = None) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image, label = self.source[index]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)
                image = self.transform(image)
        return image, int(label)


class TensorSource:
    """(images, labels) tensors indexed like a dataset: item i is (images[i], labels[i])."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class BatchPlan:
    """The batch_sampler of the DataLoader: yields the batches the task planned for this pass.

    Kept as one object so persistent workers survive from epoch to epoch; the task replaces
    ``batches`` before each ``iter(loader)``.
    """

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(dataset: Dataset[Any], plan: BatchPlan, num_workers: int, pin: bool) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_sampler=plan,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        # a private generator: creating an iterator must not draw from the global RNG
        generator=torch.Generator(),
    )


def cifar_crop_flip(pad: int = 4) -> Any:
    """torchvision's CIFAR augmentation on a uint8 CHW tensor: RandomCrop(H, padding=pad) + flip."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(32, padding=pad), v2.RandomHorizontalFlip()])


def seeded_keys(indices: Sequence[int], batch_seed: int) -> list[tuple[int, int]]:
    """The (index, seed) keys of one batch: sample k of the batch is seeded ``batch_seed + k``."""
    return [(i, (batch_seed + k) % (1 << 63)) for k, i in enumerate(indices)]


class LoaderImages:
    """A dataset served through a DataLoader as batches normalized on the device (what
    :class:`~optrepro.data.gpu_pipeline.DeviceImages` does from device memory).

    Training: ``serve`` hands over the batches of the rest of a pass, so workers prefetch them, and
    ``next`` takes them one by one. Evaluation: iterating walks the batches given at construction.
    """

    def __init__(self, dataset: Dataset[Any], device: torch.device, num_workers: int,
                 mean: Sequence[float] | None, std: Sequence[float] | None, channels_last: bool,
                 batches: list[list[tuple[int, int]]] | None = None) -> None:
        self.plan = BatchPlan()
        self.plan.batches = batches or []
        self.loader = make_loader(dataset, self.plan, num_workers, device.type == "cuda")
        self.device, self.mean, self.std, self.channels_last = device, mean, std, channels_last
        self._iter: Iterator[Any] | None = None

    @property
    def serving(self) -> bool:
        return self._iter is not None

    def serve(self, batches: list[list[tuple[int, int]]]) -> None:
        """Serve these batches (lists of (index, seed) keys) from now on."""
        self.plan.batches = batches
        self._iter = iter(self.loader)

    def stop(self) -> None:
        """Forget the planned batches (after a resume the task plans again from its position)."""
        self._iter = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._iter is not None, "serve() the batches first"
        return self._on_device(*next(self._iter))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield self._on_device(images, labels)

    def _on_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        return normalize_batch(images, self.mean, self.std, self.channels_last), labels


__all__ = ["BatchPlan", "LoaderImages", "SeededTransformDataset", "TensorSource", "cifar_crop_flip", "make_loader",
           "seeded_keys"]
