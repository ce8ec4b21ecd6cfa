"""The 2-D ring-of-Gaussians GAN demo: metrics on known samples, learning, exact resume, artifacts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from omegaconf import OmegaConf

from conftest import metrics, run_folders, run_inprocess, summary
from optrepro.metrics.fid import frechet_distance
from optrepro.tasks.base import RunContext, seed_everything
from optrepro.tasks.ring_gan import RingGANTask, mode_metrics, ring_modes, ring_moments, sample_ring


def _task(seed: int = 0, **overrides: object) -> RingGANTask:
    from conftest import composed_task

    cfg = OmegaConf.merge(composed_task("ring_gan"), overrides)
    full = OmegaConf.create({"task": cfg, "optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.5, 0.999]}})
    seed_everything(seed)
    return RingGANTask(full.task, RunContext(cfg=full, device=torch.device("cpu"), precision="fp32", seed=seed))


def test_mode_metrics_on_known_samples() -> None:
    modes = ring_modes(8, 2.0)
    gen = torch.Generator().manual_seed(0)
    real = sample_ring(4000, modes, 0.02, gen)
    within = 1 - math.exp(-(3**2) / 2)  # P(||x - mode|| <= 3 std) for a 2-D isotropic Gaussian
    m = mode_metrics(real, modes, 0.02)
    assert m["modes_covered"] == 8 and m["high_quality_fraction"] == pytest.approx(within, abs=0.01)
    collapsed = modes[3].float() + 0.02 * torch.randn(4000, 2, generator=gen)
    m = mode_metrics(collapsed, modes, 0.02)
    assert m["modes_covered"] == 1 and m["high_quality_fraction"] == pytest.approx(within, abs=0.01)
    m = mode_metrics(torch.zeros(100, 2), modes, 0.02)  # the centre: near no mode
    assert m == {"modes_covered": 0.0, "high_quality_fraction": 0.0}
    # a mode needs coverage_fraction of all samples: 5 of 1000 at mode 0 is not enough at 1%
    few = torch.cat([modes[:1].float().repeat(5, 1), modes[1:2].float().repeat(995, 1)])
    assert mode_metrics(few, modes, 0.02)["modes_covered"] == 1


def test_ring_moments_and_frechet_2d_against_scipy() -> None:
    mu, sigma = ring_moments(8, 2.0, 0.02)
    np.testing.assert_allclose(mu, 0.0, atol=1e-12)
    np.testing.assert_allclose(sigma, (2.0**2 / 2 + 0.02**2) * np.eye(2), atol=1e-12)
    sample = sample_ring(50_000, ring_modes(8, 2.0), 0.02, torch.Generator().manual_seed(1)).double().numpy()
    np.testing.assert_allclose(np.cov(sample, rowvar=False), sigma, atol=0.02)
    mu2, s2 = np.array([0.3, -0.1]), np.array([[1.0, 0.4], [0.4, 0.5]])
    direct = float(((mu - mu2) ** 2).sum() + np.trace(sigma + s2) - 2 * np.trace(scipy.linalg.sqrtm(sigma @ s2).real))
    assert frechet_distance(mu, sigma, mu2, s2) == pytest.approx(direct, rel=1e-9)


def _best_frechet(seed: int, stop_below: float) -> float:
    """The least frechet_2d over a run's evals (every ``eval_every`` steps), stopping once below ``stop_below``."""
    task, best = _task(seed=seed), math.inf
    while not task.done():
        task.train_step()
        if task.step % task.cfg.eval_every == 0:
            best = min(best, task.evaluate()["frechet_2d"])
            if best < stop_below:
                break
    return best


def test_adam_brings_the_generator_to_the_ring_in_a_short_run() -> None:
    """Where one short GAN run ends hangs on the machine's floating point, so this asks for a property of
    a few seeds instead of one run's final quality.

    Measured (OMP_NUM_THREADS=1): seed 0 ended at 6 modes and high_quality_fraction 0.346 on this CPU's
    kernels, 0.19 with ATEN_CPU_CAPABILITY=default; over seeds 0-19 the final modes_covered ranged 0-8,
    high_quality_fraction 0.003-0.85, frechet_2d 0.003-3.66. The best frechet_2d over a run's ten evals
    was 0.003-0.060 in 18 of 20 seeds and 2.01 / 3.66 in two (16, 19: the generator sat off the ring,
    frechet 5-7, until the last evals); untrained it is 3.57-3.69. With ATEN_CPU_CAPABILITY=default,
    seeds 0-4: 0.009-0.036 (seed 0 reaches 0.5 at step 1750 instead of 1000). So a seed reaches 0.5 (7x better than
    untrained, 8x above the worst of the 18) with probability p ~ 0.9, and all of four independent seeds
    miss it with probability (1 - p)^4 ~ 1e-4 (4e-3 even at p = 0.75). A generator that does not learn
    misses it in all four. Stops at the first seed that reaches it (seed 0: at step 1000)."""
    untrained = _task(seed=0).evaluate()
    assert untrained["modes_covered"] == 0 and untrained["frechet_2d"] > 3.0, untrained
    bests = []
    for seed in range(4):
        bests.append(_best_frechet(seed, stop_below=0.5))
        if bests[-1] < 0.5:
            return
    pytest.fail(f"no seed of 4 brought frechet_2d below 0.5 (best per seed: {bests})")


def test_exact_resume_through_task_api(tmp_path: Path) -> None:
    straight = _task(seed=5)
    for _ in range(40):
        straight.train_step()
    straight_metrics = straight.evaluate()

    first = _task(seed=5)
    for _ in range(20):
        first.train_step()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = _task(seed=5)
    torch.manual_seed(999)  # training randomness is the task's own, not the global RNG
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(20):
        resumed.train_step()
    for a, b in zip(straight.G.state_dict().values(), resumed.G.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluate() == straight_metrics


def test_evaluate_and_finalize_leave_global_rng_alone_and_write_samples(tmp_path: Path) -> None:
    task = _task(seed=0, eval_samples=300)
    task.train_step()
    before = torch.get_rng_state()
    first = task.evaluate()
    extras = task.finalize(tmp_path)
    assert torch.equal(before, torch.get_rng_state())
    assert {"modes_covered", "high_quality_fraction", "frechet_2d", "d_loss", "g_loss", "d_grad_norm",
            "g_grad_norm"} <= set(first)
    assert extras["artifacts"] == {"samples": "samples.csv"}
    lines = (tmp_path / "samples.csv").read_text().splitlines()
    assert lines[0] == "x,y" and len(lines) == 301
    xy = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_array_equal(xy, task.samples().double().numpy())  # the same fixed noise every time


def test_ring_gan_run_through_the_loop(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=ring_gan", "profile=smoke", "optimizer=adam", "seed=1"], tmp_path)
    assert outcome.status == "completed", outcome.reason
    (folder,) = run_folders(tmp_path)
    rows = metrics(folder)
    assert [r["step"] for r in rows] == [50, 100]
    s = summary(folder)
    assert s["metric"] == "modes_covered" and s["mode"] == "max"
    assert math.isfinite(s["final"]["frechet_2d"]) and s["final"]["modes_covered"] >= 0
    assert (folder / "samples.csv").read_text().count("\n") == 501
    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.optimizer.lr == 1e-3 and list(saved.optimizer.betas) == [0.5, 0.999]


def test_diverged_ring_run_is_recorded(tmp_path: Path) -> None:
    outcome = run_inprocess(["task=ring_gan", "profile=smoke", "optimizer=adam", "optimizer.lr=1e30"], tmp_path)
    (folder,) = run_folders(tmp_path)
    s = summary(folder)
    assert outcome.status == "diverged" and s["status"] == "diverged" and s["diverged_step"] >= 1
