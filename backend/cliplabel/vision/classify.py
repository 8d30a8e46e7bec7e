"""Zero-shot classification: image embeddings × class vectors → calibrated probabilities → choices.

Pure numpy.
"""

from __future__ import annotations

import numpy as np

from cliplabel.core.domain import ChoicePrediction, Control

# With `choice="multiple"` every class whose probability reaches this is chosen, unless the control sets
# `model_score_threshold`. Softmax shares the mass among the classes present, so 0.5 would miss the second of two.
DEFAULT_MULTIPLE_THRESHOLD = 0.2


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, the one the whole backend uses.

    Args:
        logits: (N, C) any float dtype.

    Returns:
        (N, C) float32, rows summing to 1. The row maximum is subtracted first and the exponentials are summed in
        float64, so CLIP's large logits (temperature ≈100) neither overflow nor lose the small classes.
    """
    if logits.ndim != 2:
        raise ValueError(f"expected (N, C) logits, got shape {logits.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def softmax_probabilities(image_emb: np.ndarray, class_vecs: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP's calibrated class probabilities.

    Args:
        image_emb: (N, D) float32, L2-normalised.
        class_vecs: (K, D) float32, L2-normalised.
        logit_scale: the softmax temperature learned with the model (≈100 for CLIP).

    Returns:
        (N, K) float32, rows summing to 1.
    """
    if image_emb.ndim != 2 or class_vecs.ndim != 2 or image_emb.shape[1] != class_vecs.shape[1]:
        raise ValueError(f"expected (N, D) and (K, D) arrays, got {image_emb.shape} and {class_vecs.shape}")
    return softmax(logit_scale * (image_emb @ class_vecs.T))


def choose(control: Control, probs: np.ndarray) -> ChoicePrediction | None:
    """The choices for one image from its (K,) class probabilities, or None when nothing reaches the threshold.

    Single choice takes the most probable class when it reaches `model_score_threshold` (default 0); multiple choice
    takes every class at or above the threshold (default `DEFAULT_MULTIPLE_THRESHOLD`), most probable first.
    """
    if probs.shape != (len(control.classes),):
        raise ValueError(f"expected {len(control.classes)} probabilities, got shape {probs.shape}")
    values = control.values
    by_class = {v: float(p) for v, p in zip(values, probs)}
    if control.multiple:
        threshold = control.score_threshold if control.score_threshold is not None else DEFAULT_MULTIPLE_THRESHOLD
        picked = [int(i) for i in np.argsort(-probs) if probs[i] >= threshold]
        if not picked:
            return None
        score = float(np.mean(probs[picked]))
    else:
        threshold = control.score_threshold or 0.0
        best = int(np.argmax(probs))
        if probs[best] < threshold:
            return None
        picked = [best]
        score = float(probs[best])
    return ChoicePrediction(from_name=control.from_name, to_name=control.to_name,
                            choices=tuple(values[i] for i in picked), score=min(max(score, 0.0), 1.0),
                            probabilities=by_class)
