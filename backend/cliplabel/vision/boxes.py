"""Crop scores → boxes: background competition, tight-box preference, NMS, caps.

Pure numpy. The crop embeddings come from `cliplabel.model.embeddings`, the proposals from `cliplabel.vision.proposals`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cliplabel.vision import classify, regions


@dataclass(frozen=True)
class BoxParams:
    """Knobs of the box path (the README lists the defaults with their measured cost)."""

    max_crops: int = 128
    pad_frac: float = 0.1
    min_side_frac: float = 0.04
    max_area_frac: float = 0.95
    max_aspect: float = 4.0
    dedupe_iou: float = 0.9
    nms_iou: float = 0.4
    cross_class_iou: float = 0.7
    max_boxes: int = 20
    default_threshold: float = 0.5
    tight_containment: float = 0.9
    tight_margin: float = 0.1

    def __post_init__(self) -> None:
        if self.max_crops < 1 or self.max_boxes < 1:
            raise ValueError("max_crops and max_boxes must be at least 1")
        for name in ("nms_iou", "cross_class_iou", "default_threshold", "tight_containment", "dedupe_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class Detection:
    bbox_xyxy: tuple[float, float, float, float]
    label_index: int
    score: float


def select_proposals(boxes_xyxy: np.ndarray, image_wh: tuple[int, int], params: BoxParams) -> np.ndarray:
    """Filtered, de-duplicated proposals, at most `max_crops` of them (earlier proposals first).

    Returns:
        (M, 4) xyxy pixel boxes.
    """
    b = regions.clip_boxes(boxes_xyxy, image_wh)
    idx = regions.filter_proposals(b, image_wh, min_side_px=params.min_side_frac * min(image_wh),
                                   max_area_frac=params.max_area_frac, max_aspect=params.max_aspect,
                                   dedupe_iou=params.dedupe_iou)
    return b[idx[:params.max_crops]]


def class_and_background_probs(crop_emb: np.ndarray, class_vecs: np.ndarray, background_vecs: np.ndarray,
                               logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the K classes and the B background ensembles together.

    Args:
        crop_emb: (N, D) L2-normalised crop embeddings.
        class_vecs: (K, D) class vectors; background_vecs: (B, D) background vectors.

    Returns:
        (N, K) class probabilities and (N,) total background probability; each row of both sums to 1.
    """
    all_vecs = np.concatenate([class_vecs, background_vecs])
    p = classify.softmax(logit_scale * (crop_emb @ all_vecs.T))
    k = len(class_vecs)
    return p[:, :k], p[:, k:].sum(axis=1)


def confident(class_probs: np.ndarray, background_prob: np.ndarray, threshold: float | None,
              params: BoxParams) -> np.ndarray:
    """Indices of the crops whose best class beats the background and reaches the threshold.

    Args:
        class_probs: (N, K); background_prob: (N,), as `class_and_background_probs` returns them.
        threshold: the control's `model_score_threshold`; None means `params.default_threshold`.

    Returns:
        (M,) int64 indices, ascending.
    """
    scores = class_probs.max(axis=1) if len(class_probs) else np.zeros(0, np.float32)
    thr = params.default_threshold if threshold is None else threshold
    return np.flatnonzero((scores > background_prob) & (scores >= thr))


def detect(boxes_xyxy: np.ndarray, class_probs: np.ndarray, background_prob: np.ndarray, threshold: float | None,
           params: BoxParams) -> list[Detection]:
    """Keeps crops whose best class beats background and the threshold, prefers tight boxes, then NMS and a cap.

    Tight-box preference: CLIP scores a loose crop that contains an object about as high as a tight one. When a kept
    box of the same class lies (almost) wholly inside a larger kept box and scores nearly as well, the larger box is
    the loose one and is dropped.
    """
    b = regions.as_boxes(boxes_xyxy)
    if len(b) == 0:
        return []
    labels = class_probs.argmax(axis=1)
    scores = class_probs[np.arange(len(b)), labels]
    keep = confident(class_probs, background_prob, threshold, params)
    if len(keep) == 0:
        return []
    b, labels, scores = b[keep], labels[keep], scores[keep]
    contain = regions.containment_matrix(b, b)  # [i, j]: share of box i inside box j
    area = regions.areas(b)
    loose = np.zeros(len(b), bool)
    for j in range(len(b)):
        inner = (contain[:, j] >= params.tight_containment) & (labels == labels[j]) & (area < area[j])
        inner &= scores >= scores[j] - params.tight_margin
        loose[j] = bool(inner.any())
    idx = np.flatnonzero(~loose)
    b, labels, scores = b[idx], labels[idx], scores[idx]
    kept = regions.classwise_nms(b, scores, labels, params.nms_iou)
    kept = kept[regions.nms(b[kept], scores[kept], params.cross_class_iou)]
    kept = kept[:params.max_boxes]
    out = []
    for i in kept:
        x0, y0, x1, y1 = (float(v) for v in b[i])
        out.append(Detection(bbox_xyxy=(x0, y0, x1, y1), label_index=int(labels[i]), score=float(scores[i])))
    return out
