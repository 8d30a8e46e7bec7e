"""Auto-accept with a measured precision: per-class score thresholds certified on held-out human annotations.

Pure numpy/scipy. For each class, the held-out examples the model predicts as that class are sorted by score; the
threshold is the lowest score at which the examples at or above it are right often enough that the one-sided
Clopper–Pearson lower bound of their precision (at `confidence`) still reaches `target`. Certifying 0.98 at 95 %
takes at least 149 held-out examples above the threshold without a single error (0.05^(1/149) ≈ 0.980), so a class
with fewer is not certified on its own: the classes that fail are pooled and get one common threshold, certified
the same way on their examples together. A class the pool cannot certify either gets no threshold: nothing of it is
accepted.

Held-out means scored by a head that never saw the example (`cliplabel.vision.crossval`); the tasks then accepted
are scored by the head served, trained on all annotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import beta

DEFAULT_TARGET = 0.98
DEFAULT_CONFIDENCE = 0.95
Source = Literal["class", "pooled", "none"]


def clopper_pearson_lower(correct: np.ndarray | int, total: np.ndarray | int,
                          confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound of a binomial proportion.

    Args:
        correct: successes, any shape. total: trials, same shape (0 trials give a bound of 0).
        confidence: e.g. 0.95: the true proportion is at or above the bound with this probability.

    Returns:
        float64 array of the broadcast shape, in [0, 1].
    """
    k = np.asarray(correct, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("correct must lie within [0, total]")
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(1.0 - confidence, np.maximum(k, 1e-300), np.maximum(n - k + 1.0, 1.0))
    return np.where(k > 0, np.nan_to_num(bound, nan=0.0), 0.0)


def min_evidence(target: float = DEFAULT_TARGET, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The fewest held-out examples that can certify `target`: all of them right, (1 − confidence)^(1/n) ≥ target."""
    return int(np.ceil(np.log(1.0 - confidence) / np.log(target) - 1e-9))


@dataclass(frozen=True)
class ClassThreshold:
    """A class's auto-accept threshold and the held-out evidence behind it (`source` says whose: the class's own
    examples, the pool of classes that could not be certified alone, or none — nothing of it is accepted)."""

    label: str
    threshold: float | None
    source: Source
    heldout: int  # held-out examples at or above the threshold (of the class, or of the pool)
    heldout_correct: int
    lower_bound: float  # Clopper–Pearson lower bound of their precision (0 without a threshold)

    def __post_init__(self) -> None:
        if (self.threshold is None) != (self.source == "none"):
            raise ValueError(f"class {self.label!r}: a threshold needs a source and a source a threshold")
        if not 0 <= self.heldout_correct <= self.heldout:
            raise ValueError(f"class {self.label!r}: {self.heldout_correct} correct of {self.heldout}")

    @property
    def precision(self) -> float | None:
        return self.heldout_correct / self.heldout if self.heldout else None

    @property
    def error_rate(self) -> float:
        """The expected error rate of what it accepts: the Jeffreys posterior mean, (errors + ½) / (n + 1), which
        stays above zero when the held-out examples held no error."""
        return (self.heldout - self.heldout_correct + 0.5) / (self.heldout + 1.0)


def certify(scores: np.ndarray, correct: np.ndarray, target: float = DEFAULT_TARGET,
            confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, int, int, float] | None:
    """The lowest threshold whose held-out examples at or above it have a precision bound ≥ `target`.

    Args:
        scores: (n,) held-out scores. correct: (n,) bool, the prediction agreed with the human annotation.

    Returns:
        (threshold, examples at or above it, correct among them, lower bound), or None when no threshold certifies.
    """
    if scores.shape != correct.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} must be matching (n,) arrays")
    if len(scores) == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(np.int64)
    k = np.cumsum(c)
    n = np.arange(1, len(s) + 1)
    # A threshold keeps every example with the same score: only the last of a run of equal scores is a candidate.
    ends = np.append(s[1:] < s[:-1], True)
    bound = clopper_pearson_lower(k, n, confidence)
    ok = np.flatnonzero(ends & (bound >= target))
    if len(ok) == 0:
        return None
    j = int(ok[-1])  # the most examples: the lowest threshold
    return float(s[j]), int(n[j]), int(k[j]), float(bound[j])


def choose_thresholds(labels: Sequence[str], predicted: np.ndarray, scores: np.ndarray, annotated: np.ndarray,
                      target: float = DEFAULT_TARGET, confidence: float = DEFAULT_CONFIDENCE
                      ) -> tuple[ClassThreshold, ...]:
    """One threshold per class from held-out predictions of human-annotated examples.

    Args:
        labels: the K class names. predicted: (n,) int, the held-out predicted class of each annotated example.
        scores: (n,) its held-out score (the predicted class's probability). annotated: (n,) int, the human label.

    Returns:
        K thresholds, in class order.
    """
    if not 0.0 < target < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"target {target} and confidence {confidence} must lie in (0, 1)")
    if not predicted.shape == scores.shape == annotated.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape}, scores {scores.shape} and annotated {annotated.shape} "
                         "must be matching (n,) arrays")
    correct = predicted == annotated
    own: dict[int, tuple[float, int, int, float]] = {}
    for c in range(len(labels)):
        mine = predicted == c
        found = certify(scores[mine], correct[mine], target, confidence)
        if found is not None:
            own[c] = found
    rest = [c for c in range(len(labels)) if c not in own]
    in_pool = np.isin(predicted, rest)
    pooled = certify(scores[in_pool], correct[in_pool], target, confidence) if rest else None
    out = []
    for c, label in enumerate(labels):
        if c in own:
            t, n, k, lb = own[c]
            out.append(ClassThreshold(label, t, "class", n, k, lb))
        elif pooled is not None:
            t, n, k, lb = pooled
            out.append(ClassThreshold(label, t, "pooled", n, k, lb))
        else:
            out.append(ClassThreshold(label, None, "none", 0, 0, 0.0))
    return tuple(out)


@dataclass(frozen=True)
class AcceptOutcome:
    """What accepting would do to the candidate tasks (those without a human annotation)."""

    candidates: int
    accepted: int
    per_class: dict[str, int]  # accepted tasks by predicted class
    expected_errors: float  # Σ accepted × the class's (or pool's) Jeffreys error rate
    errors_upper: float  # Σ accepted × (1 − lower bound): the error count at the certified bound

    @property
    def coverage(self) -> float:
        """The share of candidate tasks accepted."""
        return self.accepted / self.candidates if self.candidates else 0.0


def accept_mask(thresholds: Sequence[ClassThreshold], predicted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(m,) bool: which candidates (predicted class (m,) int, score (m,)) reach their class's threshold."""
    limits = np.array([np.inf if t.threshold is None else t.threshold for t in thresholds])
    if predicted.shape != scores.shape:
        raise ValueError(f"predicted {predicted.shape} and scores {scores.shape} do not match")
    return scores >= limits[predicted] if len(predicted) else np.zeros(0, bool)


def outcome(thresholds: Sequence[ClassThreshold], predicted: np.ndarray, scores: np.ndarray) -> AcceptOutcome:
    """Coverage and expected errors of accepting the candidates (predicted class (m,) int, score (m,))."""
    mask = accept_mask(thresholds, predicted, scores)
    counts = np.bincount(predicted[mask], minlength=len(thresholds)) if mask.any() else np.zeros(len(thresholds))
    return AcceptOutcome(
        candidates=len(predicted), accepted=int(mask.sum()),
        per_class={t.label: int(n) for t, n in zip(thresholds, counts) if n},
        expected_errors=float(sum(n * t.error_rate for t, n in zip(thresholds, counts))),
        errors_upper=float(sum(n * (1.0 - t.lower_bound) for t, n in zip(thresholds, counts))))
