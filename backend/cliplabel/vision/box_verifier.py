"""A box verifier learned from annotated scenes: which of the detector's candidate boxes does an annotator keep?

Zero-shot box scores say "this crop shows class c" (`boxes.margin_from_similarities`), not "this is the box around
one whole object". CLIP scores a loose box around an object, a box over half of it or one that spans two objects
nearly as high as the tight box, so most false boxes on the test scenes overlap a real object at IoU 0.1–0.5
(bench/bench_learning.py, boxes). What an annotator keeps and deletes says which of those a project wants, so a
retrain fits a small logistic model on every candidate of the annotated scenes (margin ≥ `MIN_MARGIN`):
positive when it matches a kept box (same label, IoU ≥ 0.5), negative otherwise. Its features are the box's own
scores and how it sits among the other candidates:
- the margin probability and the context probability (`boxes.context_from_similarities`), as logits;
- the box's elongation (|log aspect|);
- the largest IoU with a higher-scoring candidate, the largest share of a same-label candidate inside it, and the
  largest share of it inside a same-label candidate;
- support: how many candidates (of any label, and of its own label) overlap it at IoU > 0.5. A real object is found
  by many proposals, a stray box by few.
The verifier's probability replaces the margin as the box score (so NMS keeps the better-placed box), and boxes are
kept at a probability threshold chosen on held-out annotated scenes (`cliplabel.services.feedback.box_gate`).
Fitted with scikit-learn's L2-regularised logistic regression (deterministic lbfgs) on standardised features.

Pure numpy (and scikit-learn for the fit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from cliplabel.core.domain import BoxVerifier
from cliplabel.vision import boxes, regions

# Candidates are boxes with at least this margin probability (even odds against the strongest rival): the verifier
# sees the boxes the default threshold (0.9) drops too, so a well-placed box that CLIP scored lower can come back.
MIN_MARGIN = 0.5
# Probability thresholds a verified head may choose among on annotated scenes.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MATCH_IOU = 0.5
# Fewer kept or deleted candidates than this on the training scenes: no verifier (the fit would be luck).
MIN_EACH = 8
# Inverse L2 strength on standardised features: a handful of features and hundreds of candidates, so mild.
C = 1.0
N_FEATURES = 8


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)))


def candidates(margin: np.ndarray) -> np.ndarray:
    """Indices of the proposals the verifier scores (margin ≥ `MIN_MARGIN`), ascending."""
    return np.flatnonzero(np.asarray(margin) >= MIN_MARGIN)


def features(boxes_xyxy: np.ndarray, labels: np.ndarray, margin: np.ndarray, context: np.ndarray) -> np.ndarray:
    """(N, `N_FEATURES`) features of N candidate boxes of one image (see the module's docstring).

    Args:
        boxes_xyxy: (N, 4) candidates; labels, margin, context: (N,) their best class, margin and context
            probabilities (context 0 where the context test is off).
    """
    b = regions.as_boxes(boxes_xyxy)
    n = len(b)
    if n == 0:
        return np.zeros((0, N_FEATURES), np.float64)
    margin = np.asarray(margin, np.float64)
    iou = regions.iou_matrix(b, b)
    np.fill_diagonal(iou, 0.0)
    inside = regions.containment_matrix(b, b)  # [i, j]: share of box i inside box j
    np.fill_diagonal(inside, 0.0)
    same = labels[None, :] == labels[:, None]
    higher = margin[None, :] > margin[:, None]  # [i, j]: j scores higher than i
    w = np.maximum(b[:, 2] - b[:, 0], 1e-6)
    h = np.maximum(b[:, 3] - b[:, 1], 1e-6)
    overlapping = iou > 0.5
    return np.stack([_logit(margin), _logit(context), np.abs(np.log(w / h)),
                     (iou * higher).max(axis=1), (inside.T * same).max(axis=1), (inside * same).max(axis=1),
                     overlapping.sum(axis=1) / 10.0, (overlapping & same).sum(axis=1) / 10.0], axis=1)


def kept(boxes_xyxy: np.ndarray, labels: np.ndarray, truth_xyxy: np.ndarray, truth_labels: np.ndarray) -> np.ndarray:
    """(N,) bool: which candidates match a kept box (same label, IoU ≥ 0.5): the verifier's training target."""
    if len(boxes_xyxy) == 0 or len(truth_labels) == 0:
        return np.zeros(len(boxes_xyxy), bool)
    iou = regions.iou_matrix(regions.as_boxes(boxes_xyxy), regions.as_boxes(truth_xyxy))
    return np.asarray(((iou >= MATCH_IOU) & (labels[:, None] == truth_labels[None, :])).any(axis=1))


def fit(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> BoxVerifier | None:
    """The verifier fitted on the candidates of some annotated scenes (per scene: features, kept); None when fewer
    than `MIN_EACH` candidates were kept or deleted."""
    xs = np.concatenate([np.asarray(v, np.float64).reshape(-1, N_FEATURES) for v in x])
    ys = np.concatenate([np.asarray(v, bool) for v in y])
    if int(ys.sum()) < MIN_EACH or int((~ys).sum()) < MIN_EACH:
        return None
    mean, scale = xs.mean(axis=0), xs.std(axis=0) + 1e-6
    model = LogisticRegression(C=C, max_iter=1000).fit((xs - mean) / scale, ys)
    # float32 values: heads are stored as float32 matrices, so the verifier served is exactly the one judged.
    return BoxVerifier(mean=_f32(mean), scale=_f32(scale), coef=_f32(model.coef_[0]),
                       intercept=float(model.intercept_[0]))


def _f32(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float64)


def probability(verifier: BoxVerifier, x: np.ndarray) -> np.ndarray:
    """(N,) the probability that an annotator keeps each candidate, from its (N, `N_FEATURES`) features."""
    if len(x) == 0:
        return np.zeros(0, np.float64)
    z = ((x - verifier.mean) / verifier.scale) @ verifier.coef + verifier.intercept
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), np.float64)


def detect(boxes_xyxy: np.ndarray, labels: np.ndarray, margin: np.ndarray, context: np.ndarray | None,
           threshold: float, params: boxes.BoxParams, verifier: BoxVerifier | None) -> list[boxes.Detection]:
    """`boxes.detect`, or with a verifier: its probability is the score of every candidate (context probabilities
    are read for candidates only), the threshold applies to it, and the context test is one of its features."""
    if verifier is None:
        return boxes.detect(boxes_xyxy, labels, margin, context, threshold, params)
    cand = candidates(margin)
    if len(cand) == 0:
        return []
    ctx = np.zeros(len(cand)) if context is None else np.asarray(context, np.float64)[cand]
    b, lab = regions.as_boxes(boxes_xyxy)[cand], labels[cand]
    p = probability(verifier, features(b, lab, margin[cand], ctx))
    return boxes.detect(b, lab, p, None, threshold, params)
