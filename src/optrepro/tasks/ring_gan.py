"""The mode-collapse demo GAN: a mixture of 8 Gaussians on a ring (radius 2, std 0.02), MLP G and D.

The standard test of Metz et al. (unrolled GANs) and later PacGAN/VEEGAN; needs no data or weights
and trains in seconds on a CPU. Metrics on ``eval_samples`` points from a fixed noise:

* ``modes_covered``: modes that receive at least ``coverage_fraction`` of the samples within
  ``quality_std`` standard deviations (PacGAN counts a mode when 20 of 2,500 samples are within 3 std);
* ``high_quality_fraction``: samples within ``quality_std`` std of their nearest mode;
* ``frechet_2d``: the Fréchet distance between the Gaussian fitted to the samples and the
  real mixture's own mean and covariance (exact: mean 0, covariance (r^2/2 + std^2) I).

The primary metric is ``modes_covered``, the mode-collapse measure this test exists for. Training
randomness (real points, noise) comes from a task-owned generator kept in the checkpoint.
``finalize`` writes ``samples.csv`` (x, y of the evaluation samples) for the scatter figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from optrepro.tasks.base import RunContext, derived_seed
from optrepro.tasks.gan import AdversarialTask, d_loss_fn, gradient_penalty


def ring_modes(n_modes: int, radius: float) -> torch.Tensor:
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    return torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], dim=1)


def ring_moments(n_modes: int, radius: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of the mixture (evenly spaced modes, n_modes >= 3)."""
    modes = ring_modes(n_modes, radius).numpy()
    mu = modes.mean(axis=0)
    centered = modes - mu
    return mu, centered.T @ centered / n_modes + std**2 * np.eye(2)


def mode_metrics(samples: torch.Tensor, modes: torch.Tensor, std: float, quality_std: float = 3.0,
                 coverage_fraction: float = 0.01) -> dict[str, float]:
    """modes_covered and high_quality_fraction of ``samples`` (N, 2) for the given mode centres."""
    x = samples.to(torch.float64)
    dist = torch.cdist(x, modes.to(torch.float64))
    nearest_dist, nearest = dist.min(dim=1)
    good = torch.isfinite(nearest_dist) & (nearest_dist <= quality_std * std)
    counts = torch.bincount(nearest[good], minlength=modes.shape[0])
    covered = int((counts >= coverage_fraction * x.shape[0]).sum())
    return {"modes_covered": float(covered), "high_quality_fraction": float(good.double().mean())}


def sample_ring(n: int, modes: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, modes.shape[0], (n,), generator=gen)
    return modes.float()[idx] + std * torch.randn(n, 2, generator=gen)


class RingGANTask(AdversarialTask):
    # modes covered is the mode-collapse measure this test exists for; frechet_2d (also reported) only
    # compares mean and covariance, so a generator smeared around the ring scores well without hitting modes
    metric = "modes_covered"
    mode = "max"
    data_parallel_refusal = "a CPU demo of a few seconds: one process trains it"

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        from optrepro.models.gan import RingDiscriminator, RingGenerator

        self.batch_size, self.n_critic = int(cfg.batch_size), int(cfg.n_critic)
        self.std, self.radius = float(cfg.std), float(cfg.radius)
        self.modes = ring_modes(int(cfg.modes), self.radius)
        self.nz = int(cfg.nz)
        # the demo is tiny: CPU is faster than a GPU round trip, and exactly reproducible
        self.G = RingGenerator(self.nz, int(cfg.hidden), int(cfg.layers))
        self.D = RingDiscriminator(int(cfg.hidden), int(cfg.layers))
        self._init_adversarial(torch.Generator().manual_seed(derived_seed("ring-gan", ctx.seed)), torch.device("cpu"))

    def train_step(self) -> dict[str, Any]:
        d_loss = torch.zeros(())
        for _ in range(self.n_critic):
            real = sample_ring(self.batch_size, self.modes, self.std, self.rng)
            with torch.no_grad():
                fake = self.G(torch.randn(self.batch_size, self.nz, generator=self.rng))
            d_loss = d_loss_fn(self.loss_kind, self.D(real), self.D(fake))
            if self.gp_lambda > 0:
                alpha = torch.rand(self.batch_size, generator=self.rng)
                d_loss = d_loss + self.gp_lambda * gradient_penalty(self.D, real, fake, alpha)
            d_loss = self._d_update(d_loss)
        g_loss = self._g_update(lambda: self.D(self.G(torch.randn(self.batch_size, self.nz, generator=self.rng))))
        self.step += 1
        return {"loss": d_loss + g_loss}

    @torch.no_grad()
    def samples(self) -> torch.Tensor:
        """``eval_samples`` generated points from a fixed noise (a local generator, not the global RNG)."""
        gen = torch.Generator().manual_seed(derived_seed("ring-eval", self.ctx.seed))
        return self.G(torch.randn(int(self.cfg.eval_samples), self.nz, generator=gen))

    def evaluate(self) -> dict[str, float]:
        from optrepro.metrics.fid import frechet_distance

        out = self._stat_means()
        x = self.samples().to(torch.float64)
        out.update(mode_metrics(x, self.modes, self.std, float(self.cfg.quality_std),
                                float(self.cfg.coverage_fraction)))
        if bool(torch.isfinite(x).all()):
            mu_r, sigma_r = ring_moments(int(self.cfg.modes), self.radius, self.std)
            xn = x.numpy()
            out["frechet_2d"] = frechet_distance(mu_r, sigma_r, xn.mean(axis=0), np.cov(xn, rowvar=False))
        else:
            out["frechet_2d"] = math.inf
        return out

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        lines = ["x,y"] + [f"{x!r},{y!r}" for x, y in self.samples().tolist()]
        (run_dir / "samples.csv").write_text("\n".join(lines) + "\n")
        return {
            "artifacts": {"samples": "samples.csv"},
            "ring_gan": {"modes": self.modes.tolist(), "std": self.std, "radius": self.radius},
        }


__all__ = ["RingGANTask", "mode_metrics", "ring_modes", "ring_moments", "sample_ring"]
