"""Image classification: CIFAR-10/100 (kuangliu-style nets), ImageNet (torchvision ResNet-18), digits.

One task class for every image-classification table of the AdaBelief and EAdam papers, and the
CPU-scale ``digits_cnn`` demo. What it does, in the order a reader meets it:

* data: ``task.data.name`` picks the loader (torchvision CIFAR10/100, torchvision ImageFolder,
  scikit-learn digits); ``task.data.train_subset`` / ``task.data.test_subset`` take a fixed random subset.
* two input pipelines (``task.data.pipeline``; ``auto`` = ``device`` on CUDA, ``dataloader``
  elsewhere, always ``dataloader`` for ImageFolder):
  - ``dataloader``: torch DataLoader (workers, pinned memory) over per-sample torchvision
    transforms (CIFAR: RandomCrop(32, padding=4) + RandomHorizontalFlip);
  - ``device``: the whole uint8 dataset on the device, crop + flip as one gather per batch
    (:mod:`optrepro.data.gpu_pipeline`).
  ``task.data.augment``: ``crop_flip`` (the pad-``task.data.pad`` crop + flip above), ``none``,
  ``imagenet`` (ImageFolder's RandomResizedCrop), or ``inception_crop``: vit_jax's Inception crop
  (TF ``sample_distorted_bounding_box``, 5-100% of the area, aspect 3/4-4/3) of the 32 px image,
  resized to ``task.data.input_size`` and flipped, on the device after either pipeline's batch.
  Both normalize on the device and use channels_last on CUDA. Randomness never comes from the
  global RNG: batch order is :class:`~optrepro.tasks.base.BatchOrder` (seed, epoch) and every
  augmentation draw is seeded by (seed, epoch, batch, position). So a resumed run is exact at
  any step, for either pipeline and any ``num_workers`` (bitwise on CPU), and a data-parallel
  run sees the same global batches and crops as a single process.
* schedule: lr x ``task.lr_gamma`` at each epoch in ``task.lr_milestones`` (step-wise from the
  first batch of that epoch, as the papers' ``adjust_learning_rate`` did at the epoch start); or
  ``task.schedule=cosine``: linear warm-up over ``warmup_steps``, then cosine to ``min_lr_ratio`` at the
  last step (:func:`~optrepro.tasks.base.cosine_lr`). ``task.max_steps`` (null: ``epochs``) stops
  training at a step count; ``task.clip_norm`` (0: off) clips the global gradient norm.
* fine-tuning a pretrained model (``task.model.source=timm``, :mod:`optrepro.models.timm_models`):
  the model and its pretrained weights from timm (hub, cache or ``task.model.checkpoint``), images
  resized on the device to ``task.data.input_size`` and normalised with the weights' own mean/std
  (``task.data.normalize=model``), ``task.data.val_size`` training images held out as a
  validation split (``val_loss`` / ``val_acc``), and weight decay on matrices only
  (``task.decay_mask=matrices``, :func:`~optrepro.models.param_kinds.weight_decay_groups`).
* metrics per epoch: train loss (the loop) / accuracy, test loss / accuracy (top-5 too with
  ``task.top5``), images/s and epoch time; the primary metric is ``test_acc`` in percent.
* generalization gap: at each eval point the same loss / accuracy on a fixed held-in subset of the
  training images (``task.heldin_size``, null = as many as the test set; no augmentation, eval mode)
  as ``heldin_loss`` / ``heldin_acc``; summary.json's ``gap`` is held-in minus test.
* validation split (for ``make tune``): ``+task.data.val_size=N`` holds N training images out (a
  fixed, seed-independent subset) and logs ``val_loss`` / ``val_acc``; selection reads only those.
* data parallel: under ``torchrun`` (WORLD_SIZE > 1; the loop joins the process group, see
  :mod:`optrepro.distributed`) the task wraps the model in DDP, gives each rank
  ``global_batch[rank::world]`` (``task.batch_size`` stays the global batch of the paper) and
  all-reduces the loss it returns and every evaluation sum.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from optrepro.data import provenance
from optrepro.data.gpu_pipeline import DeviceImages, crop_resize_flip, inception_crop_params
from optrepro.data.loader_pipeline import (
    LoaderImages,
    SeededTransformDataset,
    TensorSource,
    cifar_crop_flip,
    seeded_keys,
)
from optrepro.errors import UserError
from optrepro.tasks.base import (
    BatchOrder,
    RunContext,
    Task,
    check_fits,
    cosine_lr,
    derived_seed,
    heldin_indices,
    seed_rank_stream,
)

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")
PIPELINES = ("auto", "dataloader", "device")
AUGMENTS = ("crop_flip", "imagenet", "inception_crop", "none")
CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
MODEL_SOURCES = ("cifar", "timm")  # optrepro.models.cifar's nets | a timm model (pretrained fine-tuning)
SCHEDULES = ("step", "cosine")
NORMALIZE = ("dataset", "model")  # the dataset's own mean/std | the pretrained weights' (timm pretrained_cfg)
DECAY_MASKS = ("all", "matrices")


# ------------------------------------------------------------------------------- the task
class ImageClassificationTask(Task):
    metric = "test_acc"
    mode = "max"
    data_parallel = True
    state_attrs = ("step", "model", "optimizer", "order", "base_lrs", "_train_correct", "_train_seen")
    population_refusal = ""
    gap_pairs = {"heldin_acc": "test_acc", "heldin_loss": "test_loss"}

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        cfg = self.cfg  # validated and typed by tasks/schemas.py
        self.dist, self.device = ctx.dist, ctx.device
        data = cfg.data
        self.data_name = str(data.name)
        self.epochs = int(cfg.epochs)
        self.batch_size = int(cfg.batch_size)
        if self.batch_size % self.dist.world:
            raise UserError(
                f"task.batch_size={self.batch_size} (the global batch) must be divisible by the "
                f"number of processes ({self.dist.world})"
            )
        self.eval_batch_size = int(cfg.eval_batch_size)
        self.milestones = sorted(int(m) for m in (cfg.get("lr_milestones") or []))
        self.lr_gamma = float(cfg.get("lr_gamma", 0.1))
        self.top5 = bool(cfg.get("top5", False))
        self.max_steps = None if cfg.max_steps is None else int(cfg.max_steps)
        self.schedule, self.warmup_steps = str(cfg.schedule), int(cfg.warmup_steps)
        self.min_lr_ratio, self.clip_norm = float(cfg.min_lr_ratio), float(cfg.clip_norm)
        self.member_clip_norm = self.clip_norm  # a population clips each member's gradient the same way
        self.input_size = None if data.input_size is None else int(data.input_size)
        cuda = self.device.type == "cuda"
        channels_last = cfg.get("channels_last", "auto")
        self.channels_last = cuda if channels_last == "auto" else bool(channels_last)
        pipeline = str(data.get("pipeline", "auto"))
        if pipeline == "auto":
            pipeline = "device" if (cuda and self.data_name != "imagefolder") else "dataloader"
        self.pipeline = pipeline
        self.num_workers = int(data.get("num_workers", 0))
        self.inception_crop = str(data.get("augment", "none")) == "inception_crop"
        self.mean, self.std = self._norm_stats()

        self._build_data()
        check_fits("batch_size", self.batch_size, self.n_train, "training images")
        # task.drop_last=false keeps each epoch's last partial batch, as the reference DataLoaders did
        drop_last = bool(cfg.get("drop_last", True))
        rest = self.n_train % self.batch_size
        if not drop_last and rest and rest % self.dist.world:
            raise UserError(f"task.drop_last=false: the last batch of {rest} images does not split over "
                            f"{self.dist.world} processes; use task.drop_last=true or another process count")
        self.order = BatchOrder(self.n_train, self.batch_size, seed=derived_seed("vision-order", ctx.seed),
                                drop_last=drop_last)
        self._perm_cache: tuple[int, torch.Tensor] | None = None

        if cuda:
            torch.backends.cudnn.benchmark = True
        self.model: nn.Module = self._build_model().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = self.model  # what train_step calls: the model, or its DDP wrapper
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
            seed_rank_stream(ctx, "vision-rank")
        params: Any = self.model.parameters()
        if str(cfg.decay_mask) == "matrices":  # no decay on biases and norms
            from optrepro.models.param_kinds import weight_decay_groups

            params = weight_decay_groups(self.model, float(ctx.cfg.optimizer.get("weight_decay") or 0.0))
        self.optimizer = ctx.make_optimizer(params)
        if str(cfg.model.source) == "timm":  # the diagnostics per parameter kind (embeddings, attention, ...)
            from optrepro.models.param_kinds import parameter_kinds

            kinds = parameter_kinds(self.model)
            self.param_kinds = {id(p): kinds[n] for n, p in self.model.named_parameters()}
        self._param_names = [name for name, _ in self.model.named_parameters()]  # the optimizer's order
        self._buffer_names = [name for name, _ in self.model.named_buffers()]
        self.base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._reset_interval()

    # --- model and data ----------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        model = self.cfg.model
        if str(model.source) == "timm":
            from optrepro.models.timm_models import build_timm_model

            return build_timm_model(str(model.name), int(self.cfg.num_classes), bool(model.pretrained),
                                    model.checkpoint, model.kwargs, download=bool(self.cfg.data.download))
        from optrepro.models.cifar import build_model

        # task.model.num_classes: the head's width when it differs from the labels' (EAdam's nets have
        # 100 outputs on CIFAR-10 too: the 90 extra logits only enter the softmax's normaliser)
        outputs = model.num_classes if model.get("num_classes") is not None else self.cfg.num_classes
        return build_model(str(model.name), int(outputs))

    def _norm_stats(self) -> tuple[Sequence[float] | None, Sequence[float] | None]:
        if str(self.cfg.data.normalize) == "model":
            from optrepro.models.timm_models import model_norm_stats

            return model_norm_stats(str(self.cfg.model.name))
        if self.data_name in ("cifar10", "cifar100"):
            from optrepro.data.cifar import CIFAR_MEAN, CIFAR_STD

            return CIFAR_MEAN, CIFAR_STD
        if self.data_name == "imagefolder":
            from optrepro.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

            return IMAGENET_MEAN, IMAGENET_STD
        return None, None

    def _subset(self, n: int, size: Any, tag: str) -> torch.Tensor | None:
        """A fixed random subset (same for every run and seed), or None for all of it."""
        check_fits(f"data.{tag}_subset", size, n, f"{tag} images in {self.data_name}")
        if size is None or int(size) == n:
            return None
        gen = torch.Generator().manual_seed(derived_seed("vision-subset", self.data_name, tag))
        return torch.randperm(n, generator=gen)[: int(size)].sort().values

    def _heldin_index(self, n_train: int, n_test: int) -> torch.Tensor | None:
        """Positions (in the training set trained on) of the held-in subset; None when it is off."""
        size = self.cfg.get("heldin_size")
        if size is not None and int(size) == 0:
            return None
        return heldin_indices(n_train, size, n_test, f"vision-{self.data_name}")

    def _build_data(self) -> None:
        cfg, data = self.cfg, self.cfg.data
        augment = str(data.get("augment", "none"))
        pad = int(data.get("pad", 4)) if augment == "crop_flip" else 0
        self.test_loader: LoaderImages | None = None  # ImageFolder; in-memory sets evaluate from test_images
        self.train_loader: LoaderImages | None = None  # the dataloader pipeline; "device" uses train_images
        self.heldin_loader: LoaderImages | None = None  # ImageFolder's held-in subset
        self.heldin_images: DeviceImages | None = None
        self.val_images: DeviceImages | None = None  # task.data.val_size of an in-memory training set
        self.n_heldin = 0
        norm = dict(mean=self.mean, std=self.std, channels_last=self.channels_last)
        if self.data_name == "imagefolder":
            from optrepro.data.imagefolder import imagenet_transform, load_imagefolder

            size, resize = int(data.get("image_size", 224)), int(data.get("resize", 256))
            train = load_imagefolder(data.root, "train")
            test = load_imagefolder(data.root, "val")
            self.data_provenance = provenance.imagefolder(data.root, {"train": train, "val": test})
            if len(train.classes) > int(cfg.num_classes):
                raise UserError(
                    f"{data.root}/train has {len(train.classes)} classes but task.num_classes={cfg.num_classes}"
                )
            train_idx = self._subset(len(train), data.get("train_subset"), "train")
            test_idx = self._subset(len(test), data.get("test_subset"), "test")
            self.train_index = train_idx if train_idx is not None else torch.arange(len(train))
            test_index = test_idx if test_idx is not None else torch.arange(len(test))
            self.n_train = int(self.train_index.numel())
            shard = list(self.dist.shard(test_index.tolist()))
            test_batches = [[(i, 0) for i in shard[s : s + self.eval_batch_size]]
                            for s in range(0, len(shard), self.eval_batch_size)]
            self.test_loader = LoaderImages(SeededTransformDataset(test, imagenet_transform(False, size, resize)),
                                            self.device, self.num_workers, batches=test_batches, **norm)
            self.n_test = int(test_index.numel())
            self.train_loader = LoaderImages(SeededTransformDataset(train, imagenet_transform(True, size, resize)),
                                             self.device, self.num_workers, **norm)
            if data.get("val_size") is not None:
                raise UserError("task.data.val_size is for the in-memory datasets (CIFAR, digits); ImageFolder "
                                "tasks have no validation split")
            heldin = self._heldin_index(self.n_train, self.n_test)
            if heldin is not None:
                self.n_heldin = int(heldin.numel())
                keys = list(self.dist.shard(self.train_index[heldin].tolist()))
                batches = [[(i, 0) for i in keys[s : s + self.eval_batch_size]]
                           for s in range(0, len(keys), self.eval_batch_size)]
                self.heldin_loader = LoaderImages(
                    SeededTransformDataset(train, imagenet_transform(False, size, resize)),
                    self.device, self.num_workers, batches=batches, **norm)
            return
        if self.data_name == "digits":
            from optrepro.data.digits import load_digits_split

            x_train, y_train = load_digits_split(train=True)
            x_test, y_test = load_digits_split(train=False)
            self.data_provenance = provenance.digits()
        else:
            from optrepro.data.cifar import load_cifar

            kw = dict(
                root=data.root,
                download=bool(data.get("download", True)),
                verify_checksums=bool(data.get("verify_checksums", True)),
            )
            x_train, y_train = load_cifar(self.data_name, train=True, **kw)
            x_test, y_test = load_cifar(self.data_name, train=False, **kw)
            self.data_provenance = provenance.cifar(self.data_name, data.root)
        train_idx = self._subset(len(y_train), cfg.data.get("train_subset"), "train")
        if train_idx is not None:
            x_train, y_train = x_train[train_idx], y_train[train_idx]
        test_idx = self._subset(len(y_test), cfg.data.get("test_subset"), "test")
        if test_idx is not None:
            x_test, y_test = x_test[test_idx], y_test[test_idx]
        val_size = data.get("val_size")
        if val_size is not None:  # held out of training: the only split a tuning sweep selects on
            check_fits("data.val_size", val_size, len(y_train) - self.batch_size,
                       f"training images in {self.data_name} beyond one batch")
            gen = torch.Generator().manual_seed(derived_seed("vision-val", self.data_name, len(y_train)))
            perm = torch.randperm(len(y_train), generator=gen)
            val_idx, keep = perm[: int(val_size)].sort().values, perm[int(val_size):].sort().values
            self.val_images = DeviceImages(x_train[val_idx], y_train[val_idx], self.device, **norm)
            self.n_val = int(val_idx.numel())
            self.val_metric = "val_acc"
            x_train, y_train = x_train[keep], y_train[keep]
        self.n_train, self.n_test = int(y_train.numel()), int(y_test.numel())
        heldin = self._heldin_index(self.n_train, self.n_test)
        if heldin is not None:
            self.n_heldin = int(heldin.numel())
            self.heldin_images = DeviceImages(x_train[heldin], y_train[heldin], self.device, **norm)
        self.train_index = torch.arange(self.n_train)
        # evaluation of an in-memory set is plain slicing on the device, whichever pipeline trains
        self.test_images = DeviceImages(x_test, y_test, self.device, **norm)
        if self.pipeline == "device":
            self.train_images = DeviceImages(x_train, y_train, self.device, pad=pad, flip=pad > 0, **norm)
        else:
            transform = cifar_crop_flip(pad) if pad > 0 else None
            self.train_loader = LoaderImages(SeededTransformDataset(TensorSource(x_train, y_train), transform),
                                             self.device, self.num_workers, **norm)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, self.order.permutation(epoch))
        return self._perm_cache[1]

    def _batch_seed(self, epoch: int, index: int) -> int:
        return derived_seed("vision-augment", self.ctx.seed, epoch, index)

    def _global_batch(self, epoch: int, index: int) -> torch.Tensor:
        start = index * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size]

    def _advance(self) -> tuple[int, int]:
        """Move the batch order one batch on (rolling over epochs); return (epoch, batch index) taken."""
        if self.order.index >= self.order.batches_per_epoch:
            self.order.epoch += 1
            self.order.index = 0
        taken = (self.order.epoch, self.order.index)
        self.order.index += 1
        return taken

    def _plan_rest_of_epoch(self) -> None:
        """Give the DataLoader this rank's share of every batch left in the current epoch."""
        epoch, first = self.order.epoch, self.order.index
        if first >= self.order.batches_per_epoch:
            epoch, first = epoch + 1, 0
        assert self.train_loader is not None
        self.train_loader.serve([
            list(self.dist.shard(seeded_keys(self.train_index[self._global_batch(epoch, b)].tolist(),
                                             self._batch_seed(epoch, b))))
            for b in range(first, self.order.batches_per_epoch)
        ])

    def _resized(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images resized on the device to ``task.data.input_size`` (bilinear; after normalising, which
        commutes with it), as a pretrained model's input size asks; unchanged when it is null."""
        images, labels = batch
        if self.input_size is None or images.shape[-1] == self.input_size:
            return images, labels
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        size = (self.input_size, self.input_size)
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)
        return images.contiguous(memory_format=memory), labels

    def _inception_cropped(self, batch: tuple[torch.Tensor, torch.Tensor], epoch: int,
                           index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``task.data.augment=inception_crop``: vit_jax's training crop of this rank's share of a batch.

        The boxes and flips are drawn on the CPU for the whole global batch from the batch's seed
        (seed, epoch, index), then each rank takes its share: the same crops on any device, any
        number of processes, and after a resume.
        """
        images, labels = batch
        n, height, width = self._global_batch(epoch, index).numel(), images.shape[-2], images.shape[-1]
        generator = torch.Generator().manual_seed(self._batch_seed(epoch, index))
        top, left, crop_h, crop_w = inception_crop_params(n, height, width, generator)
        flips = torch.rand(n, generator=generator) < 0.5  # vit_jax: flip when uniform > 0.5
        share = slice(self.dist.rank, None, self.dist.world)
        size = self.input_size or width  # vit_jax resizes the crop to the model's input size
        images = crop_resize_flip(images, top[share], left[share], crop_h[share], crop_w[share], flips[share], size)
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=memory), labels

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pipeline == "device":
            epoch, b = self._advance()
            batch = self.train_images.batch(
                self._global_batch(epoch, b), self._batch_seed(epoch, b), self.dist.rank, self.dist.world
            )
        else:
            assert self.train_loader is not None
            if not self.train_loader.serving or self.order.epoch_finished:
                self._plan_rest_of_epoch()
            batch = self.train_loader.next()
            epoch, b = self._advance()
        return self._inception_cropped(batch, epoch, b) if self.inception_crop else self._resized(batch)

    # --- schedule ---------------------------------------------------------------------------
    def _next_epoch(self) -> int:
        return self.order.epoch + (1 if self.order.epoch_finished else 0)

    def lr_factor(self) -> float:
        """The multiple of the base lr for the next update (step schedule, or warm-up + cosine)."""
        if self.schedule == "cosine":
            return cosine_lr(self.step, 1.0, self.warmup_steps, self.total_steps, self.min_lr_ratio)
        epoch = self._next_epoch()
        return self.lr_gamma ** sum(1 for m in self.milestones if epoch >= m)

    def _set_lr(self) -> None:
        factor = self.lr_factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    # --- the loop's interface ---------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        batch = self.member_batch()
        loss, correct = self._loss(self.train_model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        return self.member_end_step(loss, correct)

    def _loss(self, forward: Callable[[torch.Tensor], torch.Tensor],
              batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of one batch under ``forward`` (the model, or a member's functional call),
        and the number of correct training predictions."""
        images, labels = batch
        with self.ctx.autocast():
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, (logits.detach().argmax(1) == labels).sum()

    # --- as a population member (optrepro.population) ----------------------------------------
    def member_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._set_lr()
        self.train_model.train()
        return self._next_batch()

    def member_buffers(self) -> list[torch.Tensor]:
        return [buffer for _, buffer in self.model.named_buffers()]  # batch norm's running statistics

    def member_loss(self, params: list[torch.Tensor], buffers: list[torch.Tensor],
                    batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.func import functional_call

        named = dict(zip(self._param_names, params, strict=True))
        named.update(zip(self._buffer_names, buffers, strict=True))
        return self._loss(lambda images: functional_call(self.model, named, (images,)), batch)

    def member_end_step(self, loss: torch.Tensor, correct: torch.Tensor) -> dict[str, Any]:
        self.step += 1
        self._train_correct += correct
        self._train_seen += self.batch_size // self.dist.world
        # every rank reports the global-batch loss, so they agree on divergence
        return {"loss": self.dist.mean(loss.detach())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        train_time = time.perf_counter() - self._interval_start
        if self.dist.active:
            # every rank evaluates rank 0's model (BN statistics differ after the last local update),
            # through the bare module: shards may differ by a batch, so no collectives inside forward
            for buffer in self.model.buffers():
                self.dist.broadcast(buffer, src=0)
        self.model.eval()
        out = self._score(self._eval_batches())
        if self.val_images is not None:
            val = self._score(self._image_batches(self.val_images, self.n_val))
            out.update({"val_loss": val["test_loss"], "val_acc": val["test_acc"]})
        out.update(self.heldin_metrics())
        train = torch.stack([self._train_correct.double(), self._train_seen.double()])
        self.dist.all_reduce_sum(train)
        correct, seen = train.tolist()
        if seen:
            out["train_acc"] = 100.0 * correct / seen
            out["images_per_s"] = seen / max(train_time, 1e-9)
            out["train_time_s"] = train_time
        self._reset_interval()
        return out

    @torch.no_grad()
    def heldin_metrics(self) -> dict[str, float]:
        """Loss and accuracy on the fixed held-in training subset, unaugmented (call in eval mode)."""
        if self.heldin_loader is not None:
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (self._resized(b) for b in self.heldin_loader)
        elif self.heldin_images is not None:
            batches = self._image_batches(self.heldin_images, self.n_heldin)
        else:
            return {}
        score = self._score(batches)
        return {"heldin_loss": score["test_loss"], "heldin_acc": score["test_acc"]}

    def _score(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Loss and top-1 (top-5) accuracy over ``batches`` (this rank's share), summed over every rank."""
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, top1, top5, count
        for images, labels in batches:
            with self.ctx.autocast():
                logits = self.model(images)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top == labels[:, None]
            sums[1] += hits[:, 0].sum()
            sums[2] += hits.any(dim=1).sum()
            sums[3] += labels.numel()
        self.dist.all_reduce_sum(sums)
        loss_sum, top1, top5, count = sums.tolist()
        out = {"test_loss": loss_sum / max(count, 1.0), "test_acc": 100.0 * top1 / max(count, 1.0)}
        if self.top5:
            out["test_acc5"] = 100.0 * top5 / max(count, 1.0)
        return out

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.test_loader is not None:
            for batch in self.test_loader:
                yield self._resized(batch)
            return
        yield from self._image_batches(self.test_images, self.n_test)

    def _image_batches(self, images: DeviceImages, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of an in-memory split, in eval batches, unaugmented."""
        shard = torch.arange(self.dist.rank, n, self.dist.world)
        for s in range(0, shard.numel(), self.eval_batch_size):
            yield self._resized(images.batch(shard[s : s + self.eval_batch_size]))

    def _reset_interval(self) -> None:
        self._train_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._train_seen = torch.zeros((), dtype=torch.int64, device=self.device)
        self._interval_start = time.perf_counter()

    def done(self) -> bool:
        if self.max_steps is not None:
            return self.step >= self.max_steps
        return self.order.epochs_done >= self.epochs

    def eval_due(self) -> bool:
        return self.order.epoch_finished or (self.max_steps is not None and self.step >= self.max_steps)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * self.order.batches_per_epoch

    @property
    def epoch(self) -> float:
        return float(self.order.epochs_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.train_loader is not None:
            self.train_loader.stop()  # the DataLoader path re-plans from the restored position
        self._interval_start = time.perf_counter()

    def finalize(self, run_dir: Any) -> dict[str, Any]:
        from optrepro.models.cifar import count_parameters

        return {
            "vision": {
                "pipeline": self.pipeline,
                "world_size": self.dist.world,
                "train_images": self.n_train,
                "test_images": self.n_test,
                "heldin_images": self.n_heldin,
                "val_images": getattr(self, "n_val", 0),
                "parameters": count_parameters(self.model),
            }
        }


__all__ = ["ImageClassificationTask"]
