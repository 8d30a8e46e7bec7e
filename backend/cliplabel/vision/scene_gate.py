"""Whole-scene detection on annotated scenes, as pure functions: how a head's boxes score against what annotators kept.

A box head is judged where it is used: every proposal of a scene goes through the detector's own scoring (pairwise
margin, whole-object context test, tight-box preference, NMS) and the boxes are matched with the boxes the annotator
kept (AP50, VOC-style 101-point, greedy by score; false and missed boxes per scene). Training a box head on crops
alone lets it look better on crops while whole-scene recall falls (a rejected loose box, learned as background, also
silences the tight box inside it), so `choose` picks among candidate heads and score thresholds on held-out scenes:
- the edits an annotator makes per scene (false boxes to delete plus missed boxes to draw) are what a pre-label
  should minimise;
- a choice is allowed only when, on the same held-out scenes, its AP50 is at least the current head's and it misses
  no more boxes (fewer false boxes must not be bought with lost recall).

Pure numpy: the crop and context embeddings come from the detector's cache (`cliplabel.services.detect`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cliplabel.core.domain import Head
from cliplabel.vision import boxes, classify, regions

# Margin thresholds a learned box head may choose among (probabilities of a two-way win, see `boxes.BoxParams`), never
# above the current one: a raised threshold that lost no box on the annotated scenes still lost boxes on unseen ones
# (tests/services/test_box_learning.py on the plain model: recall 0.94 → 0.87 with 0.95–0.98), i.e. recall.
THRESHOLDS = (0.7, 0.8, 0.9)
MATCH_IOU = 0.5
# A head that saves edits must do so on clearly more annotated scenes than it costs edits on (a sign test over
# scenes, this many standard deviations, as `train.SIGNIFICANCE_Z` over examples): with a few dozen scenes, the best
# of some 60 options is partly luck, and luck must not make boxes worse.
SIGNIFICANCE_Z = 2.0


@dataclass(frozen=True)
class Scene:
    """One annotated scene as the detector sees it.

    `proposals`: (N, 4) xyxy pixels; `crop_emb`, `context_emb`: (N, D) L2-normalised embeddings of each proposal's
    scoring crop and of its masked context crop; `truth_xyxy`: (G, 4) the boxes the annotator kept; `truth_labels`:
    (G,) their class indices. `group`: which annotation it came from (folds never split a group).
    """

    proposals: np.ndarray = field(repr=False)
    crop_emb: np.ndarray = field(repr=False)
    context_emb: np.ndarray = field(repr=False)
    truth_xyxy: np.ndarray = field(repr=False)
    truth_labels: np.ndarray = field(repr=False)
    group: int = 0

    def __post_init__(self) -> None:
        n = len(self.proposals)
        if self.crop_emb.shape[0] != n or self.context_emb.shape[0] != n or self.proposals.shape[1:] != (4,):
            raise ValueError(f"proposals {self.proposals.shape}, crops {self.crop_emb.shape} and contexts "
                             f"{self.context_emb.shape} do not match")
        if self.truth_xyxy.shape != (len(self.truth_labels), 4):
            raise ValueError(f"truth boxes {self.truth_xyxy.shape} and labels {self.truth_labels.shape} do not match")


@dataclass(frozen=True)
class SceneScores:
    """Detection quality over scenes: AP50, and per scene the false boxes (to delete) and missed ones (to draw).
    `edits`: (S,) each scene's false plus missed boxes, in the order the scenes were scored (empty: not kept)."""

    ap50: float
    fp_per_scene: float
    fn_per_scene: float
    scenes: int
    edits: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def edits_per_scene(self) -> float:
        return self.fp_per_scene + self.fn_per_scene


def _scored(scene: Scene, head: Head, background_vecs: np.ndarray, context_background: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, margin, context probability) of every proposal, as `BoxDetector.detect` computes them."""
    k, scale = len(head.labels), head.logit_scale
    labels, margin = boxes.margin_from_similarities(classify.similarities(scene.crop_emb, head, background_vecs),
                                                    k, scale)
    ctx = np.zeros(len(labels))
    if context_background is not None and len(labels):
        ctx = boxes.context_from_similarities(classify.similarities(scene.context_emb, head, context_background),
                                              labels, k, scale)
    return labels, margin, ctx


def detect_scenes(scenes: Sequence[Scene], head: Head, background_vecs: np.ndarray, thresholds: Sequence[float],
                  params: boxes.BoxParams, context_background: np.ndarray | None
                  ) -> list[list[list[boxes.Detection]]]:
    """Per threshold, per scene: the detector's boxes with `head` (its class scores) against `background_vecs` (the
    prompt background, then what the head learned), the context test against `context_background` (the prompt
    background alone; None: no context test)."""
    scored = [_scored(s, head, background_vecs, context_background) for s in scenes]
    return [[boxes.detect(s.proposals, lab, mar, ctx, thr, params) for s, (lab, mar, ctx) in zip(scenes, scored)]
            for thr in thresholds]


def score(detections: Sequence[Sequence[boxes.Detection]], scenes: Sequence[Scene]) -> SceneScores:
    """AP50 (greedy matching by score, label and IoU ≥ 0.5, 101-point interpolation) and false / missed boxes per
    scene of one set of detections per scene."""
    if len(detections) != len(scenes):
        raise ValueError(f"{len(detections)} detection lists for {len(scenes)} scenes")
    flat = sorted(((d.score, i, d) for i, dets in enumerate(detections) for d in dets), key=lambda t: -t[0])
    used = [np.zeros(len(s.truth_labels), bool) for s in scenes]
    ious = [regions.iou_matrix(np.array([d.bbox_xyxy for d in dets]).reshape(-1, 4), s.truth_xyxy)
            for dets, s in zip(detections, scenes)]
    position = {id(d): j for dets in detections for j, d in enumerate(dets)}
    tp = np.zeros(len(flat), bool)
    for n, (_, i, d) in enumerate(flat):
        row = np.where((scenes[i].truth_labels == d.label_index) & ~used[i], ious[i][position[id(d)]], -1.0)
        if len(row) and row.max() >= MATCH_IOU:
            used[i][int(row.argmax())] = True
            tp[n] = True
    n_gt = sum(len(s.truth_labels) for s in scenes)
    tps, fps = np.cumsum(tp), np.cumsum(~tp)
    recall = tps / max(n_gt, 1)
    precision = tps / np.maximum(tps + fps, 1)
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        reached = recall >= r
        ap += float(precision[reached].max()) / 101 if reached.any() else 0.0
    n = max(len(scenes), 1)
    found = int(tps[-1]) if len(tps) else 0
    hits = np.array([int(u.sum()) for u in used])
    edits = np.array([len(d) for d in detections]) - hits + np.array([len(s.truth_labels) for s in scenes]) - hits
    return SceneScores(ap50=ap if n_gt else 0.0, fp_per_scene=float(len(flat) - found) / n,
                       fn_per_scene=float(n_gt - found) / n, scenes=len(scenes), edits=edits)


def folds(groups: Sequence[int], k: int) -> list[np.ndarray]:
    """Up to `k` folds of scene indices, a group (annotation) never split, groups dealt round-robin in order (so
    each fold holds early and late annotations alike). Deterministic."""
    order = list(dict.fromkeys(groups))
    k = max(1, min(k, len(order)))
    fold_of = {g: i % k for i, g in enumerate(order)}
    assign = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(assign == f) for f in range(k)]


@dataclass(frozen=True)
class Choice:
    """What `choose` picked: the index of the candidate and its threshold, the held-out scores of it and of the
    current head, and every option's scores for the record."""

    candidate: int | None
    threshold: float
    scores: SceneScores
    current: SceneScores
    reason: str


def choose(options: dict[tuple[int, float], SceneScores], current: SceneScores) -> Choice:
    """The option (candidate index, threshold) with the fewest edits per scene among those that keep both the
    current head's AP50 and its recall (no more missed boxes); ties: higher AP50, then the earlier candidate, then the
    higher threshold. None when no option keeps both, or none saves edits on clearly more scenes than it costs."""
    allowed = [(key, s) for key, s in options.items()
               if s.ap50 + 1e-9 >= current.ap50 and s.fn_per_scene <= current.fn_per_scene + 1e-9]
    if not allowed:
        best_ap = max(options.values(), key=lambda s: s.ap50, default=None)
        ap = f"{best_ap.ap50:.3f}" if best_ap is not None else "none"
        return Choice(None, 0.0, current, current,
                      f"no candidate keeps the current head's whole-scene AP50 ({current.ap50:.3f}; best {ap}) "
                      f"and recall ({current.fn_per_scene:.2f} missed boxes per scene)")
    (cand, thr), best = min(allowed, key=lambda ks: (ks[1].edits_per_scene, -ks[1].ap50, ks[0][0], -ks[0][1]))
    fewer = best.edits_per_scene < current.edits_per_scene - 1e-9
    if fewer and len(best.edits) == len(current.edits) and len(best.edits):
        gained = int(np.sum(best.edits < current.edits))
        lost = int(np.sum(best.edits > current.edits))
        if gained - lost < max(1.0, SIGNIFICANCE_Z * np.sqrt(gained + lost)):
            return Choice(None, 0.0, best, current,
                          f"fewer edits on {gained} annotated scenes and more on {lost}: not clearly better")
    # As many edits with a slightly higher held-out AP50 is no reason to change: such heads cost the plain test model
    # recall on unseen scenes (tests/services/test_box_learning.py).
    if not fewer:
        return Choice(None, 0.0, best, current,
                      f"whole-scene edits per scene {best.edits_per_scene:.2f} do not improve on the current head's "
                      f"{current.edits_per_scene:.2f}")
    return Choice(cand, thr, best, current,
                  f"whole-scene AP50 {best.ap50:.3f} (current {current.ap50:.3f}), false boxes per scene "
                  f"{best.fp_per_scene:.2f} (current {current.fp_per_scene:.2f})")
