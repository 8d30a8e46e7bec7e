"""`train.fit` on constructed embeddings: exact, fast, no model.

The geometry mimics CLIP's: text vectors along the first axes, image embeddings near a shared "image" axis
(`GAP_AXIS`, the modality gap) plus a small component along the direction their class looks like.
"""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.core.domain import Head
from cliplabel.vision import train

D = 12
GAP_AXIS = D - 1
LOGIT_SCALE = 100.0


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _axis(i: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1.0
    return v


def _prompts(direction: int) -> np.ndarray:
    """(2, D) two prompts of one class, on either side of its text axis."""
    return _unit(np.stack([_axis(direction) + 0.1 * _axis(direction + 5), _axis(direction) - 0.1 * _axis(direction + 5)]))


def _images(rng: np.random.Generator, looks_like: int, n: int) -> np.ndarray:
    """(n, D) image embeddings of things that look like text axis `looks_like`."""
    return _unit(_axis(GAP_AXIS) + 0.5 * _axis(looks_like) + 0.05 * rng.standard_normal((n, D)))


def _zero_shot(labels: tuple[str, ...], prompt_embs: list[np.ndarray]) -> Head:
    text = train.ensemble_vectors(prompt_embs, [np.full(len(p), 1.0 / len(p)) for p in prompt_embs])
    return Head("label", labels, text, np.zeros((0, D), np.float32), LOGIT_SCALE)


def _renamed_case(n_per_class: int, seed: int) -> tuple[tuple[str, ...], list[np.ndarray], train.Examples]:
    """Four classes; "A" was renamed: its images look like axis 4, which no prompt describes. "D" has no labels."""
    rng = np.random.default_rng(seed)
    labels = ("A", "B", "C", "D")
    prompt_embs = [_prompts(i) for i in range(4)]
    x = np.concatenate([_images(rng, 4, n_per_class), _images(rng, 1, n_per_class), _images(rng, 2, n_per_class)])
    y = np.repeat(np.arange(3), n_per_class)
    return labels, prompt_embs, train.Examples(x, y)


def _fit(labels: tuple[str, ...], prompt_embs: list[np.ndarray], examples: train.Examples,
         current: Head) -> train.TrainResult:
    return train.fit("label", labels, prompt_embs, examples, current, np.zeros((0, D), np.float32), LOGIT_SCALE)


def _predict(head: Head, x: np.ndarray) -> np.ndarray:
    return np.argmax(x @ head.class_vecs.T, axis=1)


def test_same_inputs_give_the_identical_head() -> None:
    labels, prompt_embs, examples = _renamed_case(3, seed=0)
    first = _fit(labels, prompt_embs, examples, _zero_shot(labels, prompt_embs))
    again = _fit(labels, [p.copy() for p in prompt_embs], train.Examples(examples.embeddings.copy(), examples.labels.copy()),
                 _zero_shot(labels, prompt_embs))
    assert first.accepted and again.accepted
    assert np.array_equal(first.head.class_vecs, again.head.class_vecs)
    assert np.array_equal(first.head.background_vecs, again.head.background_vecs)
    assert (first.head.alpha, first.head.logit_scale) == (again.head.alpha, again.head.logit_scale)
    assert first.metrics == again.metrics


def test_a_renamed_class_is_learned_from_a_few_examples() -> None:
    labels, prompt_embs, examples = _renamed_case(3, seed=1)
    current = _zero_shot(labels, prompt_embs)
    held_out = _images(np.random.default_rng(2), 4, 20)
    assert np.mean(_predict(current, held_out) == 0) < 0.5  # to zero-shot, A's new look is noise
    result = _fit(labels, prompt_embs, examples, current)
    assert result.accepted and result.reason == "accepted"
    assert result.head.alpha > 0
    assert result.metrics["loo_accuracy"] == 1.0 and result.metrics["current_accuracy"] < 1.0
    assert (_predict(result.head, held_out) == 0).all()


def test_a_class_without_labels_keeps_its_text_vector() -> None:
    labels, prompt_embs, examples = _renamed_case(3, seed=3)
    result = _fit(labels, prompt_embs, examples, _zero_shot(labels, prompt_embs))
    assert result.accepted and result.head.alpha > 0  # the labelled classes did move
    np.testing.assert_allclose(result.head.class_vecs[3], _unit(prompt_embs[3].mean(axis=0)), atol=1e-6)


def test_a_head_worse_on_held_out_examples_is_rejected() -> None:
    # One example per class, each looking like the other class's text: left out, its class falls back to the
    # (wrong) text vector, so held-out accuracy is 0, while the current head knows both examples.
    labels, prompt_embs = ("A", "B"), [_prompts(0), _prompts(1)]
    x = _unit(np.stack([_axis(GAP_AXIS) + 0.5 * _axis(1), _axis(GAP_AXIS) + 0.5 * _axis(0)]))
    examples = train.Examples(x, np.array([0, 1]))
    current = Head("label", labels, x.copy(), np.zeros((0, D), np.float32), LOGIT_SCALE, alpha=0.9)
    result = _fit(labels, prompt_embs, examples, current)
    assert not result.accepted
    assert result.head is current
    assert (result.metrics["loo_accuracy"], result.metrics["current_accuracy"]) == (0.0, 1.0)
    assert "below the current head's" in result.reason


def test_rejected_boxes_become_background_vectors() -> None:
    labels, prompt_embs, examples = _renamed_case(3, seed=4)
    rejected = _images(np.random.default_rng(5), 6, 2)
    with_bg = train.Examples(np.concatenate([examples.embeddings, rejected]), np.concatenate([examples.labels, [-1, -1]]))
    result = _fit(labels, prompt_embs, with_bg, _zero_shot(labels, prompt_embs))
    assert result.head.background_vecs.shape == (2, D)
    np.testing.assert_allclose(np.linalg.norm(result.head.background_vecs, axis=1), 1.0, atol=1e-6)
    assert result.metrics["background"] == 2.0


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_examples_keep_the_current_head(n: int) -> None:
    labels, prompt_embs = ("A", "B"), [_prompts(0), _prompts(1)]
    current = _zero_shot(labels, prompt_embs)
    examples = train.Examples(_images(np.random.default_rng(6), 0, n), np.zeros(n, int))
    result = _fit(labels, prompt_embs, examples, current)
    assert not result.accepted and result.head is current
    assert result.reason == f"fewer than {train.MIN_EXAMPLES} examples"


def test_no_temperature_to_try_is_a_value_error() -> None:
    labels, prompt_embs, examples = _renamed_case(3, seed=7)
    with pytest.raises(ValueError, match="temperature"):
        train.fit("label", labels, prompt_embs, examples, _zero_shot(labels, prompt_embs), np.zeros((0, D), np.float32),
                  LOGIT_SCALE, scale_factors=())
