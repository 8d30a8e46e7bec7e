"""The one softmax of the backend, and the box path's use of it."""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.vision import boxes, classify


@pytest.mark.parametrize("logits", [
    np.zeros((0, 3), np.float32),  # no rows
    np.zeros((2, 1), np.float32),  # one class: certainty
    np.array([[0.0, 0.0, 0.0, 0.0]], np.float32),  # ties: uniform
    np.array([[1000.0, 990.0, -1000.0]], np.float32),  # CLIP-scale logits: no overflow
])
def test_softmax_rows_sum_to_one_in_float32(logits: np.ndarray) -> None:
    p = classify.softmax(logits)
    assert p.dtype == np.float32 and p.shape == logits.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.isfinite(p))


def test_softmax_matches_the_textbook_formula() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    e = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(classify.softmax(logits), e / e.sum(axis=1, keepdims=True), rtol=1e-6)


def test_softmax_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        classify.softmax(np.zeros(3, np.float32))


def test_box_probabilities_are_the_same_softmax_with_background_summed() -> None:
    rng = np.random.default_rng(1)
    emb, cls, bg = (rng.normal(size=(n, 8)).astype(np.float32) for n in (4, 3, 2))
    cp, bgp = boxes.class_and_background_probs(emb, cls, bg, 10.0)
    full = classify.softmax(10.0 * (emb @ np.concatenate([cls, bg]).T))
    np.testing.assert_array_equal(cp, full[:, :3])
    np.testing.assert_allclose(bgp, full[:, 3:].sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize(("threshold", "expected"), [
    (None, [1]),  # default 0.5: crop 0 reaches 0.4 only
    (0.3, [0, 1]),
    (0.9, []),
])
def test_confident_crops_beat_background_and_the_threshold(threshold: float | None, expected: list[int]) -> None:
    class_probs = np.array([[0.4, 0.1], [0.1, 0.6], [0.2, 0.3]], np.float32)
    background = np.array([0.35, 0.3, 0.5], np.float32)  # crop 2 (0.3 against 0.5) never beats its background
    got = boxes.confident(class_probs, background, threshold, boxes.BoxParams())
    assert got.tolist() == expected


def test_no_crops_no_confident_ones() -> None:
    assert boxes.confident(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), None, boxes.BoxParams()).size == 0
