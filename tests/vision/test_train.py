"""`train.fit` on constructed embeddings where the right answer is known: exact, fast, no model.

The geometry mimics CLIP's: text vectors along the first axes, image embeddings near a shared "image" axis
(`GAP_AXIS`, the modality gap) plus a component along the directions of what they look like (a colour axis, a shape
axis, or a class's text axis). Held-out images are always drawn with another seed than the labelled ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.core.domain import Head
from cliplabel.store.heads import dump_heads
from cliplabel.vision import classify, train

D = 24
GAP_AXIS = D - 1
LOGIT_SCALE = 100.0
NO_BACKGROUND = np.zeros((0, D), np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _axis(i: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1.0
    return v


def _prompts(direction: int) -> np.ndarray:
    """(2, D) two prompts of one class, on either side of its text axis."""
    return _unit(np.stack([_axis(direction) + 0.1 * _axis(direction + 8),
                           _axis(direction) - 0.1 * _axis(direction + 8)]))


def _images(rng: np.random.Generator, looks_like: tuple[int, ...], n: int, spread: float = 0.05) -> np.ndarray:
    """(n, D) image embeddings of things that look like the given axes (one text axis, or a colour and a shape)."""
    look = sum((_axis(i) for i in looks_like), np.zeros(D, np.float32))
    return _unit(_axis(GAP_AXIS) + 0.4 * look + spread * rng.standard_normal((n, D)))


def _zero_shot(labels: tuple[str, ...], prompt_embs: list[np.ndarray]) -> Head:
    text = train.ensemble_vectors(prompt_embs, [np.full(len(p), 1.0 / len(p)) for p in prompt_embs])
    return Head("label", labels, text, NO_BACKGROUND, LOGIT_SCALE)


def _fit(labels: tuple[str, ...], prompt_embs: list[np.ndarray], examples: train.Examples, current: Head,
         **kwargs: object) -> train.TrainResult:
    return train.fit("label", labels, prompt_embs, examples, current, NO_BACKGROUND, LOGIT_SCALE, **kwargs)  # type: ignore[arg-type]


def _accuracy(head: Head, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out accuracy under the scorer prediction serves."""
    return float(np.mean(classify.head_probabilities(x, head).argmax(axis=1) == y))


# -- two looks per class: Alpha = circles of colour A or squares of colour B; Beta = the other two ------------------------
COLOUR_A, COLOUR_B, CIRCLE, SQUARE = 12, 13, 14, 15
TWO_MODE_LOOKS = {0: ((COLOUR_A, CIRCLE), (COLOUR_B, SQUARE)), 1: ((COLOUR_A, SQUARE), (COLOUR_B, CIRCLE))}


def _two_mode(rng: np.random.Generator, n_per_look: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([_images(rng, look, n_per_look) for looks in TWO_MODE_LOOKS.values() for look in looks])
    return x, np.repeat([0, 1], 2 * n_per_look)


@pytest.mark.parametrize("seed", range(5))
def test_two_looks_per_class_are_learned_by_the_memory(seed: int) -> None:
    labels, prompt_embs = ("Alpha", "Beta"), [_prompts(0), _prompts(1)]  # names that say nothing of the looks
    x, y = _two_mode(np.random.default_rng(seed), 6)  # 12 labels per class, 6 per look
    held_x, held_y = _two_mode(np.random.default_rng(100 + seed), 50)
    zero_shot = _zero_shot(labels, prompt_embs)
    result = _fit(labels, prompt_embs, train.Examples(x, y), zero_shot)
    assert result.accepted and result.head.memory is not None
    assert _accuracy(result.head, held_x, held_y) >= 0.9
    # One prototype per class sits between its two looks, where the other class's prototype sits too.
    one_prototype = _fit(labels, prompt_embs, train.Examples(x, y), zero_shot, use_memory=False)
    assert _accuracy(one_prototype.head, held_x, held_y) <= 0.7


# -- ordinary classes whose names the text vectors know, 10 % of the labels wrong ---------------------------------------
ORDINARY = 5


def _ordinary(rng: np.random.Generator, n_per_class: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([_images(rng, (c,), n_per_class, spread) for c in range(ORDINARY)])
    return x, np.repeat(np.arange(ORDINARY), n_per_class)


@pytest.mark.parametrize("spread", [0.08, 0.12])  # zero-shot ≈ 0.99 and ≈ 0.89
@pytest.mark.parametrize("n_per_class", [1, 3, 5, 8, 12, 20])
def test_noisy_labels_never_take_ordinary_classes_below_zero_shot(n_per_class: int, spread: float) -> None:
    # Here the text vectors point at the classes' centres: zero-shot is as good as it gets, so whatever the noisy
    # labels teach is overfitting, and only the choice by held-out accuracy with its significance test stops it.
    labels = tuple("ABCDE")
    prompt_embs = [_prompts(c) for c in range(ORDINARY)]
    zero_shot = _zero_shot(labels, prompt_embs)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        x, y = _ordinary(rng, n_per_class, spread)
        wrong = rng.random(len(y)) < 0.1  # the wrong button: any other class
        y = np.where(wrong, (y + rng.integers(1, ORDINARY, len(y))) % ORDINARY, y)
        held_x, held_y = _ordinary(np.random.default_rng(1000 + seed), 100, spread)
        result = _fit(labels, prompt_embs, train.Examples(x, y), zero_shot)
        served = result.head if result.accepted else zero_shot
        assert _accuracy(served, held_x, held_y) >= _accuracy(zero_shot, held_x, held_y) - 0.01, (seed, result.metrics)


# -- renamed classes, a class without labels, imbalance -----------------------------------------------------------------
def _renamed_case(n_per_class: int, seed: int) -> tuple[tuple[str, ...], list[np.ndarray], train.Examples]:
    """Four classes; "A" was renamed: its images look like axis 4, which no prompt describes. "D" has no labels."""
    rng = np.random.default_rng(seed)
    labels = ("A", "B", "C", "D")
    prompt_embs = [_prompts(i) for i in range(4)]
    x = np.concatenate([_images(rng, (4,), n_per_class), _images(rng, (1,), n_per_class),
                        _images(rng, (2,), n_per_class)])
    y = np.repeat(np.arange(3), n_per_class)
    return labels, prompt_embs, train.Examples(x, y)


def test_a_renamed_class_is_learned_from_a_few_examples() -> None:
    labels, prompt_embs, examples = _renamed_case(8, seed=1)
    current = _zero_shot(labels, prompt_embs)
    held_out = _images(np.random.default_rng(2), (4,), 40)
    assert _accuracy(current, held_out, np.zeros(40)) < 0.5  # to zero-shot, A's new look is noise
    result = _fit(labels, prompt_embs, examples, current)
    assert result.accepted and result.reason == "accepted"
    assert result.metrics["loo_accuracy"] == 1.0 and result.metrics["current_accuracy"] < 1.0
    assert _accuracy(result.head, held_out, np.zeros(40)) == 1.0


def test_a_class_without_labels_keeps_its_text_vector() -> None:
    labels, prompt_embs, examples = _renamed_case(8, seed=3)
    result = _fit(labels, prompt_embs, examples, _zero_shot(labels, prompt_embs))
    head = result.head
    assert result.accepted and (head.alpha > 0 or head.memory is not None)  # the labelled classes did move
    text_d = _unit(prompt_embs[3].mean(axis=0))
    np.testing.assert_allclose(head.class_vecs[3], text_d, atol=1e-6)
    assert head.memory is None or 3 not in head.memory.labels
    # and it is scored by its text vector alone, so its own images still find it
    d_images = _images(np.random.default_rng(4), (3,), 20)
    np.testing.assert_allclose(classify.head_similarities(d_images, head)[:, 3], d_images @ text_d, atol=1e-5)
    assert _accuracy(head, d_images, np.full(20, 3)) == 1.0


def test_a_rare_class_is_not_outvoted_by_a_frequent_one() -> None:
    # 1:10 on the two-look classes: Alpha labelled 60 times (30 per look), Beta 6 times (3 per look). Each class's
    # memory is pooled per class (a mean, not a sum), so Beta's few keys still win Beta's looks.
    rng = np.random.default_rng(5)
    labels, prompt_embs = ("Alpha", "Beta"), [_prompts(0), _prompts(1)]
    alpha_x = np.concatenate([_images(rng, look, 30) for look in TWO_MODE_LOOKS[0]])
    beta_x = np.concatenate([_images(rng, look, 3) for look in TWO_MODE_LOOKS[1]])
    x, y = np.concatenate([alpha_x, beta_x]), np.repeat([0, 1], [60, 6])
    result = _fit(labels, prompt_embs, train.Examples(x, y), _zero_shot(labels, prompt_embs))
    assert result.accepted and result.head.memory is not None
    held_x, held_y = _two_mode(np.random.default_rng(6), 50)
    for c in (0, 1):
        assert _accuracy(result.head, held_x[held_y == c], held_y[held_y == c]) >= 0.9, c


def test_a_key_is_one_vote_however_often_its_class_was_labelled() -> None:
    # Pooling divides by the class's weight: repeating the same keys does not make a class score higher.
    sims = np.array([[0.9, 0.1, 0.5]], np.float32)
    once, _ = classify.pool_memory(sims, np.array([1.0, 1.0, 1.0], np.float32), np.array([0, 2]), 10.0)
    tenfold, _ = classify.pool_memory(sims, np.array([10.0, 10.0, 1.0], np.float32), np.array([0, 2]), 10.0)
    np.testing.assert_allclose(once, tenfold, rtol=1e-6)
    # and β runs from the mean (a prototype) to the nearest key
    smooth, _ = classify.pool_memory(sims, np.ones(3, np.float32), np.array([0, 2]), 1e-3)
    sharp, _ = classify.pool_memory(sims, np.ones(3, np.float32), np.array([0, 2]), 1e3)
    np.testing.assert_allclose(smooth[0, 0], 0.5, atol=1e-3)
    np.testing.assert_allclose(sharp[0, 0], 0.9, atol=1e-2)


# -- many classes: the memory is capped, retraining stays vectorised ----------------------------------------------------
def test_many_classes_and_examples_keep_the_memory_capped() -> None:
    rng = np.random.default_rng(7)
    k, dim = 48, 64
    text = _unit(rng.standard_normal((k, dim)))
    prompt_embs = [_unit(t + 0.05 * rng.standard_normal((2, dim))) for t in text]
    gap = _unit(rng.standard_normal(dim))
    y = rng.integers(0, k, 3000)
    looks = _unit(rng.standard_normal((k, 2, dim)))  # each class has two looks the text does not describe
    x = _unit(3 * gap + looks[y, rng.integers(0, 2, len(y))] + 0.1 * rng.standard_normal((len(y), dim)))
    current = Head("label", tuple(map(str, range(k))), train.ensemble_vectors(
        prompt_embs, [np.full(2, 0.5)] * k), np.zeros((0, dim), np.float32), LOGIT_SCALE)
    result = train.fit("label", current.labels, prompt_embs, train.Examples(x, y), current,
                       np.zeros((0, dim), np.float32), LOGIT_SCALE)
    assert result.accepted and result.head.memory is not None
    assert len(result.head.memory.keys) <= train.MAX_MEMORY
    assert result.head.memory.weights.sum() == len(y)  # every example stands in some key
    held_y = rng.integers(0, k, 2000)
    held_x = _unit(3 * gap + looks[held_y, rng.integers(0, 2, 2000)] + 0.1 * rng.standard_normal((2000, dim)))
    assert _accuracy(result.head, held_x, held_y) >= 0.9


# -- the acceptance rule, the one scorer, determinism ---------------------------------------------------------------------
def test_a_head_worse_on_held_out_examples_is_rejected() -> None:
    # One example per class, each looking like the other class's text: left out, its class falls back to the
    # (wrong) text vector, so held-out accuracy is 0, while the current head knows both examples.
    labels, prompt_embs = ("A", "B"), [_prompts(0), _prompts(1)]
    x = _unit(np.stack([_axis(GAP_AXIS) + 0.5 * _axis(1), _axis(GAP_AXIS) + 0.5 * _axis(0)]))
    examples = train.Examples(x, np.array([0, 1]))
    current = Head("label", labels, x.copy(), NO_BACKGROUND, LOGIT_SCALE, alpha=0.9)
    result = _fit(labels, prompt_embs, examples, current)
    assert not result.accepted
    assert result.head is current
    assert (result.metrics["loo_accuracy"], result.metrics["current_accuracy"]) == (0.0, 1.0)
    assert "below the current head's" in result.reason


def test_a_remembering_head_is_judged_without_its_own_copy_of_each_example() -> None:
    # Judged on the examples it remembers, a 1-NN memory would score 1.0 and block every later head; with each
    # example's own key hidden it is judged as held out, so a retrain on the same examples is accepted again.
    labels, prompt_embs = ("Alpha", "Beta"), [_prompts(0), _prompts(1)]
    x, y = _two_mode(np.random.default_rng(8), 6)
    first = _fit(labels, prompt_embs, train.Examples(x, y), _zero_shot(labels, prompt_embs))
    again = _fit(labels, prompt_embs, train.Examples(x, y), first.head)
    assert first.accepted and again.accepted
    # With α = 0 and one key per example, leave-one-out is exactly the served scorer with own keys hidden.
    if first.head.alpha == 0:
        assert train.evaluate_head(first.head, train.Examples(x, y), NO_BACKGROUND)[0] == first.metrics["loo_accuracy"]


def test_same_inputs_give_the_identical_head() -> None:
    labels, prompt_embs = ("Alpha", "Beta"), [_prompts(0), _prompts(1)]
    x, y = _two_mode(np.random.default_rng(9), 6)
    first = _fit(labels, prompt_embs, train.Examples(x, y), _zero_shot(labels, prompt_embs))
    again = _fit(labels, [p.copy() for p in prompt_embs], train.Examples(x.copy(), y.copy()),
                 _zero_shot(labels, prompt_embs))
    assert first.accepted and first.head.memory is not None
    assert dump_heads({"label": first.head}) == dump_heads({"label": again.head})
    assert first.metrics == again.metrics


def test_rejected_boxes_become_background_vectors() -> None:
    labels, prompt_embs, examples = _renamed_case(8, seed=4)
    rejected = _images(np.random.default_rng(5), (6,), 2)
    with_bg = train.Examples(np.concatenate([examples.embeddings, rejected]),
                             np.concatenate([examples.labels, [-1, -1]]))
    result = _fit(labels, prompt_embs, with_bg, _zero_shot(labels, prompt_embs))
    assert result.head.background_vecs.shape == (2, D)
    np.testing.assert_allclose(np.linalg.norm(result.head.background_vecs, axis=1), 1.0, atol=1e-6)
    assert result.metrics["background"] == 2.0


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_examples_keep_the_current_head(n: int) -> None:
    labels, prompt_embs = ("A", "B"), [_prompts(0), _prompts(1)]
    current = _zero_shot(labels, prompt_embs)
    examples = train.Examples(_images(np.random.default_rng(6), (0,), n), np.zeros(n, int))
    result = _fit(labels, prompt_embs, examples, current)
    assert not result.accepted and result.head is current
    assert result.reason == f"fewer than {train.MIN_EXAMPLES} examples"


def test_no_temperature_to_try_is_a_value_error() -> None:
    labels, prompt_embs, examples = _renamed_case(3, seed=7)
    with pytest.raises(ValueError, match="temperature"):
        train.fit("label", labels, prompt_embs, examples, _zero_shot(labels, prompt_embs), NO_BACKGROUND,
                  LOGIT_SCALE, scale_factors=())
