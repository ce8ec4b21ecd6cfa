"""Network definitions: parameter counts against the published CIFAR implementations, output shapes.

Reference counts (10 classes): kuangliu/pytorch-cifar (commit 49b7aa9) ResNet18() 11,173,962,
ResNet34() 21,282,122, DenseNet121() 6,956,298 (counted by instantiating that repository's models);
VGG-11 configuration A without BN + 512-512 classifier (the AdaBelief repo's CIFAR vgg11):
9,750,922 = 9,220,480 conv + 525,312 hidden linear + 5,130 output; torchvision resnet18 at 1000
classes: 11,689,512 (torchvision's model documentation).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from optrepro.models.cifar import MODELS, build_model, count_parameters

PUBLISHED = {
    ("resnet18", 10): 11_173_962,
    ("resnet34", 10): 21_282_122,
    ("densenet121", 10): 6_956_298,
    ("vgg11", 10): 9_750_922,
    ("imagenet_resnet18", 1000): 11_689_512,
}


LAST_IN = {"resnet18": 512, "resnet34": 512, "vgg11": 512, "densenet121": 1024}


@functools.cache
def model(name: str, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, classes)


@pytest.mark.parametrize(("name", "classes"), sorted(PUBLISHED))
def test_parameter_counts_match_published(name: str, classes: int) -> None:
    assert count_parameters(model(name, classes)) == PUBLISHED[(name, classes)]


def test_cifar_architecture_details() -> None:
    r18 = model("resnet18", 10)
    assert isinstance(r18.conv1, nn.Conv2d) and r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())  # no max-pool in the stem
    vgg = model("vgg11", 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 8
    assert [type(m).__name__ for m in vgg.classifier] == [
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Linear",
    ]
    dense = model("densenet121", 10)
    assert dense.linear.in_features == 1024  # 64 + 6*32 -> 128 + 12*32 -> 256 + 24*32 -> 512 + 16*32


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "vgg11", "densenet121"])
def test_forward_backward_with_100_classes(name: str) -> None:
    net = model(name, 100)
    # 100 classes change only the last layer
    assert count_parameters(net) == PUBLISHED[(name, 10)] + 90 * (LAST_IN[name] + 1)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_digits_and_imagenet_models() -> None:
    assert build_model("digits_cnn", 10)(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert build_model("imagenet_resnet18", 5)(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    assert set(MODELS) >= {"resnet18", "resnet34", "vgg11", "densenet121", "digits_cnn", "imagenet_resnet18"}
