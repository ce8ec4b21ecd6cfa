"""GAN networks of the AdaBelief paper's GAN experiments, and the small MLPs of the ring demo.

* ``DCGANGenerator`` / ``DCGANDiscriminator``: the PyTorch DCGAN example nets at 64x64 (nz 100,
  ngf = ndf = 64, N(0, 0.02) conv init, N(1, 0.02) BatchNorm scale) that the AdaBelief repo's
  ``wgan/`` and ``wgan-gp/`` scripts train. The discriminator's head is selectable because the
  three setups differ only there: ``logit`` (the example's 4x4 conv; its Sigmoid is folded into
  BCE-with-logits), ``sigmoid`` (the 4x4 conv plus Sigmoid, kept as the repo's WGAN critic had it),
  ``linear`` (the repo's WGAN-GP critic: flatten + Linear(4*4*8*ndf, 1)).
* ``SNGANGenerator`` / ``SNGANDiscriminator``: the 32x32 ResNet nets of Miyato et al. as configured
  in the AdaBelief fork of PyTorch-StudioGAN (z 128, G 256 channels, D 128 channels, spectral norm
  in D only, orthogonal init), optionally class-conditional (conditional BatchNorm in G and a
  projection discriminator), which is how that fork's CIFAR-10 config ran ("ProjGAN").
* ``RingGenerator`` / ``RingDiscriminator``: ReLU MLPs for the 2-D mixture-of-Gaussians demo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

DCGAN_HEADS = ("logit", "sigmoid", "linear")


# ----------------------------------------------------------------------------------------- DCGAN
def dcgan_init_(module: nn.Module) -> None:
    """The DCGAN example's init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (N, nz) -> images (N, nc, 64, 64) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.nz = nz

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),  # 4x4
            *up(ngf * 8, ngf * 4),  # 8x8
            *up(ngf * 4, ngf * 2),  # 16x16
            *up(ngf * 2, ngf),  # 32x32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),  # 64x64
        )
        dcgan_init_(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images (N, nc, 64, 64) -> one score per image (N,); see the module docstring for ``head``."""

    def __init__(self, ndf: int = 64, nc: int = 3, head: str = "logit") -> None:
        super().__init__()
        if head not in DCGAN_HEADS:
            raise ValueError(f"head must be one of {DCGAN_HEADS}, got {head!r}")
        self.head_kind = head

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]

        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),  # 32x32
            *down(ndf, ndf * 2),  # 16x16
            *down(ndf * 2, ndf * 4),  # 8x8
            *down(ndf * 4, ndf * 8),  # 4x4
        )
        self.head: nn.Module
        if head == "linear":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 8 * ndf, 1))  # default Linear init, as the repo
        else:
            self.head = nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False)
        dcgan_init_(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.head(self.main(x)).reshape(-1)
        return torch.sigmoid(out) if self.head_kind == "sigmoid" else out


# ------------------------------------------------------------------------------- SN-GAN ResNet
def orthogonal_init_(module: nn.Module) -> None:
    """StudioGAN's "ortho" init: orthogonal conv/linear/embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            nn.init.orthogonal_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


#: ``d_shortcut``: what the critic's residual shortcut sees in blocks 2-4. ``aliased`` is the reference
#: (SNGAN-AdaBelief models/resnet.py:253-256: ``x0 = x`` then an in-place ReLU on ``x``, so the
#: shortcut sees relu(x)); ``clean`` is the textbook block (the shortcut sees x).
D_SHORTCUTS = ("clean", "aliased")
#: ``g_embedding_init``: the conditional BatchNorm's gain/bias embeddings at the start. ``orthogonal``
#: is the reference (StudioGAN's ortho init covers nn.Embedding, utils/model_ops.py:34-36);
#: ``zeros`` starts every class at plain BN (gain 1, bias 0).
G_EMBEDDING_INITS = ("zeros", "orthogonal")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without affine, then a per-class scale (1 + gain[y]) and shift bias[y]; plain BN when
    ``num_classes`` is 0. ``reset_embeddings`` zeroes gains and biases (plain BN at the start)."""

    def __init__(self, channels: int, num_classes: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)

    def reset_embeddings(self) -> None:
        if self.num_classes:
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.bn(x)
        if not self.num_classes:
            return out
        if y is None:
            raise ValueError("a class-conditional network needs labels y")
        return out * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class _GenBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int, bn_eps: float) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(cin, num_classes, bn_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.bn2 = ConditionalBatchNorm2d(cout, num_classes, bn_eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class SNGANGenerator(nn.Module):
    """z (N, nz) [+ labels] -> images (N, 3, 32, 32) in [-1, 1]: linear to 4x4, three up-blocks.

    ``g_bn_eps``: eps of every BatchNorm (the reference's is 1e-4, utils/model_ops.py:75,84; torch's
    default 1e-5). ``g_embedding_init``: see :data:`G_EMBEDDING_INITS`."""

    def __init__(self, nz: int = 128, conv_dim: int = 64, num_classes: int = 0, nc: int = 3,
                 g_bn_eps: float = 1e-5, g_embedding_init: str = "zeros") -> None:
        super().__init__()
        if g_embedding_init not in G_EMBEDDING_INITS:
            raise ValueError(f"g_embedding_init must be one of {G_EMBEDDING_INITS}, got {g_embedding_init!r}")
        self.nz, self.ch = nz, conv_dim * 4
        self.linear = nn.Linear(nz, 4 * 4 * self.ch)
        self.blocks = nn.ModuleList([_GenBlock(self.ch, self.ch, num_classes, g_bn_eps) for _ in range(3)])
        self.bn = nn.BatchNorm2d(self.ch, eps=g_bn_eps)
        self.conv = nn.Conv2d(self.ch, nc, 3, 1, 1)
        orthogonal_init_(self)  # embeddings included: "orthogonal" keeps them
        if g_embedding_init == "zeros":
            for m in self.modules():
                if isinstance(m, ConditionalBatchNorm2d):
                    m.reset_embeddings()

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(z.view(z.shape[0], -1)).view(z.shape[0], self.ch, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.conv(F.relu(self.bn(h))))


class _DiscBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool, first: bool, aliased: bool = False) -> None:
        super().__init__()
        self.downsample, self.first = downsample, first
        self.aliased = aliased and not first  # the first block has no ReLU before its conv
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.learnable_sc = downsample or cin != cout
        if self.learnable_sc:
            self.shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        if self.aliased:  # the reference's in-place ReLU: the shortcut sees relu(x) too
            x = h
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        sc = x
        if self.learnable_sc:
            if self.first:  # the "optimized" first block pools before its 1x1 conv
                sc = self.shortcut(F.avg_pool2d(x, 2))
            else:
                sc = self.shortcut(x)
                sc = F.avg_pool2d(sc, 2) if self.downsample else sc
        return h + sc


class SNGANDiscriminator(nn.Module):
    """images (N, 3, 32, 32) [+ labels] -> scores (N,); spectral norm everywhere, sum pooling, and a
    projection term <embed(y), h> when class-conditional. ``d_shortcut``: see :data:`D_SHORTCUTS`.
    ``d_sn_eps``: the spectral norm's eps (StudioGAN's 1e-6, utils/model_ops.py:62-73; torch's 1e-12)."""

    def __init__(self, conv_dim: int = 64, num_classes: int = 0, nc: int = 3, d_shortcut: str = "clean",
                 d_sn_eps: float = 1e-12) -> None:
        super().__init__()
        if d_shortcut not in D_SHORTCUTS:
            raise ValueError(f"d_shortcut must be one of {D_SHORTCUTS}, got {d_shortcut!r}")
        ch = conv_dim * 2
        aliased = d_shortcut == "aliased"
        self.blocks = nn.Sequential(
            _DiscBlock(nc, ch, downsample=True, first=True),  # 16x16
            _DiscBlock(ch, ch, downsample=True, first=False, aliased=aliased),  # 8x8
            _DiscBlock(ch, ch, downsample=False, first=False, aliased=aliased),
            _DiscBlock(ch, ch, downsample=False, first=False, aliased=aliased),
        )
        self.linear = nn.Linear(ch, 1)
        self.num_classes = num_classes
        if num_classes:
            self.embedding = nn.Embedding(num_classes, ch)
        orthogonal_init_(self)
        for m in list(self.modules()):  # after the init, so the power iteration starts from the final weights
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                spectral_norm(m, eps=d_sn_eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        out = self.linear(h).reshape(-1)
        if self.num_classes:
            if y is None:
                raise ValueError("a class-conditional discriminator needs labels y")
            out = out + (self.embedding(y) * h).sum(dim=1)
        return out


# ------------------------------------------------------------------------------------ ring MLPs
def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RingGenerator(nn.Module):
    """z (N, nz) -> points (N, 2)."""

    def __init__(self, nz: int = 16, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.nz = nz
        self.net = _mlp([nz, *[hidden] * layers, 2])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class RingDiscriminator(nn.Module):
    """points (N, 2) -> logits (N,)."""

    def __init__(self, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.net = _mlp([2, *[hidden] * layers, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(-1)


__all__ = [
    "DCGAN_HEADS",
    "D_SHORTCUTS",
    "G_EMBEDDING_INITS",
    "ConditionalBatchNorm2d",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "RingDiscriminator",
    "RingGenerator",
    "SNGANDiscriminator",
    "SNGANGenerator",
    "dcgan_init_",
    "orthogonal_init_",
]
