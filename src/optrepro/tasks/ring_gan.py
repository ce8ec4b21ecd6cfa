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
from optrepro.tasks.gan import AdversarialTask, d_loss_fn, g_loss_fn, gradient_penalty


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
        self._d_names = [name for name, p in self.D.named_parameters() if p.requires_grad]  # d_params' order
        self._g_names = [name for name, p in self.G.named_parameters() if p.requires_grad]

    def train_step(self) -> dict[str, Any]:
        batch = self.member_batch()
        params = self.d_params + self.g_params  # member_optimizers' order
        d_loss = torch.zeros(())
        for phase in range(self.n_critic):
            d_loss = self._d_update(self.member_phase_loss(phase, params, [], batch)[0])
        g_loss = self._g_update(lambda: self.D(self.G(batch["g_noise"])))
        self.step += 1
        return {"loss": d_loss + g_loss}

    # --- as a population member (optrepro.population) ----------------------------------------
    member_optimizers = ("opt_d", "opt_g")
    population_refusal = ""

    @classmethod
    def population_refusal_for(cls, cfg: DictConfig) -> str:
        if float(cfg.get("gp_lambda", 0.0) or 0.0) > 0:
            return "the gradient penalty differentiates twice, which the population step does not batch"
        return ""

    def member_phases(self) -> list[str]:
        return ["opt_d"] * self.n_critic + ["opt_g"]

    def member_batch(self) -> dict[str, Any]:
        """Every draw of one step from the run's generator, in the order the step uses them."""
        critic = []
        for _ in range(self.n_critic):
            real = sample_ring(self.batch_size, self.modes, self.std, self.rng)
            noise = torch.randn(self.batch_size, self.nz, generator=self.rng)
            alpha = torch.rand(self.batch_size, generator=self.rng) if self.gp_lambda > 0 else torch.zeros(0)
            critic.append((real, noise, alpha))
        return {"critic": critic, "g_noise": torch.randn(self.batch_size, self.nz, generator=self.rng)}

    def member_phase_loss(self, phase: int, params: list[torch.Tensor], buffers: list[torch.Tensor],
                          batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        from torch.func import functional_call

        d_named = dict(zip(self._d_names, params[: len(self._d_names)], strict=True))
        g_named = dict(zip(self._g_names, params[len(self._d_names):], strict=True))

        def D(x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the networks' names
            return functional_call(self.D, d_named, (x,))

        def G(z: torch.Tensor) -> torch.Tensor:  # noqa: N802
            return functional_call(self.G, g_named, (z,))

        if phase == self.n_critic:  # the generator's update; the critic's parameters come in detached
            return g_loss_fn(self.loss_kind, D(G(batch["g_noise"]))), {}
        real, noise, alpha = batch["critic"][phase]
        fake = G(noise).detach()
        loss = d_loss_fn(self.loss_kind, D(real), D(fake))
        if self.gp_lambda > 0:
            loss = loss + self.gp_lambda * gradient_penalty(self.D, real, fake, alpha)
        return loss, {}

    def member_end_step(self, losses: list[torch.Tensor], stats: list[dict[str, Any]]) -> dict[str, Any]:
        """The bookkeeping of ``_d_update`` / ``_g_update`` (losses, gradient norms), the population's way."""
        for phase, (loss, phase_stats) in enumerate(zip(losses, stats, strict=True)):
            net = "g" if phase == self.n_critic else "d"
            self._record(f"{net}_grad_norm", phase_stats["grad_norm"])
            self._record(f"{net}_loss", loss)
        self.step += 1
        return {"loss": losses[-2].detach() + losses[-1].detach()}

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
