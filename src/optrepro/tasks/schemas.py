"""One typed schema per task kind: the validator of ``cfg.task`` and what the task's constructor receives.

Each schema is a dataclass (registered in Hydra's ConfigStore as ``task_schema/<kind>``) whose fields are
the task's keys with their types; ranges and choices are declared once in field metadata (``gt``, ``min``,
``lt``, ``max``, ``choices``), and checks that relate two keys live in the kind's ``check`` function.
:func:`validate` merges the composed ``cfg.task`` into its schema, so an unknown key, a wrong type or a
missing value fails there, and turns OmegaConf's multi-line errors into one ``UserError`` naming the key.
The composed config itself is not changed (the saved config.yaml and the run hash stay what Hydra
composed); only the task sees the typed copy, with the schema's defaults for keys the yaml leaves out.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin  # noqa: UP035 - OmegaConf reads typing

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from optrepro.errors import UserError, check_lr_milestones


def _f(default: Any = MISSING, **meta: Any) -> Any:
    """A schema field: its default (MISSING: required) and its declared range/choices."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


POS = {"gt": 0}  # a positive number / integer
NONNEG = {"min": 0}
UNIT = {"min": 0, "lt": 1}  # dropout-like: [0, 1)


@dataclass
class TaskSchema:
    """Keys every task has: its kind and name, and the test-only fault injection (``+task.fault.*``)."""

    kind: str = MISSING
    name: str = MISSING
    fault: dict[str, Any] | None = None


# ------------------------------------------------------------------------------ toy2d
@dataclass
class Toy2DSchema(TaskSchema):
    function: str = _f(choices="optrepro.tasks.toy2d:FUNCTIONS")
    steps: int = _f(**POS)
    eval_every: int = _f(**POS)
    tolerance: float = _f(**NONNEG)


# ------------------------------------------------------------------------------ image classification
@dataclass
class VisionData:
    name: str = _f(choices="optrepro.tasks.vision:DATASETS")
    root: str = "data/"
    pipeline: str = _f("auto", choices="optrepro.tasks.vision:PIPELINES")
    augment: str = _f("none", choices="optrepro.tasks.vision:AUGMENTS")
    num_workers: int = _f(0, **NONNEG)
    pad: int = _f(4, **NONNEG)
    image_size: int = _f(224, **POS)
    resize: int = _f(256, **POS)
    download: bool = True
    verify_checksums: bool = True
    train_subset: int | None = _f(None, **POS)
    test_subset: int | None = _f(None, **POS)
    val_size: int | None = _f(None, **POS)  # training images held out as a validation split (make tune)
    input_size: int | None = _f(None, **POS)  # resize in-memory images on the device (a pretrained model's size)
    normalize: str = _f("dataset", choices="optrepro.tasks.vision:NORMALIZE")


@dataclass
class VisionModel:
    name: str = _f(nonempty=True)  # source=cifar: one of optrepro.models.cifar:MODELS; timm: a timm model name
    source: str = _f("cifar", choices="optrepro.tasks.vision:MODEL_SOURCES")
    pretrained: bool = False  # source=timm: timm's pretrained weights (hub, or the HF cache when download=false)
    checkpoint: str | None = None  # source=timm: a local state_dict file loaded through timm instead
    kwargs: dict[str, Any] = _f({})  # source=timm: extra timm.create_model arguments (img_size, ...)
    num_classes: int | None = _f(None, **POS)  # the head's outputs; None = task.num_classes


@dataclass
class ImageClassificationSchema(TaskSchema):
    data: VisionData = field(default_factory=VisionData)
    model: VisionModel = field(default_factory=VisionModel)
    epochs: int = _f(**POS)
    batch_size: int = _f(**POS)
    eval_batch_size: int = _f(**POS)
    num_classes: int = _f(**POS)
    lr_milestones: list[int] = _f([])
    lr_gamma: float = _f(0.1, **POS)
    top5: bool = False
    channels_last: Any = "auto"  # true, false or auto
    heldin_size: int | None = _f(None, **NONNEG)  # held-in training images for the gap; null = test size, 0 = off
    drop_last: bool = True  # false: keep each epoch's last partial batch (the reference DataLoaders')
    max_steps: int | None = _f(None, **POS)  # stop at this many steps (null: after epochs)
    schedule: str = _f("step", choices="optrepro.tasks.vision:SCHEDULES")  # step (lr_milestones) | cosine
    warmup_steps: int = _f(0, **NONNEG)  # schedule=cosine: linear warm-up steps
    min_lr_ratio: float = _f(0.0, **NONNEG)  # schedule=cosine: the final lr / the base lr
    clip_norm: float = _f(0.0, **NONNEG)  # global gradient-norm clipping (0: off)
    decay_mask: str = _f("all", choices="optrepro.tasks.vision:DECAY_MASKS")  # matrices: none on biases/norms


def _check_vision(cfg: DictConfig) -> None:
    from optrepro.models.cifar import MODELS
    from optrepro.tasks.vision import CLASSES

    model = cfg.model
    if model.source == "cifar" and model.name not in MODELS:
        raise UserError(f"task.model.name={model.name} is not one of {', '.join(MODELS)} (task.model.source=cifar)")
    if model.source == "cifar" and (model.pretrained or model.checkpoint or model.kwargs
                                    or cfg.data.normalize == "model"):
        raise UserError("task.model.pretrained / checkpoint / kwargs and task.data.normalize=model are for "
                        "task.model.source=timm")
    if cfg.data.name == "imagefolder" and cfg.data.input_size is not None:
        raise UserError("task.data.input_size is for in-memory datasets (ImageFolder: image_size)")

    name, pipeline, augment = cfg.data.name, cfg.data.pipeline, cfg.data.augment
    if name == "imagefolder" and pipeline == "device":
        raise UserError("task.data.pipeline=device holds the dataset in device memory: CIFAR and digits only; "
                        "use task.data.pipeline=dataloader (or auto) for ImageFolder")
    if (augment == "imagenet") != (name == "imagefolder"):
        raise UserError(f"task.data.augment={augment} does not fit task.data.name={name} "
                        f"(imagenet goes with imagefolder, crop_flip, inception_crop or none with in-memory datasets)")
    if name in CLASSES and cfg.num_classes != CLASSES[name]:
        raise UserError(f"task.num_classes={cfg.num_classes} but {name} has {CLASSES[name]} classes")
    if cfg.model.num_classes is not None and cfg.model.num_classes < cfg.num_classes:
        raise UserError(f"task.model.num_classes={cfg.model.num_classes} is below task.num_classes={cfg.num_classes}: "
                        "the head needs an output per label")
    if cfg.channels_last not in (True, False, "auto"):
        raise UserError(f"task.channels_last must be true, false or auto, got {cfg.channels_last!r}")
    check_lr_milestones(cfg.lr_milestones)


# ------------------------------------------------------------------------------ language model
@dataclass
class LMData:
    name: str = _f(choices="optrepro.tasks.language_model:CORPORA")
    root: str = _f(nonempty=True)
    download: bool = False
    url: str | None = None  # None: the PTB mirror the loader names
    vocab_size: int = _f(2000, **POS)
    train_tokens: int | None = _f(None, **POS)
    eval_tokens: int | None = _f(None, **POS)


@dataclass
class LMModel:
    emsize: int = _f(**POS)
    nhid: int = _f(**POS)
    nlayers: int = _f(**POS)
    dropout: float = _f(**UNIT)
    dropouth: float = _f(**UNIT)
    dropouti: float = _f(**UNIT)
    dropoute: float = _f(**UNIT)
    wdrop: float = _f(**UNIT)
    tied: bool = True
    init_range: float = _f(0.1, **POS)
    freeze_weight_hh: bool = False  # true: the reference's never-trained hidden-to-hidden weights


@dataclass
class LanguageModelSchema(TaskSchema):
    data: LMData = field(default_factory=LMData)
    model: LMModel = field(default_factory=LMModel)
    asgd_trigger_split: str = _f("valid", choices=("valid", "test"))  # the losses the ASGD trigger watches
    batch_size: int = _f(**POS)
    eval_batch_size: int = _f(**POS)
    test_batch_size: int = _f(**POS)
    bptt: int = _f(**POS)
    variable_bptt: bool = True
    epochs: int = _f(**POS)
    nonmono: int = _f(**POS)
    clip: float | None = _f(None, **NONNEG)
    alpha: float | None = _f(None, **NONNEG)
    beta: float | None = _f(None, **NONNEG)
    lr_milestones: list[int] = _f([])
    lr_gamma: float = _f(0.1, **NONNEG)
    asgd: bool = True
    asgd_average_eval: bool = False
    heldin_size: int | None = _f(None, **NONNEG)  # held-in training tokens for the gap; null = test size, 0 = off


def _check_language_model(cfg: DictConfig) -> None:
    check_lr_milestones(cfg.lr_milestones, minimum=1)


# ------------------------------------------------------------------------------ LM pretraining
@dataclass
class LMPretrainData:
    name: str = _f(choices="optrepro.tasks.lm_pretrain:SOURCES")
    root: str = _f(nonempty=True)
    encoding: str = _f("gpt2", choices="optrepro.data.token_shards:ENCODINGS")
    prefix: str | None = None  # shards: <prefix>_{train,val}_NNNNNN.bin
    n_vocab: int | None = _f(None, **POS)  # shards without a meta.json (written by llm.c): the encoding's size
    val_tokens: int = _f(40_000, **POS)  # pydoc: tokens (whole topics) held out as the val split
    train_tokens: int | None = _f(None, **POS)  # the first N training tokens only
    eval_tokens: int = _f(**POS)  # the fixed held-out set: the first N val tokens
    sampler: str = _f("sequential", choices="optrepro.tasks.lm_pretrain:SAMPLERS")  # random: nanoGPT's get_batch


@dataclass
class GPTModel:
    n_layer: int = _f(**POS)
    n_head: int = _f(**POS)
    n_embd: int = _f(**POS)
    block_size: int = _f(**POS)
    dropout: float = _f(0.0, **UNIT)
    bias: bool = True
    vocab_multiple: int = _f(64, **POS)


@dataclass
class LMPretrainSchema(TaskSchema):
    data: LMPretrainData = field(default_factory=LMPretrainData)
    model: GPTModel = field(default_factory=GPTModel)
    batch_size: int = _f(**POS)
    seq_len: int = _f(**POS)
    eval_batch_size: int = _f(**POS)
    steps: int = _f(**POS)
    eval_every: int = _f(**POS)
    warmup_steps: int = _f(**NONNEG)
    warmup_formula: str = _f("llmc", choices="optrepro.tasks.base:WARMUP_FORMULAS")
    grad_accum_steps: int = _f(1, **POS)  # micro-batches of batch_size per optimizer step
    min_lr_ratio: float = _f(0.1, min=0, max=1)
    grad_clip: float = _f(1.0, **NONNEG)
    weight_decay_on: str = _f("matrices", choices=("matrices", "all"))
    param_dtype: str = _f("fp32", choices=("fp32", "bf16", "fp16"))
    heldin_size: int | None = _f(None, **NONNEG)  # held-in training tokens (null: as many as eval_tokens, 0: off)


def _check_lm_pretrain(cfg: DictConfig) -> None:
    if cfg.model.n_embd % cfg.model.n_head:
        raise UserError(f"task.model.n_embd ({cfg.model.n_embd}) must be a multiple of "
                        f"task.model.n_head ({cfg.model.n_head})")
    if cfg.data.name == "shards" and not cfg.data.prefix:
        raise UserError("task.data.prefix must name the shards (<prefix>_train_000000.bin) for task.data.name=shards")
    if cfg.warmup_steps > cfg.steps:
        raise UserError(f"task.warmup_steps={cfg.warmup_steps} exceeds task.steps={cfg.steps}")


# ------------------------------------------------------------------------------ translation
@dataclass
class MTData:
    name: str = _f(choices=("iwslt14", "synthetic"))
    root: str | None = None
    raw: str | None = None
    bpe_merges: int = _f(10000, **POS)
    prepare_workers: int = _f(4, **POS)
    seed: int = 0
    train_size: int = _f(6000, **POS)
    valid_size: int = _f(300, **POS)
    test_size: int = _f(500, **POS)
    train_subset: int | None = _f(None, **POS)
    test_subset: int | None = _f(None, **POS)
    joined_dictionary: bool = False  # true: one Vocab over both sides' training text (fairseq --joined-dictionary)


@dataclass
class MTModel:
    d_model: int = _f(**POS)
    heads: int = _f(**POS)
    encoder_layers: int = _f(**POS)
    decoder_layers: int = _f(**POS)
    ffn_dim: int = _f(**POS)
    max_positions: int = _f(**POS)
    dropout: float = _f(**UNIT)
    attention_dropout: float = _f(**UNIT)
    activation_dropout: float = _f(**UNIT)
    share_decoder_input_output: bool = True
    share_all_embeddings: bool = False  # true: one embedding for both sides and the output (data.joined_dictionary)
    normalize_before: bool = False  # true: pre-LN layers + final LayerNorms (transformer_iwslt_de_en_v2)


@dataclass
class TranslationSchema(TaskSchema):
    data: MTData = field(default_factory=MTData)
    model: MTModel = field(default_factory=MTModel)
    src_lang: str = MISSING
    tgt_lang: str = MISSING
    detok_lang: str | None = None
    epochs: int = _f(**POS)
    max_tokens: int = _f(**POS)
    eval_batch_size: int = _f(**POS)
    eval_every_epochs: int = _f(**POS)
    beam: int = _f(**POS)
    average_last: int = _f(**POS)
    lenpen: float = _f(min=0, max=10)  # len**lenpen divides a score: fairseq's 0..2 in practice; 1024**100 overflows
    max_len_a: float = _f(**NONNEG)
    max_len_b: float = _f(**NONNEG)
    label_smoothing: float = _f(**UNIT)
    clip_norm: float = _f(**NONNEG)
    lr_schedule: str = "inverse_sqrt"
    warmup_updates: int = _f(**NONNEG)
    warmup_init_lr: float = _f(**NONNEG)
    valid_bleu_subset: int | None = _f(None, **NONNEG)


def _check_translation(cfg: DictConfig) -> None:
    if cfg.model.d_model % cfg.model.heads:
        raise UserError(f"task.model.d_model ({cfg.model.d_model}) must be a multiple of "
                        f"task.model.heads ({cfg.model.heads})")
    if cfg.model.share_all_embeddings and not (cfg.data.joined_dictionary and cfg.model.share_decoder_input_output):
        raise UserError("task.model.share_all_embeddings=true needs task.data.joined_dictionary=true and "
                        "task.model.share_decoder_input_output=true (fairseq: --share-all-embeddings requires a "
                        "joined dictionary and ties the output projection)")


# ------------------------------------------------------------------------------ GANs
@dataclass
class GANData:
    name: str = _f(choices=("cifar10", "cifar100"))
    root: str = "data"
    download: bool = False
    verify_checksums: bool = True


@dataclass
class FIDSchema:
    enabled: bool = False
    extractor: str = _f("inception", choices="optrepro.tasks.gan:EXTRACTORS")
    num_fake: int = _f(10000, min=2)
    num_real: int | None = _f(None, min=2)
    batch_size: int = _f(250, **POS)
    every_steps: int = _f(10000, **POS)
    real_split: str = _f("train", choices=("train", "test"))
    is_splits: int = _f(10, **POS)  # Inception Score splits (torch-fidelity's 10; StudioGAN's 1)
    per_image_minmax: bool = False  # stretch every image to its own [min, max] before uint8 (the WGAN FID's)
    resize: str = _f("fidelity", choices=("fidelity", "pytorch_fid"))  # Inception input: whose resize
    input: str = _f("uint8", choices=("uint8", "float"))  # images rounded to uint8, or G's output unrounded
    inception_score: bool = True
    weights_path: str | None = None


@dataclass
class GANSchema(TaskSchema):
    data: GANData = field(default_factory=GANData)
    fid: FIDSchema = field(default_factory=FIDSchema)
    arch: str = _f(choices="optrepro.tasks.gan:ARCHS")
    loss: str = _f(choices="optrepro.tasks.gan:LOSSES")
    d_head: str = _f(choices="optrepro.models.gan:DCGAN_HEADS")
    conditional: bool = False
    random_flip: bool = False
    steps: int = _f(**POS)
    eval_every: int = _f(**POS)
    batch_size: int = _f(**POS)
    n_critic: int = _f(**POS)
    image_size: int = _f(**POS)
    nz: int = _f(**POS)
    ngf: int = _f(**POS)
    ndf: int = _f(**POS)
    gp_lambda: float = _f(0.0, **NONNEG)
    clip_value: float = _f(0.0, **NONNEG)
    drop_last: bool = True  # false: keep each epoch's last partial batch
    g_schedule: str = _f("fixed", choices=("fixed", "epoch_index"))  # when G steps (optrepro.tasks.gan)
    d_shortcut: str = _f("clean", choices="optrepro.models.gan:D_SHORTCUTS")  # sngan_resnet only
    g_bn_eps: float = _f(1e-5, **POS)  # sngan_resnet only
    d_sn_eps: float = _f(1e-12, **POS)  # sngan_resnet only: the critic's spectral-norm eps
    g_embedding_init: str = _f("zeros", choices="optrepro.models.gan:G_EMBEDDING_INITS")  # sngan_resnet only


def _check_gan(cfg: DictConfig) -> None:
    if cfg.arch == "dcgan":
        if cfg.image_size != 64:
            raise UserError(f"task.image_size must be 64 for arch=dcgan, got {cfg.image_size}")
        if cfg.conditional:
            raise UserError("task.conditional=true needs arch=sngan_resnet")
    elif cfg.image_size != 32:
        raise UserError(f"task.image_size must be 32 for arch=sngan_resnet, got {cfg.image_size}")
    if cfg.fid.input == "float":  # G's output unrounded: not through a PNG stretch or torch-fidelity's uint8 resize
        if cfg.fid.per_image_minmax:
            raise UserError("task.fid.input=float feeds the images unrounded; task.fid.per_image_minmax "
                            "(a PNG-saving stretch) needs task.fid.input=uint8")
        if cfg.fid.extractor == "inception" and cfg.fid.resize != "pytorch_fid":
            raise UserError("task.fid.input=float needs task.fid.resize=pytorch_fid (torch-fidelity's own "
                            "resize takes uint8 only)")
    if cfg.fid.enabled and cfg.fid.extractor == "inception":
        from optrepro.metrics.fid import resolve_inception_weights

        resolve_inception_weights(cfg.fid.weights_path)  # one-line DataMissingError naming the file


@dataclass
class RingGANSchema(TaskSchema):
    modes: int = _f(min=3)
    radius: float = _f(**POS)
    std: float = _f(**POS)
    quality_std: float = _f(**POS)
    coverage_fraction: float = _f(gt=0, max=1)
    loss: str = _f(choices="optrepro.tasks.gan:LOSSES")
    nz: int = _f(**POS)
    hidden: int = _f(**POS)
    layers: int = _f(**POS)
    batch_size: int = _f(**POS)
    steps: int = _f(**POS)
    n_critic: int = _f(**POS)
    eval_every: int = _f(**POS)
    eval_samples: int = _f(**POS)
    gp_lambda: float = _f(0.0, **NONNEG)


# ------------------------------------------------------------------------------ detection
@dataclass
class DetectionData:
    name: str = _f(choices="optrepro.tasks.detection:SOURCES")
    # voc
    root: str | None = None
    download: bool = False
    train_sets: list[str] = _f([])
    test_set: str | None = None
    train_difficult: bool = False
    train_subset: int | None = _f(None, **POS)
    test_subset: int | None = _f(None, **POS)
    # synthetic
    n_train: int = _f(512, **POS)
    n_test: int = _f(128, **POS)
    image_size: int = _f(128, **POS)
    max_objects: int = _f(3, **POS)
    min_side: int = _f(16, **POS)
    max_side: int = _f(56, **POS)
    seed: int = 0


@dataclass
class DetectionModel:
    backbone: str = _f(choices="optrepro.models.detection:BACKBONES")
    backbone_weights: str | None = None
    trainable_layers: int = _f(3, **NONNEG)
    width: int = _f(min=4)  # the tiny backbone's first conv has width // 4 channels
    representation_size: int = _f(**POS)
    anchor_sizes: list[int] = MISSING
    min_size: int = _f(**POS)
    max_size: int = _f(**POS)
    sampling_ratio: int = _f(**NONNEG)  # RoIAlign samples per bin; 0 = adaptive (mmdet)
    bn_affine_trainable: bool = False
    box_loss: str = _f("smooth_l1", choices="optrepro.models.detection:BOX_LOSSES")
    rpn_pre_nms_top_n_train: int = _f(**POS)
    rpn_pre_nms_top_n_test: int = _f(**POS)
    rpn_post_nms_top_n_train: int = _f(**POS)
    rpn_post_nms_top_n_test: int = _f(**POS)
    rpn_batch_size_per_image: int = _f(**POS)
    box_batch_size_per_image: int = _f(**POS)
    box_detections_per_img: int = _f(**POS)
    box_score_thresh: float = _f(**NONNEG)


@dataclass
class DetectionSchema(TaskSchema):
    data: DetectionData = field(default_factory=DetectionData)
    model: DetectionModel = field(default_factory=DetectionModel)
    metric: str = _f("map50", choices="optrepro.tasks.detection:METRICS")
    batch_size: int = _f(**POS)
    eval_batch_size: int = _f(**POS)
    epochs: int = _f(**POS)
    eval_every_epochs: int = _f(**POS)
    flip_prob: float = _f(0.5, min=0, max=1)
    lr_milestones: list[int] = _f([])
    lr_gamma: float = _f(0.1, **POS)
    batch_grouping: str = _f("none", choices="optrepro.tasks.detection:BATCH_GROUPINGS")  # aspect_ratio: mmdet's


def _check_detection(cfg: DictConfig) -> None:
    data = cfg.data
    if data.name == "voc":
        from optrepro.data.voc import parse_split

        if not data.root:
            raise UserError("task.data.root must name the folder that holds VOCdevkit/")
        if not data.train_sets:
            raise UserError("task.data.train_sets must list VOC splits, e.g. [2007-trainval,2012-trainval]")
        for name in [*data.train_sets, data.test_set]:
            try:
                parse_split(str(name))
            except UserError as exc:
                raise UserError(f"task.data: {exc}") from None
    elif not data.min_side <= data.max_side <= data.image_size:
        raise UserError("task.data needs min_side <= max_side <= image_size")
    check_lr_milestones(cfg.lr_milestones, minimum=1)
    from optrepro.models.detection import check_backbone_weights

    check_backbone_weights(cfg.model)  # one-line DataMissingError naming the file


# ------------------------------------------------------------------------------ fine-tuning (GLUE)
@dataclass
class FinetuneData:
    task: str = _f(choices="optrepro.data.glue:TASKS")
    source: str = _f("hub", choices="optrepro.data.glue:SOURCES")
    root: str | None = None  # source=tsv: the folder holding GLUE's RTE/, MRPC/, CoLA/, STS-B/, SST-2/
    download: bool = True  # false: hub data and checkpoint from the local HF cache only
    train_subset: int | None = _f(None, **POS)
    dev_subset: int | None = _f(None, **POS)


@dataclass
class FinetuneModel:
    name: str = _f(nonempty=True)  # a hub name (FacebookAI/roberta-base) or a local save_pretrained folder
    tokenizer: str | None = None  # null: the model's own
    revision: str | None = None


@dataclass
class FinetuneSchema(TaskSchema):
    data: FinetuneData = field(default_factory=FinetuneData)
    model: FinetuneModel = field(default_factory=FinetuneModel)
    lr: float = _f(**POS)  # the recipe's peak lr for this task (configs/recipe/finetune/ reads it)
    epochs: int = _f(**POS)
    batch_size: int = _f(**POS)
    eval_batch_size: int = _f(64, **POS)
    max_seq_length: int = _f(512, **POS)
    max_tokens: int | None = _f(None, **POS)  # fairseq --max-tokens: padded tokens per batch (null: batch_size only)
    warmup_ratio: float = _f(0.06, **UNIT)
    warmup_steps: int | None = _f(None, **NONNEG)  # null: warmup_ratio x the decay horizon
    decay_steps: int | None = _f(None, **POS)  # the linear decay's horizon (fairseq max_update); null: the run
    clip_norm: float = _f(0.0, **NONNEG)
    decay_mask: str = _f("matrices", choices="optrepro.tasks.finetune:DECAY_MASKS")
    heldin_size: int | None = _f(None, **NONNEG)


def _check_finetune(cfg: DictConfig) -> None:
    if cfg.data.source == "tsv" and not cfg.data.root:
        raise UserError("task.data.source=tsv reads GLUE's TSV files under task.data.root; set task.data.root")


# ------------------------------------------------------------------------------ registry
#: task kind -> (schema, the checks that relate two keys)
SCHEMAS: dict[str, tuple[type, Callable[[DictConfig], None] | None]] = {
    "toy2d": (Toy2DSchema, None),
    "image_classification": (ImageClassificationSchema, _check_vision),
    "language_model": (LanguageModelSchema, _check_language_model),
    "lm_pretrain": (LMPretrainSchema, _check_lm_pretrain),
    "translation": (TranslationSchema, _check_translation),
    "gan": (GANSchema, _check_gan),
    "ring_gan": (RingGANSchema, None),
    "detection": (DetectionSchema, _check_detection),
    "finetune_glue": (FinetuneSchema, _check_finetune),
}

_store = ConfigStore.instance()
for _kind, (_schema, _) in SCHEMAS.items():
    _store.store(group="task_schema", name=_kind, node=_schema)


def validate(cfg_task: DictConfig) -> DictConfig:
    """``cfg.task`` checked against its kind's schema: the typed copy the task's constructor receives."""
    kind = cfg_task.get("kind")
    if kind not in SCHEMAS:
        from optrepro.tasks import TASK_KINDS

        raise UserError(f"unknown task.kind '{kind}'; choose one of: {', '.join(sorted(TASK_KINDS))}")
    schema, check = SCHEMAS[str(kind)]
    if OmegaConf.get_type(cfg_task) is schema:
        return cfg_task  # already typed (a task built from a validated config)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg_task)
        OmegaConf.to_container(typed, throw_on_missing=True)
    except (ValidationError, ConfigKeyError, MissingMandatoryValue) as exc:
        raise UserError(_message(schema, exc, cfg_task)) from None
    assert isinstance(typed, DictConfig)
    _check_ranges(schema, typed, "task")
    if check is not None:
        check(typed)
    OmegaConf.set_readonly(typed, True)
    return typed


def _message(schema: type, exc: Exception, cfg_task: DictConfig) -> str:
    """OmegaConf's error as one line naming the key and, for a wrong type, what the key takes."""
    key = str(getattr(exc, "full_key", "") or "")
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        key = key or str(getattr(exc, "key", ""))
        kind = schema.__name__.removesuffix("Schema")
        return f"unknown config key 'task.{key}' (not a key of the {kind} task schema, optrepro/tasks/schemas.py)"
    if isinstance(exc, MissingMandatoryValue):
        return f"task.{key} is missing (required by the task's schema)"
    got = OmegaConf.select(cfg_task, key, default=None, throw_on_resolution_failure=False)
    shown = "null" if got is None else repr(OmegaConf.to_container(got) if OmegaConf.is_config(got) else got)
    return f"task.{key} must be {_describe(_field_type(schema, key.split('.')))}, got {shown}"


def _field_type(schema: Any, path: list[str]) -> Any:
    """The declared type at a dotted key (``data.name``; ``lr_milestones[0]``: the list's element type)."""
    for part in path:
        name, _, index = part.partition("[")
        hit = {f.name: f for f in dataclasses.fields(schema)}.get(name) if dataclasses.is_dataclass(schema) else None
        if hit is None:
            return None
        schema = _resolve(hit.type)
        if index and get_args(schema):
            schema = get_args(schema)[0]
    return schema


def _resolve(tp: Any) -> Any:
    if isinstance(tp, str):  # `from __future__ import annotations`: the type is its source text
        return eval(tp, globals())  # noqa: S307 - our own annotations
    return tp


def _describe(tp: Any) -> str:
    if get_origin(tp) is not None and type(None) in get_args(tp):  # Optional[X]
        return f"{_describe(next(a for a in get_args(tp) if a is not type(None)))} or null"
    if get_origin(tp) in (list, list):
        return f"a list of {_describe(get_args(tp)[0]).split(' ', 1)[-1]}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "a valid value")


def _choices(spec: Any) -> tuple[str, ...]:
    if isinstance(spec, str):  # "module:NAME", imported only when a task of that kind is checked
        module, name = spec.split(":")
        spec = getattr(importlib.import_module(module), name)
    return tuple(spec)


def _check_ranges(schema: Any, node: DictConfig, prefix: str) -> None:
    """The ranges and choices declared in the schema's field metadata."""
    for f in dataclasses.fields(schema):
        value, name, meta = node[f.name], f"{prefix}.{f.name}", f.metadata
        if dataclasses.is_dataclass(_resolve(f.type)):
            _check_ranges(_resolve(f.type), value, name)
            continue
        if value is None or not meta:
            continue
        if "choices" in meta and value not in _choices(meta["choices"]):
            raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(_choices(meta['choices']))}")
        if meta.get("nonempty") and not value:
            raise UserError(f"{name} must not be empty")
        low = meta.get("gt", meta.get("min"))
        high = meta.get("lt", meta.get("max"))
        ok = ((("gt" not in meta or value > meta["gt"]) and ("min" not in meta or value >= meta["min"]))
              and ("lt" not in meta or value < meta["lt"]) and ("max" not in meta or value <= meta["max"]))
        if ok:
            continue
        kind = "an integer" if isinstance(value, int) else "a number"
        if meta == POS:
            raise UserError(f"{name} must be a positive {kind.split()[-1]}, got {value!r}")
        if high is None:
            raise UserError(f"{name} must be {kind} {'>' if 'gt' in meta else '>='} {low}, got {value!r}")
        left, right = ("(" if "gt" in meta else "["), (")" if "lt" in meta else "]")
        raise UserError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


__all__ = ["SCHEMAS", "validate"]
