"""Write the reference code's own numbers into tests/fixtures/reference/ (JSON).

    python scripts/reference_fixtures.py --ref DIR [--commit NAME=SHA ...]

DIR holds checkouts of the reference repositories (see README, "Reference fixtures"):
``Adabelief-Optimizer``, ``EAdam-optimizer``, ``SNGAN-AdaBelief``, ``AdaBound``. Their model and
optimizer files are imported from DIR at run time (nothing is copied into this repository); the
only shims are for what current torch or a missing training-script context needs (named where
they are made). Everything runs on CPU in float64 so that the comparison in
tests/test_reference_fixtures.py can use tolerances from float64 error bounds.

The seeded-weight recipe (:func:`recipe_tensor`) and the tiny optimizer problem
(:func:`tiny_problem`) live here and are imported by the test, so both sides fill the same values.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import math
import subprocess
import sys
import types
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "reference"
REPOS = ("Adabelief-Optimizer", "EAdam-optimizer", "SNGAN-AdaBelief", "AdaBound", "fairseq-adabelief")

# ------------------------------------------------------------------------------------------------
# shared with the test: seeded weights, seeded inputs, the tiny optimizer problem
# ------------------------------------------------------------------------------------------------


def recipe_tensor(name: str, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """A float64 tensor for state-dict entry ``name`` (the reference's name), seeded by crc32(name).

    Scales keep activations O(1) through deep nets: matrices U(-1, 1) * sqrt(3 / fan_in), BatchNorm
    running variances in [0.5, 1.5], 1-D ``weight`` (norm scales) 1 +- 0.2, spectral-norm ``weight_u``
    / ``weight_v`` unit vectors, other 1-D entries +- 0.1.
    """
    shape = tuple(int(s) for s in shape)
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    u = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        return u * math.sqrt(3.0 / math.prod(shape[1:]))
    if leaf == "running_var":
        return 1 + 0.5 * u
    if leaf in ("weight_u", "weight_v"):
        return u / u.norm()
    if leaf == "weight":
        return 1 + 0.2 * u
    return 0.1 * u


def seeded_input(seed: int, shape: tuple[int, ...]) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tiny_problem() -> tuple[list[Tensor], Callable[[list[Tensor], int], Tensor]]:
    """Initial values of three float64 tensors and a loss(params, step) with step-dependent data.

    Gradients differ per coordinate in size and sign, so moment, eps and clipping terms all show."""
    gen = torch.Generator().manual_seed(20201)
    x = torch.randn(24, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(24, 3, generator=gen, dtype=torch.float64)
    init = [0.5 * torch.randn(s, generator=gen, dtype=torch.float64) for s in ((5, 3), (3,), (2, 2))]

    def loss(params: list[Tensor], step: int) -> Tensor:
        w, b, extra = params
        rows = torch.arange(8) + 8 * (step % 3)
        pred = torch.tanh(x[rows] @ w + b)
        return ((pred - y[rows]) ** 2).mean() + 0.1 * (extra**3).sum() + 1e-3 * (w**2).sum()

    return init, loss


def run_optimizer(make: Callable[[list[Tensor]], torch.optim.Optimizer], steps: int = 3) -> list[list[list[float]]]:
    """Parameters (flattened) after each of ``steps`` steps of the optimizer ``make(params)`` builds."""
    init, loss = tiny_problem()
    params = [nn.Parameter(t.clone()) for t in init]
    opt = make(params)
    out = []
    for step in range(steps):
        opt.zero_grad()
        loss(params, step).backward()
        opt.step()
        out.append([p.detach().reshape(-1).tolist() for p in params])
    return out


def state_entries(model: nn.Module) -> list[tuple[str, list[int]]]:
    """(name, shape) of every floating state-dict entry (``num_batches_tracked`` counters left out)."""
    return [(k, list(v.shape)) for k, v in model.state_dict().items() if v.is_floating_point()]


def parameter_summary(model: nn.Module) -> dict[str, Any]:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    return {
        "parameters": sum(p.numel() for p in params.values()),
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "parameter_tensors": len(params),
        "buffers": sum(b.numel() for b in buffers.values() if b.is_floating_point()),
        "parameter_shapes": sorted(list(p.shape) for p in params.values()),
        "buffer_shapes": sorted(list(b.shape) for b in buffers.values() if b.is_floating_point()),
    }


def fill_recipe(model: nn.Module, ref_name: Callable[[str], str] = lambda n: n) -> None:
    """Overwrite every floating state-dict entry with :func:`recipe_tensor` of its reference name."""
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if value.is_floating_point():
                value.copy_(recipe_tensor(ref_name(name), value.shape).to(value.dtype))


def align_spectral_norms(model: nn.Module) -> None:
    """Set every spectral norm's power-iteration vectors to the weight's exact top singular pair.

    ``torch.nn.utils.spectral_norm`` (the reference's) updates v then u in a training step, the
    parametrization (ours) u then v; from an exact singular pair both stay put to float64 rounding,
    so a train-mode forward gives the same sigma in both."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_orig") and hasattr(module, "weight_u"):  # old hook API
                weight, u, v = module.weight_orig, module.weight_u, module.weight_v
            elif hasattr(module, "parametrizations") and hasattr(module.parametrizations, "weight"):
                sn = module.parametrizations.weight[0]
                if not hasattr(sn, "_u"):
                    continue
                weight, u, v = module.parametrizations.weight.original, sn._u, sn._v
            else:
                continue
            mat = weight.reshape(weight.shape[0], -1)
            _, _, vh = torch.linalg.svd(mat, full_matrices=False)
            top_v = vh[0]
            top_u = mat @ top_v
            v.copy_(top_v)
            u.copy_(top_u / top_u.norm())


def stats(t: Tensor) -> dict[str, Any]:
    t = t.detach().double().reshape(-1)
    return (
        {"values": t.tolist()}
        if t.numel() <= 64
        else {
            "numel": t.numel(),
            "sum": t.sum().item(),
            "abs_sum": t.abs().sum().item(),
            "head": t[:16].tolist(),
            "max_abs": t.abs().max().item(),
        }
    )


# ------------------------------------------------------------------------------------------------
# loading reference code from DIR
# ------------------------------------------------------------------------------------------------


def load_module(path: Path, name: str, package_dir: Path | None = None) -> types.ModuleType:
    """Import ``path`` as module ``name``; with ``package_dir`` that folder is on sys.path meanwhile."""
    if package_dir is not None:
        sys.path.insert(0, str(package_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        with contextlib.redirect_stdout(io.StringIO()):  # banners
            spec.loader.exec_module(module)
        return module
    finally:
        if package_dir is not None:
            sys.path.remove(str(package_dir))


@contextlib.contextmanager
def fresh_modules(*prefixes: str) -> Iterator[None]:
    """Drop modules named ``prefixes`` (e.g. ``models``, ``utils``) from sys.modules around an import, so two
    repositories' same-named packages do not mix."""

    def drop() -> None:
        for key in [k for k in sys.modules if any(k == p or k.startswith(p + ".") for p in prefixes)]:
            del sys.modules[key]

    drop()
    try:
        yield
    finally:
        drop()


def exec_definitions(path: Path, names: tuple[str, ...], env: dict[str, Any]) -> dict[str, Any]:
    """The top-level functions/classes ``names`` of a training script, without running the script
    (its argparse, data loading and .cuda() calls): the definitions are executed in ``env``."""
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {n.name for n in keep}
    if missing:
        raise SystemExit(f"{path}: no top-level {sorted(missing)}")
    namespace = dict(env)
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


def commit_of(ref: Path, name: str, given: dict[str, str]) -> str:
    if name in given:
        return given[name]
    try:
        return subprocess.run(
            ["git", "-C", str(ref / name), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise SystemExit(f"{ref / name} is not a git checkout: pass --commit {name}=SHA") from None


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------


def model_record(
    build: Callable[[], nn.Module],
    inputs: tuple[Any, ...],
    source: dict[str, str],
    seed: int = 0,
    train_seed: int = 1,
    summary_only: bool = False,
) -> dict[str, Any]:
    """Counts and shapes; outputs in eval and train mode with torch.manual_seed(seed) init ("seed")
    and with the recipe weights ("recipe"), both in float64."""
    torch.manual_seed(seed)
    model = build()
    record: dict[str, Any] = {
        "source": source,
        "init_seed": seed,
        "train_seed": train_seed,
        **parameter_summary(model),
        "state": state_entries(model),
    }
    if summary_only:
        return record
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    model.double()
    record["seed"] = forward_modes(model, inputs, train_seed)
    model.load_state_dict(snapshot)
    model.double()
    fill_recipe(model)
    align_spectral_norms(model)
    record["recipe"] = forward_modes(model, inputs, train_seed)
    return record


def forward_modes(model: nn.Module, inputs: tuple[Any, ...], train_seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.eval()
        out["eval"] = stats(first(model(*inputs)))
        model.train()
        torch.manual_seed(train_seed)
        out["train"] = stats(first(model(*inputs)))
    model.load_state_dict(state)  # train mode moved BatchNorm statistics
    return out


def first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def cifar_models(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    records: dict[str, Any] = {}
    x = (seeded_input(5, (2, 3, 32, 32)),)
    for repo, folder, tag in (
        ("Adabelief-Optimizer", "PyTorch_Experiments/classification_cifar10/models", "adabelief"),
        ("EAdam-optimizer", "cifar-classification/models", "eadam"),
    ):
        base = ref / repo / folder
        for file, fn, ours in (
            ("vgg.py", "vgg11", "vgg11"),
            ("resnet.py", "ResNet34", "resnet34"),
            ("resnet.py", "ResNet18", "resnet18"),
            ("densenet.py", "DenseNet121", "densenet121"),
        ):
            if tag == "adabelief" and ours == "resnet18":
                continue  # the AdaBelief repo's CIFAR script builds ResNet-34, VGG-11, DenseNet-121
            if tag == "eadam" and ours == "resnet34":
                continue  # EAdam Table 2: VGG-11, ResNet-18, DenseNet-121
            module = load_module(base / file, f"_ref_{tag}_{file[:-3]}")
            src = {"repo": f"{repo_full(repo)}@{commits[repo]}", "file": f"{folder}/{file}", "builder": fn}
            print(f"  {tag} {ours}", flush=True)
            records[f"{tag}_{ours}"] = model_record(getattr(module, fn), x, src)
    return records


def repo_full(name: str) -> str:
    return {
        "Adabelief-Optimizer": "juntang-zhuang/Adabelief-Optimizer",
        "EAdam-optimizer": "yuanwei2019/EAdam-optimizer",
        "SNGAN-AdaBelief": "juntang-zhuang/SNGAN-AdaBelief",
        "AdaBound": "Luolc/AdaBound",
        "fairseq-adabelief": "juntang-zhuang/fairseq-adabelief",
    }[name]


AWD_SIZES = {"ptb_lstm1": 1, "ptb_lstm2": 2, "ptb_lstm3": 3}


def awd_lstm(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    """The AdaBelief repo's RNNModel (EAdam's PTB runs use a byte-identical copy): counts at the PTB
    vocabulary, forwards on a small vocabulary, and which parameters receive a gradient in training."""
    folder = ref / "Adabelief-Optimizer" / "PyTorch_Experiments" / "LSTM"
    with fresh_modules("model", "weight_drop", "embed_regularize", "locked_dropout"):
        module = load_module(folder / "model.py", "_ref_awd_model", package_dir=folder)
    src = {
        "repo": f"{repo_full('Adabelief-Optimizer')}@{commits['Adabelief-Optimizer']}",
        "file": "PyTorch_Experiments/LSTM/model.py (+ weight_drop.py, embed_regularize.py, locked_dropout.py)",
    }
    records: dict[str, Any] = {}
    for task, nlayers in AWD_SIZES.items():

        def build(ntoken: int, nlayers: int = nlayers) -> nn.Module:
            with contextlib.redirect_stdout(io.StringIO()):
                return module.RNNModel(
                    "LSTM",
                    ntoken,
                    400,
                    1150,
                    nlayers,
                    dropout=0.4,
                    dropouth=0.25,
                    dropouti=0.4,
                    dropoute=0.1,
                    wdrop=0.5,
                    tie_weights=True,
                )

        print(f"  awd {task}", flush=True)
        rec = model_record(lambda: build(10000), (), src, summary_only=True)
        rec["ntoken"] = 10000
        # forwards and gradients on a 50-word vocabulary, sequence 5, batch 2
        torch.manual_seed(0)
        model = build(50).double()
        fill_recipe(model)
        words = torch.randint(0, 50, (5, 2), generator=torch.Generator().manual_seed(3))
        # the reference's forward stops before the decoder (SplitCrossEntropyLoss applies it), so the
        # output recorded is the last layer's dropped output; the training loss applies the tied decoder
        # as the criterion does. "grad" is over the parameters as built (what main.py hands the optimizer).
        small: dict[str, Any] = {"ntoken": 50, "words": words.tolist(), "state": state_entries(model)}
        built = list(model.named_parameters())
        for mode in ("eval", "train"):
            getattr(model, mode)()
            torch.manual_seed(1)
            model.zero_grad()
            out, _hidden = model(words, model.init_hidden(2))
            small[mode] = stats(out)
            if mode == "train":
                logits = model.decoder(out)
                nn.functional.cross_entropy(logits, words.roll(-1, 0).reshape(-1)).backward()
        small["grad"] = {name: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for name, p in built}
        rec["small"] = small
        records[task] = rec
    return records


def dcgan(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    records: dict[str, Any] = {}
    for script, tag in (("wgan", "wgan"), ("wgan-gp", "wgangp")):
        path = ref / "Adabelief-Optimizer" / "PyTorch_Experiments" / script / "main.py"
        # the script's globals its classes read (its argparse defaults: nz 100, ngf = ndf = 64, 3 channels)
        env = {"nn": nn, "torch": torch, "nz": 100, "ngf": 64, "ndf": 64, "nc": 3, "ngpu": 1}
        ns = exec_definitions(path, ("weights_init", "Generator", "Discriminator"), env)
        src = {
            "repo": f"{repo_full('Adabelief-Optimizer')}@{commits['Adabelief-Optimizer']}",
            "file": f"PyTorch_Experiments/{script}/main.py",
            "builder": "Generator(1) / Discriminator(1) + weights_init",
        }

        def build(cls: type, ns: dict[str, Any] = ns) -> nn.Module:
            net = cls(1)
            net.apply(ns["weights_init"])
            return net

        print(f"  {tag}", flush=True)
        records[f"{tag}_G"] = model_record(
            lambda ns=ns: build(ns["Generator"]), (seeded_input(7, (2, 100, 1, 1)),), src
        )
        records[f"{tag}_D"] = model_record(
            lambda ns=ns: build(ns["Discriminator"]), (seeded_input(8, (2, 3, 64, 64)),), src
        )
    return records


def sngan(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    """StudioGAN's ResNet G/D at 32x32 as configs/CIFAR10/SNGAN-adabelief.json builds them (ProjGAN,
    spectral norm in D only, orthogonal init, g/d_conv_dim 64... read from the json)."""
    root = ref / "SNGAN-AdaBelief"
    cfg = json.loads((root / "configs" / "CIFAR10" / "SNGAN-adabelief.json").read_text())
    flat: dict[str, Any] = {}

    def flatten(node: dict[str, Any]) -> None:
        for key, value in node.items():
            flatten(value) if isinstance(value, dict) else flat.__setitem__(key, value)

    flatten(cfg)
    # utils.misc pulls the FID/sampling stack (scipy, tqdm, matplotlib, inception); the model files use
    # only its dummy_context_mgr, so that one name is provided (shim)
    misc = types.ModuleType("utils.misc")

    class dummy_context_mgr:  # noqa: N801 - the reference's name
        def __enter__(self) -> None:
            return None

        def __exit__(self, *args: Any) -> bool:
            return False

    misc.dummy_context_mgr = dummy_context_mgr  # type: ignore[attr-defined]
    with fresh_modules("utils", "models"):
        sys.path.insert(0, str(root))
        try:
            import utils  # noqa: F401 - the reference's package

            sys.modules["utils.misc"] = misc
            module = load_module(root / "models" / "resnet.py", "_ref_sngan_resnet", package_dir=root)
        finally:
            sys.path.remove(str(root))
    num_classes = 10
    g_kwargs = dict(
        z_dim=flat["z_dim"],
        shared_dim=flat.get("shared_dim", 128),
        img_size=flat.get("img_size", 32),
        g_conv_dim=flat["g_conv_dim"],
        g_spectral_norm=flat["g_spectral_norm"],
        attention=flat["attention"],
        attention_after_nth_gen_block=flat["attention_after_nth_gen_block"],
        activation_fn=flat["activation_fn"],
        conditional_strategy=flat["conditional_strategy"],
        num_classes=num_classes,
        initialize=flat["g_init"],
        G_depth=flat.get("G_depth", "N/A"),
        mixed_precision=False,
    )
    d_kwargs = dict(
        img_size=flat.get("img_size", 32),
        d_conv_dim=flat["d_conv_dim"],
        d_spectral_norm=flat["d_spectral_norm"],
        attention=flat["attention"],
        attention_after_nth_dis_block=flat["attention_after_nth_dis_block"],
        activation_fn=flat["activation_fn"],
        conditional_strategy=flat["conditional_strategy"],
        hypersphere_dim=flat.get("hypersphere_dim", 512),
        num_classes=num_classes,
        nonlinear_embed=flat.get("nonlinear_embed", False),
        normalize_embed=flat.get("normalize_embed", False),
        initialize=flat["d_init"],
        D_depth=flat.get("D_depth", "N/A"),
        mixed_precision=False,
    )
    src = {
        "repo": f"{repo_full('SNGAN-AdaBelief')}@{commits['SNGAN-AdaBelief']}",
        "file": "models/resnet.py (+ utils/model_ops.py), configs/CIFAR10/SNGAN-adabelief.json",
    }
    labels = torch.tensor([3, 7])
    print("  sngan", flush=True)
    g = model_record(lambda: module.Generator(**g_kwargs), (seeded_input(9, (2, g_kwargs["z_dim"])), labels), src)
    d = model_record(lambda: module.Discriminator(**d_kwargs), (seeded_input(10, (2, 3, 32, 32)), labels), src)
    # the conditional-BN embeddings' init, seed-free: the Frobenius norm of each table as built
    # (orthogonal init of a 10 x 256 table: orthonormal rows, norm sqrt(10))
    torch.manual_seed(0)
    built = module.Generator(**g_kwargs)
    g["init_embedding_norms"] = {n: p.norm().item() for n, p in built.named_parameters() if ".embed" in n}
    g["kwargs"], d["kwargs"] = g_kwargs, d_kwargs
    g["labels"] = d["labels"] = labels.tolist()
    return {"sngan_G": g, "sngan_D": d}


def imagenet(commits: dict[str, str]) -> dict[str, Any]:
    """The AdaBelief ImageNet script builds ``torchvision.models.__dict__['resnet18']()``: the reference
    is torchvision itself, recorded with its version."""
    import torchvision

    src = {
        "repo": f"{repo_full('Adabelief-Optimizer')}@{commits['Adabelief-Optimizer']}",
        "file": "PyTorch_Experiments/imagenet/main_when.py (models.__dict__[arch]())",
        "torchvision": torchvision.__version__,
    }
    print("  imagenet resnet18", flush=True)
    return {
        "imagenet_resnet18": model_record(
            lambda: torchvision.models.__dict__["resnet18"](), (seeded_input(11, (1, 3, 64, 64)),), src
        )
    }


def import_fairseq(root: Path) -> types.ModuleType:
    """fairseq of the AdaBelief fork (2020) on current Python/NumPy, with three runtime shims: its config
    dataclasses use dataclass instances as field defaults (refused since Python 3.11 unless hashable),
    it imports ``collections.Collection`` (moved to collections.abc) and uses ``np.float``/``np.int``."""
    import collections
    import collections.abc
    import dataclasses

    import numpy as np

    original = dataclasses.dataclass

    def hashable_dataclass(cls: Any = None, /, **kwargs: Any) -> Any:
        def wrap(c: type) -> type:
            out = original(c, **kwargs)
            if out.__hash__ is None:
                out.__hash__ = object.__hash__  # type: ignore[assignment]
            return out

        return wrap if cls is None else wrap(cls)

    collections.Collection = collections.abc.Collection  # type: ignore[attr-defined]
    for alias, value in (("float", float), ("int", int), ("bool", bool)):
        if not hasattr(np, alias):
            setattr(np, alias, value)
    dataclasses.dataclass = hashable_dataclass  # type: ignore[assignment]
    sys.path.insert(0, str(root))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import fairseq.models.transformer as transformer_module
    finally:
        dataclasses.dataclass = original
        sys.path.remove(str(root))
    return transformer_module


TRANSFORMER_VOCAB = (50, 40)  # source and target dictionary sizes, fairseq's 4 special symbols included


def transformer(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    """fairseq's ``transformer_iwslt_de_en`` with ``--share-decoder-input-output-embed`` (the fork's
    run_adabelief.sh / run_adam.sh), on small dictionaries: counts, and an eval forward with the recipe
    weights (train mode draws its dropout masks in an order of its own, so it is not recorded)."""
    import argparse

    module = import_fairseq(ref / "fairseq-adabelief")
    from fairseq.data import Dictionary

    def dictionary(size: int) -> Any:
        d = Dictionary()
        for i in range(size - len(d)):
            d.add_symbol(f"w{i}")
        return d

    args = argparse.Namespace(
        share_decoder_input_output_embed=True,
        share_all_embeddings=False,
        max_source_positions=1024,
        max_target_positions=1024,
    )
    module.transformer_iwslt_de_en(args)
    task = types.SimpleNamespace(
        source_dictionary=dictionary(TRANSFORMER_VOCAB[0]), target_dictionary=dictionary(TRANSFORMER_VOCAB[1])
    )
    print("  transformer", flush=True)
    torch.manual_seed(0)
    model = module.TransformerModel.build_model(args, task)
    src = {
        "repo": f"{repo_full('fairseq-adabelief')}@{commits['fairseq-adabelief']}",
        "file": "fairseq/models/transformer.py (transformer_iwslt_de_en), run_adabelief.sh",
    }
    record: dict[str, Any] = {
        "source": src,
        "vocab": list(TRANSFORMER_VOCAB),
        "pad": task.source_dictionary.pad(),
        **parameter_summary(model),
        "state": state_entries(model),
    }
    gen = torch.Generator().manual_seed(12)
    src_tokens = torch.randint(4, TRANSFORMER_VOCAB[0], (2, 7), generator=gen)
    prev = torch.randint(4, TRANSFORMER_VOCAB[1], (2, 6), generator=gen)
    prev[:, 0] = task.target_dictionary.eos()
    model.double()
    fill_recipe(model)
    model.eval()
    with torch.no_grad():
        logits, _extra = model(src_tokens, torch.full((2,), 7), prev)
    record.update(src_tokens=src_tokens.tolist(), prev_output_tokens=prev.tolist(), eval=stats(logits))
    return {"iwslt14_transformer": record}


def faster_rcnn(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    """Parameter counts of EAdam's detector, from its mmdetection config (mmdetection needs mmcv's
    compiled ops, not available here, so the counts are derived from the config's architecture, per
    component). The ResNet-50 body is counted on torchvision's resnet50 without its classifier, the
    same bottleneck layout as mmdet's ResNet(depth=50, style='pytorch'); its BatchNorm affine
    parameters are parameters there (norm_cfg requires_grad=True, norm_eval only fixes the statistics)."""
    import torchvision

    configs = ref / "EAdam-optimizer" / "mmdetection-master" / "configs"
    base: dict[str, Any] = {}
    exec((configs / "_base_" / "models" / "faster_rcnn_r50_fpn.py").read_text(), {"dict": dict}, base)  # noqa: S102
    voc: dict[str, Any] = {}
    voc_file = configs / "pascal_voc" / "faster_rcnn_r50_fpn_1x_voc0712.py"
    exec(voc_file.read_text(), {"dict": dict}, voc)  # noqa: S102
    model = base["model"]
    num_classes = voc["model"]["roi_head"]["bbox_head"]["num_classes"]
    neck, rpn, head = model["neck"], model["rpn_head"], model["roi_head"]["bbox_head"]
    out = neck["out_channels"]
    body = torchvision.models.resnet50()
    body_params = {n: p.numel() for n, p in body.named_parameters() if not n.startswith("fc.")}
    frozen = model["backbone"]["frozen_stages"]
    frozen_prefixes = ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, frozen + 1))
    is_bn = {n: ".bn" in n or n.startswith("bn1.") or ".downsample.1." in n for n in body_params}
    anchors = len(rpn["anchor_generator"]["scales"]) * len(rpn["anchor_generator"]["ratios"])
    cls_out = 1 if rpn["loss_cls"]["use_sigmoid"] else 2
    fc, roi = head["fc_out_channels"], head["roi_feat_size"]
    reg_out = 4 if head["reg_class_agnostic"] else 4 * num_classes
    counts = {
        "backbone_conv": sum(v for n, v in body_params.items() if not is_bn[n]),
        "backbone_bn_affine": sum(v for n, v in body_params.items() if is_bn[n]),
        "backbone_trainable": sum(v for n, v in body_params.items() if not n.startswith(frozen_prefixes)),
        "fpn": sum(c * out + out + out * out * 9 + out for c in neck["in_channels"]),
        "rpn": (rpn["in_channels"] * rpn["feat_channels"] * 9 + rpn["feat_channels"])
        + (rpn["feat_channels"] * anchors * cls_out + anchors * cls_out)
        + (rpn["feat_channels"] * anchors * 4 + anchors * 4),
        "box_head": (head["in_channels"] * roi * roi * fc + fc) + (fc * fc + fc),
        "box_cls": fc * (num_classes + 1) + num_classes + 1,
        "box_reg": fc * reg_out + reg_out,
    }
    src = {
        "repo": f"{repo_full('EAdam-optimizer')}@{commits['EAdam-optimizer']}",
        "file": "mmdetection-master/configs/pascal_voc/faster_rcnn_r50_fpn_1x_voc0712.py "
        "(+ _base_/models/faster_rcnn_r50_fpn.py)",
        "derived": "from the config's architecture (mmdetection not run)",
    }
    print("  faster_rcnn", flush=True)
    return {"voc_faster_rcnn": {"source": src, "num_classes": num_classes, "fc_out_channels": fc, **counts}}


# ------------------------------------------------------------------------------------------------
# optimizers
# ------------------------------------------------------------------------------------------------

#: (experiment preset, task, optimizers of its sweep); the PTB runs of the AdaBelief paper have no
#: experiment file here, so the tasks' recipes are used directly ("-" as experiment)
PRESETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "adabelief_cifar",
        "cifar10_resnet34",
        ("sgd", "adam", "adamw", "adabelief", "yogi", "adabound", "radam", "msvag", "fromage"),
    ),
    (
        "adabelief_gan",
        "cifar10_wgan",
        ("sgd", "adam", "adamw", "adabelief", "yogi", "msvag", "radam", "fromage", "adabound", "rmsprop"),
    ),
    (
        "adabelief_sngan",
        "cifar10_sngan",
        ("adabelief", "radam", "rmsprop", "adam", "fromage", "yogi", "sgd", "msvag", "adabound"),
    ),
    ("adabelief_imagenet", "imagenet_resnet18", ("adabelief", "sgd")),
    ("adabelief_transformer", "iwslt14_transformer", ("adamw", "radam", "adabelief", "eadam")),
    ("-", "ptb_lstm1", ("sgd", "adam", "adamw", "adabelief", "yogi", "adabound", "radam", "msvag", "fromage")),
    ("-", "ptb_lstm3", ("sgd", "adam", "adamw", "adabelief", "yogi", "adabound", "radam", "msvag", "fromage")),
    ("eadam_table2", "cifar10_resnet18", ("adam", "radam", "adabelief", "eadam")),
    ("eadam_table3", "ptb_lstm2", ("adam", "radam", "adabelief", "eadam")),
    ("eadam_table4", "voc_fasterrcnn", ("adam", "radam", "adabelief", "eadam")),
)

NOT_ARGS = ("name", "config_name", "foreach", "fused", "version")


def preset_overrides(experiment: str, task: str, optimizer: str) -> list[str]:
    head = [] if experiment == "-" else [f"experiment={experiment}"]
    return [*head, f"task={task}", f"optimizer={optimizer}"]


def preset_optimizer_cfg(experiment: str, task: str, optimizer: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from optrepro.config import compose_train

    cfg = compose_train(preset_overrides(experiment, task, optimizer))
    return OmegaConf.to_container(cfg.optimizer, resolve=True)  # type: ignore[return-value]


class RefOptimizers:
    """The reference optimizer classes, by project optimizer name (and AdaBelief release)."""

    def __init__(self, ref: Path, commits: dict[str, str]) -> None:
        ab = ref / "Adabelief-Optimizer"
        opt_dir = ab / "PyTorch_Experiments" / "classification_cifar10" / "optimizers"
        self.commits = commits

        def src(repo: str, file: str) -> dict[str, str]:
            return {"repo": f"{repo_full(repo)}@{commits[repo]}", "file": file}

        self.classes: dict[str, tuple[type, dict[str, str]]] = {}
        # the folder's modules import each other relatively (``from .Types import ...``); it is loaded as
        # a bare package without running its __init__ (which imports the installed adabelief_pytorch)
        package = types.ModuleType("_ref_ab_optimizers")
        package.__path__ = [str(opt_dir)]  # type: ignore[attr-defined]
        sys.modules["_ref_ab_optimizers"] = package
        for name, file in (
            ("yogi", "Yogi.py"),
            ("msvag", "MSVAG.py"),
            ("fromage", "Fromage.py"),
            ("radam", "RAdam.py"),
            ("adamw", "AdamW.py"),
        ):
            module = load_module(opt_dir / file, f"_ref_ab_optimizers.{file[:-3]}")
            cls = getattr(
                module,
                {"yogi": "Yogi", "msvag": "MSVAG", "fromage": "Fromage", "radam": "RAdam", "adamw": "AdamW"}[name],
            )
            self.classes[name] = (
                cls,
                src("Adabelief-Optimizer", f"PyTorch_Experiments/classification_cifar10/optimizers/{file}"),
            )
        for version in ("0.0.5", "0.1.0", "0.2.0", "0.2.1"):
            path = ab / "pypi_packages" / f"adabelief_pytorch{version}" / "adabelief_pytorch" / "AdaBelief.py"
            module = load_module(path, f"_ref_adabelief_{version.replace('.', '_')}")
            self.classes[f"adabelief@{version}"] = (
                module.AdaBelief,
                src("Adabelief-Optimizer", f"pypi_packages/adabelief_pytorch{version}/adabelief_pytorch/AdaBelief.py"),
            )
        eadam = load_module(ref / "EAdam-optimizer" / "EAdam.py", "_ref_eadam")
        self.classes["eadam"] = (eadam.EAdam, src("EAdam-optimizer", "EAdam.py"))
        # EAdam's tables ran the copies next to each experiment's script (cifar-classification/main.py,
        # the nlp notebook's folder, mmdetection's tools/ imported by mmdet/apis/train.py)
        for table, folder in (
            ("eadam_table2", "cifar-classification/optimizations"),
            ("eadam_table3", "nlp"),
            ("eadam_table4", "mmdetection-master/tools"),
        ):
            for cls_name in ("EAdam", "RAdam", "AdaBelief"):
                path = ref / "EAdam-optimizer" / folder / f"{cls_name}.py"
                module = load_module(path, f"_ref_{table}_{cls_name}")
                if cls_name == "EAdam" and not hasattr(module, "NAdam"):
                    # cifar-classification/optimizations/EAdam.py calls super(NAdam, self), a name it
                    # never defines (the CIFAR runs used the compiled .pyc, issue 24): the name is supplied
                    module.NAdam = module.EAdam  # type: ignore[attr-defined]
                self.classes[f"{cls_name.lower()}@{table}"] = (
                    getattr(module, cls_name),
                    src("EAdam-optimizer", f"{folder}/{cls_name}.py"),
                )
        adabound = load_module(ref / "AdaBound" / "adabound" / "adabound.py", "_ref_adabound")
        self.classes["adabound"] = (adabound.AdaBound, src("AdaBound", "adabound/adabound.py"))
        torch_src = {"repo": f"pytorch/pytorch (torch {torch.__version__})", "file": "torch/optim"}
        for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop)):
            self.classes[name] = (cls, torch_src)

    def lookup(self, experiment: str, cfg: dict[str, Any]) -> tuple[type, dict[str, str]]:
        name = cfg["name"]
        if f"{name}@{experiment}" in self.classes:
            return self.classes[f"{name}@{experiment}"]
        if name == "adabelief":
            return self.classes[f"adabelief@{cfg['version']}"]
        return self.classes[name]


def optimizer_records(ref: Path, commits: dict[str, str]) -> dict[str, Any]:
    import inspect

    refs = RefOptimizers(ref, commits)
    init, _loss = tiny_problem()
    records: dict[str, Any] = {"initial": [t.reshape(-1).tolist() for t in init], "presets": {}}
    for experiment, task, names in PRESETS:
        for name in names:
            cfg = preset_optimizer_cfg(experiment, task, name)
            cls, src = refs.lookup(experiment, cfg)
            accepted = inspect.signature(cls.__init__).parameters
            kwargs = {k: v for k, v in cfg.items() if k not in NOT_ARGS and not k.startswith("_") and k in accepted}
            if "betas" in kwargs:
                kwargs["betas"] = tuple(kwargs["betas"])
            not_passed = {
                k: v for k, v in cfg.items() if k not in NOT_ARGS and not k.startswith("_") and k not in accepted
            }
            with contextlib.redirect_stdout(io.StringIO()):
                steps = run_optimizer(lambda params, cls=cls, kwargs=kwargs: cls(params, **kwargs))
            key = f"{experiment}/{task}/{name}"
            # a reference that steps a float32 copy of each parameter (``p.data.float()``, RAdam) rounds
            # the float64 problem to float32 every step; the test widens its tolerance for exactly those
            source_text = inspect.getsource(cls)
            records["presets"][key] = {
                "source": src,
                "class": cls.__name__,
                "kwargs": kwargs,
                "float32_internal": "p.data.float()" in source_text,
                "not_passed": not_passed,
                "overrides": preset_overrides(experiment, task, name),
                "step1": steps[0],
                "step3": steps[2],
            }
            print(f"  {key}: {cls.__name__} {kwargs} not passed {not_passed}", flush=True)
    # every adabelief-pytorch release at its own defaults (the presets above all pin 0.2.0's core), with
    # and without amsgrad, coupled-or-decoupled weight decay as each release defaults to
    records["adabelief_versions"] = {}
    for version in ("0.0.5", "0.1.0", "0.2.0", "0.2.1"):
        cls, src = refs.classes[f"adabelief@{version}"]
        for amsgrad in (False, True):
            kwargs = {"lr": 1e-2, "weight_decay": 1e-2, "amsgrad": amsgrad}
            with contextlib.redirect_stdout(io.StringIO()):
                steps = run_optimizer(lambda params, cls=cls, kwargs=kwargs: cls(params, **kwargs))
            records["adabelief_versions"][f"{version}/amsgrad={amsgrad}"] = {
                "source": src,
                "version": version,
                "kwargs": kwargs,
                "step1": steps[0],
                "step3": steps[2],
            }
    return records


# ------------------------------------------------------------------------------------------------


def write(name: str, payload: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="folder with the reference checkouts")
    parser.add_argument("--commit", action="append", default=[], help="NAME=SHA for a checkout without .git")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="cifar awd dcgan sngan imagenet transformer detection optim (default: all)",
    )
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.commit)
    commits = {name: commit_of(args.ref, name, given) for name in REPOS}
    meta = {"torch": torch.__version__, "dtype": "float64", "commits": commits}
    torch.set_num_threads(1)
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "cifar": lambda: cifar_models(args.ref, commits),
        "awd": lambda: awd_lstm(args.ref, commits),
        "dcgan": lambda: dcgan(args.ref, commits),
        "sngan": lambda: sngan(args.ref, commits),
        "imagenet": lambda: imagenet(commits),
        "transformer": lambda: transformer(args.ref, commits),
        "detection": lambda: faster_rcnn(args.ref, commits),
        "optim": lambda: optimizer_records(args.ref, commits),
    }
    for name, job in jobs.items():
        if args.only is None or name in args.only:
            print(name, flush=True)
            write(name, {"meta": meta, "records": job()})


if __name__ == "__main__":
    main()
