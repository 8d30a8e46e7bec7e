"""Classification: image embeddings × a head (class vectors, and a memory of labelled examples) → calibrated
probabilities → choices.

`head_similarities` is the one scorer of a head: choices (`head_probabilities`), boxes and the background test
(`similarities`), training's held-out checks and re-scoring all go through it. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from cliplabel.core.domain import ChoicePrediction, Control, Head, HeadMemory

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


def normalise(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


def shifted_keys(memory: HeadMemory) -> np.ndarray:
    """(M, D) the memory's keys moved across the modality gap, so that their cosines with an image compare with the
    image's cosines with text vectors (raw image–image cosines are far higher than any image–text cosine)."""
    return normalise(memory.keys - memory.gap)


def pool_memory(sims: np.ndarray, weights: np.ndarray, starts: np.ndarray, beta: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each class's soft maximum of its keys' similarities: `(1/β)·log(Σ w·exp(β·s) / Σ w)`.

    β → 0 gives the weighted mean similarity (a prototype), β → ∞ the nearest key's (1-NN); in between, the keys
    near the image vote. Dividing by the class's total weight keeps a class with many keys from winning by number.

    Args:
        sims: (N, M) similarities of N images to M keys grouped by class. weights: (M,) or (N, M) non-negative
            (a per-image weight 0 hides a key from that image, e.g. itself when held out).
        starts: (P,) the first key of each class present, ascending.

    Returns:
        (N, P) pooled similarities (undefined where a class's weight is 0) and its total weight, (P,) or (N, P).
    """
    w = np.broadcast_to(weights, sims.shape)
    masked = np.where(w > 0, sims, -np.inf)
    top = np.maximum.reduceat(masked, starts, axis=1)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, sims.shape[1])))
    safe_top = np.where(np.isfinite(top), top, 0.0)
    expo = w * np.exp(beta * (masked - safe_top[:, seg]))
    total = np.add.reduceat(weights, starts, axis=-1)
    mass = np.add.reduceat(expo, starts, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = safe_top + np.log(mass / total) / beta
    return pooled, total


def head_similarities(image_emb: np.ndarray, head: Head, hide_identical: bool = False) -> np.ndarray:
    """The head's score of each class, in cosine units: `(1 − ρ)·cos(x, class vector) + ρ·pool(x, class keys)`.

    A class without keys in the memory (no labels) scores its class vector alone. The cost is one (N, K + M)
    matrix product and N·M exponentials, M being capped by training (`cliplabel.vision.train.MAX_MEMORY`).

    Args:
        image_emb: (N, D) float32, L2-normalised.
        hide_identical: a key equal to the image (cosine ≥ 1 − 1e-6) is left out of its pool: how training judges a
            head on the very examples it remembers without counting the remembering as skill.

    Returns:
        (N, K) float32.
    """
    if image_emb.ndim != 2 or image_emb.shape[1] != head.class_vecs.shape[1]:
        raise ValueError(f"expected (N, {head.class_vecs.shape[1]}) embeddings, got {image_emb.shape}")
    sims = image_emb @ head.class_vecs.T
    mem = head.memory
    if mem is None:
        return sims.astype(np.float32)
    present, starts = np.unique(mem.labels, return_index=True)
    weights: np.ndarray = mem.weights
    if hide_identical:
        weights = np.where(image_emb @ mem.keys.T >= 1.0 - 1e-6, 0.0, mem.weights[None, :])
    pooled, total = pool_memory(image_emb @ shifted_keys(mem).T, weights, starts, mem.beta)
    mixed = (1.0 - mem.ratio) * sims[:, present] + mem.ratio * pooled
    out = sims.astype(np.float32)
    out[:, present] = np.where(np.broadcast_to(total, pooled.shape) > 0, mixed, sims[:, present])
    return out


def head_probabilities(image_emb: np.ndarray, head: Head) -> np.ndarray:
    """(N, K) float32 class probabilities, rows summing to 1: the softmax of `head_similarities` at the head's
    temperature (for a head without memory, exactly `softmax_probabilities(emb, class_vecs, logit_scale)`)."""
    return softmax(head.logit_scale * head_similarities(image_emb, head))


def similarities(image_emb: np.ndarray, head: Head, background_vecs: np.ndarray) -> np.ndarray:
    """(N, K + B) float32: the head's class scores, then cosines with each background vector (B, D): what the box
    path's pairwise margins and the background test read."""
    return np.concatenate([head_similarities(image_emb, head), image_emb @ background_vecs.T], axis=1)


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
