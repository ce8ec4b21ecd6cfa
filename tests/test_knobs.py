"""Issue 24's knobs: each one changes what it should, and each paper preset sets what the reference ran.

The reference behaviours (AWD-LSTM hidden weights that never train, the SN-GAN critic's aliased
shortcut, the generator's BN eps and embedding init, EAdam's 100-way heads and compiled optimizer,
EAdam Table 3's README learning rate) are stated in configs/ headers and docs/recipes.yaml.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import compose
from optrepro.config import compose_train, resolve_interpolations
from optrepro.data.cifar import write_fake_cifar
from optrepro.errors import UserError
from optrepro.models.awd_lstm import AWDLSTM
from optrepro.models.gan import ConditionalBatchNorm2d, SNGANDiscriminator, SNGANGenerator, _DiscBlock
from optrepro.optim import EAdam
from optrepro.tasks import RunContext, build_task
from optrepro.tasks.base import seed_everything


# ---------------------------------------------------------------------------- AWD-LSTM frozen hh
def _lstm(freeze: bool) -> AWDLSTM:
    torch.manual_seed(0)
    # every dropout but DropConnect off, so the masks on weight_hh are the only randomness
    return AWDLSTM(30, emsize=8, nhid=12, nlayers=2, dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0,
                   wdrop=0.5, freeze_weight_hh=freeze)


def _loss(model: AWDLSTM, seed: int) -> torch.Tensor:
    words = torch.randint(0, 30, (6, 3), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(seed)
    logits, *_ = model(words, model.init_hidden(3))
    return F.cross_entropy(logits, words.reshape(-1))


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_weight_hh_decides_whether_the_hidden_weights_train(freeze: bool) -> None:
    model = _lstm(freeze).train()
    hh = {n: p.detach().clone() for n, p in model.named_parameters() if "weight_hh" in n}
    assert len(hh) == 2
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        _loss(model, seed=step).backward()
        for name, p in model.named_parameters():
            if "weight_hh" in name:
                assert (p.grad is None) == freeze, name
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, name  # everything else trains
        opt.step()
    for name, p in model.named_parameters():
        if name in hh:
            assert torch.equal(p, hh[name]) == freeze, name  # frozen: bitwise at its initialisation


def test_frozen_hidden_weights_still_get_dropconnect_masks() -> None:
    frozen, trained = _lstm(True).train(), _lstm(False).train()
    # the same weights and masks: the forward pass is the same function, only the gradient differs
    assert torch.equal(_loss(frozen, seed=1), _loss(trained, seed=1))
    assert not torch.equal(_loss(frozen, seed=1), _loss(frozen, seed=2))  # masks drawn per forward
    eval_loss = _loss(frozen.eval(), seed=1)
    assert not torch.equal(eval_loss, _loss(frozen.train(), seed=1))  # train applies them, eval does not


def test_language_model_task_leaves_frozen_weights_out_of_the_optimizer(tmp_path: Path) -> None:
    from optrepro.data.ptb import write_fake_ptb

    root = tmp_path / "ptb"
    write_fake_ptb(root, lines={"train": 300, "valid": 40, "test": 40}, vocab_size=40, seed=0)
    for freeze in (True, False):
        cfg, _ = compose(["task=ptb_lstm2", "optimizer=adam", "profile=smoke", f"task.data.root={root}",
                          "task.data.train_tokens=null", "task.data.eval_tokens=null",
                          f"task.model.freeze_weight_hh={str(freeze).lower()}"])
        cfg = resolve_interpolations(cfg)
        seed_everything(0)
        task = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0))
        hh = [p for n, p in task.model.named_parameters() if "weight_hh" in n]
        before = [p.detach().clone() for p in hh]
        in_opt = {id(p) for g in task.optimizer.param_groups for p in g["params"]}
        assert all((id(p) in in_opt) != freeze for p in hh)
        task.train_step()
        assert all(torch.equal(p, b) == freeze for p, b in zip(hh, before, strict=True))


# ---------------------------------------------------------------------------- SN-GAN critic/generator
def test_aliased_shortcut_is_the_clean_block_applied_to_relu_x() -> None:
    torch.manual_seed(0)
    clean = _DiscBlock(8, 8, downsample=True, first=False)
    aliased = _DiscBlock(8, 8, downsample=True, first=False, aliased=True)
    aliased.load_state_dict(clean.state_dict())
    x = torch.randn(2, 8, 8, 8)
    # the reference: x0 = x; relu_(x) -> the shortcut sees relu(x), and relu(relu(x)) = relu(x)
    assert torch.equal(aliased(x), clean(F.relu(x)))
    assert not torch.allclose(aliased(x), clean(x))


def test_aliased_and_clean_critics_differ_and_clean_is_the_default() -> None:
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    default = SNGANDiscriminator(16, num_classes=10).eval()
    out = {}
    for kind in ("clean", "aliased"):
        torch.manual_seed(0)
        d = SNGANDiscriminator(16, num_classes=10, d_shortcut=kind).eval()
        d.load_state_dict(default.state_dict())
        out[kind] = d(x, y)
    assert torch.equal(out["clean"], default(x, y))
    assert (out["clean"] - out["aliased"]).abs().max() > 1e-3 * out["clean"].abs().max()
    with pytest.raises(ValueError, match="d_shortcut"):
        SNGANDiscriminator(16, d_shortcut="inplace")


@pytest.mark.parametrize("eps", [1e-4, 1e-5])
def test_generator_batchnorm_eps(eps: float) -> None:
    g = SNGANGenerator(nz=8, conv_dim=4, num_classes=10, g_bn_eps=eps)
    bns = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7 and all(m.eps == eps for m in bns)  # 2 per block x 3 blocks + the last one


def test_generator_embedding_init() -> None:
    torch.manual_seed(0)
    ortho = SNGANGenerator(nz=8, conv_dim=4, num_classes=10, g_embedding_init="orthogonal")
    zeros = SNGANGenerator(nz=8, conv_dim=4, num_classes=10)  # the default
    for m_o, m_z in zip(ortho.modules(), zeros.modules(), strict=True):
        if isinstance(m_o, ConditionalBatchNorm2d):
            assert isinstance(m_z, ConditionalBatchNorm2d)
            for emb in (m_o.gain.weight, m_o.bias.weight):  # (10 classes, 16 channels): orthonormal rows
                gram = emb @ emb.T
                assert torch.allclose(gram, torch.eye(10), atol=1e-5)
            assert not m_z.gain.weight.any() and not m_z.bias.weight.any()
    with pytest.raises(ValueError, match="g_embedding_init"):
        SNGANGenerator(nz=8, conv_dim=4, num_classes=10, g_embedding_init="normal")


# ---------------------------------------------------------------------------- EAdam heads, EAdam as compiled
def _vision_task(tmp_path: Path, overrides: list[str]):  # noqa: ANN202 - the task class is internal
    write_fake_cifar(tmp_path, "cifar10", n_train=8, n_test=4)
    cfg, _ = compose(["task=cifar10_resnet18", "optimizer=sgd", "profile=smoke", f"task.data.root={tmp_path}",
                      "task.data.verify_checksums=false", "task.batch_size=2", "task.data.pipeline=dataloader",
                      "task.data.num_workers=0", "task.data.train_subset=8", "task.data.test_subset=4",
                      *overrides])
    cfg = resolve_interpolations(cfg)
    seed_everything(0)
    return build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0))


def test_cifar10_head_width_follows_task_model_num_classes(tmp_path: Path) -> None:
    assert _vision_task(tmp_path, []).model.linear.out_features == 10
    task = _vision_task(tmp_path, ["task.model.num_classes=100"])
    assert task.model.linear.out_features == 100
    assert math.isfinite(float(task.train_step()["loss"]))
    with pytest.raises(UserError, match="task.model.num_classes=5"):
        _vision_task(tmp_path, ["task.model.num_classes=5"])


def test_eadam_compiled_first_update_adds_eps_outside_the_root() -> None:
    lr, b2, eps = 1e-3, 0.999, 1e-8
    g = torch.tensor([1e-3, 1e-4, 3e-6, -2e-2], dtype=torch.float64)
    steps = {}
    for outside in (False, True):
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = EAdam([p], lr=lr, eps=eps, eps_outside=outside)
        p.grad = g.clone()
        opt.step()
        steps[outside] = -p.detach()
    v = (1 - b2) * g**2 + eps  # the state after the in-place eps; bias corrections 1 - b1 and 1 - b2
    source = lr * math.sqrt(1 - b2) * g / v.sqrt()
    compiled = lr * math.sqrt(1 - b2) * g / (v.sqrt() + eps)
    torch.testing.assert_close(steps[False], source, rtol=1e-12, atol=0)
    torch.testing.assert_close(steps[True], compiled, rtol=1e-12, atol=0)
    relative = (steps[False] - steps[True]) / steps[False]  # = eps / (sqrt(v) + eps): tiny, not zero
    torch.testing.assert_close(relative, eps / (v.sqrt() + eps), rtol=1e-6, atol=0)
    assert (relative > 0).all() and (relative < 1e-3).all()


# ---------------------------------------------------------------------------- the presets
@pytest.mark.parametrize(("overrides", "expected"), [
    (["task=ptb_lstm1"], {"task.model.freeze_weight_hh": True}),
    (["experiment=eadam_table3", "task=ptb_lstm3", "optimizer=eadam"], {"task.model.freeze_weight_hh": True}),
    (["experiment=eadam_table3", "task=ptb_lstm2", "optimizer=radam"], {"optimizer.lr": 1e-3}),
    (["experiment=eadam_table3", "task=ptb_lstm2", "optimizer=adabelief"], {"optimizer.eps": 1e-16}),
    (["experiment=eadam_table3", "task=ptb_lstm2", "optimizer=adam"], {"optimizer.lr": 1e-2}),
    (["task=ptb_lstm2", "optimizer=radam"], {"optimizer.lr": 1e-2}),  # the AdaBelief paper's scripts
    (["experiment=adabelief_sngan"],
     {"task.d_shortcut": "aliased", "task.g_bn_eps": 1e-4, "task.g_embedding_init": "orthogonal"}),
    (["experiment=eadam_table2", "task=cifar10_vgg11"],
     {"task.model.num_classes": 100, "optimizer.name": "eadam", "optimizer.eps_outside": True}),
    (["experiment=adabelief_cifar"], {"task.model.num_classes": None}),
    (["experiment=adabelief_transformer"],
     {"task.data.joined_dictionary": True, "task.model.share_all_embeddings": True}),
    (["task=cifar10_wgan"], {"task.fid.resize": "pytorch_fid"}),
    (["task=cifar10_wgangp"], {"task.fid.resize": "pytorch_fid"}),
    (["experiment=adabelief_sngan"], {"task.fid.resize": "pytorch_fid", "task.fid.input": "float"}),
    (["task=cifar10_wgan"], {"task.fid.input": "uint8"}),  # the WGAN FID read saved PNGs
    (["task=iwslt14_transformer"],  # fairseq-adabelief's run scripts
     {"task.data.joined_dictionary": False, "task.model.share_all_embeddings": False}),
    (["experiment=finetune_vision"], {"task.data.augment": "inception_crop"}),  # vit_jax's Inception crop
    (["experiment=finetune_vision", "task=cifar10_resnet50_ft"], {"task.data.augment": "inception_crop"}),
])
def test_presets_compose_the_reference_values(overrides: list[str], expected: dict) -> None:
    cfg = compose_train(overrides)
    for key, value in expected.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, (overrides, key, node)


def test_corrected_variants_are_one_override_away() -> None:
    cfg = compose_train(["experiment=adabelief_sngan", "task.d_shortcut=clean", "task.g_bn_eps=1e-5",
                         "task.g_embedding_init=zeros"])
    assert (cfg.task.d_shortcut, cfg.task.g_bn_eps, cfg.task.g_embedding_init) == ("clean", 1e-5, "zeros")
    cfg = compose_train(["experiment=eadam_table2", "task.model.num_classes=null", "optimizer.eps_outside=false"])
    assert cfg.task.model.num_classes is None and cfg.optimizer.eps_outside is False


# ---------------------------------------------------------------------------- the audit's other knobs
def test_drop_last_false_keeps_the_last_partial_batch(tmp_path: Path) -> None:
    # 8 training images in batches of 3: the reference's DataLoader gives 3 batches (3, 3, 2), ours 2
    kept = _vision_task(tmp_path, ["task.batch_size=3", "task.drop_last=false"])
    dropped = _vision_task(tmp_path, ["task.batch_size=3", "task.drop_last=true"])
    assert (kept.order.batches_per_epoch, dropped.order.batches_per_epoch) == (3, 2)
    sizes = [kept._global_batch(0, b).numel() for b in range(3)]
    assert sizes == [3, 3, 2]
    assert sorted(torch.cat([kept._global_batch(0, b) for b in range(3)]).tolist()) == list(range(8))


def test_fid_per_image_minmax_stretches_each_image_to_its_own_range() -> None:
    from optrepro.metrics.fid import to_uint8

    x = torch.stack([torch.full((3, 4, 4), 0.1), torch.linspace(-0.5, 0.25, 48).view(3, 4, 4)])
    x[0, 0, 0, 0] = -0.3
    fixed, stretched = to_uint8(x), to_uint8(x, per_image_minmax=True)
    assert fixed[1].min() > 0 and fixed[1].max() < 255  # the fixed map keeps the image's dull range
    for img in stretched:
        assert img.min() == 0 and img.max() == 255  # every image spans the full range
    # save_image's quantisation: floor(255 * (x - min) / (max - min) + 0.5)
    expected = ((x[1] + 0.5) / 0.75 * 255 + 0.5).floor().to(torch.uint8)
    assert torch.equal(stretched[1], expected)


def test_msvag_2020_variant_takes_larger_early_steps_than_the_2021_code() -> None:
    from optrepro.optim import MSVAG

    steps = {}
    for variant in ("adabelief_repo_2020", "adabelief_repo"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.zeros(1000))
        opt = MSVAG([p], lr=0.1, betas=(0.5, 0.999), variant=variant)
        for _ in range(3):
            p.grad = torch.randn(1000) + 1.0
            opt.step()
        steps[variant] = p.detach().abs().mean().item()
    # beta2's correction (1 - 0.999^t ~ t/1000) inflates v ~300-1000x here and damps the step
    assert steps["adabelief_repo_2020"] > 3 * steps["adabelief_repo"]


def test_adabelief_version_label_has_no_effect_with_the_presets_flags() -> None:
    """docs/recipes.yaml's no_effect entries for optimizer.version: 0.2.0 with coupled decay and no
    rectification is the 0.0.5 update, bit for bit."""
    from optrepro.optim import AdaBelief

    final = {}
    for version in ("0.2.0", "0.0.5"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64, dtype=torch.float64))
        opt = AdaBelief([p], lr=1e-3, eps=1e-12, weight_decay=5e-4, weight_decouple=False, rectify=False,
                        version=version, print_change_log=False)
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):
            p.grad = torch.randn(64, generator=gen, dtype=torch.float64)
            opt.step()
        final[version] = p.detach()
    assert torch.equal(final["0.2.0"], final["0.0.5"])


def test_transformer_normalize_before_is_pre_ln_with_final_norms_and_steps_agree() -> None:
    from optrepro.models.transformer import Seq2SeqTransformer, TransformerConfig

    small = dict(d_model=16, ffn_dim=32, heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0)
    torch.manual_seed(0)
    post = Seq2SeqTransformer(20, 20, pad=1, config=TransformerConfig(**small)).eval()
    torch.manual_seed(0)
    pre = Seq2SeqTransformer(20, 20, pad=1, config=TransformerConfig(**small, normalize_before=True)).eval()
    assert post.encoder_norm is None and pre.encoder_norm is not None and pre.decoder_norm is not None
    pre.load_state_dict({**post.state_dict(), **{k: v for k, v in pre.state_dict().items() if "_norm." in k}})
    src = torch.randint(2, 20, (3, 5), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(2, 20, (3, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = pre(src, tgt)
        assert not torch.allclose(full, post(src, tgt))  # same weights, another function
        memory, mask = pre.encode(src)
        caches = pre.start_cache(memory)
        steps = torch.stack([pre.decode_step(tgt[:, t], t, mask, caches) for t in range(tgt.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)  # incremental decoding = the full pass


@pytest.mark.parametrize(("split", "switches"), [("test", True), ("valid", False)])
def test_asgd_trigger_watches_the_configured_split(tmp_path: Path, split: str, switches: bool) -> None:
    from optrepro.data.ptb import write_fake_ptb

    root = tmp_path / "ptb"
    write_fake_ptb(root, lines={"train": 300, "valid": 40, "test": 40}, vocab_size=40, seed=0)
    cfg, _ = compose(["task=ptb_lstm1", "optimizer=sgd", "profile=smoke", f"task.data.root={root}",
                      "task.data.train_tokens=null", "task.data.eval_tokens=null", "task.nonmono=1",
                      f"task.asgd_trigger_split={split}"])
    cfg = resolve_interpolations(cfg)
    seed_everything(0)
    task = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0))
    task.split_loss = lambda which: {"valid": 5.0, "test": 9.0, "heldin": 4.0}[which]  # type: ignore[method-assign]
    task.valid_history = [6.0, 6.0]  # the trigger fires when the watched loss exceeds 6
    task._end_epoch()
    assert task.using_asgd == switches
    assert task.valid_history[-1] == (9.0 if split == "test" else 5.0)


def test_wgan_epoch_index_schedule_is_the_reference_loop(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar10", n_train=23, n_test=4)
    cfg, _ = compose(["task=cifar10_wgan", "optimizer=adam", "profile=smoke", f"task.data.root={tmp_path}",
                      "task.data.verify_checksums=false", "task.fid.enabled=false", "task.batch_size=5",
                      "task.n_critic=2", "task.steps=6"])
    cfg = resolve_interpolations(cfg)
    assert (cfg.task.g_schedule, cfg.task.drop_last) == ("epoch_index", False)  # the preset's
    seed_everything(0)
    task = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0))
    log: list[tuple[str, int]] = []
    d_step, g_step = task._d_step, task._g_step

    def logged_d() -> torch.Tensor:
        out = d_step()
        log.append(("D", task._last_noise[0].shape[0]))
        return out

    def logged_g(noise):  # noqa: ANN001, ANN202
        assert noise is task._last_noise  # G reuses the last D step's noise
        log.append(("G", noise[0].shape[0]))
        return g_step(noise)

    task._d_step, task._g_step = logged_d, logged_g  # type: ignore[method-assign]
    for _ in range(6):
        task.train_step()
    # 23 images in batches of 5: indices 0-4 per epoch, the last of 3 images; G after indices 0, 2, 4
    pattern = "".join(kind for kind, _ in log)
    assert pattern == "DG" "DDG" "DDG" "DG" "DDG" "DDG"
    assert [n for kind, n in log if kind == "D"] == [5, 5, 5, 5, 3] * 2
