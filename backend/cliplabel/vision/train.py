"""Learning from feedback, as pure functions: (zero-shot vectors, labelled embeddings, current head) → new head.

1. Prompt weights: within each class ensemble, prompts that sit closer to the class's labelled examples weigh more
   (blended with uniform weights, so one lucky prompt cannot take over).
2. An anchored few-shot head: each class vector is `normalise((1 − α)·text + α·prototype)`, the prototype being the
   mean of the class's labelled embeddings. α = 0 is zero-shot; the blend keeps the head anchored to the text
   weights (unanchored adapters can fall below zero-shot with few labels).
3. Background learned from rejected boxes: their embeddings become extra background vectors.

Image embeddings sit much closer to each other than to any text embedding (CLIP's modality gap), so a raw image
prototype beside text vectors would outscore every text-only class, the background and the "part of" prompts.
Prototypes and background exemplars are therefore moved across the gap (minus the mean image embedding, plus the
mean class text vector) before they meet text vectors.
4. α and the temperature are chosen by leave-one-out on the feedback; the new head is accepted only if its
   leave-one-out accuracy is at least the current head's accuracy on the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cliplabel.core.domain import Head
from cliplabel.vision import classify

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
SCALE_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
MAX_BACKGROUND_EXEMPLARS = 64
PROMPT_WEIGHT_SHARPNESS = 50.0
MIN_EXAMPLES = 2


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Examples:
    """Labelled embeddings of one control: (N, D) L2-normalised, labels index the head's classes, −1 = background."""

    embeddings: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.labels.shape != (len(self.embeddings),):
            raise ValueError(f"embeddings {self.embeddings.shape} and labels {self.labels.shape} do not match")


@dataclass(frozen=True)
class TrainResult:
    head: Head
    accepted: bool
    metrics: dict[str, float]
    reason: str


def prompt_weights(prompt_emb: np.ndarray, class_examples: np.ndarray) -> np.ndarray:
    """Weights of one class's prompts: half uniform, half a softmax of how close each prompt is to the examples.

    Args:
        prompt_emb: (P, D) the class's prompt embeddings. class_examples: (n, D) its labelled embeddings.

    Returns:
        (P,) non-negative weights summing to 1 (uniform when there are no examples).
    """
    p = len(prompt_emb)
    uniform = np.full(p, 1.0 / p)
    if len(class_examples) == 0 or p == 1:
        return uniform
    affinity = (prompt_emb @ class_examples.T).mean(axis=1)
    return 0.5 * uniform + 0.5 * classify.softmax(PROMPT_WEIGHT_SHARPNESS * affinity[None, :])[0]


def ensemble_vectors(prompt_embs: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> np.ndarray:
    """(K, D) normalised weighted means of each class's (P_k, D) prompt embeddings."""
    return _normalise(np.stack([(w[:, None] * e).sum(axis=0) for e, w in zip(prompt_embs, weights)]))


def _probs(emb: np.ndarray, class_vecs: np.ndarray, background: np.ndarray, scale: float) -> np.ndarray:
    vecs = np.concatenate([class_vecs, background]) if len(background) else class_vecs
    p = classify.softmax(scale * emb @ vecs.T)
    k = len(class_vecs)
    # column K sums every background vector: "not one of our classes"
    return np.concatenate([p[:, :k], p[:, k:].sum(axis=1, keepdims=True)], axis=1)


def _predicted(probs: np.ndarray) -> np.ndarray:
    """Class index, or −1 when the background column wins."""
    k = probs.shape[1] - 1
    best = probs.argmax(axis=1)
    return np.where(best == k, -1, best)


def evaluate_head(head: Head, examples: Examples, fixed_background: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of a head on examples (background examples must lose to background)."""
    bg = np.concatenate([fixed_background, head.background_vecs]) if len(head.background_vecs) else fixed_background
    probs = _probs(examples.embeddings, head.class_vecs, bg, head.logit_scale)
    target = np.where(examples.labels < 0, probs.shape[1] - 1, examples.labels)
    acc = float(np.mean(_predicted(probs) == examples.labels))
    nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(target)), target], 1e-12))))
    return acc, nll


def modality_gap(examples: Examples, text_vecs: np.ndarray) -> np.ndarray:
    """(D,) mean image embedding minus mean class text vector."""
    return (examples.embeddings.mean(axis=0) - text_vecs.mean(axis=0)).astype(np.float32)


def _background_exemplars(x_bg: np.ndarray, gap: np.ndarray) -> np.ndarray:
    if len(x_bg) == 0 or MAX_BACKGROUND_EXEMPLARS == 0:
        return np.zeros((0, x_bg.shape[1]), np.float32)
    return _normalise(x_bg[-MAX_BACKGROUND_EXEMPLARS:] - gap)


def _loo_probs(text_vecs: np.ndarray, examples: Examples, alpha: float, scale: float, fixed_background: np.ndarray,
               gap: np.ndarray) -> np.ndarray:
    """Leave-one-out probabilities: example i is scored by a head built without it."""
    x, y = examples.embeddings, examples.labels
    k = len(text_vecs)
    sums = np.zeros_like(text_vecs, dtype=np.float64)
    counts = np.zeros(k)
    for c in range(k):
        sums[c] = x[y == c].sum(axis=0)
        counts[c] = (y == c).sum()
    bg_ex = x[y < 0]
    out = np.empty((len(x), k + 1))
    for i in range(len(x)):
        s, n = sums.copy(), counts.copy()
        if y[i] >= 0:
            s[y[i]] -= x[i]
            n[y[i]] -= 1
        proto = _normalise(_normalise(s / np.maximum(n, 1)[:, None]) - gap)
        blend = np.where((n > 0)[:, None], (1 - alpha) * text_vecs + alpha * proto, text_vecs)
        learned_bg = bg_ex if y[i] >= 0 else bg_ex[np.any(bg_ex != x[i], axis=1)]
        bg = np.concatenate([fixed_background, _background_exemplars(learned_bg, gap)])
        out[i] = _probs(x[i:i + 1], _normalise(blend), bg, scale)[0]
    return out


def fit(from_name: str, labels: Sequence[str], prompt_embs: Sequence[np.ndarray], examples: Examples,
        current: Head, fixed_background: np.ndarray, base_logit_scale: float,
        scale_factors: Sequence[float] = SCALE_FACTORS) -> TrainResult:
    """Fits a new head for one control and decides whether it replaces `current`.

    Args:
        prompt_embs: per class, (P_k, D) embeddings of its prompts (the zero-shot ensemble).
        examples: the control's feedback. current: the head served now (zero-shot at first).
        fixed_background: (B0, D) background vectors that always apply (the background prompt ensembles).
        base_logit_scale: the encoder's own temperature.
        scale_factors: temperatures tried, as multiples of `base_logit_scale`.

    Raises:
        ValueError: `scale_factors` is empty.
    """
    if not scale_factors:
        raise ValueError("fit needs at least one temperature factor to try")
    y = examples.labels
    labelled = int((y >= 0).sum())
    if len(y) < MIN_EXAMPLES:
        return TrainResult(current, False, {"examples": float(len(y))}, f"fewer than {MIN_EXAMPLES} examples")
    weights = [prompt_weights(e, examples.embeddings[y == c]) for c, e in enumerate(prompt_embs)]
    text_vecs = ensemble_vectors(prompt_embs, weights)
    gap = modality_gap(examples, text_vecs)
    tried: list[tuple[float, float, float, float]] = []  # (accuracy, -nll, -alpha, scale)
    for alpha in ALPHAS:
        for factor in scale_factors:
            scale = base_logit_scale * factor
            probs = _loo_probs(text_vecs, examples, alpha, scale, fixed_background, gap)
            target = np.where(y < 0, probs.shape[1] - 1, y)
            acc = float(np.mean(_predicted(probs) == y))
            nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), target], 1e-12))))
            # Ties go to the smaller α: closer to zero-shot is the safer head.
            tried.append((acc, -nll, -alpha, scale))
    acc, neg_nll, neg_alpha, scale = max(tried)
    alpha = -neg_alpha
    proto = np.stack([_normalise(_normalise(examples.embeddings[y == c].mean(axis=0)) - gap) if (y == c).any()
                      else text_vecs[c] for c in range(len(labels))])
    class_vecs = _normalise((1 - alpha) * text_vecs + alpha * proto)
    background = _background_exemplars(examples.embeddings[y < 0], gap)
    head = Head(from_name=from_name, labels=tuple(labels), class_vecs=class_vecs, background_vecs=background,
                logit_scale=float(scale), alpha=float(alpha))
    current_acc, current_nll = evaluate_head(current, examples, fixed_background)
    metrics = {"examples": float(len(y)), "labelled": float(labelled), "background": float(len(y) - labelled),
               "loo_accuracy": acc, "loo_nll": -neg_nll, "current_accuracy": current_acc,
               "current_nll": current_nll, "alpha": float(alpha), "logit_scale": float(scale)}
    if acc + 1e-9 < current_acc:
        return TrainResult(current, False, metrics,
                           f"held-out accuracy {acc:.3f} is below the current head's {current_acc:.3f}")
    return TrainResult(head, True, metrics, "accepted")
