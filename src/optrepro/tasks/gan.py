"""CIFAR-10 GANs of the AdaBelief paper: DCGAN (BCE), WGAN (weight clipping), WGAN-GP, SN-GAN (hinge).

One task class, configured by ``arch`` (dcgan | sngan_resnet), ``loss`` (bce | wgan | hinge),
``clip_value`` and ``gp_lambda``. Each ``train_step`` is one generator step preceded by
``n_critic`` discriminator steps, with one optimizer per network, both built from the same
optimizer config. Noise, flips and penalty interpolation come from a task-owned generator whose
state is in the checkpoint, so a resumed run continues exactly.

Metrics at every eval point: mean D and G losses and gradient norms since the previous one; at
``fid.every_steps`` and at the end also FID (and the Inception Score with the Inception extractor)
of ``fid.num_fake`` samples from a fixed noise against cached real-image statistics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from optrepro.errors import UserError
from optrepro.tasks.base import BatchOrder, FixedStepsTask, RunContext, derived_seed

ARCHS = ("dcgan", "sngan_resnet")
LOSSES = ("bce", "wgan", "hinge")
EXTRACTORS = ("inception", "tiny")
STAT_KEYS = ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm", "d_real", "d_fake")


# --------------------------------------------------------------------------------------- losses
def d_loss_fn(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from its outputs on real and fake batches (logits / critic values)."""
    real, fake = real.float(), fake.float()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "wgan":
        return fake.mean() - real.mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss_fn(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from the discriminator's outputs on fakes (non-saturating for BCE)."""
    fake = fake.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind in ("wgan", "hinge"):
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def gradient_penalty(critic: Any, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                     *args: Any) -> torch.Tensor:
    """WGAN-GP: mean over samples of (||grad_x D(x)||_2 - 1)^2 at x = alpha real + (1 - alpha) fake.

    ``alpha`` has one value per sample (shape (N,)); multiply by lambda outside.
    """
    shape = (-1,) + (1,) * (real.dim() - 1)
    x = (alpha.view(shape) * real.detach() + (1 - alpha.view(shape)) * fake.detach()).requires_grad_(True)
    out = critic(x, *args)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


class AdversarialTask(FixedStepsTask):
    """What the CIFAR GANs and the ring GAN share: networks ``G`` and ``D`` with one optimizer each
    (``opt_g``, ``opt_d``), a task-owned generator ``rng`` for every training draw, running means of
    ``stat_keys`` between eval points, the D and G updates, and the checkpoint of all that.

    Subclasses build the networks, then call :meth:`_init_adversarial`."""
    population_refusal = "G and D alternate with one optimizer each; the population step batches one optimizer"

    data_parallel_refusal = ("G and D are updated in alternation (and WGAN-GP differentiates twice), "
                             "which this harness does not split across processes")
    stat_keys: tuple[str, ...] = ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm")
    state_attrs = ("step", "G", "D", "opt_g", "opt_d", "rng", "sums", "counts")

    G: nn.Module
    D: nn.Module

    def _init_adversarial(self, rng: torch.Generator, device: torch.device) -> None:
        cfg = self.cfg
        self.loss_kind = str(cfg.loss)
        self.gp_lambda = float(cfg.get("gp_lambda", 0.0) or 0.0)
        self.clip_value = float(cfg.get("clip_value", 0.0) or 0.0)
        self.g_params = [p for p in self.G.parameters() if p.requires_grad]
        self.d_params = [p for p in self.D.parameters() if p.requires_grad]
        self.opt_g = self.ctx.make_optimizer(self.g_params)
        self.opt_d = self.ctx.make_optimizer(self.d_params)
        self.rng = rng
        self.sums = torch.zeros(len(self.stat_keys), dtype=torch.float64, device=device)
        self.counts = torch.zeros(len(self.stat_keys), dtype=torch.float64, device=device)

    def _record(self, key: str, value: torch.Tensor) -> None:
        i = self.stat_keys.index(key)
        self.sums[i] += value.detach().to(torch.float64)
        self.counts[i] += 1

    def _stat_means(self) -> dict[str, float]:
        """Mean of every recorded statistic since the last call (which resets them)."""
        means = (self.sums / self.counts.clamp_min(1)).tolist()
        out = {k: float(v) for k, v, c in zip(self.stat_keys, means, self.counts.tolist(), strict=True) if c > 0}
        self.sums.zero_()
        self.counts.zero_()
        return out

    def _d_update(self, loss: torch.Tensor) -> torch.Tensor:
        """One discriminator step on ``loss`` (then WGAN weight clipping when ``clip_value`` > 0)."""
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._record("d_grad_norm", grad_norm(self.d_params))
        self.opt_d.step()
        if self.clip_value > 0:
            with torch.no_grad():
                for p in self.d_params:
                    p.clamp_(-self.clip_value, self.clip_value)
        self._record("d_loss", loss)
        return loss.detach()

    def _g_update(self, d_on_fakes: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One generator step; ``d_on_fakes`` draws noise and returns D's outputs on G's samples
        (called with D frozen, so its gradients stay untouched)."""
        self.D.requires_grad_(False)
        try:
            loss = g_loss_fn(self.loss_kind, d_on_fakes())
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            self.D.requires_grad_(True)
        self._record("g_grad_norm", grad_norm(self.g_params))
        self.opt_g.step()
        self._record("g_loss", loss)
        return loss.detach()

    def current_lr(self) -> float | None:
        return float(self.opt_g.param_groups[0]["lr"])


class GANTask(AdversarialTask):
    metric = "fid"
    mode = "min"
    stat_keys = STAT_KEYS
    state_attrs = ("step", "G", "D", "opt_g", "opt_d", "order", "rng", "sums", "counts")

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        from optrepro.data.cifar import load_cifar
        from optrepro.models import gan as nets

        self.device = ctx.device
        self.batch_size = int(cfg.batch_size)
        self.n_critic = int(cfg.n_critic)
        self.image_size = int(cfg.image_size)
        self.random_flip = bool(cfg.get("random_flip", False))
        self.nz = int(cfg.nz)

        data = cfg.data
        images, labels = load_cifar(str(cfg.data.name), data.root, train=True, download=bool(data.download),
                                    verify_checksums=bool(data.get("verify_checksums", True)))
        from optrepro.data import provenance

        self.data_provenance = provenance.cifar(str(cfg.data.name), data.root)  # every file, test batch included
        if images.shape[0] < self.batch_size:
            raise UserError(f"task.batch_size={self.batch_size} exceeds the {images.shape[0]} training images")
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.num_classes = (10 if cfg.data.name == "cifar10" else 100) if cfg.get("conditional") else 0

        if cfg.arch == "dcgan":
            self.G: nn.Module = nets.DCGANGenerator(self.nz, int(cfg.ngf))
            self.D: nn.Module = nets.DCGANDiscriminator(int(cfg.ndf), head=str(cfg.d_head))
        else:
            self.G = nets.SNGANGenerator(self.nz, int(cfg.ngf), self.num_classes, g_bn_eps=float(cfg.g_bn_eps),
                                         g_embedding_init=str(cfg.g_embedding_init))
            self.D = nets.SNGANDiscriminator(int(cfg.ndf), self.num_classes, d_shortcut=str(cfg.d_shortcut),
                                             d_sn_eps=float(cfg.d_sn_eps))
        self.G.to(self.device).train()
        self.D.to(self.device).train()
        rng = torch.Generator(device=self.device)
        rng.manual_seed(derived_seed("gan-noise", ctx.seed))
        self._init_adversarial(rng, self.device)
        # task.drop_last=false keeps each epoch's last partial batch (the reference WGAN DataLoaders')
        self.order = BatchOrder(self.images.shape[0], self.batch_size, derived_seed("gan-batches", ctx.seed),
                                drop_last=bool(cfg.get("drop_last", True)))
        # task.g_schedule: "fixed" = n_critic D steps, then G on fresh noise; "epoch_index" = the reference
        # WGAN loop (wgan/main.py:279-321): a G step after the D step of every batch index i with
        # i % n_critic == 0 of each epoch (so D,G,DDDDD,G,... restarting every epoch), on that D step's noise
        self.g_schedule = str(cfg.get("g_schedule", "fixed"))
        self._last_noise: tuple[torch.Tensor, torch.Tensor | None] | None = None

        fid = cfg.get("fid") or {}
        self.fid_enabled = bool(fid.get("enabled", False))
        self.fid_cfg = fid
        self.fid_every = int(fid.get("every_steps", 0) or 0) if self.fid_enabled else 0
        self._extractor: Any = ctx.extras.get("fid_feature_extractor")
        self._real_stats: tuple[Any, Any] | None = None
        # task.fid.input: "uint8" rounds every image as a saved PNG would; "float" feeds G's output unrounded
        # and the reals as ToTensor + Normalize(0.5, 0.5) (StudioGAN's FID: metrics/FID.py:83-104)
        self.fid_input = str(fid.get("input", "uint8"))  # checked against resize and per_image_minmax in schemas

    # ----------------------------------------------------------------------------- data, noise
    def _to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 CIFAR -> float in [-1, 1] at ``image_size`` (bilinear, like torchvision's Resize)."""
        x = images.float() / 127.5 - 1.0
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = self.order.next_indices().to(self.device)
        x = self._to_model_range(self.images[idx])
        if self.random_flip:
            flip = torch.rand(x.shape[0], device=self.device, generator=self.rng) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x, (self.labels[idx] if self.num_classes else None)

    def _noise(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(n, self.nz, device=self.device, generator=gen)
        y = torch.randint(0, self.num_classes, (n,), device=self.device, generator=gen) if self.num_classes else None
        return z, y

    def _labels_args(self, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return () if y is None else (y,)

    # ----------------------------------------------------------------------------- training
    def _d_step(self) -> torch.Tensor:
        real, y_real = self._real_batch()
        z, y_fake = self._noise(real.shape[0], self.rng)
        self._last_noise = (z, y_fake)
        with torch.no_grad(), self.ctx.autocast():
            fake = self.G(z, y_fake)
        with self.ctx.autocast():
            d_real = self.D(real, *self._labels_args(y_real))
            d_fake = self.D(fake.float(), *self._labels_args(y_fake))
        loss = d_loss_fn(self.loss_kind, d_real, d_fake)
        if self.gp_lambda > 0:
            alpha = torch.rand(real.shape[0], device=self.device, generator=self.rng)
            # the penalty's double backward runs in fp32, outside autocast
            loss = loss + self.gp_lambda * gradient_penalty(self.D, real, fake.float(), alpha,
                                                            *self._labels_args(y_real))
        self._record("d_real", d_real.float().mean())
        self._record("d_fake", d_fake.float().mean())
        return self._d_update(loss)

    def _g_step(self, noise: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        z, y = noise if noise is not None else self._noise(self.batch_size, self.rng)

        def d_on_fakes() -> torch.Tensor:
            with self.ctx.autocast():
                return self.D(self.G(z, y), *self._labels_args(y))

        return self._g_update(d_on_fakes)

    def train_step(self) -> dict[str, Any]:
        d_loss = torch.zeros((), device=self.device)
        if self.g_schedule == "epoch_index":
            while True:  # D steps up to and including the next batch index i with i % n_critic == 0
                index = 0 if self.order.epoch_finished else self.order.index
                d_loss = self._d_step()
                if index % self.n_critic == 0:
                    break
            g_loss = self._g_step(self._last_noise)
        else:
            for _ in range(self.n_critic):
                d_loss = self._d_step()
            g_loss = self._g_step()
        self.step += 1
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}

    # ----------------------------------------------------------------------------- evaluation
    def _fid_due(self) -> bool:
        return self.fid_enabled and (self.step % self.fid_every == 0 or self.done())

    def evaluate(self) -> dict[str, float]:
        out = self._stat_means()
        if self._fid_due():
            out.update(self.compute_fid())
        return out

    def feature_extractor(self) -> Any:
        if self._extractor is None:
            from optrepro.metrics.fid import build_extractor

            self._extractor = build_extractor(str(self.fid_cfg.get("extractor", "inception")),
                                              self.fid_cfg.get("weights_path"), self.device,
                                              str(self.fid_cfg.get("resize", "fidelity")))
        return self._extractor

    def _real_images(self) -> torch.Tensor:
        split = str(self.fid_cfg.get("real_split", "train"))
        if split == "train":
            images = self.images
        else:
            from optrepro.data.cifar import load_cifar

            data = self.cfg.data
            images, _ = load_cifar(str(self.cfg.data.name), data.root, train=False, download=bool(data.download),
                                   verify_checksums=bool(data.get("verify_checksums", True)))
        n = self.fid_cfg.get("num_real")
        if n is not None and int(n) > images.shape[0]:
            raise UserError(f"task.fid.num_real={n} exceeds the {images.shape[0]} {split} images")
        return images[: int(n) if n is not None else images.shape[0]]

    def real_statistics(self) -> tuple[Any, Any]:
        """(mu, sigma) of the real images at ``image_size``; cached on disk under task.data.root."""
        if self._real_stats is not None:
            return self._real_stats
        from optrepro.metrics.fid import (
            extractor_name,
            load_or_compute_real_stats,
            real_stats_cache_path,
            statistics_of,
            to_uint8,
            to_unit_range,
        )

        extractor = self.feature_extractor()
        images = self._real_images()
        batch = int(self.fid_cfg.batch_size)

        stretch = bool(self.fid_cfg.get("per_image_minmax", False))
        unrounded = self.fid_input == "float"

        def batches() -> Iterator[torch.Tensor]:
            for start in range(0, images.shape[0], batch):
                chunk = images[start : start + batch].to(self.device)
                if unrounded:
                    yield to_unit_range(chunk) if self.image_size == 32 else self._to_model_range(chunk)
                elif self.image_size == 32 and not stretch:
                    yield chunk
                else:
                    yield to_uint8(self._to_model_range(chunk), per_image_minmax=stretch)

        name = extractor_name(extractor)
        if name is not None and stretch:
            name = f"{name}-minmax"  # other real statistics: never share a cache file
        if name is not None and unrounded:
            name = f"{name}-float"
        cache = None
        if name is not None:
            digest = hashlib.sha1(images.cpu().numpy().tobytes()).hexdigest()[:10]  # fake vs real data apart
            split = str(self.fid_cfg.get("real_split", "train"))
            cache = real_stats_cache_path(self.cfg.data.root, f"{self.cfg.data.name}_{digest}", split,
                                          images.shape[0], self.image_size, name)
        self._real_stats = load_or_compute_real_stats(
            cache, lambda: statistics_of(batches(), extractor, keep_logits=False))
        return self._real_stats

    @torch.no_grad()
    def compute_fid(self) -> dict[str, float]:
        """FID (and IS when the extractor gives logits) of num_fake samples from a fixed noise."""
        from optrepro.metrics.fid import frechet_distance, inception_score, statistics_of, to_uint8

        mu_r, sigma_r = self.real_statistics()
        extractor = self.feature_extractor()
        num_fake, batch = int(self.fid_cfg.num_fake), int(self.fid_cfg.batch_size)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derived_seed("fid-noise", self.ctx.seed))

        def fakes() -> Iterator[torch.Tensor]:
            for start in range(0, num_fake, batch):
                z, y = self._noise(min(batch, num_fake - start), gen)
                with self.ctx.autocast():
                    out = self.G(z, y)
                if self.fid_input == "float":
                    images = out.float()  # unrounded and unclamped, as StudioGAN feeds its Inception
                else:
                    images = to_uint8(out, per_image_minmax=bool(self.fid_cfg.get("per_image_minmax", False)))
                yield images  # outside autocast: the extractor runs in fp32

        was_training = self.G.training
        self.G.eval()
        try:
            stats = statistics_of(fakes(), extractor, keep_logits=bool(self.fid_cfg.get("inception_score", True)))
        finally:
            self.G.train(was_training)
        mu_f, sigma_f = stats.mean_cov()
        out = {"fid": frechet_distance(mu_r, sigma_r, mu_f, sigma_f)}
        if stats.logits:
            splits = int(self.fid_cfg.get("is_splits", 10))
            out["inception_score"], out["inception_score_std"] = inception_score(torch.cat(stats.logits), splits)
        return out

    # ----------------------------------------------------------------------------- loop API
    def eval_due(self) -> bool:
        return self.step % self.eval_every == 0 or (self.fid_enabled and self.step % self.fid_every == 0)

    @property
    def epoch(self) -> float:
        return self.order.epochs_done

    def finalize(self, run_dir: Path) -> dict[str, Any]:
        """An 8x8 grid of samples from a fixed noise (samples.png)."""
        from torchvision.utils import save_image

        gen = torch.Generator(device=self.device)
        gen.manual_seed(derived_seed("sample-grid", self.ctx.seed))
        was_training = self.G.training
        self.G.eval()
        try:
            with torch.no_grad():
                z, y = self._noise(64, gen)
                images = self.G(z, y).float().cpu()
        finally:
            self.G.train(was_training)
        save_image((images + 1) / 2, run_dir / "samples.png", nrow=8)
        return {"artifacts": {"samples": "samples.png"}}


__all__ = ["ARCHS", "LOSSES", "AdversarialTask", "GANTask",
           "d_loss_fn", "g_loss_fn", "gradient_penalty", "grad_norm"]
