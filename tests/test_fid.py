"""The FID pipeline (optrepro.metrics.fid) with a tiny stand-in feature extractor, no weights needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from optrepro.errors import DataMissingError
from optrepro.metrics.fid import (
    INCEPTION_WEIGHTS_FILE,
    FeatureStats,
    TinyFeatures,
    default_inception_weights_path,
    frechet_distance,
    inception_score,
    load_or_compute_real_stats,
    real_stats_cache_path,
    resolve_inception_weights,
    statistics_of,
    to_uint8,
    to_unit_range,
)


def _images(n: int, seed: int, shift: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 200, (n, 3, 16, 16), generator=gen)
    return (base + shift).clamp(0, 255).to(torch.uint8)


def _batches(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, images.shape[0], size)]


def _fid(a: torch.Tensor, b: torch.Tensor, extractor: TinyFeatures) -> float:
    mu1, s1 = statistics_of(_batches(a, 50), extractor).mean_cov()
    mu2, s2 = statistics_of(_batches(b, 64), extractor).mean_cov()
    return frechet_distance(mu1, s1, mu2, s2)


def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root (as pytorch-fid computes it)."""
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_is_not() -> None:
    extractor = TinyFeatures()
    real = _images(300, seed=0)
    same = _fid(real, real, extractor)
    other_draw = _fid(real, _images(300, seed=1), extractor)
    shifted = _fid(real, _images(300, seed=1, shift=50), extractor)
    assert abs(same) < 1e-6
    assert shifted > 0.05
    assert shifted > 10 * other_draw  # a distribution shift, not sampling noise


def test_fid_matches_direct_numpy_scipy_computation() -> None:
    extractor = TinyFeatures()
    a, b = _images(400, seed=2), _images(300, seed=3, shift=20)
    f1, f2 = extractor(a).double().numpy(), extractor(b).double().numpy()
    assert _fid(a, b, extractor) == pytest.approx(_scipy_fid(f1, f2), rel=1e-6, abs=1e-9)


def test_streaming_statistics_equal_numpy_mean_and_cov_for_any_batching() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(257, 5)) * [1, 2, 3, 4, 5] + 10
    for size in (1, 16, 257):
        stats = FeatureStats()
        for i in range(0, 257, size):
            stats.update(torch.from_numpy(features[i : i + size]))
        mu, cov = stats.mean_cov()
        np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(cov, np.cov(features, rowvar=False), rtol=1e-9)


def test_frechet_distance_closed_form_for_known_gaussians() -> None:
    # 1-D-per-axis Gaussians: FID = |mu1-mu2|^2 + sum (s1 - s2)^2 for diagonal covariances (std s)
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    s1, s2 = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(9.0 + (2 - 1) ** 2 + (1 - 3) ** 2)


def test_real_statistics_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    cache = real_stats_cache_path(tmp_path, "cifar10_abc", "train", 300, 64, "tiny/d16")
    assert cache.parent == tmp_path / "fid_stats" and "tiny_d16" in cache.name and "n300" in cache.name
    extractor = TinyFeatures()
    calls = []

    def compute() -> FeatureStats:
        calls.append(1)
        return statistics_of(_batches(_images(300, seed=0), 100), extractor)

    mu1, s1 = load_or_compute_real_stats(cache, compute)
    mu2, s2 = load_or_compute_real_stats(cache, compute)
    assert calls == [1] and cache.is_file()
    assert not list(cache.parent.glob("*.tmp"))
    np.testing.assert_array_equal(mu1, mu2)
    np.testing.assert_array_equal(s1, s2)


def test_missing_inception_weights_is_a_one_line_error_naming_file_and_source(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(DataMissingError) as info:
        resolve_inception_weights(missing)
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message and "task.fid.weights_path" in message
    assert "https://github.com/toshas/torch-fidelity/releases" in message
    default = default_inception_weights_path()
    assert default.name == "weights-inception-2015-12-05-6726825d.pth"
    assert default.parent.name == "checkpoints" and default.parent.parent.name == "hub"
    present = tmp_path / "w.pth"
    present.write_bytes(b"")
    assert resolve_inception_weights(present) == present


def test_to_uint8_maps_generator_range_to_pixels() -> None:
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x).dtype == torch.uint8


def test_inception_score_limits() -> None:
    assert inception_score(torch.zeros(100, 10), splits=5)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -30.0)
    confident[torch.arange(100), torch.arange(100) % 4] = 30.0  # 4 classes, equally often, certain
    assert inception_score(confident, splits=1)[0] == pytest.approx(4.0, rel=1e-6)


def test_extractor_needs_uint8_or_float_images() -> None:
    with pytest.raises(TypeError, match="uint8 or float"):
        statistics_of([torch.zeros(2, 3, 8, 8, dtype=torch.int64)], TinyFeatures())
    images = _images(4, seed=0)
    as_float = statistics_of([to_unit_range(images)], TinyFeatures()).mean_cov()[0]
    as_uint8 = statistics_of([images], TinyFeatures()).mean_cov()[0]
    np.testing.assert_allclose(as_float, as_uint8, rtol=0, atol=1e-6)  # the same images, two encodings


def _random_inception_weights(folder: Path) -> Path:
    """torch-fidelity's InceptionV3 with random weights, saved where the FID weights file would be."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = folder / "empty.pth"
    torch.save({}, empty)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    weights = folder / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), weights)
    return weights


def test_inception_wrapper_loads_a_local_weights_file(tmp_path: Path) -> None:
    """The real extractor's plumbing, with randomly initialised weights written in the expected format."""
    from optrepro.metrics.fid import InceptionFeatures

    weights = _random_inception_weights(tmp_path)
    extractor = InceptionFeatures(weights)
    features, logits = extractor(_images(2, seed=0))
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    stats = statistics_of([_images(2, seed=0), _images(1, seed=1)], extractor)
    assert stats.n == 3 and torch.cat(stats.logits).shape == (3, 1008)


def test_pytorch_fid_resize_feeds_the_same_net_pytorch_fid_input(tmp_path: Path) -> None:
    """task.fid.resize=pytorch_fid: the first layer sees F.interpolate(x/255, 299, bilinear)*2-1 (pytorch-fid's
    InceptionV3 input); fidelity: torch-fidelity's own (TF1 resize - 128)/128. Random weights, same for both."""
    import torch.nn.functional as F

    from optrepro.metrics.fid import InceptionFeatures

    weights = _random_inception_weights(tmp_path)
    images = _images(2, seed=0)
    expected = F.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    seen: dict[str, torch.Tensor] = {}
    out = {}
    for resize in ("fidelity", "pytorch_fid"):
        extractor = InceptionFeatures(weights, resize=resize)
        first = extractor.net.Conv2d_1a_3x3.conv
        first.register_forward_pre_hook(lambda _m, args, r=resize: seen.__setitem__(r, args[0].detach()))
        out[resize] = extractor(images)[0]
    torch.testing.assert_close(seen["pytorch_fid"], expected, rtol=0, atol=1e-6)
    assert (seen["fidelity"] - expected).abs().max() > 1e-2  # the other resize and normalisation
    a, b = out["fidelity"], out["pytorch_fid"]  # random weights: features ~1e-7, so compare relatively
    assert (a - b).abs().max() > 1e-3 * a.abs().max()
    assert InceptionFeatures(weights, resize="pytorch_fid").name != InceptionFeatures(weights).name  # own cache


def test_float_input_reaches_the_first_layer_unrounded(tmp_path: Path) -> None:
    """task.fid.input=float (StudioGAN's FID): G's [-1, 1] output is only resized (F.interpolate bilinear to
    299) before Conv2d_1a_3x3, with no rounding to the 1/127.5 grid; reals as ToTensor + Normalize(0.5, 0.5)
    give the uint8 path's input to float rounding; torch-fidelity's own resize refuses float images."""
    import torch.nn.functional as F

    from optrepro.metrics.fid import InceptionFeatures

    extractor = InceptionFeatures(_random_inception_weights(tmp_path), resize="pytorch_fid")
    seen: list[torch.Tensor] = []
    extractor.net.Conv2d_1a_3x3.conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    fakes = torch.tanh(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    extractor(fakes)
    extractor(to_uint8(fakes))
    expected = F.interpolate(fakes, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)
    rounding = (seen[0] - seen[1]).abs().max().item()
    assert 1e-3 < rounding <= 1 / 127.5  # the uint8 path moves the input by up to half a grey level (x2)
    reals = _images(2, seed=1)
    extractor(reals)
    extractor(to_unit_range(reals))
    torch.testing.assert_close(seen[3], seen[2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="pytorch_fid"):
        InceptionFeatures(tmp_path / INCEPTION_WEIGHTS_FILE)(fakes)
