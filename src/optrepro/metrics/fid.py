"""Fréchet Inception Distance (and Inception Score) with an injectable feature extractor.

A feature extractor is any callable ``uint8 images (N, 3, H, W) -> features (N, D)`` or
``-> (features, logits)``, and float images in [-1, 1] where it can (``INPUTS``); it owns its resizing
(torch-fidelity's InceptionV3 resizes to 299 the way the TensorFlow original did). The Inception one
reads its weights from a local file; tests and smoke runs use ``TinyFeatures``, a fixed random conv
net that needs nothing.

Statistics are accumulated in float64 (sums and outer products) so 64,000 fakes never sit in
memory; the real-image statistics are cached in a ``.pt`` file keyed by dataset, split, number of
images, resolution and extractor, and written atomically. The distance itself is torch-fidelity's
``fid_statistics_to_metric`` (the TTUR formula via eigenvalues of sigma1 @ sigma2).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optrepro.errors import DataMissingError

#: the file torch-fidelity downloads into the torch hub cache (converted TF Inception 2015-12-05 weights)
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)

FeatureOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
FeatureExtractor = Callable[[torch.Tensor], FeatureOutput]


# ------------------------------------------------------------------------------- extractors
def default_inception_weights_path() -> Path:
    """Where torch-fidelity (and torch.hub) keep the file: ``$TORCH_HOME/hub/checkpoints/...``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(path: str | os.PathLike[str] | None) -> Path:
    """The weights path to use; raises a one-line DataMissingError when the file is not there."""
    resolved = Path(path).expanduser() if path else default_inception_weights_path()
    if not resolved.is_file():
        raise DataMissingError(
            f"Inception weights for FID not found at {resolved} (task.fid.weights_path); download "
            f"{INCEPTION_WEIGHTS_URL} to that path, or set task.fid.enabled=false"
        )
    return resolved


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 (the TF-FID network): 2048-d pool features and the logits for IS."""

    name = "inception-v3-compat"

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, resize: str = "fidelity") -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.resize = resize
        if resize != "fidelity":
            self.name = f"{self.name}-{resize}"  # other features: another real-statistics cache entry

        path = resolve_inception_weights(weights_path)
        # torch-fidelity loads with weights_only=False; refuse anything a plain tensor load would not accept
        torch.load(path, map_location="cpu", weights_only=True)
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )
        self._batch: torch.Tensor | None = None
        if resize == "pytorch_fid":
            # torch-fidelity's forward takes only uint8 and always applies its TF1 resize and (x-128)/128, so the
            # pytorch-fid input replaces what reaches its first layer (same weights, no copy of its forward)
            self.net.Conv2d_1a_3x3.register_forward_pre_hook(self._pytorch_fid_input)

    def _pytorch_fid_input(self, _module: nn.Module, _args: tuple[Any, ...]) -> tuple[torch.Tensor]:
        assert self._batch is not None
        return (pytorch_fid_resize(self._batch).to(_args[0].dtype),)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images, or (resize=pytorch_fid only) float images in [-1, 1] that reach the net unrounded."""
        net_input = images
        if images.is_floating_point():
            if self.resize != "pytorch_fid":
                raise ValueError("float images reach the Inception only through task.fid.resize=pytorch_fid; "
                                 "torch-fidelity's own resize takes uint8")
            # torch-fidelity's forward insists on uint8; the pre-hook replaces what its first layer sees anyway
            net_input = torch.zeros(images.shape, dtype=torch.uint8, device=images.device)
        self._batch = images
        try:
            features, logits = self.net(net_input)
        finally:
            self._batch = None
        return features, logits


#: how images reach 299x299: torch-fidelity's TF1-compatible resize then (x-128)/128 (``fidelity``), or
#: pytorch-fid's F.interpolate(bilinear, align_corners=False) of x/255 then 2x-1 (``pytorch_fid``)
RESIZES = ("fidelity", "pytorch_fid")


#: what reaches the feature extractor: ``uint8`` (every image rounded as saving a PNG would) or ``float``
#: (the generator's output in [-1, 1] as it is, the reals as ToTensor + Normalize(0.5, 0.5): StudioGAN's FID)
INPUTS = ("uint8", "float")


def pytorch_fid_resize(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's InceptionV3 input at 299x299 in [-1, 1].

    uint8 images as pytorch-fid reads files (x/255, resize, then normalize_input's 2x-1); float images
    are taken to be in [-1, 1] already and only resized (StudioGAN's InceptionV3(normalize_input=False)).
    """
    if images.is_floating_point():
        return F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
    x = images.float() / 255.0
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] as ToTensor + Normalize(0.5, 0.5) computes it ((x/255 - 0.5)/0.5)."""
    return (images.float() / 255.0 - 0.5) / 0.5


class TinyFeatures(nn.Module):
    """A fixed-seed random conv net (no weights to fetch): FID-shaped numbers for tests and smoke runs.

    Not comparable to Inception FIDs; only for checking that the pipeline runs and moves sensibly.
    """

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.name = f"tiny-randconv-d{dim}-s{seed}"
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.conv2 = nn.Conv2d(16, dim, 3, 2, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() if images.is_floating_point() else images.float() / 127.5 - 1.0
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return x.mean(dim=(2, 3))


def build_extractor(kind: str, weights_path: str | None, device: torch.device, resize: str = "fidelity") -> nn.Module:
    if kind == "inception":
        return InceptionFeatures(weights_path, resize).to(device).eval()
    if kind == "tiny":
        return TinyFeatures().to(device).eval()
    raise ValueError(f"unknown feature extractor {kind!r}; choose inception or tiny")


def extractor_name(extractor: Any) -> str | None:
    """A name that identifies the extractor's features (for the cache key), or None if it has none."""
    name = getattr(extractor, "name", None)
    return str(name) if name else None


# ------------------------------------------------------------------------------- statistics
class FeatureStats:
    """Streaming mean and covariance of features in float64 (and the logits, kept for IS)."""

    def __init__(self, keep_logits: bool = True) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        self.keep_logits = keep_logits
        self.logits: list[torch.Tensor] = []

    def update(self, output: FeatureOutput) -> None:
        features, logits = (output if isinstance(output, tuple) else (output, None))
        f = features.detach().to(torch.float64).reshape(features.shape[0], -1)
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        assert self.outer is not None
        self.total += f.sum(dim=0)
        self.outer += f.T @ f
        self.n += f.shape[0]
        if logits is not None and self.keep_logits:
            self.logits.append(logits.detach().float().cpu())

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.total is None or self.outer is None or self.n < 2:
            raise ValueError("FID needs at least 2 images")
        mu = self.total / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (torch-fidelity's implementation)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    stat1 = {"mu": np.asarray(mu1, dtype=np.float64), "sigma": np.atleast_2d(np.asarray(sigma1, dtype=np.float64))}
    stat2 = {"mu": np.asarray(mu2, dtype=np.float64), "sigma": np.atleast_2d(np.asarray(sigma2, dtype=np.float64))}
    return float(fid_statistics_to_metric(stat1, stat2, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and std over ``splits`` of exp(E KL(p(y|x) || p(y))) (torch-fidelity's implementation)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=2020)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def statistics_of(batches: Iterable[torch.Tensor], extractor: FeatureExtractor,
                  keep_logits: bool = True) -> FeatureStats:
    """Run image batches (uint8, or float in [-1, 1]) through the extractor and accumulate their statistics."""
    stats = FeatureStats(keep_logits=keep_logits)
    with torch.no_grad():
        for images in batches:
            if images.dtype != torch.uint8 and not images.is_floating_point():
                raise TypeError(f"FID feature extractors take uint8 or float images, got {images.dtype}")
            stats.update(extractor(images))
    return stats


def to_uint8(images: torch.Tensor, per_image_minmax: bool = False) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 [0, 255], as saving to PNG would round it.

    ``per_image_minmax``: stretch each image's own [min, max] to [0, 255] first, as
    ``torchvision.utils.save_image(img, normalize=True)`` does when every image is saved to its own
    file (the AdaBelief repo's WGAN FID: PyTorch_Experiments/wgan/main.py:263,346), then
    ``floor(255 x + 0.5)`` as save_image quantises.
    """
    if not per_image_minmax:
        return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = images.float()
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    low, high = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
    x = (x - low) / (high - low).clamp_min(1e-5)  # save_image's normalize: max(high - low, 1e-5)
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------- real stats cache
def real_stats_cache_path(root: str | os.PathLike[str], dataset: str, split: str, n: int, size: int,
                          extractor: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in extractor)
    return Path(root) / "fid_stats" / f"{dataset}-{split}-n{n}-{size}px-{safe}.pt"


def load_or_compute_real_stats(cache: Path | None,
                               compute: Callable[[], FeatureStats]) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the real images, read from ``cache`` or computed once and written there."""
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        return saved["mu"].numpy(), saved["sigma"].numpy()
    mu, sigma = compute().mean_cov()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}, tmp)
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return mu, sigma


__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "FeatureExtractor",
    "FeatureStats",
    "INPUTS",
    "InceptionFeatures",
    "TinyFeatures",
    "build_extractor",
    "default_inception_weights_path",
    "extractor_name",
    "frechet_distance",
    "inception_score",
    "load_or_compute_real_stats",
    "real_stats_cache_path",
    "resolve_inception_weights",
    "statistics_of",
    "to_uint8",
    "to_unit_range",
]
