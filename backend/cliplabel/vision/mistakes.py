"""Label mistakes by confident learning (cleanlab), on out-of-sample probabilities. The one module importing cleanlab.

Confident learning (Northcutt et al., 2021) estimates, per pair of classes, how many examples annotated as one
truly belong to the other from the out-of-sample probabilities, and flags that many of the least self-confident
ones. We rank every annotation by its label quality (the held-out probability of its annotated class,
cleanlab's `self_confidence`), and `flagged` marks those confident learning counts as likely wrong.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

MIN_EXAMPLES = 10  # below this, nothing is flagged: the noise estimate needs several examples per class


@dataclass(frozen=True)
class LabelAudit:
    """Per annotated example (N,): `mislabeling` in [0, 1] (1 − its label quality), `flagged` by confident
    learning; `ranked`: every example, most suspect first."""

    mislabeling: np.ndarray
    flagged: np.ndarray
    ranked: np.ndarray

    def suspects(self) -> np.ndarray:
        """The flagged examples, most suspect first."""
        return self.ranked[self.flagged[self.ranked]]


def audit_labels(labels: np.ndarray, oos_probs: np.ndarray) -> LabelAudit:
    """Finds annotations that likely disagree with their image.

    Args:
        labels: (N,) int annotated class. oos_probs: (N, K) out-of-sample probabilities
            (`cliplabel.vision.crossval.cross_validated_probs`); rows need not sum exactly to 1.

    Returns:
        The audit; with fewer than `MIN_EXAMPLES` examples or a single annotated class nothing is flagged.
    """
    if oos_probs.ndim != 2 or labels.shape != (len(oos_probs),):
        raise ValueError(f"labels {labels.shape} and probabilities {oos_probs.shape} do not match")
    n = len(labels)
    if n == 0:
        return LabelAudit(np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64))
    full = np.clip(oos_probs.astype(np.float64), 1e-9, None)
    full /= full.sum(axis=1, keepdims=True)
    # Label quality over every class (a class nobody annotated can still be what the image shows).
    mislabeling = np.clip(1.0 - get_label_quality_scores(labels, full, method="self_confidence"), 0.0, 1.0)
    # cleanlab's noise estimate wants classes 0..K'-1 that all occur: the annotated classes' columns, renormalised.
    present, y = np.unique(labels, return_inverse=True)
    p = full[:, present] / full[:, present].sum(axis=1, keepdims=True)
    ranked = np.argsort(-mislabeling, kind="stable")
    flagged = np.zeros(n, bool)
    if n >= MIN_EXAMPLES and len(present) >= 2:
        with warnings.catch_warnings():
            # "may not flag all label issues in class k, it has too few examples": true, and said in our docs.
            warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
            # n_jobs=1: cleanlab would otherwise fork a process pool inside the server or worker.
            flagged[find_label_issues(y, p, filter_by="prune_by_noise_rate", n_jobs=1)] = True
    return LabelAudit(mislabeling=mislabeling, flagged=flagged, ranked=ranked)
