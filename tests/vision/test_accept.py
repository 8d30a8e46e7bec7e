"""Auto-accept thresholds (`vision.accept`) and cross-validated probabilities (`vision.crossval`): exact, no model."""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.core.domain import Head
from cliplabel.vision import accept, crossval, train


@pytest.mark.parametrize(("correct", "total", "expected"), [
    (0, 0, 0.0),  # no evidence: no bound
    (0, 10, 0.0),  # no success
    (149, 149, 0.05 ** (1 / 149)),  # all right: the bound is (1 − confidence)^(1/n)
    (10, 10, 0.05 ** (1 / 10)),
])
def test_clopper_pearson_lower_bound(correct: int, total: int, expected: float) -> None:
    assert float(accept.clopper_pearson_lower(correct, total)) == pytest.approx(expected, abs=1e-9)


def test_clopper_pearson_matches_a_published_value() -> None:
    # 95 of 100: the two-sided 95 % interval is [0.8872, 0.9836]; its lower end is the one-sided 97.5 % bound.
    assert float(accept.clopper_pearson_lower(95, 100, 0.975)) == pytest.approx(0.8872, abs=1e-4)


def test_certify_takes_the_lowest_threshold_that_keeps_the_bound() -> None:
    # 300 right answers scored 0.5..0.99, then 10 wrong ones below (0.19..0.1): 300 of 301 still bounds at 0.984,
    # 300 of 302 at 0.979, so the threshold stops at the first wrong one.
    scores = np.concatenate([np.linspace(0.99, 0.5, 300), np.linspace(0.19, 0.1, 10)])
    correct = np.concatenate([np.ones(300, bool), np.zeros(10, bool)])
    t, n, k, lb = accept.certify(scores, correct, 0.98)
    assert (n, k) == (301, 300) and t == pytest.approx(0.19)
    assert lb == pytest.approx(0.98434, abs=1e-4)


def test_min_evidence() -> None:
    assert accept.min_evidence(0.98, 0.95) == 149
    assert accept.min_evidence(0.9, 0.95) == 29


@pytest.mark.parametrize(("n_right", "certified"), [
    (0, False),  # nothing
    (148, False),  # one short of what 0.98 at 95 % needs without any error
    (149, True),
])
def test_certify_needs_enough_evidence(n_right: int, certified: bool) -> None:
    found = accept.certify(np.full(n_right, 0.9), np.ones(n_right, bool), 0.98, 0.95)
    assert (found is not None) == certified


def test_ties_are_kept_together() -> None:
    # 200 right at 0.9 and one wrong also at 0.9: a threshold of 0.9 must count the wrong one.
    scores = np.full(201, 0.9)
    correct = np.append(np.ones(200, bool), False)
    found = accept.certify(scores, correct, 0.98)
    assert found is None or found[1] == 201


def test_classes_without_enough_examples_share_a_pooled_threshold() -> None:
    rng = np.random.default_rng(0)
    # class 0: 400 examples, all right above 0.6; classes 1 and 2: 100 each (too few alone), right above 0.7;
    # class 3: wrong often at any score, never predicted confidently.
    pred = np.concatenate([np.zeros(400, int), np.ones(100, int), np.full(100, 2), np.full(50, 3)])
    scores = np.concatenate([rng.uniform(0.6, 1.0, 400), rng.uniform(0.7, 1.0, 200), rng.uniform(0.3, 0.5, 50)])
    truth = pred.copy()
    truth[600:] = 0  # every class-3 prediction is wrong
    found = accept.choose_thresholds(["a", "b", "c", "d"], pred, scores, truth)
    by = {t.label: t for t in found}
    assert by["a"].source == "class" and by["a"].heldout == 400
    assert by["b"].source == by["c"].source == by["d"].source == "pooled"
    # the pool holds b, c and d: its threshold must sit above d's wrong predictions
    assert by["b"].threshold == by["d"].threshold and by["b"].threshold > 0.5
    assert all(t.lower_bound >= 0.98 for t in found)


def test_outcome_counts_coverage_and_expected_errors() -> None:
    thresholds = (accept.ClassThreshold("a", 0.8, "class", 200, 200, 0.985),
                  accept.ClassThreshold("b", None, "none", 0, 0, 0.0))
    pred = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.5, 0.99, 0.2])
    out = accept.outcome(thresholds, pred, scores)
    assert (out.candidates, out.accepted, out.per_class) == (5, 2, {"a": 2})
    assert out.coverage == pytest.approx(0.4)
    assert out.expected_errors == pytest.approx(2 * 0.5 / 201)
    assert out.errors_upper == pytest.approx(2 * 0.015)
    assert accept.accept_mask(thresholds, pred, scores).tolist() == [True, True, False, False, False]


def test_stratified_folds_spread_each_class() -> None:
    labels = np.repeat(np.arange(3), [10, 7, 1])
    folds = crossval.stratified_folds(labels, 5, seed=1)
    for c in range(2):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_cross_validated_probs_never_score_an_example_with_a_head_that_saw_it() -> None:
    d = 4
    rng = np.random.default_rng(0)
    y = np.arange(20) % d
    x = (np.eye(d)[y] + 0.01 * rng.standard_normal((20, d))).astype(np.float32)
    trained_on: list[set[bytes]] = []

    def fit_head(ex: train.Examples) -> Head:
        trained_on.append({row.tobytes() for row in ex.embeddings})
        return Head("label", tuple("abcd"), np.eye(d, dtype=np.float32), np.zeros((0, d), np.float32), 10.0)

    probs = crossval.cross_validated_probs(train.Examples(x, y), d, fit_head, folds=5)
    assert probs.shape == (20, 4) and len(trained_on) == 5
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == y).all()
    # every example is left out of exactly one fold's training set
    left_out = [sum(row.tobytes() not in s for s in trained_on) for row in x]
    assert left_out == [1] * 20
