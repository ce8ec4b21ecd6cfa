"""Detectors from torchvision's Faster R-CNN code.

* ``resnet50``: Faster R-CNN + ResNet-50 FPN as mmdetection's ``faster_rcnn_r50_fpn`` (what EAdam
  trained): ImageNet weights loaded from a local file into a ResNet-50 with frozen batch norm, the
  stem and ``layer1`` frozen (mmdet ``frozen_stages=1``; torchvision ``trainable_backbone_layers=3``),
  FPN levels P2-P6, anchors 32..512 with ratios 0.5/1/2, images resized so the short side is
  ``min_size`` (600) and the long side at most ``max_size`` (1000), keeping the ratio.
  Reference-code knobs (mmdet's values in the VOC preset, torchvision's one override away):
  ``sampling_ratio`` (RoIAlign samples per bin; mmdet 0 = adaptive, torchvision 2), ``bn_affine_trainable``
  (mmdet ``norm_eval=True, requires_grad=True``: BN statistics frozen, affine trained in the trained stages;
  torchvision ``FrozenBatchNorm2d``), ``box_loss`` (mmdet ``L1Loss`` in RPN and RoI head; torchvision
  smooth-L1 with beta 1/9).
* ``tiny``: a 4-conv backbone (stride 8, GroupNorm) with one feature map and small heads; no
  weights. For the synthetic demo and for tests of the VOC path on a CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from optrepro.errors import DataMissingError, UserError

BACKBONES = ("resnet50", "tiny")
BOX_LOSSES = ("smooth_l1", "l1")
RESNET50_FILE = "resnet50-0676ba61.pth"  # torchvision ResNet50_Weights.IMAGENET1K_V1


def missing_weights_message(path: Path) -> str:
    return (f"ImageNet-pretrained ResNet-50 weights not found at {path} (task.model.backbone_weights); fetch them "
            f"with `python -c \"import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V1')\"` "
            f"(writes $TORCH_HOME/hub/checkpoints/{RESNET50_FILE}) or set task.model.backbone_weights=/path/to/file")


def check_backbone_weights(model_cfg: DictConfig) -> None:
    """Raise DataMissingError when the ResNet-50 backbone's weights file is not there."""
    if str(model_cfg.get("backbone", "resnet50")) != "resnet50":
        return
    weights = model_cfg.get("backbone_weights")
    if not weights:
        raise UserError("task.model.backbone_weights must name the ImageNet ResNet-50 weights file")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise DataMissingError(missing_weights_message(path))


class StatsFrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed running statistics but trainable affine ``weight``/``bias`` (mmdet's
    ``norm_eval=True`` with ``requires_grad=True``); same state-dict keys as ``nn.BatchNorm2d``."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # statistics never update here
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def resnet50_fpn_backbone(weights_path: str | Path, trainable_layers: int = 3,
                          bn_affine_trainable: bool = False) -> nn.Module:
    """ResNet-50 + FPN; the stages past ``trainable_layers`` frozen. Batch norm statistics are always fixed;
    ``bn_affine_trainable`` makes the BN scale/shift of the trained stages parameters that train."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    path = Path(str(weights_path)).expanduser()
    if not path.is_file():
        raise DataMissingError(missing_weights_message(path))
    body = resnet50(weights=None, norm_layer=StatsFrozenBatchNorm2d if bn_affine_trainable else FrozenBatchNorm2d)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a ResNet-50 state dict (task.model.backbone_weights)")
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}  # the classifier is not used
    try:
        result = body.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"{path} is not a ResNet-50 state dict ({str(exc).strip().splitlines()[-1].strip()}) "
                        f"(task.model.backbone_weights)") from None
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing:
        raise UserError(f"{path} is not a ResNet-50 state dict: {len(missing)} keys missing, "
                        f"e.g. {missing[0]} (task.model.backbone_weights)")
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for name, param in body.named_parameters():
        if not any(name.startswith(layer) for layer in trainable):
            param.requires_grad_(False)
    return BackboneWithFPN(body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           in_channels_list=[256, 512, 1024, 2048], out_channels=256,
                           extra_blocks=LastLevelMaxPool())


class TinyBackbone(nn.Sequential):
    """conv3x3 stride 2 (x3) + conv3x3, GroupNorm + ReLU each: one feature map at stride 8."""

    def __init__(self, width: int = 64):
        chans = [3, width // 4, width // 2, width, width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i < 3 else 1, padding=1, bias=False),
                       nn.GroupNorm(min(8, chans[i + 1]), chans[i + 1]), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_channels = width


def l1_rpn_loss(rpn: Any, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor, labels: list[torch.Tensor],
                regression_targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's RPN loss with an L1 box term: sum over sampled positives / number sampled (mmdet's
    ``L1Loss`` with ``avg_factor`` = sampled anchors)."""
    import torch.nn.functional as F

    pos, neg = rpn.fg_bg_sampler(labels)
    pos_idx = torch.where(torch.cat(pos))[0]
    sampled = torch.cat([pos_idx, torch.where(torch.cat(neg))[0]])
    targets = torch.cat(regression_targets)
    box = F.l1_loss(pred_bbox_deltas[pos_idx], targets[pos_idx], reduction="sum") / sampled.numel()
    cls = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], torch.cat(labels)[sampled])
    return cls, box


def l1_fastrcnn_loss(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: list[torch.Tensor],
                     regression_targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoI head loss with an L1 box term on the ground-truth class's box of each positive RoI, over the
    number of sampled RoIs (mmdet ``L1Loss``, ``reg_class_agnostic=False``)."""
    import torch.nn.functional as F

    labels_t, targets = torch.cat(labels), torch.cat(regression_targets)
    cls = F.cross_entropy(class_logits, labels_t)
    pos = torch.where(labels_t > 0)[0]
    boxes = box_regression.reshape(labels_t.numel(), -1, 4)[pos, labels_t[pos]]
    box = F.l1_loss(boxes, targets[pos], reduction="sum") / labels_t.numel()
    return cls, box


@functools.cache
def _l1_classes() -> tuple[type, type]:
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    class L1RegionProposalNetwork(RegionProposalNetwork):
        def compute_loss(self, objectness: Any, pred_bbox_deltas: Any, labels: Any,
                         regression_targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return l1_rpn_loss(self, objectness, pred_bbox_deltas, labels, regression_targets)

    class L1RoIHeads(RoIHeads):
        def forward(self, features: Any, proposals: Any, image_shapes: Any, targets: Any = None) -> Any:
            if not self.training:
                return super().forward(features, proposals, image_shapes, targets)
            if self.has_mask() or self.has_keypoint():
                raise UserError("task.model.box_loss=l1 supports box-only Faster R-CNN")
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
            feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
            class_logits, box_regression = self.box_predictor(feats)
            cls, box = l1_fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            return [], {"loss_classifier": cls, "loss_box_reg": box}

    return L1RegionProposalNetwork, L1RoIHeads


def use_l1_box_loss(model: nn.Module) -> nn.Module:
    """Switch a torchvision Faster R-CNN's RPN and RoI head to L1 box losses. The modules become subclasses
    that only override the loss (no new state), so torchvision itself stays unpatched."""
    rpn_cls, roi_cls = _l1_classes()
    m: Any = model
    m.rpn.__class__, m.roi_heads.__class__ = rpn_cls, roi_cls
    return model


def build_detector(model_cfg: DictConfig, num_classes: int) -> nn.Module:
    """Faster R-CNN for ``num_classes`` object classes (+1 background) as ``task.model`` describes."""
    m = model_cfg
    common: dict[str, Any] = {
        "min_size": int(m.min_size),
        "max_size": int(m.max_size),
        "rpn_pre_nms_top_n_train": int(m.rpn_pre_nms_top_n_train),
        "rpn_pre_nms_top_n_test": int(m.rpn_pre_nms_top_n_test),
        "rpn_post_nms_top_n_train": int(m.rpn_post_nms_top_n_train),
        "rpn_post_nms_top_n_test": int(m.rpn_post_nms_top_n_test),
        "rpn_batch_size_per_image": int(m.get("rpn_batch_size_per_image", 256)),
        "box_batch_size_per_image": int(m.get("box_batch_size_per_image", 512)),
        "box_detections_per_img": int(m.get("box_detections_per_img", 100)),
        "box_score_thresh": float(m.get("box_score_thresh", 0.05)),
    }
    box_loss = str(m.get("box_loss", "smooth_l1"))
    if box_loss not in BOX_LOSSES:
        raise UserError(f"task.model.box_loss must be one of {', '.join(BOX_LOSSES)}, got '{box_loss}'")
    model = _build(m, num_classes, common)
    return use_l1_box_loss(model) if box_loss == "l1" else model


def _build(m: DictConfig, num_classes: int, common: dict[str, Any]) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = str(m.backbone)
    sampling_ratio = int(m.get("sampling_ratio", 2))
    if backbone == "resnet50":
        body = resnet50_fpn_backbone(str(m.backbone_weights), int(m.get("trainable_layers", 3)),
                                     bn_affine_trainable=bool(m.get("bn_affine_trainable", False)))
        pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=sampling_ratio)
        return FasterRCNN(body, num_classes=num_classes + 1, box_roi_pool=pool, **common)
    if backbone == "tiny":
        width = int(m.get("width", 64))
        hidden = int(m.get("representation_size", 128))
        sizes = tuple(int(s) for s in m.get("anchor_sizes", [16, 32, 64]))
        return FasterRCNN(
            TinyBackbone(width), num_classes=None,
            rpn_anchor_generator=AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),)),
            box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=sampling_ratio),
            box_head=TwoMLPHead(width * 7 * 7, hidden),
            box_predictor=FastRCNNPredictor(hidden, num_classes + 1),
            **common,
        )
    raise UserError(f"task.model.backbone must be one of {', '.join(BACKBONES)}, got '{backbone}'")


__all__ = ["BACKBONES", "BOX_LOSSES", "StatsFrozenBatchNorm2d", "TinyBackbone", "build_detector",
           "check_backbone_weights", "l1_fastrcnn_loss", "l1_rpn_loss", "resnet50_fpn_backbone", "use_l1_box_loss"]
