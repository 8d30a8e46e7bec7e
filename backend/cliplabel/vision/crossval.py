"""Out-of-sample class probabilities of labelled examples: k-fold cross-validated heads. Pure numpy.

Every example is scored by a head fitted without it (`fit_head` is the product's own training, e.g. `train.fit` with
the control's prompts and the zero-shot head as the current one), so its probabilities say what the served model
would predict for an image it never saw: what auto-accept certifies its thresholds on, and what confident learning
needs to find annotations that disagree with their image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cliplabel.core.domain import Head
from cliplabel.vision import classify, train

DEFAULT_FOLDS = 5


def head_probabilities(head: Head, emb: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities of (N, D) L2-normalised embeddings under a head, as prediction scores choices."""
    return classify.head_probabilities(emb, head)


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index of each example: every class spread over the folds as evenly as its count allows.

    Raises:
        ValueError: fewer than 2 folds.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Classes start at different folds, so many small classes do not all pile into fold 0.
        out[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return out


def cross_validated_probs(examples: train.Examples, n_classes: int, fit_head: Callable[[train.Examples], Head],
                          folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-sample probabilities of every example.

    Args:
        examples: (N, D) labelled embeddings, labels in [0, n_classes).
        fit_head: the head the product would serve after learning from these examples.
        folds: k; fewer examples than folds fall back to leave-one-out.

    Returns:
        (N, n_classes) float32 probabilities, row i from a head that never saw example i.
    """
    y = examples.labels
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) for cross-validation")
    k = min(folds, len(y))
    out = np.zeros((len(y), n_classes), np.float32)
    if k < 2:
        return out
    fold = stratified_folds(y, k, seed) if k == folds else np.arange(len(y))
    for f in range(k):
        test = fold == f
        if not test.any():
            continue
        head = fit_head(train.Examples(examples.embeddings[~test], y[~test]))
        out[test] = head_probabilities(head, examples.embeddings[test])
    return out
