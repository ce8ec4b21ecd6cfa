"""ImageNet networks: torchvision's own definitions (the AdaBelief ImageNet run used torchvision ResNet-18)."""

from __future__ import annotations

from torch import nn


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-18 from scratch (no pretrained weights): 11,689,512 parameters at 1000 classes."""
    from torchvision.models import resnet18 as tv_resnet18

    return tv_resnet18(weights=None, num_classes=num_classes)


__all__ = ["resnet18"]
