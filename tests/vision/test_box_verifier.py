"""The box verifier on constructed candidates where the right answer is known: a real object is found by many
well-placed proposals, while a loose box around it and stray boxes elsewhere are single proposals that CLIP scores as
high or higher. Zero-shot keeps them all; the verifier learns from kept and deleted boxes to drop them."""

from __future__ import annotations

import numpy as np

from cliplabel.core.domain import BoxVerifier
from cliplabel.vision import box_verifier, boxes, scene_gate

Scene = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]

PARAMS = boxes.BoxParams()


def _scene(rng: np.random.Generator) -> Scene:
    """(candidates (N, 4), labels, margin, context, truth (1, 4)) of one image with one object of class 1."""
    side = rng.uniform(40, 80)
    x, y = rng.uniform(10, 150, size=2)
    truth = np.array([[x, y, x + side, y + side]])
    jitter = rng.uniform(-0.06, 0.06, size=(6, 4)) * side
    tight = truth + jitter  # IoU > 0.6 with the object
    loose = np.array([[x - side / 2, y - side / 2, x + 1.5 * side, y + 1.5 * side]])  # IoU 0.25: a false box
    sx, sy = rng.uniform(170, 200, size=2)
    stray = np.array([[sx, sy, sx + 30, sy + 45], [10.0, 200.0, 40.0, 240.0]])  # two false boxes elsewhere
    cands = np.concatenate([tight, loose, stray])
    labels = np.array([1] * 7 + [int(rng.integers(0, 3)), 2])
    margin = np.concatenate([rng.uniform(0.92, 0.95, 6), [0.995], rng.uniform(0.95, 0.99, 2)])
    context = np.concatenate([rng.uniform(0.0, 0.1, 6), [0.02], rng.uniform(0.0, 0.1, 2)])
    return cands, labels, margin, context, truth


def _data(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [_scene(rng) for _ in range(n)]


def _fit(scenes: list[Scene]) -> BoxVerifier | None:
    xs = [box_verifier.features(b, lab, m, c) for b, lab, m, c, _ in scenes]
    ys = [box_verifier.kept(b, lab, t, np.array([1])) for b, lab, _, _, t in scenes]
    return box_verifier.fit(xs, ys)


def _score(scenes: list[Scene], verifier: BoxVerifier | None, threshold: float) -> scene_gate.SceneScores:
    dets, truths = [], []
    for b, lab, m, c, t in scenes:
        dets.append(box_verifier.detect(b, lab, m, c, threshold, PARAMS, verifier))
        empty = np.zeros((len(b), 2), np.float32)
        truths.append(scene_gate.Scene(b, empty, empty, t, np.array([1])))
    return scene_gate.score(dets, truths)


def test_features_count_support_and_containment() -> None:
    b, lab, m, c, _ = _scene(np.random.default_rng(0))
    x = box_verifier.features(b, lab, m, c)
    assert x.shape == (9, box_verifier.N_FEATURES)
    assert np.all(x[:6, 7] >= 0.5)  # each tight box overlaps the other five of its class at IoU > 0.5
    assert x[6, 7] == 0 and x[7, 6] == 0  # the loose box and a stray one: no support
    assert x[6, 4] > 0.9  # tight boxes lie wholly inside the loose one
    assert box_verifier.features(b[:0], lab[:0], m[:0], c[:0]).shape == (0, box_verifier.N_FEATURES)


def test_the_verifier_halves_false_boxes_without_losing_recall() -> None:
    train, held = _data(1, 20), _data(2, 30)
    verifier = _fit(train)
    assert verifier is not None
    zero_shot = _score(held, None, PARAMS.default_margin_threshold)
    assert zero_shot.fp_per_scene >= 2.0  # the loose box and the strays pass zero-shot
    learned = _score(held, verifier, 0.5)
    assert learned.fp_per_scene <= zero_shot.fp_per_scene / 2
    assert learned.fn_per_scene <= zero_shot.fn_per_scene
    assert learned.ap50 >= zero_shot.ap50


def test_the_fit_is_deterministic_and_needs_both_kinds_of_box() -> None:
    a, b = _fit(_data(3, 10)), _fit(_data(3, 10))
    assert a is not None and b is not None
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.intercept == b.intercept
    few = _data(4, 1)  # 6 kept and 3 deleted candidates: fewer than MIN_EACH of each
    assert _fit(few) is None


def test_without_a_verifier_detection_is_the_zero_shot_one() -> None:
    b, lab, m, c, _ = _scene(np.random.default_rng(5))
    assert box_verifier.detect(b, lab, m, c, 0.9, PARAMS, None) == boxes.detect(b, lab, m, c, 0.9, PARAMS)
    assert box_verifier.detect(b, lab, np.full(len(b), 0.2), c, 0.5, PARAMS, _fit(_data(6, 10))) == []
