"""The two CIFAR input pipelines: same augmentation statistics, exact resume, worker-count independence;
the Inception crop (task.data.augment=inception_crop): TF's box rules, the crop-then-resize it equals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import metrics, whole_and_resumed
from optrepro.data.cifar import write_fake_cifar
from optrepro.data.gpu_pipeline import DeviceImages, crop_resize_flip, inception_crop_params, normalize_batch
from optrepro.data.loader_pipeline import SeededTransformDataset, TensorSource, cifar_crop_flip
from optrepro.tasks.vision import ImageClassificationTask


def _ramp_image() -> torch.Tensor:
    """A test image where crops and flips show: horizontal and vertical ramps, one per channel."""
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    return torch.stack([x * 8, y * 8, (x + 2 * y) * 2]).clamp(0, 255).to(torch.uint8)


def _exact_moments(image: torch.Tensor, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and second moment of RandomCrop(32, padding=4) + flip, by enumerating all 162 outcomes."""
    padded = F.pad(image.float() / 255, (pad,) * 4)
    outs = []
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            crop = padded[:, i : i + 32, j : j + 32]
            outs += [crop, crop.flip(-1)]
    stack = torch.stack(outs)
    return stack.mean(0), (stack**2).mean(0)


def test_device_and_dataloader_augmentations_have_the_same_statistics() -> None:
    image = _ramp_image()
    n = 2000
    mean, second = _exact_moments(image)
    # device pipeline (run on CPU): one global batch of n copies of the image
    device_set = DeviceImages(image[None], torch.zeros(1, dtype=torch.int64), torch.device("cpu"), pad=4, flip=True)
    dev, _ = device_set.batch(torch.zeros(n, dtype=torch.int64), seed=1234)
    # DataLoader pipeline: torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip per sample
    dataset = SeededTransformDataset(TensorSource(image[None], torch.zeros(1, dtype=torch.int64)), cifar_crop_flip(4))
    tv = torch.stack([dataset[(0, 10_000 + k)][0] for k in range(n)]).float() / 255
    for out in (dev, tv):
        assert out.shape == (n, 3, 32, 32)
        assert (out.mean(0) - mean).abs().max() < 0.05
        assert ((out**2).mean(0) - second).abs().max() < 0.05
    assert (dev.mean(0) - tv.mean(0)).abs().max() < 0.05
    # flips happen about half the time in both (first column of the x-ramp channel tells)
    for out in (dev, tv):
        flipped = (out[:, 0, 16, 0] > out[:, 0, 16, 31]).float().mean()
        assert 0.45 < float(flipped) < 0.55
    # the draws depend on the seed only
    again, _ = device_set.batch(torch.zeros(n, dtype=torch.int64), seed=1234)
    assert torch.equal(again, dev)
    assert torch.equal(dataset[(0, 10_005)][0], dataset[(0, 10_005)][0])


def test_unaugmented_device_batches_are_normalized_images() -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    padded = DeviceImages(images, labels, torch.device("cpu"), pad=4, flip=True, mean=mean, std=std)
    x, y = padded.batch(torch.tensor([3, 1]))  # no seed: evaluation, no augmentation
    assert torch.equal(y, torch.tensor([3, 1]))
    assert torch.allclose(x, normalize_batch(images[[3, 1]], mean, std))
    # data-parallel shares of an augmented global batch are the single-process batch, split
    full, _ = padded.batch(torch.tensor([0, 1, 2, 3]), seed=7)
    half0, _ = padded.batch(torch.tensor([0, 1, 2, 3]), seed=7, rank=0, world=2)
    half1, _ = padded.batch(torch.tensor([0, 1, 2, 3]), seed=7, rank=1, world=2)
    assert torch.equal(half0, full[0::2]) and torch.equal(half1, full[1::2])


def test_inception_boxes_follow_tfs_area_and_aspect_rules() -> None:
    n = 20_000
    top, left, h, w = inception_crop_params(n, 32, 32, torch.Generator().manual_seed(3))
    area = h * w
    # area_range (0.05, 1.0) of 32 x 32: 51.2 .. 1024 pixels; width = round(height * ratio), ratio 0.75 .. 1.33
    assert int(area.min()) >= 51.2 and int(area.max()) <= 1024
    assert bool((w >= torch.round(0.75 * h)).all() and (w <= torch.round(1.33 * h)).all())
    # inside the image; offsets 0..H-h-1 (TF's Uniform(H - h)), 0 for a full side
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool(((top <= 31 - h) | ((h == 32) & (top == 0))).all())
    assert bool(((left <= 31 - w) | ((w == 32) & (left == 0))).all())
    # the whole range is used: small crops (< 10 % of the area) and near-full ones, both aspects
    fraction = area.float() / 1024
    assert float((fraction < 0.1).float().mean()) > 0.05 and float((fraction > 0.9).float().mean()) > 0.02
    assert bool((w > h).any() and (w < h).any())
    # seeded: the same generator state, the same boxes
    again = inception_crop_params(n, 32, 32, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip((top, left, h, w), again, strict=True))
    # every attempt failing falls back to the whole image (TF: crop_rect = image_rect): with area >= 99 %
    # only 32 x 32 fits, which a single attempt reaches only for a ratio rounding 32 to 32
    top, left, h, w = inception_crop_params(500, 32, 32, torch.Generator().manual_seed(4), area_range=(0.99, 1.0),
                                            attempts=1)
    assert bool((h == 32).all() and (w == 32).all() and (top == 0).all() and (left == 0).all())


def test_the_resize_is_tfs_half_pixel_bilinear_of_the_crop_alone() -> None:
    # TF2 tf.image.resize bilinear (half-pixel centres, no antialias) of [0, 1] to 4 pixels: 0, 0.25, 0.75, 1
    ramp = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    row = crop_resize_flip(ramp, *(torch.tensor([v]) for v in (0, 0, 2, 2)), torch.tensor([False]), 4)[0, 0, 0]
    assert torch.allclose(row, torch.tensor([0.0, 0.25, 0.75, 1.0]))
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    top, left, h, w = inception_crop_params(6, 32, 32, gen)
    flips = torch.tensor([True, False, True, False, False, True])
    out = crop_resize_flip(images, top, left, h, w, flips, 48)
    assert out.shape == (6, 3, 48, 48)
    for i in range(6):
        t, s, hh, ww = int(top[i]), int(left[i]), int(h[i]), int(w[i])
        crop = images[i : i + 1, :, t : t + hh, s : s + ww].clone()  # the crop alone: its edges clamp
        expected = F.interpolate(crop, size=(48, 48), mode="bilinear", align_corners=False, antialias=False)[0]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected), i


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", n_train=32, n_test=16)
    return root


def _overrides(root: Path, pipeline: str) -> list[str]:
    return [
        "task=cifar10_vgg11",
        "optimizer=adam",
        "profile=smoke",
        f"task.data.root={root}",
        "task.data.verify_checksums=false",
        f"task.data.pipeline={pipeline}",
        "task.data.num_workers=0",
        "task.epochs=2",
        "task.batch_size=4",
        "task.data.train_subset=8",
        "task.data.test_subset=4",
        "checkpoint.every_steps=3",
    ]  # checkpoints at 2 (epoch end), 3 (mid-epoch), 4


@pytest.mark.parametrize("pipeline", ["device", "dataloader"])
def test_resume_mid_epoch_is_exact(
    tmp_path: Path, fake_root: Path, pipeline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = _overrides(fake_root, pipeline)
    # stopped in the middle of the second epoch (2 steps per epoch)
    whole, split = whole_and_resumed(overrides, tmp_path, monkeypatch, ImageClassificationTask, stop_at_step=3)
    keys = ("step", "epoch", "lr", "test_loss", "test_acc", "train_acc")
    rows_whole = [{k: r[k] for k in keys} for r in metrics(whole)]
    rows_split = [{k: r[k] for k in keys} for r in metrics(split)]
    assert rows_whole == rows_split and len(rows_whole) == 2
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["task"]
    b = torch.load(split / "checkpoint.pt", weights_only=True)["task"]
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_dataloader_batches_do_not_depend_on_worker_count(fake_root: Path) -> None:
    from omegaconf import OmegaConf

    from conftest import composed_task
    from optrepro.tasks.base import RunContext, seed_everything

    def batches(workers: int) -> list[torch.Tensor]:
        task_cfg = composed_task("cifar10_resnet18")
        task_cfg.data.update(
            {"root": str(fake_root), "verify_checksums": False, "pipeline": "dataloader", "num_workers": workers}
        )
        task_cfg.update({"batch_size": 8, "epochs": 2})
        cfg = OmegaConf.create({"optimizer": {"name": "sgd", "lr": 0.1}, "task": task_cfg})
        seed_everything(0)
        task = ImageClassificationTask(cfg.task, RunContext(cfg, torch.device("cpu"), "fp32", seed=0))
        out = []
        for _ in range(5):  # crosses the epoch boundary (4 batches per epoch)
            out.append(task._next_batch()[0])
        return out

    for x0, x2 in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x0, x2)
