"""The whole-scene acceptance of a box head: a retrain's candidate heads run through the detector on the annotated
scenes, held out by annotation (k-fold), and one replaces the current head only if its AP50 there is at least the
current head's and it leaves the annotator less work (`cliplabel.vision.scene_gate` holds the pure logic).

Learning from boxes: kept boxes (confirmed, corrected, drawn) are class evidence, proposed boxes the annotator did not
keep are background evidence (`train.fit`), and every candidate box of an annotated scene, kept or not, teaches a box
verifier (`cliplabel.vision.box_verifier`: which boxes annotators keep, from the box's scores and how it sits among
the other candidates). What of that helps whole scenes differs between models and projects, so the candidates
(`CANDIDATES`) are the text vectors with the learned background (raw or softened), the zero-shot (or current) head,
each at every margin threshold of `scene_gate.THRESHOLDS` up to the current one, and the zero-shot head with a
verifier (fitted on the other folds' scenes) at each of `box_verifier.THRESHOLDS`. The fitted
class vectors are not candidates for boxes: on the plain test model, heads the cross-validated gate accepted with
them lost held-out recall (AP50 0.90 -> 0.68 in tests/services/test_box_learning.py), a gap between the fold fits
and the full fit not yet explained; a box class therefore keeps its text vector and learns background only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from cliplabel.core.domain import BoxVerifier, Control, FeedbackExample, Head
from cliplabel.services.detect import BoxDetector
from cliplabel.vision import box_verifier, scene_gate, train

FOLDS = 5
MIN_SCENES = 2
CANDIDATES = ("text, background", "text, soft background", "zero-shot", "current", "zero-shot, verifier")

Fit = Callable[[Sequence[FeedbackExample]], train.TrainResult]


def annotated_scenes(detector: BoxDetector, control: Control, examples: Sequence[FeedbackExample]
                     ) -> list[scene_gate.Scene]:
    """The annotated scenes of a box control whose proposals and crops are all in the cache (an annotation's kept
    boxes are its truth; a scene annotated twice counts once per annotation)."""
    index = {v: i for i, v in enumerate(control.values)}
    groups: dict[tuple[int, str], list[FeedbackExample]] = {}
    for e in examples:
        groups.setdefault((e.annotation_id, e.image_hash), []).append(e)
    out = []
    for (aid, image_hash), members in groups.items():
        cached = detector.cached_scene(image_hash)
        if cached is None:
            continue
        kept = [(e.box_xyxy, index[e.label]) for e in members
                if e.label is not None and e.label in index and e.box_xyxy is not None]
        truth = np.array([b for b, _ in kept], np.float64).reshape(-1, 4)
        props, crops, contexts = cached
        out.append(scene_gate.Scene(props, crops, contexts, truth, np.array([c for _, c in kept], np.int64),
                                    group=aid))
    return out


def _same(a: Head, b: Head) -> bool:
    return (a.memory is None and b.memory is None and a.box_threshold == b.box_threshold
            and a.box_verifier is None and b.box_verifier is None
            and np.array_equal(a.class_vecs, b.class_vecs) and np.array_equal(a.background_vecs, b.background_vecs))


def _soft(background_vecs: np.ndarray, fixed_bg: np.ndarray, share: float) -> np.ndarray:
    """Rejected-box exemplars scored like a labelled class: `(1 − ρ)·cos(x, background prompts) + ρ·cos(x, exemplar)`
    (one unnormalised vector each, so the detector's dot products compute exactly that). Raw, an exemplar of a loose
    box around an object outscores the object's own class score (which keeps a (1 − ρ) share of text) and silences
    the tight box too."""
    return ((1.0 - share) * fixed_bg.mean(axis=0) + share * background_vecs).astype(np.float32)


def _candidates(fitted: Head | None, zero_shot: Head, current: Head, fixed_bg: np.ndarray,
                verifier: BoxVerifier | None) -> list[Head | None]:
    """The heads a retrain may choose among, always at the same positions (None: not available): the text vectors
    with the fitted head's learned background raw or softened; zero-shot; the current head; zero-shot with a box
    verifier fitted on the annotated scenes. On ties the earlier one wins."""
    learned: list[Head | None] = [None] * 2
    if fitted is not None:
        bg = fitted.background_vecs
        learned = [dataclasses.replace(zero_shot, background_vecs=bg),
                   dataclasses.replace(zero_shot, background_vecs=_soft(bg, fixed_bg, 0.5) if len(bg) else bg)]
    verified = None if verifier is None else dataclasses.replace(zero_shot, box_verifier=verifier)
    heads = [*learned, zero_shot, None if _same(current, zero_shot) else current, verified]
    return [None if h is None else dataclasses.replace(h, box_threshold=None) for h in heads]


def judge(detector: BoxDetector, control: Control, examples: Sequence[FeedbackExample], fit: Fit, full: train.TrainResult,
          zero_shot: Head, current: Head) -> train.TrainResult:
    """Whether a retrain replaces a box control's current head, and with what: `full` is the fit on every example
    (accepted without comparing crops), `fit` fits a subset the same way (once per fold)."""
    scenes = annotated_scenes(detector, control, examples)
    metrics = dict(full.metrics, scenes=float(len(scenes)))
    if len(scenes) < MIN_SCENES:
        return train.TrainResult(current, False, metrics,
                                 f"{len(scenes)} annotated scenes in the cache; whole-scene detection needs "
                                 f"{MIN_SCENES}")
    params = detector.config.boxes
    context_bg = detector.context_background(control)
    current_thr = detector.threshold(control, current)
    # Margin thresholds never above the current head's (a verifier's threshold is a probability of another kind).
    margin_cap = current_thr if current.box_verifier is None else params.default_margin_threshold
    margin_thresholds = tuple(t for t in scene_gate.THRESHOLDS if t <= margin_cap + 1e-9) or (margin_cap,)
    fixed_bg = detector.background_vectors(control)

    def thresholds(head: Head) -> tuple[float, ...]:
        if control.score_threshold is not None:
            return (control.score_threshold,)
        return box_verifier.THRESHOLDS if head.box_verifier is not None else margin_thresholds

    def bg(head: Head) -> np.ndarray:
        return np.concatenate([fixed_bg, head.background_vecs]) if len(head.background_vecs) else fixed_bg

    # The verifier's training data depends only on zero-shot scores, so it is computed once; folds index into it.
    verifier_x, verifier_y = scene_gate.verifier_data(scenes, zero_shot, bg(zero_shot), context_bg)

    def verifier(train: Sequence[int]) -> BoxVerifier | None:
        return box_verifier.fit([verifier_x[i] for i in train], [verifier_y[i] for i in train])

    fold_list = scene_gate.folds([s.group for s in scenes], FOLDS)
    order = np.concatenate(fold_list)
    ordered = [scenes[i] for i in order]  # the order held-out detections are pooled in, scene by scene
    (current_dets,) = scene_gate.detect_scenes(ordered, current, bg(current), [current_thr], params, context_bg)
    current_scores = scene_gate.score(current_dets, ordered)
    pooled: dict[tuple[int, float], list[list]] = {}
    for held in fold_list:
        held_groups = {scenes[i].group for i in held}
        result = fit([e for e in examples if e.annotation_id not in held_groups])
        fitted = result.head if result.accepted else None
        held_scenes = [scenes[i] for i in held]
        held_set = set(held.tolist())
        fold_verifier = verifier([i for i in range(len(scenes)) if i not in held_set])
        for c, head in enumerate(_candidates(fitted, zero_shot, current, fixed_bg, fold_verifier)):
            if head is None:
                continue
            thrs = thresholds(head)
            for thr, dets in zip(thrs, scene_gate.detect_scenes(held_scenes, head, bg(head), thrs, params, context_bg)):
                pooled.setdefault((c, thr), []).extend(dets)
    options = {key: scene_gate.score(dets, ordered) for key, dets in pooled.items() if len(dets) == len(ordered)}
    choice = scene_gate.choose(options, current_scores)
    metrics.update({"scene_ap50": choice.scores.ap50, "scene_fp": choice.scores.fp_per_scene,
                    "scene_fn": choice.scores.fn_per_scene, "current_scene_ap50": current_scores.ap50,
                    "current_scene_fp": current_scores.fp_per_scene,
                    "current_scene_fn": current_scores.fn_per_scene})
    if choice.candidate is None:
        return train.TrainResult(current, False, metrics, choice.reason)
    full_verifier = verifier(range(len(scenes))) if CANDIDATES[choice.candidate] == "zero-shot, verifier" else None
    picked = _candidates(full.head if full.accepted else None, zero_shot, current, fixed_bg,
                         full_verifier)[choice.candidate]
    if picked is None:
        return train.TrainResult(current, False, metrics, f"{full.reason} on all examples")
    metrics.update({"box_candidate": float(choice.candidate), "box_threshold": float(choice.threshold)})
    head = dataclasses.replace(picked, box_threshold=float(choice.threshold), from_name=control.from_name)
    return train.TrainResult(head, True, metrics, f"accepted ({CANDIDATES[choice.candidate]}, threshold "
                                                  f"{choice.threshold:g}): {choice.reason}")
