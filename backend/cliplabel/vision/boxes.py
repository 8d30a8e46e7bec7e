"""Crop scores → boxes: pairwise label margins, the whole-object (context) test, tight-box preference, NMS, caps.

What a box score means, on every CLIP: `margin_probs` is the probability, at the model's own temperature (its
logit scale), that the crop's best class beats its strongest competitor — any other class or any background vector —
in a two-way comparison. It does not shrink as the label config grows (no K-way softmax), and it needs no prompt the
model must have learned beyond the class names and a background ensemble. `context_probs` asks the same two-way
question of the box's surroundings with the box greyed out: a box that cut through an object still sees its class
there. The final score is `margin × (1 − context)`: confident *and* whole.

Pure numpy. The crop embeddings come from `cliplabel.model.embeddings`, the proposals from `cliplabel.vision.proposals`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cliplabel.vision import classify, regions


@dataclass(frozen=True)
class BoxParams:
    """Knobs of the box path (the README lists the defaults with their measured cost).

    How each threshold is set, on any CLIP: the score thresholds are probabilities of two-way comparisons at the
    model's own logit scale (its learned temperature is its calibration), so they mean the same odds on every model
    and never depend on the number of classes: `default_margin_threshold` 0.9 = the class beats its strongest rival at
    odds ≥ 9:1; `context_threshold` 0.2 = the box's surroundings show its class rather than background at odds < 1:4;
    `tight_margin` is a difference of such probabilities. The IoU and containment thresholds are geometry.
    `pad_frac`: each proposal is scored on a square crop 1.65× its long side, centred on it: with a 10 % margin
    (the previous default) both test models misread small and thin shapes (bench/bench_boxes.py, variant `pad-0.1`).
    """

    max_crops: int = 128
    pad_frac: float = 0.65
    min_side_frac: float = 0.04
    max_area_frac: float = 0.95
    max_aspect: float = 4.0
    dedupe_iou: float = 0.9
    nms_iou: float = 0.4
    cross_class_iou: float = 0.7
    max_boxes: int = 20
    default_threshold: float = 0.5
    default_margin_threshold: float = 0.9
    context_threshold: float = 0.2
    tight_containment: float = 0.9
    tight_margin: float = 0.02

    def __post_init__(self) -> None:
        if self.max_crops < 1 or self.max_boxes < 1:
            raise ValueError("max_crops and max_boxes must be at least 1")
        for name in ("nms_iou", "cross_class_iou", "default_threshold", "default_margin_threshold",
                     "context_threshold", "tight_containment", "dedupe_iou"):
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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), np.float64)


def margin_probs(crop_emb: np.ndarray, class_vecs: np.ndarray, background_vecs: np.ndarray, logit_scale: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`margin_from_similarities` of plain class vectors (no memory).

    Args:
        crop_emb: (N, D) L2-normalised crop embeddings.
        class_vecs: (K, D) class vectors; background_vecs: (B, D), B ≥ 1.
        logit_scale: the model's temperature (the scale of its logits).
    """
    sims = crop_emb @ np.concatenate([class_vecs, background_vecs]).T
    return margin_from_similarities(sims, len(class_vecs), logit_scale)


def margin_from_similarities(sims: np.ndarray, n_classes: int, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Each crop's best class and the two-way probability that it beats its strongest competitor.

    Args:
        sims: (N, K + B) the crops' class scores then background cosines (`classify.similarities`), B ≥ 1.
        n_classes: K.
        logit_scale: the model's temperature (the scale of its logits).

    Returns:
        (N,) int64 labels and (N,) float64 `sigmoid(scale × (cos(best class) − max cos(other class or background)))`.
    """
    if len(sims) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    labels = sims[:, :n_classes].argmax(axis=1)
    rows = np.arange(len(sims))
    best = sims[rows, labels].astype(np.float64)
    rivals = sims.astype(np.float64).copy()
    rivals[rows, labels] = -np.inf
    return labels.astype(np.int64), _sigmoid(logit_scale * (best - rivals.max(axis=1)))


def context_probs(context_emb: np.ndarray, labels: np.ndarray, class_vecs: np.ndarray, background_vecs: np.ndarray,
                  logit_scale: float) -> np.ndarray:
    """`context_from_similarities` of plain class vectors (no memory); context_emb: (N, D) L2-normalised."""
    sims = context_emb @ np.concatenate([class_vecs, background_vecs]).T
    return context_from_similarities(sims, labels, len(class_vecs), logit_scale)


def context_from_similarities(sims: np.ndarray, labels: np.ndarray, n_classes: int, logit_scale: float
                              ) -> np.ndarray:
    """The two-way probability that a box's surroundings (box greyed out) still show its label rather than background.

    High for a box that cut through its object (the rest is visible around it), low for a whole one.

    Args:
        sims: (N, K + B) the masked context crops' class scores then background cosines (`classify.similarities`).
        labels: (N,) class indices. n_classes: K.

    Returns:
        (N,) float64.
    """
    if len(sims) == 0:
        return np.zeros(0, np.float64)
    label_sim = sims[np.arange(len(sims)), labels].astype(np.float64)
    bg_sim = sims[:, n_classes:].max(axis=1).astype(np.float64)
    return _sigmoid(logit_scale * (label_sim - bg_sim))


def detect(boxes_xyxy: np.ndarray, labels: np.ndarray, margin: np.ndarray, context: np.ndarray | None,
           threshold: float | None, params: BoxParams) -> list[Detection]:
    """Keeps confident, whole boxes, prefers tight ones, then NMS and a cap.

    Args:
        boxes_xyxy: (N, 4) proposals; labels, margin: (N,) as `margin_probs` returns them.
        context: (N,) `context_probs` (only entries of boxes with margin ≥ threshold are read), or None when the
            context test is off.
        threshold: the control's `model_score_threshold` on the margin probability; None means
            `params.default_margin_threshold`.

    A box is kept when its margin probability reaches the threshold and its context probability stays under
    `params.context_threshold`; its score is `margin × (1 − context)`. Tight-box preference: CLIP scores a loose crop
    that contains an object about as high as a tight one. When a kept box of the same class lies (almost) wholly
    inside a larger kept box and scores nearly as well, the larger box is the loose one and is dropped.
    """
    b = regions.as_boxes(boxes_xyxy)
    if len(b) == 0:
        return []
    thr = params.default_margin_threshold if threshold is None else threshold
    ctx = np.zeros(len(b), np.float64) if context is None else np.asarray(context, np.float64)
    keep = np.flatnonzero((margin >= thr) & (ctx < params.context_threshold))
    if len(keep) == 0:
        return []
    b, labels, scores = b[keep], labels[keep], (margin * (1.0 - ctx))[keep]
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
