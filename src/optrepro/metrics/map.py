"""PASCAL VOC mean average precision at IoU 0.5, as the VOC devkit (and mmdetection's ``eval_map``).

Why not torchmetrics' ``MeanAveragePrecision``: it runs the COCO protocol (pycocotools or
faster-coco-eval, neither a dependency here). ``iou_thresholds=[0.5]`` and
``rec_thresholds=[0, 0.1, ..., 1]`` do give the 11-point interpolation, but COCO differs from VOC
in what counts: a crowd box (the only way to pass "difficult") is matched by intersection over the
*detection's* area, a detection goes to the best *unmatched* ground truth, detections are capped
per image, and there is no all-point (area) variant. The tests check that on a case where the
protocols agree, torchmetrics gives our 11-point number.

VOC protocol, per class over the whole test set:

1. detections sorted by score (descending, ties in input order);
2. each is matched to the ground-truth box of the same image and class with the highest IoU
   (torchvision ``box_iou``); IoU >= 0.5 and the box is *difficult* -> ignored (neither TP nor FP);
   IoU >= 0.5 and the box not yet taken -> TP (the box is taken); otherwise FP;
3. recall = cumTP / #non-difficult boxes, precision = cumTP / (cumTP + cumFP);
4. AP, two ways: ``11pt`` (VOC2007 devkit, what mmdetection reports on VOC2007 test) = mean over
   r in {0, 0.1, ..., 1} of the highest precision at recall >= r; ``area`` (VOC2010+) = area under
   the monotone precision envelope, exact (all points).

The mean is over classes with at least one non-difficult box (as mmdetection); values in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ClassCurve:
    """Precision/recall of one class (in score order) and its APs."""

    recall: np.ndarray
    precision: np.ndarray
    num_gt: int
    ap_11pt: float
    ap_area: float


@dataclass
class VOCResult:
    map_area: float
    map_11pt: float
    per_class: dict[int, ClassCurve] = field(default_factory=dict)


def ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007: mean over 11 recall levels of the best precision at that recall or higher (0 if none)."""
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= t - 1e-12]
        total += float(above.max()) if above.size else 0.0
    return total / 11.0


def ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+: area under the precision envelope, summed where recall changes."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_map(
    detections: list[dict[str, torch.Tensor]],
    ground_truths: list[dict[str, torch.Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> VOCResult:
    """VOC AP per class and their means.

    ``detections[i]``: ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,) in 1..num_classes.
    ``ground_truths[i]``: ``boxes`` (m, 4), ``labels`` (m,), optional ``difficult`` (m,) bool.
    """
    from torchvision.ops import box_iou

    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} images")
    per_class: dict[int, ClassCurve] = {}
    for cls in range(1, num_classes + 1):
        scores, image_ids, det_boxes = [], [], []
        gt_boxes, gt_difficult = [], []
        num_gt = 0
        for i, (det, gt) in enumerate(zip(detections, ground_truths, strict=True)):
            keep = det["labels"] == cls
            scores.append(det["scores"][keep].double().cpu())
            det_boxes.append(det["boxes"][keep].double().cpu())
            image_ids.append(torch.full((int(keep.sum()),), i, dtype=torch.int64))
            gkeep = gt["labels"] == cls
            gt_boxes.append(gt["boxes"][gkeep].double().cpu())
            difficult = gt.get("difficult")
            flags = (difficult[gkeep].cpu() if difficult is not None
                     else torch.zeros(int(gkeep.sum()), dtype=torch.bool))
            gt_difficult.append(flags.bool())
            num_gt += int((~gt_difficult[-1]).sum())
        if num_gt == 0:
            continue
        # best-IoU ground truth of every detection, one IoU matrix per image
        best_iou, best_gt = [], []
        for boxes, gts in zip(det_boxes, gt_boxes, strict=True):
            if len(gts) == 0 or len(boxes) == 0:
                best_iou.append(torch.full((len(boxes),), -1.0, dtype=torch.float64))
                best_gt.append(torch.zeros(len(boxes), dtype=torch.int64))
            else:
                value, index = box_iou(boxes, gts).max(dim=1)
                best_iou.append(value)
                best_gt.append(index)
        all_scores = torch.cat(scores).numpy()
        all_images = torch.cat(image_ids).tolist()
        all_iou = torch.cat(best_iou).tolist()
        all_gt = torch.cat(best_gt).tolist()
        order = np.argsort(-all_scores, kind="stable")
        taken = [[False] * len(b) for b in gt_boxes]
        difficult_lists = [d.tolist() for d in gt_difficult]
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for rank, d in enumerate(order.tolist()):
            img, gt_index = all_images[d], all_gt[d]
            if all_iou[d] >= iou_threshold:
                if difficult_lists[img][gt_index]:
                    continue  # matched a difficult box: neither TP nor FP
                if not taken[img][gt_index]:
                    tp[rank] = 1
                    taken[img][gt_index] = True
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / num_gt
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        # ignored detections leave tp = fp = 0 on their row: drop those rows (no new point on the curve)
        counted = (tp + fp) > 0
        recall, precision = recall[counted], precision[counted]
        per_class[cls] = ClassCurve(recall, precision, num_gt, ap_11_point(recall, precision),
                                    ap_area(recall, precision))
    if not per_class:
        return VOCResult(float("nan"), float("nan"), per_class)
    return VOCResult(
        map_area=float(np.mean([c.ap_area for c in per_class.values()])),
        map_11pt=float(np.mean([c.ap_11pt for c in per_class.values()])),
        per_class=per_class,
    )


__all__ = ["ClassCurve", "VOCResult", "ap_11_point", "ap_area", "voc_map"]
