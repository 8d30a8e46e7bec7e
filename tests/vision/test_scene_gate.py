"""The whole-scene gate's pure parts: scoring detections against kept boxes, folds by annotation, the choice rule."""

from __future__ import annotations

import numpy as np
import pytest

from cliplabel.vision import scene_gate
from cliplabel.vision.boxes import Detection


def _scene(truth: list[tuple[tuple[float, float, float, float], int]], group: int = 0) -> scene_gate.Scene:
    empty = np.zeros((0, 4))
    return scene_gate.Scene(empty, np.zeros((0, 8)), np.zeros((0, 8)),
                            np.array([b for b, _ in truth], float).reshape(-1, 4),
                            np.array([c for _, c in truth], np.int64), group)


BOX_A, BOX_B = (0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 40.0, 40.0)


@pytest.mark.parametrize(("dets", "ap", "fp", "fn"), [
    ([], 0.0, 0.0, 2.0),  # nothing found: both kept boxes missed
    ([Detection(BOX_A, 0, 0.9), Detection(BOX_B, 1, 0.8)], 1.0, 0.0, 0.0),  # both found
    # a wrong label ranked first: recall 0.5 (51 of 101 recall points) reached at precision 0.5
    ([Detection(BOX_A, 1, 0.9), Detection(BOX_B, 1, 0.8)], 0.5 * 51 / 101, 1.0, 1.0),
    # IoU 0.68 matches; the duplicate after it is a false box: recall 0.5 at precision 1
    ([Detection((1.0, 1.0, 11.0, 11.0), 0, 0.9), Detection(BOX_A, 0, 0.5)], 51 / 101, 1.0, 1.0),
])
def test_score_matches_by_label_and_iou(dets: list[Detection], ap: float, fp: float, fn: float) -> None:
    s = scene_gate.score([dets], [_scene([(BOX_A, 0), (BOX_B, 1)])])
    assert s.ap50 == pytest.approx(ap)
    assert (s.fp_per_scene, s.fn_per_scene, s.edits_per_scene) == (fp, fn, fp + fn)


def test_scene_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="do not match"):
        scene_gate.Scene(np.zeros((2, 4)), np.zeros((1, 8)), np.zeros((2, 8)), np.zeros((0, 4)), np.zeros(0))


def test_folds_never_split_an_annotation_and_are_deterministic() -> None:
    groups = [5, 5, 7, 8, 8, 9, 10]
    folds = scene_gate.folds(groups, 3)
    assert [list(f) for f in folds] == [list(f) for f in scene_gate.folds(groups, 3)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for f in folds:
        held = {groups[i] for i in f}
        assert not any(groups[i] in held for g in folds if g is not f for i in g)
    assert len(scene_gate.folds([1, 1, 1], 5)) == 1  # one annotation: one fold


def _scores(ap: float, fp: float, fn: float) -> scene_gate.SceneScores:
    return scene_gate.SceneScores(ap, fp, fn, 10)


def test_choice_rejects_fewer_false_boxes_bought_with_lower_ap50_or_too_many_missed_boxes() -> None:
    current = _scores(0.60, 2.0, 0.5)  # work: 2.0 + 2 × 0.5 = 3.0 deletions' worth per scene
    worse_ap = {(0, 0.99): _scores(0.55, 0.1, 1.0)}  # far fewer edits, but AP50 falls
    assert scene_gate.choose(worse_ap, current).candidate is None
    lost_recall = {(0, 0.99): _scores(0.65, 1.5, 0.8)}  # 0.5 fewer false boxes for 0.3 more missed: 3.1 > 3.0
    assert scene_gate.choose(lost_recall, current).candidate is None
    assert scene_gate.choose({(0, 0.99): _scores(0.65, 0.1, 0.6)}, current).candidate == 0  # 1.3: a good trade
    no_gain = {(0, 0.9): _scores(0.60, 2.0, 0.5)}  # nothing better
    assert scene_gate.choose(no_gain, current).candidate is None
    ranks_better = {(0, 0.9): _scores(0.65, 2.0, 0.5)}  # as many edits, a better ranking: not worth a change
    assert scene_gate.choose(ranks_better, current).candidate is None


def test_choice_takes_the_least_work_that_keeps_ap50() -> None:
    current = _scores(0.60, 2.0, 0.5)
    options = {(0, 0.9): _scores(0.62, 1.5, 0.5), (0, 0.98): _scores(0.61, 0.6, 0.5),
               (3, 0.99): _scores(0.59, 0.2, 0.5), (3, 0.98): _scores(0.61, 0.6, 0.5),
               (4, 0.999): _scores(0.70, 0.0, 0.9)}  # (4, 0.999) misses too many boxes: 1.8 > 1.6
    got = scene_gate.choose(options, current)
    assert (got.candidate, got.threshold) == (0, 0.98)  # a tie in edits and AP50 goes to the earlier candidate
    assert got.scores.ap50 >= current.ap50


def _per_scene(ap: float, false_boxes: list[int]) -> scene_gate.SceneScores:
    e = np.array(false_boxes)
    return scene_gate.SceneScores(ap, float(e.mean()), 0.0, len(e), e, np.zeros_like(e))


def test_choice_needs_fewer_false_boxes_on_clearly_more_scenes() -> None:
    current = _per_scene(0.6, [2, 2, 2, 2, 2, 2])
    lucky = {(0, 0.9): _per_scene(0.6, [0, 1, 2, 2, 2, 3])}  # better on 2 scenes, worse on 1
    assert scene_gate.choose(lucky, current).candidate is None
    clear = {(0, 0.9): _per_scene(0.6, [1, 1, 1, 1, 1, 1])}  # better on all 6 (6 ≥ √6)
    assert scene_gate.choose(clear, current).candidate == 0


def test_choice_weighs_how_much_work_each_scene_saves_not_only_where() -> None:
    """Paired on the amounts: three scenes rid of three false boxes each outweigh two scenes with one more (a sign
    test, 3 against 2, refused it), and nine scenes saved one box do not excuse one scene given eight (a sign test, 9
    against 1, took it)."""
    current = _per_scene(0.6, [3, 3, 3, 0, 0, 0, 0, 0, 0, 0])
    cleaner = {(0, 0.9): _per_scene(0.6, [0, 0, 0, 1, 1, 0, 0, 0, 0, 0])}
    assert scene_gate.choose(cleaner, current).candidate == 0
    current = _per_scene(0.6, [1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    one_wrecked = {(0, 0.9): _per_scene(0.6, [0, 0, 0, 0, 0, 0, 0, 0, 0, 8])}
    got = scene_gate.choose(one_wrecked, current)
    assert got.candidate is None and "not clearly better" in got.reason
