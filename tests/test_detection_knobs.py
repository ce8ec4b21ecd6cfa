"""Reference-code knobs of the Faster R-CNN (EAdam Table 4 ran mmdetection): RoIAlign sampling, BN affine
trainable with fixed statistics, L1 box losses, batches grouped by aspect ratio. Each changes what it names;
the VOC preset composes mmdet's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from conftest import compose
from optrepro.errors import UserError
from optrepro.models.detection import (
    StatsFrozenBatchNorm2d,
    build_detector,
    l1_fastrcnn_loss,
    l1_rpn_loss,
)


def tiny_cfg(**overrides: Any) -> DictConfig:
    cfg, _ = compose(["task=synthetic_det"])
    model = cfg.task.model.copy()
    OmegaConf.set_struct(model, False)
    for key, value in overrides.items():
        model[key] = value
    return model


def test_preset_composes_mmdets_values_and_torchvisions_are_one_override_away() -> None:
    cfg, _ = compose(["experiment=eadam_table4"])
    m = cfg.task.model
    assert (m.sampling_ratio, m.bn_affine_trainable, m.box_loss) == (0, True, "l1")
    cfg, _ = compose(["experiment=eadam_table4", "task.model.sampling_ratio=2", "task.model.bn_affine_trainable=false",
                      "task.model.box_loss=smooth_l1"])
    m = cfg.task.model
    assert (m.sampling_ratio, m.bn_affine_trainable, m.box_loss) == (2, False, "smooth_l1")
    synthetic, _ = compose(["task=synthetic_det"])
    assert synthetic.task.model.box_loss == "smooth_l1"  # the tiny backbone has GroupNorm, no BN knob


# ----------------------------------------------------------------------------- RoIAlign sampling
def test_sampling_ratio_reaches_roi_align_and_zero_is_adaptive() -> None:
    from torchvision.ops import roi_align

    for ratio in (0, 2):
        model: Any = build_detector(tiny_cfg(sampling_ratio=ratio), 3)
        assert model.roi_heads.box_roi_pool.sampling_ratio == ratio
    # adaptive = ceil(roi side / 7) samples per bin: a 14 px box is sampled 2x2 (== ratio 2), a 70 px one 10x10
    torch.manual_seed(0)
    feats = torch.randn(1, 2, 80, 80)
    small, large = torch.tensor([[0, 3.0, 5.0, 17.0, 19.0]]), torch.tensor([[0, 3.0, 5.0, 73.0, 75.0]])
    pool = {r: (lambda box, r=r: roi_align(feats, box, 7, 1.0, r)) for r in (0, 2)}
    torch.testing.assert_close(pool[0](small), pool[2](small), rtol=0, atol=1e-6)
    assert (pool[0](large) - pool[2](large)).abs().max() > 1e-2
    with pytest.raises(UserError, match="box_loss"):
        build_detector(tiny_cfg(box_loss="l2"), 3)


# ----------------------------------------------------------------------------- batch norm
def test_stats_frozen_bn_is_eval_batchnorm_with_trainable_affine() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    ours = StatsFrozenBatchNorm2d(4)
    ours.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, everything else loads strictly
    x = torch.randn(3, 4, 5, 5)
    ours.train()
    out = ours(x)
    torch.testing.assert_close(out, bn.eval()(x), rtol=1e-6, atol=1e-6)
    out.square().sum().backward()
    assert ours.weight.grad is not None and ours.bias.grad is not None and ours.weight.grad.abs().sum() > 0
    assert torch.equal(ours.running_mean, bn.running_mean) and torch.equal(ours.running_var, bn.running_var)


def test_bn_affine_trainable_trains_the_trained_stages_bn_only(tmp_path: Any) -> None:
    from torchvision.models import resnet50

    from optrepro.models.detection import resnet50_fpn_backbone

    path = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), path)
    for flag in (False, True):
        body = resnet50_fpn_backbone(path, trainable_layers=3, bn_affine_trainable=flag).body
        bn_trained = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad and ".bn" in f".{n}"}
        bn_all = {n for n, p in body.named_parameters() if "bn" in n or "downsample.1" in n}
        assert bn_trained == ({"layer2", "layer3", "layer4"} if flag else set())
        assert bool(bn_all) == flag  # FrozenBatchNorm2d keeps them as buffers


# ----------------------------------------------------------------------------- L1 box loss
def test_l1_fastrcnn_loss_by_hand() -> None:
    torch.manual_seed(0)
    logits, boxes = torch.randn(5, 3), torch.randn(5, 3 * 4)
    labels, targets = [torch.tensor([0, 2, 1]), torch.tensor([0, 1])], [torch.randn(3, 4), torch.randn(2, 4)]
    cls, box = l1_fastrcnn_loss(logits, boxes, labels, targets)
    lab, tgt = torch.cat(labels), torch.cat(targets)
    by_hand = sum((boxes[i, 4 * int(lab[i]):4 * int(lab[i]) + 4] - tgt[i]).abs().sum() for i in range(5) if lab[i] > 0)
    torch.testing.assert_close(box, by_hand / 5)
    torch.testing.assert_close(cls, F.cross_entropy(logits, lab))


def test_l1_rpn_loss_by_hand() -> None:
    class TakeAll:  # every labelled anchor sampled (the sampler is random otherwise)
        def fg_bg_sampler(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            return [lab == 1 for lab in labels], [lab == 0 for lab in labels]

    torch.manual_seed(0)
    objectness, deltas = torch.randn(6, 1), torch.randn(6, 4)
    labels, targets = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])], [torch.randn(3, 4)] * 2
    cls, box = l1_rpn_loss(TakeAll(), objectness, deltas, labels, targets)
    tgt, pos = torch.cat(targets), [0, 4, 5]
    torch.testing.assert_close(box, (deltas[pos] - tgt[pos]).abs().sum() / 5)  # 3 positives + 2 negatives
    sampled = [0, 4, 5, 1, 3]
    torch.testing.assert_close(cls, F.binary_cross_entropy_with_logits(objectness.flatten()[sampled],
                                                                       torch.cat(labels)[sampled]))


def test_box_loss_l1_changes_only_the_box_terms_of_a_tiny_detector() -> None:
    from torchvision.models.detection.roi_heads import RoIHeads

    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10.0, 50.0, 60.0], [2.0, 2.0, 20.0, 14.0]]),
                "labels": torch.tensor([2, 3])}]
    cfg = tiny_cfg(min_size=64, max_size=64)
    smooth: Any = build_detector(cfg, 3)
    l1: Any = build_detector(tiny_cfg(min_size=64, max_size=64, box_loss="l1"), 3)
    l1.load_state_dict(smooth.state_dict())
    assert type(smooth.roi_heads) is RoIHeads and type(l1.roi_heads) is not RoIHeads  # torchvision unpatched
    losses = {}
    for name, model in (("smooth", smooth), ("l1", l1)):
        model.train()
        torch.manual_seed(1)  # the same anchor and RoI samples in both
        losses[name] = model(images, targets)
    s, l = losses["smooth"], losses["l1"]
    assert set(s) == set(l)
    for key in ("loss_objectness", "loss_classifier"):
        torch.testing.assert_close(s[key], l[key], rtol=1e-6, atol=0)
    # smooth-L1 (beta 1/9) is below |x| everywhere, by at most beta/2 per coordinate
    for key in ("loss_rpn_box_reg", "loss_box_reg"):
        assert l[key] > s[key] > 0, key
    sum(l.values()).backward()
    for model in (smooth, l1):
        model.eval()
    with torch.no_grad():
        out_s, out_l = smooth(images), l1(images)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(out_s, out_l, strict=True))


# ----------------------------------------------------------------------------- batch grouping
def grouped_batches(order: Any, n_batches: int) -> list[list[int]]:
    return [order.next_indices().tolist() for _ in range(n_batches)]


def test_grouped_batch_order_is_mmdets_group_sampler() -> None:
    from optrepro.tasks.base import GroupedBatchOrder

    groups = [int(i % 10 < 7) for i in range(23)]  # 16 landscape (1), 7 portrait (0)
    sizes = {g: groups.count(g) for g in (0, 1)}
    for batch_size in (1, 2, 3, 4):
        order = GroupedBatchOrder(groups, batch_size, seed=5)
        per_epoch = sum(-(-n // batch_size) for n in sizes.values())
        assert order.batches_per_epoch == per_epoch
        for epoch in range(3):
            batches = grouped_batches(order, per_epoch)
            assert order.epoch == epoch and order.epoch_finished
            assert all(len(b) == batch_size and len({groups[i] for i in b}) == 1 for b in batches)
            taken = [i for b in batches for i in b]
            assert set(taken) == set(range(23))  # every image, the padding repeats images of its own group
            for g, n in sizes.items():
                assert sum(groups[i] == g for i in taken) == -(-n // batch_size) * batch_size
    # a fresh order with the seed gives the same batches, another seed other ones; epochs differ
    first = grouped_batches(GroupedBatchOrder(groups, 2, seed=5), 24)
    assert first == grouped_batches(GroupedBatchOrder(groups, 2, seed=5), 24)
    assert first != grouped_batches(GroupedBatchOrder(groups, 2, seed=6), 24)
    assert first[:12] != first[12:]
    # the order of batches is shuffled: both groups show up within the first half of an epoch
    assert {groups[b[0]] for b in first[:6]} == {0, 1}
    # resume mid-epoch: the position is all the state
    stopped = GroupedBatchOrder(groups, 2, seed=5)
    grouped_batches(stopped, 17)
    resumed = GroupedBatchOrder(groups, 2, seed=5)
    resumed.load_state_dict(dict(stopped.state_dict()))
    assert grouped_batches(resumed, 7) == first[17:]


def mixed_voc(root: Any) -> Any:
    """Fake VOC in the real format: 2007 trainval landscape (w 128 > h 96), 2012 trainval portrait."""
    from optrepro.data.voc import write_fake_voc

    write_fake_voc(root, n_images=3, years=("2007",), size=(96, 128))
    write_fake_voc(root, n_images=3, years=("2012",), size=(128, 96), seed=1)
    return root


def test_preset_groups_by_aspect_ratio_from_the_xml_sizes_and_none_is_batch_order(tmp_path: Any) -> None:
    from optrepro.config import resolve_interpolations
    from optrepro.tasks import RunContext, build_task
    from optrepro.tasks.base import BatchOrder, GroupedBatchOrder, derived_seed
    from optrepro.tasks.schemas import validate

    cfg, _ = compose(["experiment=eadam_table4"])
    assert cfg.task.batch_grouping == "aspect_ratio"
    assert compose(["experiment=eadam_table4", "task.batch_grouping=none"])[0].task.batch_grouping == "none"
    bad = cfg.task.copy()
    bad.batch_grouping, bad.model.backbone = "width", "tiny"
    with pytest.raises(UserError, match="task.batch_grouping"):
        validate(bad)
    # the synthetic preset leaves the key to the schema's default, none: its composed config (run identity) is as before
    synthetic, _ = compose(["task=synthetic_det"])
    assert "batch_grouping" not in synthetic.task and validate(synthetic.task).batch_grouping == "none"

    root = mixed_voc(tmp_path / "voc")
    tasks = {}
    for grouping in ("aspect_ratio", "none"):
        cfg, _ = compose(["task=voc_fasterrcnn", "optimizer=adam", "profile=smoke", f"task.data.root={root}",
                          "task.model.backbone=tiny", "task.model.min_size=96", "task.model.max_size=128",
                          "task.data.train_subset=null", "task.epochs=2", f"task.batch_grouping={grouping}"])
        cfg = resolve_interpolations(cfg)
        tasks[grouping] = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32",
                                                          seed=0))
    grouped, plain = tasks["aspect_ratio"], tasks["none"]
    assert grouped.train_data.aspect_groups() == [1, 1, 1, 0, 0, 0]
    assert type(grouped.order) is GroupedBatchOrder and type(plain.order) is BatchOrder
    assert grouped.order.batches_per_epoch == 4 and plain.order.batches_per_epoch == 3  # 2 + 2 vs 6 // 2
    assert (grouped.total_steps, plain.total_steps) == (8, 6)
    # none draws exactly the batches of before the knob existed
    before = BatchOrder(6, 2, seed=derived_seed("det-order", 0))
    assert [plain.order.next_indices().tolist() for _ in range(6)] == [before.next_indices().tolist()
                                                                       for _ in range(6)]
    for _ in range(4):  # the epoch counters, eval and done run on the grouped count
        grouped.train_step()
        assert grouped.epoch == grouped.step / 4
    assert grouped.eval_due() and not grouped.done()
