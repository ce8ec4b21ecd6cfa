"""CIFAR networks as used by the AdaBelief and EAdam CIFAR experiments (the "kuangliu" family).

These are the 32x32 variants everybody in this line of work trains: ResNets with a 3x3 stem and no
max-pool, VGG-11 (configuration A) without batch norm, DenseNet-121 with growth rate 32. Written
from the architecture descriptions (He et al. 2016, Simonyan & Zisserman 2015, Huang et al. 2017)
so that parameter counts match the published CIFAR implementations exactly
(tests/test_models_cifar.py pins them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# ----------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem (64 ch), no max-pool, stages 64/128/256/512, global avg-pool."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10) -> CifarResNet:
    return CifarResNet((2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 10) -> CifarResNet:
    return CifarResNet((3, 4, 6, 3), num_classes)


# -------------------------------------------------------------------------------------- VGG

#: VGG configuration A (11 weight layers); "M" is a 2x2 max-pool
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG without batch norm; classifier Dropout-512-ReLU-Dropout-512-ReLU-classes (32x32 -> 1x1x512)."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG11_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        # He init for convs (no BN here, so the default init trains slowly); zero biases
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                assert m.bias is not None
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg11(num_classes: int = 10) -> VGG:
    return VGG(VGG11_CFG, num_classes)


# --------------------------------------------------------------------------------- DenseNet


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k); output concatenated to the input."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) - 2x2 avg-pool."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs: 3x3 stem with 2k channels, 4 dense blocks, 3 transitions."""

    def __init__(
        self, blocks: tuple[int, int, int, int], growth: int = 32, reduction: float = 0.5, num_classes: int = 10
    ) -> None:
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            stages.append(nn.Sequential(*[Bottleneck(planes + j * growth, growth) for j in range(n)]))
            planes += n * growth
            if i < len(blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(self.conv1(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


def densenet121(num_classes: int = 10) -> CifarDenseNet:
    return CifarDenseNet((6, 12, 24, 16), growth=32, reduction=0.5, num_classes=num_classes)


# ------------------------------------------------------------------------------- digits CNN


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: two 3x3 convs, one 2x2 pool, two linear layers.

    No batch norm and no dropout, so a data-parallel run equals the single-process run on the
    same global batch (tests/test_vision_ddp.py relies on that).
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(num_classes)


# --------------------------------------------------------------------------------- registry


def imagenet_resnet18(num_classes: int = 1000) -> nn.Module:
    from optrepro.models.imagenet import resnet18 as tv_resnet18

    return tv_resnet18(num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "vgg11": vgg11,
    "densenet121": densenet121,
    "digits_cnn": digits_cnn,
    "imagenet_resnet18": imagenet_resnet18,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    """The network called ``name`` (a key of :data:`MODELS`) with ``num_classes`` outputs."""
    if name not in MODELS:
        raise KeyError(name)
    return MODELS[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MODELS",
    "CifarDenseNet",
    "CifarResNet",
    "DigitsCNN",
    "VGG",
    "build_model",
    "count_parameters",
    "densenet121",
    "digits_cnn",
    "resnet18",
    "resnet34",
    "vgg11",
]
