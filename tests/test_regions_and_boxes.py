from __future__ import annotations

import numpy as np
import pytest

from cliplabel.vision import boxes, regions
from cliplabel.vision.boxes import BoxParams


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        # degenerate boxes never overlap anything
        ([0, 0, 0, 0], [0, 0, 10, 10], 0.0),
        ([5, 5, 5, 9], [0, 0, 10, 10], 0.0),
        # disjoint, touching, identical, nested, half-overlapping
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [2.5, 2.5, 7.5, 7.5], 0.25),
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),
    ],
)
def test_iou(a: list[float], b: list[float], iou: float) -> None:
    assert regions.iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(iou)


def test_shapes_are_validated() -> None:
    assert regions.as_boxes([]).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\), got \(2, 3\)"):
        regions.as_boxes(np.zeros((2, 3)))


def test_containment_is_directional() -> None:
    small, big = np.array([[2, 2, 4, 4]]), np.array([[0, 0, 10, 10]])
    assert regions.containment_matrix(small, big)[0, 0] == 1.0
    assert regions.containment_matrix(big, small)[0, 0] == pytest.approx(0.04)


def test_nms_keeps_the_best_of_each_cluster() -> None:
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]])
    kept = regions.nms(b, np.array([0.5, 0.9, 0.3, 0.8]), 0.5)
    assert kept.tolist() == [1, 2]
    assert regions.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_classwise_nms_keeps_overlapping_boxes_of_different_labels() -> None:
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]])
    kept = regions.classwise_nms(b, np.array([0.6, 0.9, 0.7]), np.array([0, 1, 0]), 0.5)
    assert kept.tolist() == [1, 2]


def test_filter_proposals() -> None:
    b = np.array([
        [0, 0, 2, 2],        # too small
        [0, 0, 100, 100],    # the whole image
        [0, 0, 90, 10],      # too elongated
        [10, 10, 40, 40],    # fine
        [10, 10, 40, 41],    # near-duplicate of the previous
        [50, 50, 80, 70],    # fine
    ], float)
    kept = regions.filter_proposals(b, (100, 100), min_side_px=4, max_area_frac=0.9, max_aspect=4, dedupe_iou=0.9)
    assert kept.tolist() == [3, 5]


def test_square_windows_are_centred_and_padded() -> None:
    w = regions.square_windows(np.array([[10, 20, 30, 60]]), 0.5)
    np.testing.assert_allclose(w, [[-10, 10, 50, 70]])


@pytest.mark.parametrize(
    ("box", "pct"),
    [
        ([25, 10, 50, 20], (25.0, 25.0, 25.0, 25.0)),
        # clamped to the image
        ([-10, -10, 50, 20], (0.0, 0.0, 50.0, 50.0)),
        ([90, 30, 120, 60], (90.0, 75.0, 10.0, 25.0)),
    ],
)
def test_percent_round_trip(box: list[float], pct: tuple[float, ...]) -> None:
    got = regions.to_percent(np.array(box, float), (100, 40))
    assert got == pytest.approx(pct)
    back = regions.from_percent(*got, (100, 40))
    np.testing.assert_allclose(back, regions.clip_boxes(np.array([box], float), (100, 40))[0])


def test_background_competes_in_one_softmax() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cp, bg = boxes.class_and_background_probs(emb, np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), 10.0)
    np.testing.assert_allclose(cp[:, 0] + bg, 1.0, atol=1e-6)
    assert cp[0, 0] > 0.99 and bg[1] > 0.99


def _detect(b: list[list[float]], margin: list[float], context: list[float] | None = None,
            labels: list[int] | None = None, **kw: float) -> list[boxes.Detection]:
    lab = np.zeros(len(b), np.int64) if labels is None else np.array(labels)
    return boxes.detect(np.array(b, float), lab, np.array(margin), None if context is None else np.array(context),
                        None, BoxParams(**kw))  # type: ignore[arg-type]


def test_margin_is_pairwise_whatever_the_number_of_classes() -> None:
    emb = np.array([[1.0, 0.0, 0.0]], np.float32)
    cls = np.array([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0]], np.float32)
    bg = np.array([[0.6, 0.0, 0.8]], np.float32)
    labels, margin = boxes.margin_probs(emb, cls, bg, 10.0)
    # class 0 (cos 0.8) against its strongest rival, background (cos 0.6): sigmoid(10 × 0.2)
    assert labels.tolist() == [0] and margin[0] == pytest.approx(1 / (1 + np.exp(-2.0)))
    # ten more classes far from the crop change nothing (a K-way softmax would dilute the score)
    far = np.tile(np.array([[0.0, 0.0, -1.0]], np.float32), (10, 1))
    _, more = boxes.margin_probs(emb, np.concatenate([cls, far]), bg, 10.0)
    assert more[0] == pytest.approx(margin[0])
    # no crops
    assert boxes.margin_probs(np.zeros((0, 3), np.float32), cls, bg, 10.0)[1].shape == (0,)


def test_context_probability_asks_label_against_background() -> None:
    ctx = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cls, bg = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 1.0]], np.float32)
    got = boxes.context_probs(ctx, np.array([0, 0]), cls, bg, 5.0)
    np.testing.assert_allclose(got, [1 / (1 + np.exp(-5.0)), 1 / (1 + np.exp(5.0))])


def test_detect_drops_unconfident_and_cut_boxes() -> None:
    # nothing
    assert _detect([], []) == []
    dets = _detect([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.5, 0.95, 0.97], [0.0, 0.1, 0.6])
    # the first is under the default margin threshold of 0.9; the third sees its class around it (cut through)
    assert [(d.bbox_xyxy, d.label_index) for d in dets] == [((20.0, 20.0, 30.0, 30.0), 0)]
    # the score is confident × whole
    assert dets[0].score == pytest.approx(0.95 * 0.9)


def test_detect_prefers_the_tight_box_over_a_loose_one_that_contains_it() -> None:
    dets = _detect([[0, 0, 100, 100], [30, 30, 60, 60]], [0.96, 0.95])
    assert [d.bbox_xyxy for d in dets] == [(30.0, 30.0, 60.0, 60.0)]
    # … unless the tight one scores clearly worse
    dets = _detect([[0, 0, 100, 100], [30, 30, 60, 60]], [0.99, 0.91])
    assert len(dets) == 2
    # … or holds another label
    dets = _detect([[0, 0, 100, 100], [30, 30, 60, 60]], [0.96, 0.95], labels=[0, 1])
    assert len(dets) == 2


def test_detect_caps_and_sorts() -> None:
    b = [[i * 20, 0, i * 20 + 10, 10] for i in range(5)]
    dets = _detect(b, [0.91 + i / 100 for i in range(5)], max_boxes=3)
    assert [d.score for d in dets] == pytest.approx([0.95, 0.94, 0.93])


def test_box_params_are_validated() -> None:
    with pytest.raises(ValueError, match="nms_iou"):
        BoxParams(nms_iou=1.5)
    with pytest.raises(ValueError, match="context_threshold"):
        BoxParams(context_threshold=-0.1)


def test_detection_evaluation() -> None:
    from tests.detection_eval import evaluate

    truths = [[((0, 0, 10, 10), "a"), ((20, 20, 30, 30), "b")], []]
    # perfect
    perfect = evaluate([[((0, 0, 10, 10), "a", 0.9), ((20, 20, 30, 30), "b", 0.8)], []], truths)
    assert (perfect.ap50, perfect.recall50, perfect.fp_per_image) == (pytest.approx(1.0), 1.0, 0.0)
    # wrong label, a duplicate and a box on the empty image: half recall, three false positives over two images
    worse = evaluate([[((0, 0, 10, 10), "a", 0.9), ((0, 0, 10, 10), "a", 0.85), ((20, 20, 30, 30), "a", 0.8)],
                      [((0, 0, 5, 5), "a", 0.95)]], truths)
    assert worse.recall50 == 0.5 and worse.fp_per_image == 1.5 and worse.ap50 < 0.5
