"""CIFAR GAN tasks: networks, losses, smoke training on fake CIFAR files, FID wiring, errors, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, cli, metrics, run_folders, run_inprocess, summary
from optrepro.errors import UserError
from optrepro.models.gan import (
    DCGANDiscriminator,
    DCGANGenerator,
    SNGANDiscriminator,
    SNGANGenerator,
)
from optrepro.tasks.base import RunContext, seed_everything
from optrepro.tasks.gan import GANTask, d_loss_fn, g_loss_fn, gradient_penalty

CIFAR_GANS = ("cifar10_dcgan", "cifar10_wgan", "cifar10_wgangp", "cifar10_sngan")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optrepro.data.cifar import write_fake_cifar

    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", n_train=64, n_test=32, seed=0)
    return root


def _data(root: Path) -> list[str]:
    return [f"task.data.root={root}", "task.data.verify_checksums=false"]


# ------------------------------------------------------------------------------------ networks
def test_dcgan_shapes_init_and_parameter_count() -> None:
    torch.manual_seed(0)
    G = DCGANGenerator()
    x = G(torch.randn(2, 100))
    assert x.shape == (2, 3, 64, 64) and x.abs().max() <= 1
    assert sum(p.numel() for p in G.parameters()) == 3_576_704  # the PyTorch DCGAN example's generator
    for head in ("logit", "sigmoid", "linear"):
        out = DCGANDiscriminator(head=head)(x)
        assert out.shape == (2,)
        if head == "sigmoid":
            assert ((out > 0) & (out < 1)).all()
    conv = G.main[0].weight
    assert abs(conv.mean().item()) < 2e-3 and conv.std().item() == pytest.approx(0.02, rel=0.05)


def test_sngan_shapes_and_spectral_norm() -> None:
    torch.manual_seed(0)
    for classes in (0, 10):
        G, D = SNGANGenerator(num_classes=classes), SNGANDiscriminator(num_classes=classes)
        y = torch.randint(0, 10, (3,)) if classes else None
        x = G(torch.randn(3, 128), y)
        assert x.shape == (3, 3, 32, 32)
        assert D(x, y).shape == (3,)
    # every D weight is spectrally normalized: largest singular value about 1 after a few power iterations
    for _ in range(30):
        D(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
    weight = D.blocks[1].conv1.weight
    assert torch.linalg.matrix_norm(weight.flatten(1), ord=2).item() == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------------------ losses
def test_gradient_penalty_on_a_linear_critic() -> None:
    w = torch.tensor([3.0, 0.0, 4.0])  # ||grad|| = 5 everywhere -> (5 - 1)^2 = 16

    def critic(x: torch.Tensor) -> torch.Tensor:
        return x @ w

    real, fake = torch.randn(6, 3), torch.randn(6, 3)
    assert gradient_penalty(critic, real, fake, torch.rand(6)).item() == pytest.approx(16.0)


def test_gradient_penalty_at_the_interpolates_and_differentiable() -> None:
    # D(x) = ||x||^2 / 2 -> grad = x -> penalty = mean((||x_hat|| - 1)^2), x_hat = a real + (1 - a) fake
    real = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    fake = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    alpha = torch.tensor([0.5, 0.0])
    scale = torch.tensor(1.0, requires_grad=True)

    def critic(x: torch.Tensor) -> torch.Tensor:
        return scale * (x**2).sum(dim=1) / 2

    gp = gradient_penalty(critic, real, fake, alpha)
    assert gp.item() == pytest.approx(((2.0 - 1) ** 2 + (0.5 - 1) ** 2) / 2)
    gp.backward()  # the penalty trains the critic: it has a gradient w.r.t. the critic's parameters
    assert scale.grad is not None and scale.grad.item() == pytest.approx((2 * 1 * 2 + 2 * -0.5 * 0.5) / 2)


def test_hinge_wgan_and_bce_losses() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert d_loss_fn("hinge", real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert g_loss_fn("hinge", fake).item() == pytest.approx(1.0)
    assert d_loss_fn("wgan", real, fake).item() == pytest.approx(-1.0 - 1.25)
    assert g_loss_fn("wgan", fake).item() == pytest.approx(1.0)
    zero = torch.zeros(3)
    assert d_loss_fn("bce", zero, zero).item() == pytest.approx(2 * math.log(2))
    assert g_loss_fn("bce", torch.tensor([math.log(3.0)])).item() == pytest.approx(-math.log(0.75))


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("task", CIFAR_GANS)
def test_cifar_gan_smoke_run_on_fake_cifar(task: str, fake_root: Path, tmp_path: Path) -> None:
    outcome = run_inprocess([f"task={task}", "profile=smoke", "optimizer=adam", *_data(fake_root)], tmp_path)
    assert outcome.status == "completed", outcome.reason
    (folder,) = run_folders(tmp_path)
    rows = metrics(folder)
    assert [r["step"] for r in rows] == [3]
    row = rows[-1]
    for key in ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm", "fid", "train_loss", "lr"):
        assert math.isfinite(row[key]), key
    assert row["fid"] > 0 and "inception_score" not in row  # the tiny extractor gives no logits
    s = summary(folder)
    assert s["metric"] == "fid" and s["mode"] == "min" and s["final"]["fid"] == row["fid"]
    assert s["artifacts"] == {"samples": "samples.png"} and (folder / "samples.png").is_file()
    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.optimizer.lr == 2e-4 and list(saved.optimizer.betas) == [0.5, 0.999]
    stats = list((fake_root / "fid_stats").glob(f"cifar10_*-{'test' if task == 'cifar10_sngan' else 'train'}-*"))
    assert stats, "real-image statistics are cached under task.data.root/fid_stats"


def _task(name: str, root: Path, extra: dict | None = None, seed: int = 0) -> GANTask:
    from conftest import composed_task

    cfg = OmegaConf.merge(composed_task(name, "smoke"), {"data": {"root": str(root), "verify_checksums": False}},
                          extra or {})
    full = OmegaConf.create({"task": cfg, "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}})
    seed_everything(seed)
    return GANTask(full.task, RunContext(cfg=full, device=torch.device("cpu"), precision="fp32", seed=seed))


def test_wgan_clips_critic_weights(fake_root: Path) -> None:
    task = _task("cifar10_wgan", fake_root)
    task.train_step()
    assert max(p.abs().max().item() for p in task.D.parameters()) <= 0.01 + 1e-12
    # the reference schedule (task.g_schedule=epoch_index): G right after the D step of batch index 0
    assert task.order.epochs_done == pytest.approx(16 / 64)
    task.train_step()
    # then D on batches 1-3 and, the counter restarting each epoch, batch 0 of epoch 2 before the next G
    assert task.order.epochs_done == pytest.approx(5 * 16 / 64)


def test_fid_uses_an_injected_extractor_and_leaves_global_rng_alone(fake_root: Path) -> None:
    calls = []

    def extractor(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape)
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)
        return images.float().mean(dim=(2, 3))  # per-channel means: a 3-d feature

    task = _task("cifar10_dcgan", fake_root, {"fid": {"every_steps": 1}})
    task._extractor = extractor
    task.train_step()
    before = torch.get_rng_state()
    first = task.evaluate()
    assert torch.equal(before, torch.get_rng_state())
    assert first["fid"] > 0 and sum(s[0] for s in calls) == 64 + 64  # real (num_real) + fakes (num_fake)
    again = task.compute_fid()  # same fixed noise, real stats kept in memory: same value, fakes only
    assert again["fid"] == first["fid"] and sum(s[0] for s in calls) == 64 + 64 + 64


def test_fid_input_float_feeds_unrounded_fakes_and_normalised_reals(fake_root: Path) -> None:
    """The SN-GAN preset's task.fid.input=float: the extractor gets G's output as it is and the reals as
    ToTensor + Normalize(0.5, 0.5); uint8 rounds both. Other real statistics, so another cache file."""
    from optrepro.metrics.fid import to_unit_range

    seen: dict[str, list[torch.Tensor]] = {}
    for mode in ("float", "uint8"):
        task = _task("cifar10_sngan", fake_root, {"fid": {"input": mode}})
        assert task.fid_input == mode
        task._extractor = lambda images, m=mode: (seen.setdefault(m, []).append(images), images.float().mean((2, 3)))[1]
        task.compute_fid()
    real, fake = seen["float"][0], seen["float"][-1]
    assert real.dtype == fake.dtype == torch.float32
    torch.testing.assert_close(real, to_unit_range(seen["uint8"][0]), rtol=0, atol=0)
    on_grid = (fake + 1) * 127.5
    assert (on_grid - on_grid.round()).abs().max() > 0.1  # unrounded: off the uint8 grid
    assert all(x.dtype == torch.uint8 for x in seen["uint8"])
    with pytest.raises(UserError, match="task.fid.resize=pytorch_fid"):
        _task("cifar10_sngan", fake_root, {"fid": {"input": "float", "resize": "fidelity", "extractor": "inception"}})
    with pytest.raises(UserError, match="per_image_minmax"):
        _task("cifar10_sngan", fake_root, {"fid": {"input": "float", "per_image_minmax": True}})


def test_exact_resume_through_task_api(fake_root: Path) -> None:
    straight = _task("cifar10_wgangp", fake_root)
    for _ in range(2):
        straight.train_step()
    first = _task("cifar10_wgangp", fake_root)
    first.train_step()
    state = first.state_dict()
    path = fake_root / "gan_state.pt"
    torch.save(state, path)
    resumed = _task("cifar10_wgangp", fake_root, seed=0)
    torch.manual_seed(123)  # the task must not depend on the global RNG
    resumed.load_state_dict(torch.load(path, weights_only=True))
    resumed.train_step()
    for a, b in zip(straight.G.state_dict().values(), resumed.G.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.D.state_dict().values(), resumed.D.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert straight.evaluate() == resumed.evaluate()


# ------------------------------------------------------------------------------------ errors
def test_missing_inception_weights_fail_before_anything_is_written(fake_root: Path, tmp_path: Path) -> None:
    ring = run_inprocess(["task=ring_gan", "profile=smoke", "task.steps=2", "task.eval_every=2"], tmp_path)
    assert ring.status == "completed"
    before = {p: (p / "summary.json").read_text() for p in run_folders(tmp_path)}
    missing = tmp_path / "no" / "weights-inception-2015-12-05-6726825d.pth"
    outcome = run_inprocess(["task=cifar10_wgan", "profile=smoke", "task.fid.extractor=inception",
                             f"task.fid.weights_path={missing}", *_data(fake_root)], tmp_path)
    assert outcome.status == "error" and outcome.run_dir is None
    assert str(missing) in outcome.reason and "\n" not in outcome.reason
    assert {p: (p / "summary.json").read_text() for p in run_folders(tmp_path)} == before


def test_missing_inception_weights_cli_one_line(fake_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    proc = cli(["task=cifar10_dcgan", "profile=smoke", "task.fid.extractor=inception",
                f"task.fid.weights_path={missing}", f"results_dir={tmp_path / 'runs'}", *_data(fake_root)])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Inception weights for FID not found at")
    assert "task.fid.enabled=false" in lines[0]
    assert not (tmp_path / "runs").exists() or not run_folders(tmp_path / "runs")


def test_fid_can_be_disabled(fake_root: Path, tmp_path: Path) -> None:
    outcome = run_inprocess(["task=cifar10_dcgan", "profile=smoke", "task.fid.enabled=false",
                             "task.fid.extractor=inception", "task.fid.weights_path=/nonexistent",
                             *_data(fake_root)], tmp_path)
    assert outcome.status == "completed", outcome.reason
    (folder,) = run_folders(tmp_path)
    assert "fid" not in metrics(folder)[-1] and summary(folder)["best"] is None


def test_bad_gan_config_values_name_the_key(fake_root: Path, tmp_path: Path) -> None:
    for override, key in (("task.loss=lsgan", "task.loss"), ("task.d_head=tanh", "task.d_head"),
                          ("task.fid.num_fake=0", "task.fid.num_fake"), ("task.n_critic=0", "task.n_critic")):
        outcome = run_inprocess(["task=cifar10_dcgan", "profile=smoke", override, *_data(fake_root)], tmp_path)
        assert outcome.status == "error" and key in outcome.reason, (override, outcome.reason)


# ------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("experiment", ["adabelief_gan", "adabelief_sngan"])
def test_experiment_presets_resolve_for_every_swept_optimizer(experiment: str) -> None:
    from conftest import compose
    from optrepro.config import resolve_interpolations
    from optrepro.optim import build_optimizer

    preset = OmegaConf.load(REPO / "configs" / "experiment" / f"{experiment}.yaml")
    params = preset.hydra.sweeper.params
    tasks, optimizers = str(params.task).split(","), str(params.optimizer).split(",")
    assert len(optimizers) >= 9 and "adabelief" in optimizers and "sgd" in optimizers
    for task in tasks:
        for opt in optimizers:
            overrides = [f"experiment={experiment}", f"task={task}", f"optimizer={opt}"]
            cfg, _ = compose(overrides)
            cfg = resolve_interpolations(cfg)
            assert cfg.task.name == task
            build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.optimizer)
            assert cfg.optimizer.lr == 2e-4, (task, opt)
            if "betas" in cfg.optimizer:
                assert list(cfg.optimizer.betas) == [0.5, 0.999], (task, opt)
            if opt == "adabelief":
                assert cfg.optimizer.eps == 1e-12
            if opt == "adam":
                assert cfg.optimizer.eps == (1e-6 if task == "cifar10_sngan" else 1e-8)
            if opt == "sgd":
                assert cfg.optimizer.momentum == 0.0
