"""Object detection with torchvision's Faster R-CNN: EAdam's Table 4 (VOC07+12 -> VOC07 test) and a
CPU-sized synthetic demo.

EAdam ran mmdetection 2.x's ``faster_rcnn_r50_fpn_1x_voc0712`` with each optimizer at lr 1e-4,
weight decay 1e-4 (coupled, to all parameters), eps 1e-8, the VOC0712 set repeated 3x for 4
"epochs" with the lr x0.1 after the 3rd, i.e. 12 passes with the decay after the 9th, no warmup.
Here one epoch is one pass over the training images; every group's lr is multiplied by ``lr_gamma``
from each 0-based epoch in ``lr_milestones`` on (inside the step that finishes the epoch before it).

One ``train_step`` is one batch of ``batch_size`` images: images are decoded, flipped
horizontally with probability ``flip_prob`` (boxes too) and handed with their boxes to the model,
whose transform normalizes them (ImageNet mean/std) and resizes them so the short side is
``model.min_size`` and the long side at most ``model.max_size`` (mmdetection's
``Resize(img_scale=(1000, 600), keep_ratio=True)``), padding the batch to a multiple of 32. The
loss is the sum of the RPN and RoI head losses. The batch order comes from ``BatchOrder`` (uniform
batches, the last partial one dropped: ``batch_grouping=none``) or ``GroupedBatchOrder``
(``batch_grouping=aspect_ratio``, mmdetection's ``GroupSampler``: every batch from one group,
landscape ``width / height > 1`` or not, each group padded to whole batches with random repeats
of its images), and each flip from a hash of (seed, epoch, image), so a resumed run sees exactly
the same batches.

Evaluation (``eval_every_epochs`` and at the end) detects on the whole test set at the model's
test size (scores >= 0.05, NMS 0.5, at most 100 per image, mapped back to the original image) and
reports VOC mAP@0.5 in percent: ``map50`` (area / all-point, VOC2010+) and ``map50_11pt`` (the
VOC2007 11-point metric, which mmdetection reports for VOC2007 test and so most likely EAdam's
Table 4); ``task.metric`` picks the primary one. Difficult boxes: see :mod:`optrepro.data.voc`.

Runs in fp32 unless ``precision=bf16`` (the one precision switch of every task): under bf16
autocast torchvision decodes boxes in bf16 (about 4 px resolution at 1000 px), which costs mAP.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from optrepro.errors import UserError
from optrepro.metrics.map import voc_map
from optrepro.models.detection import build_detector
from optrepro.tasks.base import BatchOrder, GroupedBatchOrder, RunContext, Task, derived_seed

SOURCES = ("voc", "synthetic")
METRICS = ("map50", "map50_11pt")
#: how training batches are drawn: none = uniform (BatchOrder); aspect_ratio = mmdetection's GroupSampler
BATCH_GROUPINGS = ("none", "aspect_ratio")


class DetectionData:
    """Training or test images with their boxes, from VOC files or the synthetic generator."""

    def __init__(self, cfg: DictConfig, train: bool) -> None:
        data = cfg.data
        self.source = str(data.name)
        self.train_difficult = bool(data.get("train_difficult", False))
        if self.source == "voc":
            from optrepro.data.voc import VOC_CLASSES, VOCDetectionData

            splits = [str(s) for s in data.train_sets] if train else [str(data.test_set)]
            limit = data.get("train_subset" if train else "test_subset")
            self.voc = VOCDetectionData(str(data.root), splits, download=bool(data.get("download", False)),
                                        limit=None if limit is None else int(limit))
            self.class_names: tuple[str, ...] = VOC_CLASSES
            self.size = len(self.voc)
        else:
            from optrepro.data.synthetic_det import SHAPES, make_synthetic_detections

            n = int(data.n_train if train else data.n_test)
            seed = derived_seed("synthetic-det", int(data.seed), "train" if train else "test")
            self.synthetic = make_synthetic_detections(
                n, seed, size=int(data.image_size), max_objects=int(data.max_objects),
                min_side=int(data.min_side), max_side=int(data.max_side))
            self.class_names = SHAPES
            self.size = n

    def __len__(self) -> int:
        return self.size

    def image(self, index: int) -> torch.Tensor:
        """uint8 (3, H, W)."""
        return self.voc.image(index) if self.source == "voc" else self.synthetic.images[index]

    def annotation(self, index: int) -> dict[str, torch.Tensor]:
        """All boxes of the image: ``boxes`` (k, 4) xyxy, ``labels`` (k,), ``difficult`` (k,) bool."""
        if self.source == "voc":
            t = self.voc.target(index)
            return {"boxes": t.boxes, "labels": t.labels, "difficult": t.difficult}
        boxes, labels = self.synthetic.boxes[index], self.synthetic.labels[index]
        return {"boxes": boxes, "labels": labels, "difficult": torch.zeros(len(labels), dtype=torch.bool)}

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every image, without decoding any: VOC's XML ``<size>``, the synthetic tensors' shapes."""
        if self.source == "voc":
            return [(t.width, t.height) for t in self.voc.targets]
        height, width = self.synthetic.images.shape[-2:]
        return [(int(width), int(height))] * self.size

    def aspect_groups(self) -> list[int]:
        """mmdetection's group flag (``CustomDataset._set_group_flag``): 1 when width / height > 1, else 0."""
        return [int(width / height > 1) for width, height in self.sizes()]

    def training_target(self, index: int) -> dict[str, torch.Tensor]:
        """The boxes the detector learns: difficult ones left out unless ``data.train_difficult``."""
        ann = self.annotation(index)
        keep = torch.ones_like(ann["difficult"]) if self.train_difficult else ~ann["difficult"]
        return {"boxes": ann["boxes"][keep], "labels": ann["labels"][keep]}


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image (..., H, W) and its continuous xyxy boxes."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


def detection_provenance(cfg: DictConfig, train: DetectionData, test: DetectionData) -> dict[str, Any]:
    """data.json of the detection data: the VOC files read (train and test splits), or the synthetic scenes."""
    from optrepro.data import provenance

    if train.source == "voc":
        return provenance.voc(str(cfg.data.root), {**train.voc.files, **test.voc.files})
    return provenance.synthetic("synthetic_det", f"random shapes, seed {int(cfg.data.seed)}")


class DetectionTask(Task):
    population_refusal = "Faster R-CNN's images and proposals vary in size per member and do not stack"
    metric = "map50"
    mode = "max"
    data_parallel_refusal = ("torchvision's RPN and RoI samplers draw from the global RNG image by image, "
                             "so a batch split across processes would not train as the whole batch does")
    state_attrs = ("step", "order", "model", "optimizer", "_epoch_ended")

    # ------------------------------------------------------------------------ setup
    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        self.metric = str(cfg.get("metric", "map50"))
        self.train_data = DetectionData(cfg, train=True)
        self.test_data = DetectionData(cfg, train=False)
        self.data_provenance = detection_provenance(cfg, self.train_data, self.test_data)
        self.num_classes = len(self.train_data.class_names)
        self.model = build_detector(cfg.model, self.num_classes).to(ctx.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = ctx.make_optimizer(self.params)
        self.batch_size, self.eval_batch_size = int(cfg.batch_size), int(cfg.eval_batch_size)
        if len(self.train_data) < self.batch_size:
            raise UserError(f"{len(self.train_data)} training images < task.batch_size={self.batch_size}")
        seed = derived_seed("det-order", ctx.seed)
        self.order: BatchOrder
        if cfg.batch_grouping == "aspect_ratio":
            self.order = GroupedBatchOrder(self.train_data.aspect_groups(), self.batch_size, seed=seed)
        else:
            self.order = BatchOrder(len(self.train_data), self.batch_size, seed=seed)
        self.flip_prob = float(cfg.get("flip_prob", 0.5))
        self.epochs = int(cfg.epochs)
        self.eval_every = int(cfg.eval_every_epochs)
        self.milestones = {int(e) for e in (cfg.get("lr_milestones") or [])}
        self.lr_gamma = float(cfg.get("lr_gamma", 0.1))
        self._epoch_ended = False
        self.last_per_class: dict[str, float] = {}

    # ------------------------------------------------------------------------ training
    def flip_this(self, epoch: int, index: int) -> bool:
        """The horizontal-flip draw of image ``index`` in ``epoch`` (a hash: no RNG state to keep)."""
        if self.flip_prob <= 0.0:
            return False
        draw = derived_seed("det-flip", self.ctx.seed, epoch, index) / float(1 << 63)
        return draw < self.flip_prob

    def batch(self, indices: list[int], epoch: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        device = self.ctx.device
        images, targets = [], []
        for i in indices:
            image = self.train_data.image(i)
            target = self.train_data.training_target(i)
            if self.flip_this(epoch, i):
                image, target["boxes"] = hflip(image, target["boxes"])
            images.append(image.to(device, non_blocking=True).float().div_(255.0))
            targets.append({k: v.to(device) for k, v in target.items()})
        return images, targets

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.ctx.autocast()

    def train_step(self) -> dict[str, Any]:
        self._epoch_ended = False
        indices = self.order.next_indices().tolist()
        images, targets = self.batch(indices, self.order.epoch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses = self.model(images, targets)
        loss = sum(v.float() for v in losses.values())
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if self.order.epoch_finished:
            done = self.order.epoch + 1
            if done in self.milestones:  # epoch index `done` (0-based) onwards runs decayed
                for group in self.optimizer.param_groups:
                    group["lr"] = group["lr"] * self.lr_gamma
            self._epoch_ended = True
        return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}

    # ------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def detect(self, data: DetectionData, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Detections (on the CPU) for the first ``limit`` images of ``data``."""
        self.model.eval()
        n = len(data) if limit is None else min(limit, len(data))
        out: list[dict[str, torch.Tensor]] = []
        for start in range(0, n, self.eval_batch_size):
            ids = range(start, min(start + self.eval_batch_size, n))
            images = [data.image(i).to(self.ctx.device).float().div_(255.0) for i in ids]
            with self.autocast():
                results = self.model(images)
            out.extend({k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in r.items()}
                       for r in results)
        return out

    def evaluate(self) -> dict[str, float]:
        detections = self.detect(self.test_data)
        truths = [self.test_data.annotation(i) for i in range(len(self.test_data))]
        result = voc_map(detections, truths, self.num_classes)
        names = self.test_data.class_names
        self.last_per_class = {names[c - 1]: 100.0 * curve.ap_area for c, curve in result.per_class.items()}
        return {"map50": 100.0 * result.map_area, "map50_11pt": 100.0 * result.map_11pt,
                "detections_per_image": sum(len(d["scores"]) for d in detections) / max(len(detections), 1)}

    # ------------------------------------------------------------------------ loop interface
    def done(self) -> bool:
        return self.order.epochs_done >= self.epochs

    def eval_due(self) -> bool:
        if not self._epoch_ended:
            return False
        epochs = round(self.order.epochs_done)
        return epochs % self.eval_every == 0 or epochs >= self.epochs

    @property
    def total_steps(self) -> int:
        return self.epochs * self.order.batches_per_epoch

    @property
    def epoch(self) -> float:
        return self.order.epochs_done

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        """Summary extras: per-class AP (area, %) of the last evaluation, data sizes."""
        if self.last_per_class:
            text = ", ".join(f"{k} {v:.1f}" for k, v in self.last_per_class.items())
            print(f"{self.cfg.name}: per-class AP50 (area): {text}", file=sys.stderr, flush=True)
        return {"detection": {"per_class_ap50": self.last_per_class, "train_images": len(self.train_data),
                              "test_images": len(self.test_data), "classes": list(self.train_data.class_names)}}


__all__ = ["DetectionData", "DetectionTask", "hflip"]
