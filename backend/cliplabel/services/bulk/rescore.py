"""Re-scoring cached tasks in bulk: what a `rescore` job runs after a new head version, before storing predictions.

A task whose images only `<Choices>` read and whose embeddings the cache holds needs no download and no encoding:
its embeddings come from the Label Studio host's matrix (`ReferenceIndex.cached_rows`, one store read, then only
what was appended since), each control scores every such task with one matrix product through the predictor's own
scorer (`ClassVectors.served` + `classify.head_probabilities`), and `classify.choose` turns each row into the same
`ChoicePrediction` the predictor makes. Everything else — a task the cache does not know, a box control (its crops
live in the per-crop cache) — goes through `Predictor.predict(from_cache=True)`, the per-task path.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

from cliplabel.core.domain import ChoicePrediction, ClassProbabilities, Control, Head, LabelConfig, ProjectState, TaskPrediction
from cliplabel.labelstudio import format as ls_format
from cliplabel.services.predict import Predictor
from cliplabel.services.reference_index import image_ref
from cliplabel.vision import classify

# Tasks scored per matrix product: their float32 rows (8 MB at D = 512) stay in cache between the gather, the
# product and the softmax, instead of one (N, D) copy of the whole project.
SCORE_ROWS = 4096


class _SingleThreadedBlas:
    """BLAS on the calling thread only, while any re-score is scoring (re-entrant across threads).

    A job chunk's product is small (64 × D × K): handing it to OpenBLAS's helper threads costs more than it saves,
    and on a busy machine waking them costs milliseconds per product, more than the rest of the chunk's scoring
    (bench/bench_rescore.py, "in job chunks"). The limit is process-wide, so the first thread in sets it and the last
    one out restores it (other threads' BLAS calls meanwhile run single-threaded too).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._controller: ThreadpoolController | None = None
        self._saved: object = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._controller = self._controller or ThreadpoolController()
                self._saved = self._controller.limit(limits=1, user_api="blas")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._saved.restore_original_limits()  # type: ignore[attr-defined]


_single_threaded_blas = _SingleThreadedBlas()


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Builds hundreds of thousands of small acyclic objects (predictions, their probabilities) without the cyclic
    collector scanning them again and again as they pile up (process-wide, for the moment it takes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class CachedRescorer:
    """Predicts tasks for a re-score: in bulk from the matrix where it can, through the predictor elsewhere."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def predict(self, tasks: Sequence[object], config: LabelConfig, project: ProjectState | None,
                model_version: str, heads: Mapping[str, Head]) -> list[TaskPrediction]:
        """One prediction per task, in task order, equal to `Predictor.predict(..., from_cache=True)`'s."""
        choice_controls = config.of_kind("choices")
        if config.of_kind("rectanglelabels") or not choice_controls or not tasks:
            return self.predictor.predict(tasks, config, project, model_version, {}, heads, from_cache=True)
        ctx, _ = self.predictor.connections.source_context(project)
        rows = {key: self.predictor.references.cached_rows([image_ref(t, key) for t in tasks], ctx)
                for key in sorted({c.image_key for c in choice_controls})}
        complete = np.logical_and.reduce([r.found for r in rows.values()])
        done = np.flatnonzero(complete)
        served = [self.predictor.vectors.served(c, heads.get(c.from_name)) for c in choice_controls]
        out: list[TaskPrediction | None] = [None] * len(tasks)
        with _no_gc_pauses(), _single_threaded_blas():
            chosen: list[list[ChoicePrediction | None]] = []
            for control, head in zip(choice_controls, served):
                cached = rows[control.image_key]
                chosen.append([c for start in range(0, len(done), SCORE_ROWS) for c in choose_rows(
                    control, classify.head_probabilities(cached.vectors(done[start:start + SCORE_ROWS]), head))])
            if len(chosen) == 1:  # the common case, without a loop over controls per task
                for ti, c in zip(done.tolist(), chosen[0]):
                    out[ti] = TaskPrediction(task_id=ls_format.task_id(tasks[ti]), model_version=model_version,
                                             choices=() if c is None else (c,))
            else:
                for ti, *per_control in zip(done.tolist(), *chosen):
                    out[ti] = TaskPrediction(task_id=ls_format.task_id(tasks[ti]), model_version=model_version,
                                             choices=tuple([c for c in per_control if c is not None]))
        rest = np.flatnonzero(~complete).tolist()
        if rest:
            others = self.predictor.predict([tasks[i] for i in rest], config, project, model_version, {}, heads,
                                            from_cache=True)
            for i, pred in zip(rest, others):
                out[i] = pred
        metrics = self.predictor.metrics
        metrics.inc("tasks_received", len(done))
        metrics.inc("tasks_predicted", len(done))
        metrics.inc("images_from_cache", len(done) * len(rows))
        return [p for p in out if p is not None]


def choose_rows(control: Control, probs: np.ndarray) -> list[ChoicePrediction | None]:
    """`classify.choose` for each row of (N, K) probabilities, with the single-choice case done in numpy (per task
    it costs one object, not a Python loop over its classes); tests/test_rescore.py holds the two equal."""
    if control.multiple:
        return [classify.choose(control, p) for p in probs]
    if probs.ndim != 2 or probs.shape[1] != len(control.classes):
        raise ValueError(f"expected (N, {len(control.classes)}) probabilities, got shape {probs.shape}")
    values, name, to_name = control.values, control.from_name, control.to_name
    best = probs.argmax(axis=1)
    top = probs[np.arange(len(probs)), best]
    reached = (top >= (control.score_threshold or 0.0)).tolist()
    return [ChoicePrediction(from_name=name, to_name=to_name, choices=(values[b],), score=score,
                             probabilities=ClassProbabilities(values, row)) if ok else None
            for b, score, row, ok in zip(best.tolist(), np.clip(top, 0.0, 1.0).tolist(), probs, reached)]
