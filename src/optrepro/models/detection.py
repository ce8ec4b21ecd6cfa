"""Detectors from torchvision's Faster R-CNN code.

* ``resnet50``: Faster R-CNN + ResNet-50 FPN as mmdetection's ``faster_rcnn_r50_fpn`` (what EAdam
  trained): ImageNet weights loaded from a local file into a ResNet-50 with frozen batch norm, the
  stem and ``layer1`` frozen (mmdet ``frozen_stages=1``; torchvision ``trainable_backbone_layers=3``),
  FPN levels P2-P6, anchors 32..512 with ratios 0.5/1/2, images resized so the short side is
  ``min_size`` (600) and the long side at most ``max_size`` (1000), keeping the ratio.
* ``tiny``: a 4-conv backbone (stride 8, GroupNorm) with one feature map and small heads; no
  weights. For the synthetic demo and for tests of the VOC path on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from optrepro.errors import DataMissingError, UserError

BACKBONES = ("resnet50", "tiny")
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


def resnet50_fpn_backbone(weights_path: str | Path, trainable_layers: int = 3) -> nn.Module:
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    path = Path(str(weights_path)).expanduser()
    if not path.is_file():
        raise DataMissingError(missing_weights_message(path))
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
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


def build_detector(model_cfg: DictConfig, num_classes: int) -> nn.Module:
    """Faster R-CNN for ``num_classes`` object classes (+1 background) as ``task.model`` describes."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

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
    backbone = str(m.backbone)
    if backbone == "resnet50":
        return FasterRCNN(resnet50_fpn_backbone(str(m.backbone_weights), int(m.get("trainable_layers", 3))),
                          num_classes=num_classes + 1, **common)
    if backbone == "tiny":
        width = int(m.get("width", 64))
        hidden = int(m.get("representation_size", 128))
        sizes = tuple(int(s) for s in m.get("anchor_sizes", [16, 32, 64]))
        return FasterRCNN(
            TinyBackbone(width), num_classes=None,
            rpn_anchor_generator=AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),)),
            box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=7,
                                            sampling_ratio=int(m.get("sampling_ratio", 2))),
            box_head=TwoMLPHead(width * 7 * 7, hidden),
            box_predictor=FastRCNNPredictor(hidden, num_classes + 1),
            **common,
        )
    raise UserError(f"task.model.backbone must be one of {', '.join(BACKBONES)}, got '{backbone}'")


__all__ = ["BACKBONES", "TinyBackbone", "build_detector", "check_backbone_weights", "resnet50_fpn_backbone"]
