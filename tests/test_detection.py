"""Detection: VOC files and loader, the synthetic shapes, VOC mAP@0.5 against hand and direct
computations (and torchmetrics' COCO code where the protocols agree), the task's schedule and
exact resume."""

from __future__ import annotations

import io
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import compose
from optrepro.config import resolve_interpolations
from optrepro.data.synthetic_det import make_synthetic_detections, shape_mask
from optrepro.data.voc import VOC_CLASSES, VOCDetectionData, write_fake_voc
from optrepro.errors import DataMissingError, UserError
from optrepro.metrics.map import ap_11_point, ap_area, voc_map
from optrepro.tasks import RunContext, build_task
from optrepro.tasks.base import rng_state, seed_everything, set_rng_state
from optrepro.tasks.detection import DetectionTask, hflip


# ---------------------------------------------------------------------------------------- mAP
def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def hand_case() -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Two images, three classes. Class 1: a TP, a detection on a difficult box (ignored), a FP
    elsewhere, a duplicate of a taken box (FP), a TP. Class 2: a FP in an image without class-2
    boxes, then a TP (IoU 0.9). Class 3: a detection but no boxes (left out of the mean)."""
    gts = [
        {"boxes": t([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1]),
         "difficult": torch.tensor([False, True])},
        {"boxes": t([[0, 0, 10, 10], [40, 40, 60, 60]]), "labels": torch.tensor([1, 2]),
         "difficult": torch.tensor([False, False])},
    ]
    dets = [
        {"boxes": t([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9], [40, 40, 60, 60], [5, 5, 9, 9]]),
         "scores": torch.tensor([0.9, 0.8, 0.6, 0.95, 0.4]), "labels": torch.tensor([1, 1, 1, 2, 3])},
        {"boxes": t([[50, 50, 60, 60], [0, 0, 10, 10], [42, 40, 60, 60]]),
         "scores": torch.tensor([0.7, 0.5, 0.3]), "labels": torch.tensor([1, 1, 2])},
    ]
    return dets, gts


def test_voc_map_matches_the_hand_computed_case() -> None:
    dets, gts = hand_case()
    result = voc_map(dets, gts, num_classes=3)
    # class 1, in score order, difficult one dropped: TP FP FP TP over 2 boxes
    #   recall .5 .5 .5 1, precision 1 .5 1/3 .5
    #   11-point: r = 0 .. .5 -> 1 (6 levels), r = .6 .. 1 -> .5 (5 levels) -> 8.5 / 11
    #   area: envelope 1 up to recall .5, then .5 -> .5 * 1 + .5 * .5 = .75
    c1 = result.per_class[1]
    assert np.allclose(c1.recall, [0.5, 0.5, 0.5, 1.0]) and np.allclose(c1.precision, [1, 0.5, 1 / 3, 0.5])
    assert c1.ap_11pt == pytest.approx(8.5 / 11) and c1.ap_area == pytest.approx(0.75)
    # class 2: FP then TP over 1 box -> precision .5 at recall 1: both APs .5
    assert result.per_class[2].ap_11pt == pytest.approx(0.5) and result.per_class[2].ap_area == pytest.approx(0.5)
    assert 3 not in result.per_class  # no ground truth: not in the mean
    assert result.map_11pt == pytest.approx((8.5 / 11 + 0.5) / 2)
    assert result.map_area == pytest.approx((0.75 + 0.5) / 2)


def direct_voc_ap(dets: list[dict[str, torch.Tensor]], gts: list[dict[str, torch.Tensor]], cls: int,
                  eleven: bool) -> float | None:
    """The devkit's procedure written out plainly (python floats, no torch/numpy helpers)."""
    def iou(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    boxes = {i: [(g["boxes"][j].tolist(), bool(g["difficult"][j])) for j in range(len(g["labels"]))
                 if int(g["labels"][j]) == cls] for i, g in enumerate(gts)}
    npos = sum(not d for b in boxes.values() for _, d in b)
    if npos == 0:
        return None
    found = [(float(d["scores"][j]), i, d["boxes"][j].tolist()) for i, d in enumerate(dets)
             for j in range(len(d["labels"])) if int(d["labels"][j]) == cls]
    found.sort(key=lambda x: -x[0])  # stable: ties keep input order
    used: set[tuple[int, int]] = set()
    tp = fp = 0
    points = []
    for _, img, box in found:
        best, best_j = -1.0, -1
        for j, (g, _) in enumerate(boxes[img]):
            value = iou(box, g)
            if value > best:
                best, best_j = value, j
        if best >= 0.5 and boxes[img][best_j][1]:
            continue
        if best >= 0.5 and (img, best_j) not in used:
            used.add((img, best_j))
            tp += 1
        else:
            fp += 1
        points.append((tp / npos, tp / (tp + fp)))
    if eleven:
        return sum(max([p for r, p in points if r >= k / 10 - 1e-12], default=0.0) for k in range(11)) / 11
    area, prev = 0.0, 0.0
    for k, (r, _) in enumerate(points):
        if r > prev:
            area += (r - prev) * max(p for _, p in points[k:])
            prev = r
    return area


def random_case(gen: torch.Generator, images: int, classes: int) -> tuple[list[Any], list[Any]]:
    def boxes(n: int) -> torch.Tensor:
        xy = torch.randint(0, 40, (n, 2), generator=gen).float()
        wh = torch.randint(4, 20, (n, 2), generator=gen).float()
        return torch.cat([xy, xy + wh], dim=1)

    dets, gts = [], []
    for _ in range(images):
        m = int(torch.randint(0, 5, (), generator=gen))
        gt_boxes = boxes(m)
        gts.append({"boxes": gt_boxes, "labels": torch.randint(1, classes + 1, (m,), generator=gen),
                    "difficult": torch.rand(m, generator=gen) < 0.2})
        n = int(torch.randint(0, 8, (), generator=gen))
        jitter = torch.randint(-3, 4, (n, 4), generator=gen).float()
        near = gt_boxes[torch.randint(0, max(m, 1), (n,), generator=gen)] + jitter if m else boxes(n)
        d_boxes = torch.where(torch.rand(n, 1, generator=gen) < 0.7, near, boxes(n))
        d_boxes = torch.cat([d_boxes[:, :2], torch.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)], dim=1)
        dets.append({"boxes": d_boxes, "scores": torch.rand(n, generator=gen),
                     "labels": torch.randint(1, classes + 1, (n,), generator=gen)})
    return dets, gts


def test_voc_map_equals_a_direct_computation_on_random_cases() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        dets, gts = random_case(gen, images=6, classes=3)
        result = voc_map(dets, gts, num_classes=3)
        for cls in (1, 2, 3):
            for eleven in (True, False):
                expected = direct_voc_ap(dets, gts, cls, eleven)
                if expected is None:
                    assert cls not in result.per_class
                    continue
                curve = result.per_class[cls]
                assert (curve.ap_11pt if eleven else curve.ap_area) == pytest.approx(expected, abs=1e-9)


def test_ap_formulas_on_known_curves() -> None:
    assert ap_11_point(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
    assert ap_area(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
    # one TP among two detections at recall 1/2: 11-point sees recalls 0..0.5 (6 of 11 levels)
    assert ap_11_point(np.array([0.5, 0.5]), np.array([1.0, 0.5])) == pytest.approx(6 / 11)
    assert ap_area(np.array([0.5, 0.5]), np.array([1.0, 0.5])) == pytest.approx(0.5)


def test_torchmetrics_coco_code_gives_our_11_point_map_where_protocols_agree() -> None:
    """With IoU 0.5 and 11 recall thresholds COCO's interpolated AP is VOC2007's; without difficult
    boxes and without a detection that overlaps two boxes, the matching rules agree too."""
    pytest.importorskip("pycocotools")
    from torchmetrics.detection import MeanAveragePrecision

    dets, gts = hand_case()
    for g in gts:
        keep = ~g["difficult"]
        g.update(boxes=g["boxes"][keep], labels=g["labels"][keep], difficult=g["difficult"][keep])
    ours = voc_map(dets, gts, num_classes=3)
    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], rec_thresholds=[k / 10 for k in range(11)],
                                  class_metrics=True)
    metric.update(dets, [{"boxes": g["boxes"], "labels": g["labels"]} for g in gts])
    theirs = metric.compute()
    assert float(theirs["map"]) == pytest.approx(ours.map_11pt, abs=1e-6)
    assert ours.map_11pt != pytest.approx(ours.map_area)  # the two VOC variants do differ here


# ---------------------------------------------------------------------------------------- data
def test_fake_voc_tree_is_the_real_layout_and_loads(tmp_path: Path) -> None:
    root = write_fake_voc(tmp_path, n_images=4)
    base = root / "VOCdevkit" / "VOC2007"
    names = (base / "ImageSets/Main/trainval.txt").read_text().split()
    assert len(names) == 4 and (base / "ImageSets/Main/test.txt").is_file()
    assert (root / "VOCdevkit/VOC2012/ImageSets/Main/trainval.txt").is_file()
    xml = ET.parse(base / "Annotations" / f"{names[0]}.xml").getroot()
    objects = xml.findall("object")
    assert [o.find("difficult").text for o in objects].count("1") == 1
    data = VOCDetectionData(root, ["2007-trainval", "2012-trainval"])
    assert len(data) == 8
    image = data.image(0)
    assert image.dtype == torch.uint8 and image.shape == (3, 96, 128)
    target = data.target(0)
    first = objects[0].find("bndbox")
    x1, y1, x2, y2 = (int(first.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
    # 1-based inclusive pixels -> continuous [xmin-1, ymin-1, xmax, ymax]
    assert target.boxes[0].tolist() == [x1 - 1, y1 - 1, x2, y2]
    assert bool(target.difficult[0]) and not bool(target.difficult[1:].any())
    assert VOC_CLASSES[int(target.labels[0]) - 1] == objects[0].find("name").text
    # the box covers the painted pixels (JPEG noise aside, the object's colour is uniform)
    patch = image[:, y1 - 1 : y2, x1 - 1 : x2].float()
    assert patch.std(dim=(1, 2)).max() < 12


def test_missing_voc_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        VOCDetectionData(tmp_path / "nowhere", ["2007-trainval"])
    message = str(info.value)
    assert "\n" not in message and "task.data.download=true" in message
    assert str(tmp_path / "nowhere" / "VOCdevkit" / "VOC2007") in message


def test_download_flag_uses_torchvision_and_fetches_only_what_is_missing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_download(url: str, download_root: str, filename: str | None = None, md5: str | None = None) -> None:
        calls.append(str(filename))
        write_fake_voc(download_root, n_images=2, years=("2007",))

    monkeypatch.setattr("torchvision.datasets.voc.download_and_extract_archive", fake_download)
    data = VOCDetectionData(tmp_path, ["2007-trainval", "2007-test"], download=True)
    assert len(data) == 4 and calls == ["VOCtrainval_06-Nov-2007.tar"]  # the test split came with it here
    VOCDetectionData(tmp_path, ["2007-trainval"], download=True)
    assert len(calls) == 1


def test_synthetic_shapes_are_deterministic_with_tight_boxes() -> None:
    a = make_synthetic_detections(12, seed=3)
    b = make_synthetic_detections(12, seed=3)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not torch.equal(a.images, make_synthetic_detections(12, seed=4).images)
    assert torch.equal(make_synthetic_detections(5, seed=3).images, a.images[:5])  # image i depends on (seed, i)
    labels = torch.cat(a.labels)
    assert set(labels.tolist()) <= {1, 2, 3} and all(1 <= len(lb) <= 3 for lb in a.labels)
    for kind in (1, 2, 3):
        mask = shape_mask(kind, 21, 13)
        rows, cols = np.nonzero(mask)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 12, 0, 20)  # the mask fills its box
    assert shape_mask(1, 20, 20).sum() > shape_mask(2, 20, 20).sum() > shape_mask(3, 20, 20).sum()


def test_hflip_moves_boxes_with_the_image() -> None:
    image = torch.zeros(3, 4, 10, dtype=torch.uint8)
    image[:, 1:3, 1:4] = 255
    flipped, boxes = hflip(image, t([[1, 1, 4, 3]]))
    assert boxes.tolist() == [[6, 1, 9, 3]]
    assert flipped[0, 1:3, 6:9].min() == 255 and int(flipped.sum()) == int(image.sum())


# ---------------------------------------------------------------------------------------- task
def make_task(overrides: list[str], task: str = "synthetic_det", optimizer: str = "eadam") -> DetectionTask:
    ov = [f"task={task}", f"optimizer={optimizer}", "profile=smoke", *overrides]
    cfg, _ = compose(ov)
    cfg = resolve_interpolations(cfg)
    seed_everything(0)
    built = build_task(cfg.task, RunContext(cfg=cfg, device=torch.device("cpu"), precision="fp32", seed=0))
    assert isinstance(built, DetectionTask)
    return built


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_recipe_and_preset_are_eadams() -> None:
    for optimizer in ("adam", "radam", "adabelief", "eadam"):
        ov = ["experiment=eadam_table4", f"optimizer={optimizer}"]
        cfg, choices = compose(ov)
        resolved = resolve_interpolations(cfg)
        assert choices["task"] == "voc_fasterrcnn" and resolved.task.name == "voc_fasterrcnn_fpn"
        o = resolved.optimizer
        assert (o.lr, o.weight_decay, o.eps) == (1e-4, 1e-4, 1e-8), optimizer
        if optimizer == "adabelief":
            assert not o.weight_decouple and not o.rectify
    t4 = resolved.task
    assert (t4.batch_size, t4.epochs, list(t4.lr_milestones), t4.model.min_size, t4.model.max_size) == (
        2, 12, [9], 600, 1000)
    assert list(t4.data.train_sets) == ["2007-trainval", "2012-trainval"] and t4.data.test_set == "2007-test"
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import REPO

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        full = hydra_compose(config_name="train", overrides=["experiment=eadam_table4"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert full.hydra.sweeper.params.optimizer == "adam,radam,adabelief,eadam"
    published = (REPO / "results" / "published_results.csv")
    if published.is_file():
        assert "voc_fasterrcnn_fpn" in published.read_text()


def test_missing_backbone_weights_is_a_one_line_error(tmp_path: Path) -> None:
    write_fake_voc(tmp_path / "voc", n_images=2)
    missing = tmp_path / "weights" / "resnet50-0676ba61.pth"
    with pytest.raises(DataMissingError) as info:
        make_task([f"task.data.root={tmp_path / 'voc'}", f"task.model.backbone_weights={missing}"],
                  task="voc_fasterrcnn")
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "task.model.backbone_weights" in message
    # the schema check (called before any run folder is written) says the same
    from optrepro.tasks.schemas import validate

    cfg, _ = compose(["task=voc_fasterrcnn", f"task.model.backbone_weights={missing}"])
    with pytest.raises(DataMissingError, match="resnet50-0676ba61.pth"):
        validate(cfg.task)
    cfg.task.model.backbone = "tiny"  # the tiny backbone needs no weights
    validate(cfg.task)
    cfg.task.metric = "map75"
    with pytest.raises(UserError, match="task.metric"):
        validate(cfg.task)


def test_resnet50_backbone_loads_a_weights_file(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    from optrepro.models.detection import resnet50_fpn_backbone

    torch.manual_seed(0)
    reference = resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = resnet50_fpn_backbone(path, trainable_layers=3)
    body = backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.equal(body.bn1.running_var, reference.bn1.running_var)
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    trained = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "layer1"} and trained == {"layer2", "layer3", "layer4"}
    torch.save({"fc.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not a ResNet-50 state dict"):
        resnet50_fpn_backbone(path)


def test_schedule_and_difficult_targets(tmp_path: Path) -> None:
    write_fake_voc(tmp_path / "voc", n_images=4)
    task = make_task([f"task.data.root={tmp_path / 'voc'}", "task.model.backbone=tiny", "task.model.min_size=96",
                      "task.model.max_size=128", "task.epochs=3", "task.lr_milestones=[2]",
                      "task.data.train_subset=null"], task="voc_fasterrcnn", optimizer="adam")
    assert len(task.train_data) == 8 and len(task.test_data) == 4  # 07 + 12 trainval; 07 test
    ann = task.train_data.annotation(0)
    assert bool(ann["difficult"][0]) and len(task.train_data.training_target(0)["boxes"]) == len(ann["boxes"]) - 1
    lrs, evals = [], 0
    while not task.done():
        task.train_step()
        if task.eval_due():
            evals += 1
            lrs.append(task.optimizer.param_groups[0]["lr"])
    assert task.step == 3 * 4 and evals == 3 and task.epoch == 3.0
    assert lrs == [1e-4, pytest.approx(1e-5), pytest.approx(1e-5)]  # x0.1 once epoch 2 is done
    # flips: about half, fixed per (seed, epoch, image), different across epochs
    draws = [task.flip_this(e, i) for e, i in itertools.product(range(50), range(8))]
    assert 0.4 < sum(draws) / len(draws) < 0.6
    assert draws == [task.flip_this(e, i) for e, i in itertools.product(range(50), range(8))]


def test_resume_continues_exactly() -> None:
    """Uninterrupted vs. stopped mid-epoch, saved, rebuilt and continued: bitwise equal on CPU."""
    overrides = ["task.epochs=2", "task.data.n_train=16", "task.data.n_test=8", "task.batch_size=4"]
    straight = make_task(overrides)
    while not straight.done():
        straight.train_step()
    assert straight.step == 8

    first = make_task(overrides)
    while first.step < 5:  # in the second epoch
        first.train_step()
    saved, rng = roundtrip(first.state_dict()), rng_state()
    torch.manual_seed(1234)  # a relaunched process starts with different global RNG state
    second = make_task(overrides)
    second.load_state_dict(saved)
    set_rng_state(rng)
    while not second.done():
        second.train_step()
    assert second.step == 8
    expected, got = straight.model.state_dict(), second.model.state_dict()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    assert second.evaluate() == straight.evaluate()
