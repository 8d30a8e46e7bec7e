"""Learning from feedback, as pure functions: (zero-shot vectors, labelled embeddings, current head) → new head.

1. Prompt weights: within each class ensemble, prompts that sit closer to the class's labelled examples weigh more
   (blended with uniform weights, so one lucky prompt cannot take over).
2. Anchored class vectors: each is `normalise((1 − α)·text + α·prototype)`, the prototype being the mean of the
   class's labelled embeddings. α = 0 is zero-shot; the blend keeps the head anchored to the text weights
   (unanchored adapters can fall below zero-shot with few labels).
3. A memory of what annotators labelled (Tip-Adapter's key–value cache, read as a soft nearest-neighbour vote): a
   labelled class scores `(1 − ρ)·cos(x, class vector) + ρ·pool_β(cos(x, its keys))`, `pool_β` running from the
   mean of its keys (β small: one prototype) to the nearest key (β large), so a class of several looks is learned.
   The memory's share ρ < 1 keeps the text anchor in every score, and a key is one vote among its class's keys, so a
   wrong label moves little. A class with many examples keeps at most `MAX_MEMORY // classes` keys (capped at
   `MAX_KEYS_PER_CLASS`): the centroids of a small spherical k-means, each weighted by its members.
4. Background learned from rejected boxes: their embeddings become extra background vectors.

Image embeddings sit much closer to each other than to any text embedding (CLIP's modality gap), so a raw image
prototype or key beside text vectors would outscore every text-only class, the background and the "part of" prompts.
Prototypes, keys and background exemplars are therefore moved across the gap (minus the mean image embedding, plus
the mean class text vector) before they meet text vectors.

5. α, ρ, β and the temperature are chosen by leave-one-out on the feedback (vectorised: each example is scored by
   the head built without it, in a few matrix products). A learned configuration is chosen over text-only only when
   it is right on clearly more held-out examples (a sign test, `SIGNIFICANCE_Z`): with a few, partly wrong labels,
   the best of many configurations is partly luck, and luck must not take a head below zero-shot. The new head is
   accepted only if its leave-one-out accuracy is at least the current head's accuracy on the same examples (the
   current head's memory hides each example's own key from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cliplabel.core.domain import Head, HeadMemory
from cliplabel.vision import classify

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
SCALE_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
RATIOS = (0.25, 0.5, 0.75, 0.9)  # the memory's share ρ; never 1: the text anchor stays in every labelled score
BETAS = (1.0, 3.0, 10.0, 30.0, 100.0)
# Scoring costs one (N, K + M) product: 256 keys keep a 100k-task re-score at ViT-B/32's D = 512 a matrix product.
MAX_MEMORY = 256
MAX_KEYS_PER_CLASS = 16
KMEANS_ITERATIONS = 10
MAX_BACKGROUND_EXEMPLARS = 64
PROMPT_WEIGHT_SHARPNESS = 50.0
MIN_EXAMPLES = 2
# How clearly a learned configuration must beat text-only on held-out examples before it is chosen: by a sign test
# on the examples where they differ (this many standard deviations), and without a worse held-out likelihood. With
# ~46 configurations tried, the best of them on a few noisy labels is partly luck; 2.5 would be safer still but
# misses a class of two looks when text-only happens to be right on 18 of 24 examples.
SIGNIFICANCE_Z = 2.0

_normalise = classify.normalise


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


def _scores(class_sims: np.ndarray, bg_sims: np.ndarray, y: np.ndarray, scales: Sequence[float]
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per temperature: which examples are right ((N,) bool) and each one's log-likelihood ((N,) float), from (N, K)
    class and (N, B) background similarities; the background column sums every background vector's probability
    ("not one of our classes")."""
    sims = np.concatenate([class_sims, bg_sims], axis=1).astype(np.float32)
    sims -= sims.max(axis=1, keepdims=True)
    k, rows = class_sims.shape[1], np.arange(len(y))
    target = np.where(y < 0, k, y)
    if not bg_sims.shape[1]:
        target = np.minimum(target, k - 1)  # no background column: a background example cannot be right anyway
        hits = sims.argmax(axis=1) == y  # the same at every temperature
    out = []
    for scale in scales:
        expo = np.exp(scale * sims)
        log_z = np.log(expo.sum(axis=1, dtype=np.float64))
        if bg_sims.shape[1]:
            cols = np.concatenate([expo[:, :k], expo[:, k:].sum(axis=1, keepdims=True)], axis=1)
            best = cols.argmax(axis=1)
            hits = np.where(best == k, -1, best) == y
            log_p = np.log(np.maximum(cols[rows, target], 1e-30)) - log_z
        else:
            log_p = scale * sims[rows, target] - log_z
        out.append((hits, np.maximum(log_p, np.log(1e-12))))
    return out


def evaluate_head(head: Head, examples: Examples, fixed_background: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of a head on examples (background examples must lose to background).

    Scored by `classify.head_similarities`, hiding from each example its own key in the head's memory.
    """
    bg = np.concatenate([fixed_background, head.background_vecs]) if len(head.background_vecs) else fixed_background
    x = examples.embeddings
    ((hits, log_p),) = _scores(classify.head_similarities(x, head, hide_identical=True), x @ bg.T, examples.labels,
                               [head.logit_scale])
    return float(np.mean(hits)), float(-np.mean(log_p))


def modality_gap(examples: Examples, text_vecs: np.ndarray) -> np.ndarray:
    """(D,) mean image embedding minus mean class text vector."""
    return (examples.embeddings.mean(axis=0) - text_vecs.mean(axis=0)).astype(np.float32)


def _background_exemplars(x_bg: np.ndarray, gap: np.ndarray) -> np.ndarray:
    if len(x_bg) == 0 or MAX_BACKGROUND_EXEMPLARS == 0:
        return np.zeros((0, x_bg.shape[1]), np.float32)
    return _normalise(x_bg[-MAX_BACKGROUND_EXEMPLARS:] - gap)


def _group_sums(x: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, D) float32 sum of the rows of (N, D) `x` in each group (one product, not a Python loop)."""
    onehot = np.zeros((n_groups, len(groups)), np.float32)
    onehot[groups, np.arange(len(groups))] = 1.0
    return onehot @ x.astype(np.float32)


def _spherical_kmeans(x: np.ndarray, k: int) -> np.ndarray:
    """(n,) cluster of each of the (n, D) rows, k ≤ n clusters; deterministic (farthest-point start, from the row
    nearest the mean direction), so the same feedback always gives the same head."""
    first = int(np.argmax(x @ x.sum(axis=0)))
    centres = [first]
    nearest = x @ x[first]
    for _ in range(1, k):
        nxt = int(np.argmin(nearest))
        centres.append(nxt)
        nearest = np.maximum(nearest, x @ x[nxt])
    c = x[centres]
    assign = np.argmax(x @ c.T, axis=1)
    for _ in range(KMEANS_ITERATIONS):
        sums = _group_sums(x, assign, k)
        filled = np.bincount(assign, minlength=k) > 0
        c = np.where(filled[:, None], _normalise(sums), c)
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    return np.unique(assign, return_inverse=True)[1].reshape(-1)  # renumbered: no empty clusters


@dataclass(frozen=True)
class _Memory:
    """The memory built from all labelled examples: per key its class, member count and member sum (N_mem, D)."""

    labels: np.ndarray  # (M,) ascending
    counts: np.ndarray  # (M,)
    sums: np.ndarray  # (M, D) float32
    key_of: np.ndarray  # (N,) the key each example belongs to, −1 for background examples


def _build_memory(x: np.ndarray, y: np.ndarray, n_classes: int) -> _Memory:
    labelled_classes = [c for c in range(n_classes) if (y == c).any()]
    per_class = max(1, min(MAX_KEYS_PER_CLASS, MAX_MEMORY // max(1, len(labelled_classes))))
    key_of = np.full(len(y), -1)
    labels: list[int] = []
    for c in labelled_classes:
        idx = np.flatnonzero(y == c)
        assign = np.arange(len(idx)) if len(idx) <= per_class else _spherical_kmeans(x[idx], per_class)
        key_of[idx] = len(labels) + assign
        labels.extend([c] * (int(assign.max()) + 1))
    m = len(labels)
    sums = _group_sums(x[key_of >= 0], key_of[key_of >= 0], m)
    return _Memory(np.array(labels, np.int64), np.bincount(key_of[key_of >= 0], minlength=m).astype(np.float64),
                   sums, key_of)


def _own_direction(sums: np.ndarray, x: np.ndarray, rows: np.ndarray, owner: np.ndarray,
                   counts: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """(len(rows),) cosine of each held-out example with its own group's shifted mean direction without it (0 where
    the group had only it)."""
    rest = sums[owner] - x[rows]
    direction = _normalise(_normalise(rest) - gap)
    return np.where(counts[owner] > 1, np.einsum("nd,nd->n", x[rows], direction), 0.0)


class _LeaveOneOut:
    """Every piece of the leave-one-out scores that does not depend on the hyper-parameters, computed once."""

    def __init__(self, text_vecs: np.ndarray, examples: Examples, fixed_background: np.ndarray,
                 gap: np.ndarray) -> None:
        x, y = examples.embeddings.astype(np.float32), examples.labels
        k = len(text_vecs)
        self.x, self.y, self.text, self.gap = x, y, text_vecs, gap
        rows = np.flatnonzero(y >= 0)
        self.rows, self.own = rows, y[rows]
        self.class_n = np.bincount(y[rows], minlength=k).astype(np.float64)
        self.class_sums = _group_sums(x[rows], y[rows], k)
        has = self.class_n > 0
        self.proto = np.where(has[:, None], _normalise(_normalise(self.class_sums) - gap), text_vecs)
        self.x_text = x @ text_vecs.T
        self.x_proto = x @ self.proto.T
        self.text_proto = np.einsum("kd,kd->k", text_vecs, self.proto)
        # Held out, an example's own class prototype is the mean of the others (the text vector when it was alone).
        rest = _normalise(_normalise(self.class_sums[self.own] - x[rows]) - gap)
        alone = self.class_n[self.own] <= 1
        rest = np.where(alone[:, None], text_vecs[self.own], rest)
        self.own_text = self.x_text[rows, self.own]
        self.own_proto = np.einsum("nd,nd->n", x[rows], rest)
        self.own_text_proto = np.einsum("nd,nd->n", text_vecs[self.own], rest)
        self.bg_sims = self._background_sims(fixed_background)
        self.memory = _build_memory(x, y, k)
        self._memory_sims()

    def _background_sims(self, fixed_background: np.ndarray) -> np.ndarray:
        x, y = self.x, self.y
        bg_rows = np.flatnonzero(y < 0)[-MAX_BACKGROUND_EXEMPLARS:] if MAX_BACKGROUND_EXEMPLARS else np.zeros(0, int)
        learned = _normalise(x[bg_rows] - self.gap) if len(bg_rows) else np.zeros((0, x.shape[1]), np.float32)
        sims = np.concatenate([x @ fixed_background.T, x @ learned.T], axis=1).astype(np.float64)
        # a rejected box held out is not among the background it is judged against
        sims[bg_rows, len(fixed_background) + np.arange(len(bg_rows))] = -np.inf
        return sims

    def _memory_sims(self) -> None:
        mem, x = self.memory, self.x
        keys = _normalise(_normalise(mem.sums) - self.gap)
        sims = x @ keys.T
        weights = np.broadcast_to(mem.counts.astype(np.float32), sims.shape).copy()
        own = mem.key_of[self.rows]
        sims[self.rows, own] = _own_direction(mem.sums, x, self.rows, own, mem.counts, self.gap)
        weights[self.rows, own] = mem.counts[own] - 1
        self.present, self.starts = np.unique(mem.labels, return_index=True)
        self.mem_sims, self.mem_weights = sims, weights

    def class_sims(self, alpha: float) -> np.ndarray:
        """(N, K) cosines with the α-blended class vectors, each example's own class built without it."""
        norm = np.sqrt((1 - alpha) ** 2 + alpha ** 2 + 2 * alpha * (1 - alpha) * self.text_proto)
        sims = ((1 - alpha) * self.x_text + alpha * self.x_proto) / norm
        own_norm = np.sqrt((1 - alpha) ** 2 + alpha ** 2 + 2 * alpha * (1 - alpha) * self.own_text_proto)
        sims[self.rows, self.own] = ((1 - alpha) * self.own_text + alpha * self.own_proto) / own_norm
        return sims

    def pooled(self, beta: float, class_sims: np.ndarray) -> np.ndarray:
        """(N, K) each class's pooled memory similarity (its class similarity where its memory is empty)."""
        pooled, total = classify.pool_memory(self.mem_sims, self.mem_weights, self.starts, beta)
        out = class_sims.copy()
        out[:, self.present] = np.where(total > 0, pooled, class_sims[:, self.present])
        return out


@dataclass(frozen=True)
class _Trial:
    """One configuration's leave-one-out result: which examples it got right and its mean negative log-likelihood."""

    alpha: float
    ratio: float
    beta: float
    scale: float
    hits: np.ndarray = field(repr=False)
    log_p: np.ndarray = field(repr=False)

    @property
    def nll(self) -> float:
        return float(-np.mean(self.log_p))

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.hits))

    def rank(self) -> tuple[float, ...]:
        # Ties go to the smaller memory share, then α, then the smoother pool: closer to zero-shot is safer.
        return (self.accuracy, -self.nll, -self.ratio, -self.alpha, -self.beta, self.scale)


def _significantly_better(trial: _Trial, base: _Trial) -> bool:
    """True when `trial` is right on clearly more held-out examples than `base` (a sign test on the examples where
    they differ) and its held-out likelihood is no worse: picking the best of many configurations on a few noisy
    labels must not pass off luck as skill."""
    gained = int(np.sum(trial.hits & ~base.hits))
    lost = int(np.sum(base.hits & ~trial.hits))
    if gained - lost < max(1.0, SIGNIFICANCE_Z * np.sqrt(gained + lost)):
        return False
    return float(np.mean(trial.log_p)) >= float(np.mean(base.log_p))


def _search(loo: _LeaveOneOut, scales: Sequence[float], use_memory: bool) -> tuple[_Trial, _Trial]:
    """(the chosen configuration, the text-only one it was compared with): every α without memory, then memory
    shares ρ and sharpnesses β on top of α = 0 and of the chosen α. A configuration other than text-only is chosen
    only when it is significantly better than text-only, then by accuracy and likelihood."""
    y, bg = loo.y, loo.bg_sims

    def trials(alpha: float, ratio: float, beta: float, sims: np.ndarray) -> list[_Trial]:
        return [_Trial(alpha, ratio, beta, scale, hits, log_p)
                for scale, (hits, log_p) in zip(scales, _scores(sims, bg, y, scales))]

    by_alpha = {a: loo.class_sims(a) for a in ALPHAS}
    text_only = max(trials(0.0, 0.0, 0.0, by_alpha[0.0]), key=_Trial.rank)
    best = text_only
    for alpha in ALPHAS[1:]:
        best = max([best] + [t for t in trials(alpha, 0.0, 0.0, by_alpha[alpha])
                             if _significantly_better(t, text_only)], key=_Trial.rank)
    if not use_memory or len(loo.memory.labels) == 0:
        return best, text_only
    for alpha in sorted({0.0, best.alpha}):
        sims = by_alpha[alpha]
        for beta in BETAS:
            pooled = loo.pooled(beta, sims)
            for ratio in RATIOS:
                found = trials(alpha, ratio, beta, (1 - ratio) * sims + ratio * pooled)
                best = max([best] + [t for t in found if _significantly_better(t, text_only)], key=_Trial.rank)
    return best, text_only


def _memory_of(loo: _LeaveOneOut, beta: float, ratio: float) -> HeadMemory:
    mem = loo.memory
    return HeadMemory(keys=_normalise(mem.sums), labels=mem.labels, weights=mem.counts.astype(np.float32),
                      gap=loo.gap.astype(np.float32), beta=float(beta), ratio=float(ratio))


def fit(from_name: str, labels: Sequence[str], prompt_embs: Sequence[np.ndarray], examples: Examples,
        current: Head, fixed_background: np.ndarray, base_logit_scale: float,
        scale_factors: Sequence[float] = SCALE_FACTORS, use_memory: bool = True, compare_current: bool = True
        ) -> TrainResult:
    """Fits a new head for one control and decides whether it replaces `current`.

    Args:
        prompt_embs: per class, (P_k, D) embeddings of its prompts (the zero-shot ensemble).
        examples: the control's feedback. current: the head served now (zero-shot at first).
        fixed_background: (B0, D) background vectors that always apply (the background prompt ensembles).
        base_logit_scale: the encoder's own temperature.
        scale_factors: temperatures tried, as multiples of `base_logit_scale`.
        use_memory: False fits the class vectors alone (one prototype per class), for comparison.
        compare_current: False leaves the acceptance to the caller (box heads are judged on whole scenes, see
            `cliplabel.vision.scene_gate`): the fitted head comes back accepted whatever its held-out crop accuracy.

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
    loo = _LeaveOneOut(text_vecs, examples, fixed_background, gap)
    best, text_only = _search(loo, [base_logit_scale * f for f in scale_factors], use_memory)
    acc, alpha, ratio, beta, scale = best.accuracy, best.alpha, best.ratio, best.beta, best.scale
    class_vecs = _normalise((1 - alpha) * text_vecs + alpha * loo.proto)
    head = Head(from_name=from_name, labels=tuple(labels), class_vecs=class_vecs,
                background_vecs=_background_exemplars(examples.embeddings[y < 0], gap), logit_scale=float(scale),
                alpha=float(alpha), memory=_memory_of(loo, beta, ratio) if ratio > 0 else None)
    current_acc, current_nll = evaluate_head(current, examples, fixed_background)
    metrics = {"examples": float(len(y)), "labelled": float(labelled), "background": float(len(y) - labelled),
               "loo_accuracy": acc, "loo_nll": best.nll, "text_loo_accuracy": text_only.accuracy,
               "current_accuracy": current_acc, "current_nll": current_nll, "alpha": float(alpha), "logit_scale": float(scale),
               "memory_ratio": float(ratio), "memory_beta": float(beta),
               "memory_keys": float(len(head.memory.keys)) if head.memory is not None else 0.0}
    if compare_current and acc + 1e-9 < current_acc:
        return TrainResult(current, False, metrics,
                           f"held-out accuracy {acc:.3f} is below the current head's {current_acc:.3f}")
    return TrainResult(head, True, metrics, "accepted")
