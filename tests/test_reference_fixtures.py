"""The project's models and optimizers against the reference code's own numbers.

The numbers in tests/fixtures/reference/ were written by scripts/reference_fixtures.py from the
reference repositories' model and optimizer files (the commit and file of each are in the JSON);
no reference code is needed here. Both sides run in float64, and the seeded-weight recipe and the
tiny optimizer problem are imported from that script, so the same values go in on both sides.

Tolerances: a float64 forward of depth L whose dot products have n terms differs between two
correct orderings of the same sums by at most about L * n * 2^-53 relative to the sum of |terms|
(Higham's bound); with n <= 5e3 and L <= 130 here that is < 1e-10, so outputs must agree to
``FWD_RTOL`` = 1e-8 of their largest magnitude. A knob switched to its corrected variant moves the
outputs by 1e-3 or more of that scale, far outside it. The optimizer updates are 3 elementwise
steps: a few ulps each, checked to 1e-12 relative plus 1e-15 absolute.

Same-seed init is drawn in float32 (the models are built as the tasks build them, then cast): two
correct float32 kernels (vectorised, or torch's portable ones under ATEN_CPU_CAPABILITY=default) may
round each drawn weight differently by one float32 ulp (2^-24 relative), and a depth-L network moves
its output by about L times that relative to its scale: 130 * 6e-8 = 7.7e-6 here, so those outputs are
checked to ``SEED_RTOL`` = 5e-5 (measured: 4.9e-7 between the two kernel paths). A different init order
moves them by O(1).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from optrepro.models import cifar, gan
from optrepro.models.awd_lstm import AWDLSTM
from optrepro.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "reference"
FWD_RTOL = 1e-8
SEED_RTOL = 5e-5
OPT_RTOL, OPT_ATOL = 1e-12, 1e-15


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("reference_fixtures", REPO / "scripts" / "reference_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reference_fixtures", module)
    spec.loader.exec_module(module)
    return module


rf = _load_script()


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["records"]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def positional_names(model: nn.Module, ref_state: list[list[Any]]) -> Callable[[str], str]:
    """Our state-dict entries paired with the reference's by position (same module order), shapes checked."""
    ours = rf.state_entries(model)
    assert [s for _, s in ours] == [s for _, s in ref_state], "state-dict shapes differ in order"
    table = {a: b for (a, _), (b, _) in zip(ours, ref_state, strict=True)}
    return table.__getitem__


def close(actual: Tensor, expected: dict[str, Any], what: str, rtol: float = FWD_RTOL) -> None:
    """``actual`` against a fixture's ``stats`` record, to ``rtol`` of the output's largest magnitude."""
    actual = actual.detach().double().reshape(-1)
    if "values" in expected:
        ref = torch.tensor(expected["values"], dtype=torch.float64)
        scale = ref.abs().max().item()
        torch.testing.assert_close(actual, ref, rtol=0, atol=rtol * scale, msg=lambda m: f"{what}: {m}")
        return
    scale = expected["max_abs"]
    assert actual.numel() == expected["numel"], what
    head = torch.tensor(expected["head"], dtype=torch.float64)
    torch.testing.assert_close(actual[:16], head, rtol=0, atol=rtol * scale, msg=lambda m: f"{what} (head): {m}")
    n = actual.numel()
    for key, value in (("sum", actual.sum().item()), ("abs_sum", actual.abs().sum().item())):
        assert abs(value - expected[key]) <= rtol * scale * n, f"{what}: {key} {value} vs reference {expected[key]}"


def check_summary(model: nn.Module, rec: dict[str, Any]) -> None:
    ours = rf.parameter_summary(model)
    # ("trainable" is left out: the reference's frozen AWD-LSTM weights are trainable by flag and never
    # get a gradient, which test_awd_lstm_trains_the_reference_weights checks)
    for key in ("parameters", "buffers", "parameter_shapes", "buffer_shapes"):
        assert ours[key] == rec[key], f"{key}: ours {ours[key] if 'shapes' not in key else '...'} vs reference"


def forward_check(
    build: Callable[[], nn.Module],
    rec: dict[str, Any],
    inputs: tuple[Any, ...],
    names: Callable[[nn.Module], Callable[[str], str]] | None = None,
    seed_init: bool = True,
) -> None:
    """Counts; outputs with the recipe weights (eval and train); outputs with same-seed init if ``seed_init``."""
    torch.manual_seed(rec["init_seed"])
    model = build()
    check_summary(model, rec)
    if seed_init:  # the init is the same iff the eval output is (train mode is covered by the recipe)
        model.double().eval()
        with torch.no_grad():
            close(rf.first(model(*inputs)), rec["seed"]["eval"], "same-seed init, eval", rtol=SEED_RTOL)
    model.double()
    rf.fill_recipe(model, (names or (lambda m: positional_names(m, rec["state"])))(model))
    rf.align_spectral_norms(model)
    out = rf.forward_modes(model, inputs, rec["train_seed"])
    for mode in ("eval", "train"):
        compare(out[mode], rec["recipe"][mode], f"recipe weights, {mode}")


def compare(ours: dict[str, Any], ref: dict[str, Any], what: str) -> None:
    if "values" in ours:
        close(torch.tensor(ours["values"], dtype=torch.float64), ref, what)
    else:
        assert ours["numel"] == ref["numel"], what
        close(torch.tensor(ours["head"], dtype=torch.float64), {"values": ref["head"]}, what)
        for key in ("sum", "abs_sum"):
            assert abs(ours[key] - ref[key]) <= FWD_RTOL * ref["max_abs"] * ref["numel"], f"{what}: {key}"


def cifar_input() -> tuple[Tensor]:
    return (rf.seeded_input(5, (2, 3, 32, 32)),)


# ------------------------------------------------------------------------------------------------
# CIFAR nets of both repositories
# ------------------------------------------------------------------------------------------------

CIFAR = {
    "adabelief_vgg11": ("vgg11", 10),
    "adabelief_resnet34": ("resnet34", 10),
    "adabelief_densenet121": ("densenet121", 10),
    # EAdam's vgg.py / resnet.py / densenet.py hard-code 100 outputs, CIFAR-10 included (knob
    # task.model.num_classes; see test_eadam_cifar10_preset_builds_100_way_heads)
    "eadam_vgg11": ("vgg11", 100),
    "eadam_resnet18": ("resnet18", 100),
    "eadam_densenet121": ("densenet121", 100),
}


@pytest.mark.parametrize("key", sorted(CIFAR))
def test_cifar_nets_match_reference(key: str) -> None:
    name, classes = CIFAR[key]
    forward_check(lambda: cifar.build_model(name, classes), fixture("cifar")[key], cifar_input())


def test_eadam_cifar10_preset_builds_100_way_heads() -> None:
    """The eadam_table2 preset on CIFAR-10 builds the reference's 100-way head; the corrected
    variant (task.model.num_classes=null -> 10) does not match the reference's counts."""
    from optrepro.config import compose_train as compose

    rec = fixture("cifar")["eadam_resnet18"]
    for overrides, matches in (
        (["experiment=eadam_table2", "task=cifar10_resnet18"], True),
        (["experiment=eadam_table2", "task=cifar10_resnet18", "task.model.num_classes=null"], False),
    ):
        cfg = compose(overrides)
        classes = cfg.task.model.num_classes if cfg.task.model.get("num_classes") is not None else cfg.task.num_classes
        model = cifar.build_model(str(cfg.task.model.name), int(classes))
        assert (rf.parameter_summary(model)["parameters"] == rec["parameters"]) is matches, overrides


# ------------------------------------------------------------------------------------------------
# WGAN / WGAN-GP (the DCGAN nets of the AdaBelief repo's wgan/ and wgan-gp/ scripts)
# ------------------------------------------------------------------------------------------------

DCGAN = {
    "wgan_G": lambda: gan.DCGANGenerator(100, 64),
    "wgan_D": lambda: gan.DCGANDiscriminator(64, head="sigmoid"),
    "wgangp_G": lambda: gan.DCGANGenerator(100, 64),
    "wgangp_D": lambda: gan.DCGANDiscriminator(64, head="linear"),
}


@pytest.mark.parametrize("key", sorted(DCGAN))
def test_dcgan_nets_match_reference(key: str) -> None:
    inputs = (rf.seeded_input(7, (2, 100, 1, 1)),) if key.endswith("G") else (rf.seeded_input(8, (2, 3, 64, 64)),)
    # the WGAN-GP critic's Linear head keeps PyTorch's default init in both, drawn after the convs in
    # both, so the same-seed check holds for it too
    forward_check(DCGAN[key], fixture("dcgan")[key], inputs)


# ------------------------------------------------------------------------------------------------
# SN-GAN (StudioGAN's ResNet G and D as the AdaBelief fork's CIFAR-10 config builds them)
# ------------------------------------------------------------------------------------------------

_SN = {
    "parametrizations.weight.original": "weight_orig",
    "parametrizations.weight.0._u": "weight_u",
    "parametrizations.weight.0._v": "weight_v",
}


def sngan_g_names(name: str) -> str:
    for ours, ref in (
        ("bn1.gain.", "bn1.embed0."),
        ("bn1.bias.", "bn1.embed1."),
        ("bn2.gain.", "bn2.embed0."),
        ("bn2.bias.", "bn2.embed1."),
    ):
        name = name.replace(ours, ref)
    parts = name.split(".")
    if parts[0] == "linear":
        return "linear0." + ".".join(parts[1:])
    if parts[0] == "bn":
        return "bn4." + ".".join(parts[1:])
    if parts[0] == "conv":
        return "conv2d5." + ".".join(parts[1:])
    conv = {"conv1": "conv2d1", "conv2": "conv2d2", "shortcut": "conv2d0"}
    return ".".join(["blocks", parts[1], "0", *(conv.get(p, p) for p in parts[2:])])


def sngan_d_names(name: str) -> str:
    for ours, ref in _SN.items():
        name = name.replace(ours, ref)
    parts = name.split(".")
    if parts[0] == "linear":
        return "linear1." + ".".join(parts[1:])
    if parts[0] == "embedding":
        return name
    conv = {"conv1": "conv2d1", "conv2": "conv2d2", "shortcut": "conv2d0"}
    return ".".join(["blocks", parts[1], "0", *(conv.get(p, p) for p in parts[2:])])


def mapped(table: Callable[[str], str], rec: dict[str, Any]) -> Callable[[nn.Module], Callable[[str], str]]:
    """A name map checked against the reference's state (every entry hit once, shapes equal)."""
    ref = {n: s for n, s in rec["state"]}

    def make(model: nn.Module) -> Callable[[str], str]:
        ours = rf.state_entries(model)
        targets = [table(n) for n, _ in ours]
        assert sorted(targets) == sorted(ref), sorted(set(targets) ^ set(ref))[:6]
        for (n, shape), t in zip(ours, targets, strict=True):
            assert ref[t] == shape, (n, t)
        return table

    return make


def sngan_inputs(rec: dict[str, Any], kind: str) -> tuple[Tensor, Tensor]:
    labels = torch.tensor(rec["labels"])
    return (rf.seeded_input(9, (2, 128)), labels) if kind == "G" else (rf.seeded_input(10, (2, 3, 32, 32)), labels)


def sngan_preset_kwargs(kind: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The knob values of the cifar10_sngan preset (t8's keys), as keyword arguments of our class."""
    from optrepro.config import compose_train as compose

    task = compose(["experiment=adabelief_sngan", *overrides]).task
    keys = ("g_bn_eps", "g_embedding_init") if kind == "G" else ("d_shortcut",)
    return {k: task[k] for k in keys}


def check_sngan_generator(overrides: tuple[str, ...] = ()) -> None:
    rec = fixture("sngan")["sngan_G"]
    kwargs = sngan_preset_kwargs("G", overrides)
    # same-seed init: both draw orthogonal weights module by module, but in a different module order
    # (ours: linear, then per block bn1, conv1, bn2, conv2, shortcut; StudioGAN's: conv2d0 first), so
    # only the recipe weights are compared
    forward_check(
        lambda: gan.SNGANGenerator(128, 64, 10, **kwargs),
        rec,
        sngan_inputs(rec, "G"),
        names=mapped(sngan_g_names, rec),
        seed_init=False,
    )


def check_sngan_discriminator(overrides: tuple[str, ...] = ()) -> None:
    rec = fixture("sngan")["sngan_D"]
    kwargs = sngan_preset_kwargs("D", overrides)
    forward_check(
        lambda: gan.SNGANDiscriminator(64, 10, **kwargs),
        rec,
        sngan_inputs(rec, "D"),
        names=mapped(sngan_d_names, rec),
        seed_init=False,
    )


def check_sngan_embedding_init(overrides: tuple[str, ...] = ()) -> None:
    """The recipe overwrites the init, so the embeddings' init is checked on its own: orthogonal
    10 x 256 tables have orthonormal rows (norm sqrt(10)) whatever the seed; float32 QR keeps that to
    ~n * 2^-24 relative, checked to 1e-4."""
    rec = fixture("sngan")["sngan_G"]
    torch.manual_seed(0)
    model = gan.SNGANGenerator(128, 64, 10, **sngan_preset_kwargs("G", overrides))
    ours = {sngan_g_names(n): p.norm().item() for n, p in model.named_parameters() if ".gain." in n or ".bias.w" in n}
    assert ours.keys() == rec["init_embedding_norms"].keys()
    for name, norm in rec["init_embedding_norms"].items():
        assert abs(ours[name] - norm) <= 1e-4 * norm, (name, ours[name], norm)


@pytest.mark.parametrize("check", ["generator", "discriminator", "embedding_init"])
def test_sngan_matches_reference(check: str) -> None:
    SNGAN_CHECKS[check]()


SNGAN_CHECKS: dict[str, Callable[..., None]] = {
    "generator": check_sngan_generator,
    "discriminator": check_sngan_discriminator,
    "embedding_init": check_sngan_embedding_init,
}
#: each knob switched to its corrected variant, and the check that must then fail
CORRECTED = {
    "task.d_shortcut=clean": "discriminator",
    "task.g_bn_eps=1e-5": "generator",
    "task.g_embedding_init=zeros": "embedding_init",
}


@pytest.mark.parametrize("override", sorted(CORRECTED))
def test_sngan_corrected_variant_does_not_match_reference(override: str) -> None:
    with pytest.raises(AssertionError):
        SNGAN_CHECKS[CORRECTED[override]]((override,))


def test_sngan_counts_match_reference() -> None:
    """Parameter and buffer counts do not depend on the knobs."""
    recs = fixture("sngan")
    check_summary(gan.SNGANGenerator(128, 64, 10), recs["sngan_G"])
    check_summary(gan.SNGANDiscriminator(64, 10), recs["sngan_D"])


# ------------------------------------------------------------------------------------------------
# AWD-LSTM (the AdaBelief repo's RNNModel + WeightDrop; EAdam's copy is byte-identical)
# ------------------------------------------------------------------------------------------------


def awd_names(name: str) -> str:
    name = name.replace(".lstm.", ".module.")
    return name.replace("weight_hh_l0", "weight_hh_l0_raw") if ".module." in name else name


def awd_model(task: str, ntoken: int, overrides: tuple[str, ...] = ()) -> AWDLSTM:
    from optrepro.config import compose_train as compose

    m = compose([f"task={task}", *overrides]).task.model
    extra = {"freeze_weight_hh": bool(m.freeze_weight_hh)} if "freeze_weight_hh" in m else {}
    return AWDLSTM(
        ntoken,
        emsize=int(m.emsize),
        nhid=int(m.nhid),
        nlayers=int(m.nlayers),
        dropout=float(m.dropout),
        dropouth=float(m.dropouth),
        dropouti=float(m.dropouti),
        dropoute=float(m.dropoute),
        wdrop=float(m.wdrop),
        tied=bool(m.tied),
        **extra,
    )


@pytest.mark.parametrize("task", ["ptb_lstm1", "ptb_lstm2", "ptb_lstm3"])
def test_awd_lstm_counts_and_forward_match_reference(task: str) -> None:
    rec = fixture("awd")[task]
    check_summary(awd_model(task, rec["ntoken"]), rec)
    small = rec["small"]
    model = awd_model(task, small["ntoken"]).double()
    rf.fill_recipe(model, mapped(awd_names, small)(model))
    words = torch.tensor(small["words"])
    for mode in ("eval", "train"):
        getattr(model, mode)()
        torch.manual_seed(1)  # same dropout masks: both draw embedding, locked and DropConnect masks in one order
        with torch.no_grad():
            *_, outputs = model(words, model.init_hidden(2))
        # the reference's forward returns the last layer's dropped output; its criterion applies the decoder
        close(outputs[-1].reshape(-1, outputs[-1].size(2)), small[mode], f"{task} {mode}")


@pytest.mark.parametrize("task", ["ptb_lstm1", "ptb_lstm3"])
def test_awd_lstm_trains_the_reference_weights(task: str) -> None:
    check_awd_grads(task)


def test_awd_lstm_corrected_variant_trains_other_weights() -> None:
    with pytest.raises(AssertionError):
        check_awd_grads("ptb_lstm3", ("task.model.freeze_weight_hh=false",))


def check_awd_grads(task: str, overrides: tuple[str, ...] = ()) -> None:
    """Which parameters get a gradient in a training step: the reference's raw hidden-to-hidden
    matrices get none (WeightDrop wraps the dropped copy in a new Parameter)."""
    small = fixture("awd")[task]["small"]
    model = awd_model(task, small["ntoken"], overrides).double()
    rf.fill_recipe(model, awd_names)
    model.train()
    words = torch.tensor(small["words"])
    torch.manual_seed(1)
    logits, *_ = model(words, model.init_hidden(2))
    nn.functional.cross_entropy(logits, words.roll(-1, 0).reshape(-1)).backward()
    got = {awd_names(n): p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}
    assert got == small["grad"]


# ------------------------------------------------------------------------------------------------
# Transformer (fairseq's transformer_iwslt_de_en of the AdaBelief fork)
# ------------------------------------------------------------------------------------------------


def fairseq_sources(name: str) -> list[str]:
    """The fairseq state entries our entry ``name`` is made of (our fused q/k/v = fairseq's q, k, v)."""
    parts = name.split(".")
    if parts[0] in ("src_embed", "tgt_embed"):
        # the tied target table is filled last under its output-projection name on the reference side
        return ["encoder.embed_tokens.weight" if parts[0] == "src_embed" else "decoder.output_projection.weight"]
    side, layer, rest = parts[0], parts[1], parts[2:]
    base = f"{side}.layers.{layer}."
    leaf = rest[-1]
    if rest[0] in ("attn", "self_attn", "cross_attn"):
        attn = "self_attn" if rest[0] in ("attn", "self_attn") else "encoder_attn"
        proj = {"qkv": ["q", "k", "v"], "kv": ["k", "v"], "q": ["q"], "out": ["out"]}[rest[1]]
        return [f"{base}{attn}.{p}_proj.{leaf}" for p in proj]
    if rest[0] == "ffn":
        return [f"{base}{rest[1]}.{leaf}"]
    norms = {
        "encoder": {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"},
        "decoder": {"norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"},
    }
    return [f"{base}{norms[side][rest[0]]}.{leaf}"]


def test_transformer_matches_reference() -> None:
    from omegaconf import OmegaConf

    from optrepro.config import compose_train
    from optrepro.models.transformer import Seq2SeqTransformer, TransformerConfig

    rec = fixture("transformer")["iwslt14_transformer"]
    model_cfg = OmegaConf.to_container(compose_train(["task=iwslt14_transformer"]).task.model, resolve=True)
    model = Seq2SeqTransformer(*rec["vocab"], rec["pad"], TransformerConfig(**model_cfg))  # type: ignore[arg-type]
    # fused q/k/v projections change the shapes, not the totals
    assert rf.parameter_summary(model)["parameters"] == rec["parameters"]
    ref_shapes = {n: s for n, s in rec["state"]}
    model.double().eval()
    state = model.state_dict()
    with torch.no_grad():
        used = []
        for name, value in state.items():
            if name == "positions":
                continue
            sources = fairseq_sources(name)
            used += sources
            parts = [rf.recipe_tensor(n, ref_shapes[n]) for n in sources]
            value.copy_(torch.cat(parts, dim=0))
        skip = ("_float_tensor", ".version", "decoder.embed_tokens.weight")  # not weights; the tied alias
        assert sorted(used) == sorted(n for n in ref_shapes if not n.endswith(skip))
        logits = model(torch.tensor(rec["src_tokens"]), torch.tensor(rec["prev_output_tokens"]))
    # fairseq's attention takes its softmax in float32 (utils.softmax: F.softmax(x, dtype=torch.float32)), so its
    # attention weights carry 2^-24 ~ 6e-8 relative rounding into every layer (12 attention blocks
    # plus 6 cross-attention); checked to 1e-6 of the output scale instead of FWD_RTOL
    close(logits, rec["eval"], "transformer eval, recipe weights", rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Faster R-CNN (EAdam Table 4): counts per component, from the mmdetection config's architecture
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    """The voc_fasterrcnn preset's detector; its ImageNet weights file is replaced by a fresh ResNet-50's
    state (counts do not depend on the values)."""
    import tempfile

    import torchvision

    from optrepro.config import compose_train
    from optrepro.models.detection import build_detector

    cfg = compose_train(["task=voc_fasterrcnn"]).task
    fresh = torchvision.models.resnet50().state_dict()
    with tempfile.NamedTemporaryFile(suffix=".pth") as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", lambda *args, **kwargs: fresh)
        model_cfg = cfg.model.copy()
        model_cfg.backbone_weights = f.name
        return build_detector(model_cfg, 20)


def count(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def test_faster_rcnn_counts_match_reference(detector: nn.Module) -> None:
    rec = fixture("detection")["voc_faster_rcnn"]
    m: Any = detector
    # the preset's BN (task.model.bn_affine_trainable, as mmdet) keeps weight/bias as parameters
    assert count(m.backbone.body) == rec["backbone_conv"] + rec["backbone_bn_affine"]
    assert count(m.backbone.fpn) == rec["fpn"]
    assert count(m.rpn) == rec["rpn"]
    assert count(m.roi_heads.box_head) == rec["box_head"]
    assert count(m.roi_heads.box_predictor.cls_score) == rec["box_cls"]
    # torchvision's predictor also regresses a box for the background class (4 outputs more); those rows
    # never get a gradient (the box loss reads the ground-truth class's box only)
    assert count(m.roi_heads.box_predictor.bbox_pred) == rec["box_reg"] + 4 * (rec["fc_out_channels"] + 1)


def test_faster_rcnn_trainable_backbone_matches_reference(detector: nn.Module) -> None:
    """mmdet trains the BN affine of layer2-4 (norm_cfg requires_grad=True; norm_eval only fixes the
    statistics): the preset's task.model.bn_affine_trainable=true; false (FrozenBatchNorm2d) would miss them."""
    rec = fixture("detection")["voc_faster_rcnn"]
    assert count(detector.backbone.body, trainable=True) == rec["backbone_trainable"]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------
# ImageNet ResNet-18 (torchvision's, as the reference script builds it)
# ------------------------------------------------------------------------------------------------


def test_imagenet_resnet18_matches_reference() -> None:
    rec = fixture("imagenet")["imagenet_resnet18"]
    forward_check(lambda: cifar.build_model("imagenet_resnet18", 1000), rec, (rf.seeded_input(11, (1, 3, 64, 64)),))


# ------------------------------------------------------------------------------------------------
# optimizers: first and third step at every paper preset
# ------------------------------------------------------------------------------------------------

OPTIM = fixture("optim")


def source_variant(cfg: Any) -> Any:
    """EAdam's CIFAR preset runs the compiled EAdam.cpython-37.pyc rule (``eps_outside``, issue 24),
    which current Python cannot execute; the fixture is from the source file next to it
    (cifar-classification/optimizations/EAdam.py, EAdam.py's rule), the variant without it.
    M-SVAG's presets run the curve-era code (``variant=adabelief_repo_2020``: bias correction with
    beta1); the fixture is from the repo's MSVAG.py at the fixtures' commit, the 2021-02-16 code
    (``adabelief_repo``). The 2020 rule is checked against its formula in tests/test_optim_parity.py."""
    if cfg.get("name") == "eadam" and cfg.get("eps_outside"):
        cfg = cfg.copy()
        cfg.eps_outside = False
    if cfg.get("name") == "msvag" and cfg.get("variant") == "adabelief_repo_2020":
        cfg = cfg.copy()
        cfg.variant = "adabelief_repo"
    return cfg


@pytest.fixture(scope="module")
def preset_cfgs() -> dict[str, Any]:
    """Every preset's optimizer config, composed in one Hydra session (composing is the slow part)."""
    from optrepro.config import train_composer

    with train_composer() as compose:
        return {key: compose(rec["overrides"]).optimizer for key, rec in OPTIM["presets"].items()}


@pytest.mark.parametrize("key", sorted(OPTIM["presets"]))
def test_optimizer_steps_match_reference(key: str, preset_cfgs: dict[str, Any]) -> None:
    rec = OPTIM["presets"][key]
    cfg = preset_cfgs[key]
    changed = {
        k: (cfg.get(k), v) for k, v in rec["kwargs"].items() if (list(cfg[k]) if k == "betas" else cfg.get(k)) != v
    }
    assert not changed, (
        f"{key}: the preset's values changed since the fixture was written {changed}; regenerate "
        "with scripts/reference_fixtures.py --ref DIR --only optim (README, Reference fixtures)"
    )
    steps = rf.run_optimizer(lambda params: build_optimizer(params, source_variant(preset_cfgs[key])))
    for step, label, got in ((1, "step1", steps[0]), (3, "step3", steps[2])):
        for i, (ours, ref) in enumerate(zip(got, rec[label], strict=True)):
            ref_t = torch.tensor(ref, dtype=torch.float64)
            atol = OPT_ATOL
            if rec["float32_internal"]:  # each step rounds p to float32: <= 2^-24 |p| per step, x2 margin
                atol = 2 * step * 2.0**-24 * ref_t.abs().max().item()
            torch.testing.assert_close(
                torch.tensor(ours, dtype=torch.float64),
                ref_t,
                rtol=OPT_RTOL,
                atol=atol,
                msg=lambda m, i=i, label=label: f"{key} {rec['class']} {label} tensor {i}: {m}",
            )


def test_optimizer_fixture_starts_where_the_problem_does() -> None:
    init, _ = rf.tiny_problem()
    assert OPTIM["initial"] == [t.reshape(-1).tolist() for t in init]


def test_eadam_cifar_preset_runs_the_compiled_rule(preset_cfgs: dict[str, Any]) -> None:
    """The CIFAR EAdam preset adds the compiled file's outer eps: its first step differs from
    the source file's (the fixture) by more than the float64 tolerance, by about eps / sqrt(v) relative."""
    key = "eadam_table2/cifar10_resnet18/eadam"
    cfg = preset_cfgs[key]
    assert cfg.eps_outside is True
    rec = OPTIM["presets"][key]
    ours = torch.tensor(
        rf.run_optimizer(lambda params: build_optimizer(params, cfg), steps=1)[0][0], dtype=torch.float64
    )
    ref = torch.tensor(rec["step1"][0], dtype=torch.float64)
    assert not torch.allclose(ours, ref, rtol=OPT_RTOL, atol=OPT_ATOL)


@pytest.mark.parametrize("key", sorted(OPTIM["adabelief_versions"]))
def test_adabelief_releases_match_reference(key: str) -> None:
    """Each adabelief-pytorch release's file at its own defaults, against ``AdaBelief(version=...)``."""
    from optrepro.optim import AdaBelief

    rec = OPTIM["adabelief_versions"][key]
    steps = rf.run_optimizer(lambda params: AdaBelief(params, version=rec["version"], **rec["kwargs"]))
    for label, got in (("step1", steps[0]), ("step3", steps[2])):
        for i, (ours, ref) in enumerate(zip(got, rec[label], strict=True)):
            torch.testing.assert_close(
                torch.tensor(ours, dtype=torch.float64),
                torch.tensor(ref, dtype=torch.float64),
                rtol=OPT_RTOL,
                atol=OPT_ATOL,
                msg=lambda m, i=i, label=label: f"{key} {label} {i}: {m}",
            )
