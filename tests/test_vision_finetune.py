"""Vision fine-tuning (timm ViT / ResNet on CIFAR-10): local checkpoints, schedule, clipping, smoke run, preset,
the Inception crop (task.data.augment=inception_crop) through the task.

Nothing is downloaded: tiny timm models are built with pretrained=False, saved as local state_dicts and
loaded through task.model.checkpoint; CIFAR is fake data in torchvision's on-disk format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml

from conftest import cli, compose, metrics, run_folders, run_inprocess, summary, whole_and_resumed
from optrepro.data.cifar import write_fake_cifar

#: tiny stand-ins for ViT-B/16 and ResNet-50 (same timm classes and parameter names, far fewer weights)
TINY = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}),
    "resnet": ("resnet18", {}),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar(root, "cifar10", n_train=100, n_test=32)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for key, (name, kwargs) in TINY.items():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        out[key] = folder / f"{key}.pth"
        torch.save(model.state_dict(), out[key])
    return out


def overrides(kind: str, root: Path, ckpt: Path, *extra: str) -> list[str]:
    name, kwargs = TINY[kind]
    kw = [f"++task.model.kwargs.{k}={v}" for k, v in kwargs.items()]  # timm.create_model's size arguments
    return ["task=cifar10_vit_b16_ft", "profile=smoke", f"task.data.root={root}", "task.data.verify_checksums=false",
            f"task.model.name={name}", f"task.model.checkpoint={ckpt}", "~task.model.kwargs.img_size", *kw,
            "task.data.input_size=32", "device=cpu", *extra]


def build(over: list[str]) -> Any:
    from optrepro.config import resolve_interpolations
    from optrepro.tasks import RunContext, build_task

    cfg, _ = compose(over)
    cfg = resolve_interpolations(cfg)
    return build_task(cfg.task, RunContext(cfg, torch.device("cpu"), "fp32", int(cfg.seed)))


@pytest.mark.parametrize("kind", list(TINY))
def test_local_checkpoint_is_loaded_with_a_new_head_and_kinds(kind: str, data_root: Path,
                                                              checkpoints: dict[str, Path]) -> None:
    saved = torch.load(checkpoints[kind])
    task = build(overrides(kind, data_root, checkpoints[kind], "optimizer=adamw", "optimizer.weight_decay=0.1"))
    state = task.model.state_dict()
    head = {n for n in saved if n.startswith(("head.", "fc."))}
    assert head and all(torch.equal(state[n], saved[n]) for n in saved if n not in head)  # the body is the file's
    assert not all(torch.equal(state[n], saved[n]) for n in head)  # timm replaces the head (fine-tuning)
    from optrepro.models.param_kinds import parameter_kinds

    kinds = parameter_kinds(task.model)
    assert {kinds[n] for n in head if n.endswith("weight")} == {"head"}  # its bias is a bias (norm_bias)
    if kind == "vit":
        assert kinds["patch_embed.proj.weight"] == kinds["pos_embed"] == "embedding"
        assert kinds["blocks.0.attn.qkv.weight"] == "attention" and kinds["blocks.0.mlp.fc1.weight"] == "mlp"
    # the decay mask: no decay on biases and norms, decay on every other weight
    named = {id(p): n for n, p in task.model.named_parameters()}
    for group in task.optimizer.param_groups:
        for p in group["params"]:
            assert (group["weight_decay"] == 0.0) == (kinds[named[id(p)]] == "norm_bias")
    assert {g["weight_decay"] for g in task.optimizer.param_groups} == {0.0, 0.1}
    # the model's normalisation (timm pretrained_cfg), not CIFAR's
    expected = timm.models.get_pretrained_cfg(TINY[kind][0]).mean
    assert tuple(task.mean) == pytest.approx(expected)


def test_warmup_then_cosine_and_clipping(data_root: Path, checkpoints: dict[str, Path]) -> None:
    extra = ("task.max_steps=20", "task.warmup_steps=4", "task.min_lr_ratio=0.0", "optimizer=sgd")
    task = build(overrides("vit", data_root, checkpoints["vit"], *extra))
    values = {}
    for step in (0, 3, 4, 12, 20):
        task.step = step
        values[step] = task.lr_factor()
    assert values[0] == pytest.approx(1 / 4) and values[3] == pytest.approx(1.0) and values[4] == pytest.approx(1.0)
    assert values[12] == pytest.approx(0.5) and values[20] == pytest.approx(0.0, abs=1e-12)
    task.step = 0

    def grad_norm(t: Any) -> float:
        return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in t.model.parameters() if p.grad is not None))

    task.train_step()
    assert task.optimizer.param_groups[0]["lr"] == pytest.approx(0.03 / 4)  # the recipe's lr at the first step
    assert grad_norm(task) <= 1.0 * (1 + 1e-5)  # clip_norm 1.0 (the recipe)
    tiny = build(overrides("vit", data_root, checkpoints["vit"], *extra, "task.clip_norm=1e-3"))
    free = build(overrides("vit", data_root, checkpoints["vit"], *extra, "task.clip_norm=0"))
    tiny.train_step()
    free.train_step()
    assert grad_norm(tiny) <= 1e-3 * (1 + 1e-5) < grad_norm(free)


@pytest.mark.parametrize("augment", ["inception_crop", "crop_flip"])  # the preset's (vit_jax's) | the old one
def test_smoke_run_learns_through_the_real_code(data_root: Path, checkpoints: dict[str, Path],
                                                tmp_path: Path, augment: str) -> None:
    over = overrides("vit", data_root, checkpoints["vit"], "task.max_steps=36", "task.warmup_steps=3",
                     "task.data.train_subset=48", "task.batch_size=8", "optimizer=sgd", "seed=1",
                     f"task.data.augment={augment}")
    outcome = run_inprocess(over, tmp_path)
    assert outcome.status == "completed", outcome.reason
    (folder,) = run_folders(tmp_path)
    rows = metrics(folder)
    # 48 images - the smoke profile's 4 validation images = 44: 5 batches of 8 per epoch, 36 steps -> 8 evals
    assert len(rows) == 8 and all({"train_loss", "test_acc", "val_acc", "val_loss", "lr"} <= set(r) for r in rows)
    assert summary(folder)["metric"] == "test_acc"
    # measured (seeds 1-3), train loss first -> last eval, final test_acc on 32 images (chance 10%):
    # inception_crop 2.24-2.27 -> 0.65-1.02, 53-66%; crop_flip 2.27-2.31 -> 0.85-1.16, 53%
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert last < 0.7 * first, (first, last)
    assert rows[-1]["test_acc"] > 25.0, rows[-1]


def test_cfg_job_shows_the_vit_recipe() -> None:
    proc = cli(["experiment=finetune_vision", "--cfg", "job"], check=True)
    cfg = yaml.safe_load(proc.stdout)
    task, opt = cfg["task"], cfg["optimizer"]
    assert (opt["name"], opt["lr"], opt["momentum"], opt["weight_decay"]) == ("sgd", 0.03, 0.9, 0.0)
    assert (task["batch_size"], task["max_steps"], task["warmup_steps"], task["schedule"], task["clip_norm"]) == (
        512, 10000, 500, "cosine", 1.0)
    assert task["data"]["val_size"] == 1000 and task["model"]["source"] == "timm"


def test_pretrained_weights_from_the_hf_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=false: timm's pretrained file is read from the HF cache layout, or a one-line DataMissingError."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    from optrepro.errors import DataMissingError
    from optrepro.models.timm_models import build_timm_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    name, kwargs = TINY["vit"]
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    with pytest.raises(DataMissingError, match="python -m optrepro.models.timm_models"):
        build_timm_model(name, 10, pretrained=True, checkpoint=None, kwargs=kwargs, download=False)
    torch.manual_seed(1)
    source = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    repo = tmp_path / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(source.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    model = build_timm_model(name, 10, pretrained=True, checkpoint=None, kwargs=kwargs, download=False)
    assert torch.equal(model.state_dict()["blocks.1.mlp.fc2.weight"], source.state_dict()["blocks.1.mlp.fc2.weight"])


def test_both_presets_take_vit_jaxs_inception_crop_and_the_old_crop_is_one_override_away() -> None:
    for name in ("cifar10_vit_b16_ft", "cifar10_resnet50_ft"):
        cfg, _ = compose([f"task={name}"])
        assert cfg.task.data.augment == "inception_crop", name
        cfg, _ = compose([f"task={name}", "task.data.augment=crop_flip"])
        assert cfg.task.data.augment == "crop_flip" and cfg.task.data.pad == 4


def _crop_task(root: Path, ckpt: Path, pipeline: str) -> Any:
    """The ResNet stand-in at 40 px (the crops are resized up, as to 224 / 384 in the presets)."""
    over = overrides("resnet", root, ckpt, f"task.data.pipeline={pipeline}", "task.data.input_size=40")
    return build(over)


def test_inception_crop_batches_are_the_seeded_crops_of_each_global_batch(data_root: Path,
                                                                          checkpoints: dict[str, Path]) -> None:
    from dataclasses import replace

    from torch.nn import functional as F

    from optrepro.data.gpu_pipeline import inception_crop_params

    task = _crop_task(data_root, checkpoints["resnet"], "device")
    assert task.train_images.pad == 0 and not task.train_images.augments  # no pad-4 crop underneath
    images, labels = task._next_batch()
    index = task._global_batch(0, 0)
    plain, plain_labels = task.train_images.batch(index)  # the batch's images, normalised, unaugmented
    assert images.shape == (8, 3, 40, 40) and torch.equal(labels, plain_labels)
    generator = torch.Generator().manual_seed(task._batch_seed(0, 0))
    top, left, h, w = inception_crop_params(8, 32, 32, generator)
    flips = torch.rand(8, generator=generator) < 0.5
    for i in range(8):
        crop = plain[i : i + 1, :, int(top[i]) : int(top[i] + h[i]), int(left[i]) : int(left[i] + w[i])]
        expected = F.interpolate(crop, size=(40, 40), mode="bilinear", align_corners=False, antialias=False)[0]
        assert torch.equal(images[i], expected.flip(-1) if flips[i] else expected), i
    # (seed, epoch, index) alone: a fresh task moved to batch (0, 1) draws what this one draws next,
    # through either pipeline (the DataLoader's workers hand over the same unaugmented images)
    following = task._next_batch()[0]
    for pipeline in ("device", "dataloader"):
        fresh = _crop_task(data_root, checkpoints["resnet"], pipeline)
        fresh.order.index = 1
        assert torch.allclose(fresh._next_batch()[0], following, atol=1e-6), pipeline
    # a data-parallel rank's share is the single process's batch, split
    task.dist = replace(task.dist, rank=1, world=2)
    share, _ = task._inception_cropped((plain[1::2], plain_labels[1::2]), 0, 0)
    assert torch.equal(share, images[1::2])


def test_inception_crop_resume_mid_epoch_is_exact(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from optrepro.tasks.vision import ImageClassificationTask

    over = overrides("resnet", data_root, checkpoints["resnet"], "task.data.input_size=40", "optimizer=sgd",
                     "task.data.train_subset=28", "task.max_steps=5", "checkpoint.every_steps=3")
    # 24 images: 3 batches an epoch; stopped after the step-3 checkpoint, in the second epoch
    whole, split = whole_and_resumed(over, tmp_path, monkeypatch, ImageClassificationTask, stop_at_step=4)
    keys = ("step", "train_loss", "test_loss", "test_acc", "train_acc")
    assert [{k: r[k] for k in keys} for r in metrics(whole)] == [{k: r[k] for k in keys} for r in metrics(split)]
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["task"]["model"]
    b = torch.load(split / "checkpoint.pt", weights_only=True)["task"]["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
