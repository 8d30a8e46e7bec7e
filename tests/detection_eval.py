"""Detection quality against ground truth: AP50 (VOC-style, 101-point), recall at IoU 0.5, false positives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cliplabel.vision import regions

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectionScores:
    ap50: float
    recall50: float
    fp_per_image: float
    n_gt: int
    n_images: int


def evaluate(detections: Sequence[Sequence[tuple[Box, str, float]]], truths: Sequence[Sequence[tuple[Box, str]]],
             iou_threshold: float = 0.5) -> DetectionScores:
    """Greedy matching by score; a detection is a true positive when label matches and IoU ≥ the threshold."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    flat = sorted(((s, i, b, lab) for i, dets in enumerate(detections) for b, lab, s in dets), key=lambda t: -t[0])
    used = [np.zeros(len(t), bool) for t in truths]
    tp = []
    for _, i, box, lab in flat:
        best, best_iou = -1, iou_threshold
        for j, (gt_box, gt_lab) in enumerate(truths[i]):
            if gt_lab != lab or used[i][j]:
                continue
            iou = float(regions.iou_matrix(np.array([box]), np.array([gt_box]))[0, 0])
            if iou >= best_iou:
                best, best_iou = j, iou
        if best >= 0:
            used[i][best] = True
        tp.append(best >= 0)
    n_gt = sum(len(t) for t in truths)
    tps = np.cumsum(tp) if tp else np.zeros(0)
    fps = np.cumsum(np.logical_not(tp)) if tp else np.zeros(0)
    recall = tps / max(n_gt, 1)
    precision = tps / np.maximum(tps + fps, 1)
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        ap += float(precision[recall >= r].max()) / 101 if (recall >= r).any() else 0.0
    return DetectionScores(ap50=ap, recall50=float(recall[-1]) if len(recall) else 0.0,
                           fp_per_image=float(fps[-1]) / max(len(truths), 1) if len(fps) else 0.0,
                           n_gt=n_gt, n_images=len(truths))
