"""The prediction service: tasks + label config → one `TaskPrediction` per task, in order.

Images are fetched concurrently, encoded through the cache in full batches across all tasks of a request, and scored
against each control's class vectors. A task that fails gets an empty prediction and a warning.

Data flow: a call is cut into chunks of one encoder batch. While one chunk is scored, the next chunk's images
download. Each step of a chunk returns what it produced and which tasks it lost (`_Failures`); the chunk keeps the
first failure of each task, and the call assembles the predictions from the chunks' results.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cliplabel.core.domain import (
    ChoicePrediction,
    Control,
    DrawnRegion,
    Head,
    LabelConfig,
    ProjectState,
    RegionPrediction,
    TaskPrediction,
)
from cliplabel.core.errors import CliplabelError
from cliplabel.core.metrics import Metrics
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.auth import LabelStudioAuth
from cliplabel.labelstudio.connections import LabelStudioConnections
from cliplabel.labelstudio.fetch import ImageFetcher
from cliplabel.labelstudio.sources import SourceContext
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.detect import BoxDetector, BoxImage
from cliplabel.services.interactive import label_drawn_regions
from cliplabel.services.reference_index import Job, KnownImage, ReferenceIndex, image_ref
from cliplabel.vision import classify

logger = logging.getLogger(__name__)
_Failures = dict[int, str]  # task index → why it predicts nothing


@dataclass(frozen=True)
class _Call:
    """What every chunk of one `predict` call shares."""

    tasks: Sequence[object]
    ids: list[int | None]
    keys: list[str]  # the image keys any control reads, sorted
    choice_controls: tuple[Control, ...]
    rect_controls: tuple[Control, ...]
    drawn: Sequence[DrawnRegion]
    heads: Mapping[str, Head]
    ctx: SourceContext
    auth: LabelStudioAuth | None
    refs: Mapping[Job, str | None]
    known: Mapping[Job, KnownImage]  # images scored from the cache: never downloaded
    lazy: Mapping[Job, BoxImage]  # known images of box controls, decoded only if a crop is missing from the cache


@dataclass
class _Chunk:
    """A chunk's outcome."""

    choices: dict[int, list[ChoicePrediction]] = field(default_factory=dict)
    regions: dict[int, list[RegionPrediction]] = field(default_factory=dict)
    failures: _Failures = field(default_factory=dict)
    blobs: dict[Job, bytes] = field(default_factory=dict)  # what was downloaded
    sizes: dict[Job, tuple[int, int]] = field(default_factory=dict)  # upright sizes of what was decoded


def _keep_first(failures: _Failures, new: Mapping[int, str]) -> None:
    for ti, detail in new.items():
        failures.setdefault(ti, detail)


class Predictor:
    """Predicts tasks: downloads, encodes, scores; owns the download threads (`close` stops them)."""

    def __init__(self, embeddings: EmbeddingService, connections: LabelStudioConnections, fetcher: ImageFetcher,
                 class_vectors: ClassVectors, detector: BoxDetector, references: ReferenceIndex,
                 pool: ThreadPoolExecutor, metrics: Metrics, fetch_workers: int) -> None:
        self.embeddings = embeddings
        self.connections = connections
        self.fetcher = fetcher
        self.vectors = class_vectors
        self.detector = detector
        self.references = references
        self.pool = pool
        self.metrics = metrics
        # Downloads get their own threads, so the next chunk's downloads never queue ahead of this chunk's decodes.
        self._fetch_pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="cliplabel-fetch")

    def close(self) -> None:
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    def warm(self, config: LabelConfig, wait_s: float | None = None) -> None:
        """Computes the prompt vectors of every control ahead of the first prediction.

        Raises:
            ModelWarmingError: with `wait_s`, the controls' vectors are not all ready within it (they go on
                computing).
            CliplabelError: for any other failure.
        """
        # One deadline for all controls: a config with several large label sets must not wait `wait_s` per control.
        deadline = None if wait_s is None else time.monotonic() + wait_s
        for control in config.controls:
            self.vectors.zero_shot(control, None if deadline is None else max(0.0, deadline - time.monotonic()))
            if control.kind == "rectanglelabels":
                self.detector.background_vectors(control)

    # -- prediction ------------------------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[object], config: LabelConfig, project: ProjectState | None,
                model_version: str, params: dict[str, Any] | None = None,
                heads: Mapping[str, Head] | None = None, from_cache: bool = False) -> list[TaskPrediction]:
        """One prediction per task, in task order; failures become empty predictions with `error` set.

        With `params.context` holding regions an annotator drew (interactive pre-annotation), the answer is those
        regions labelled, not a full prediction. With `from_cache` (re-scoring a project after a retrain), an image
        seen before under the same reference is not downloaded again: its cached embeddings, proposals and crops
        are scored against the new heads, and only what is missing from the cache is fetched.
        """
        ids = [ls_format.task_id(t) for t in tasks]
        self.metrics.inc("tasks_received", len(tasks))
        choice_controls, rect_controls = config.of_kind("choices"), config.of_kind("rectanglelabels")
        drawn = ls_format.drawn_regions(params)
        if drawn:
            choice_controls = ()
        if not choice_controls and not rect_controls:
            return [TaskPrediction(task_id=i, model_version=model_version) for i in ids]
        call = self._call(tasks, ids, choice_controls, rect_controls, drawn, heads or {}, project, from_cache)
        failures: _Failures = {}
        choices: list[list[ChoicePrediction]] = [[] for _ in tasks]
        boxes: list[list[RegionPrediction]] = [[] for _ in tasks]
        step = max(1, self.embeddings.batch_size)
        chunks = [range(i, min(i + step, len(tasks))) for i in range(0, len(tasks), step)]
        pending = self._download(call, chunks[0]) if chunks else []
        for ci, rows in enumerate(chunks):
            current, pending = pending, (self._download(call, chunks[ci + 1]) if ci + 1 < len(chunks) else [])
            chunk = self._score_chunk(call, rows, current)
            for ti in rows:
                choices[ti], boxes[ti] = chunk.choices.get(ti, []), chunk.regions.get(ti, [])
            failures.update(chunk.failures)  # chunks hold disjoint tasks
            self.references.remember(call.refs, call.ctx, chunk.blobs, chunk.sizes)
        out = []
        for ti, task_id in enumerate(ids):
            if ti in failures:
                self.metrics.inc("tasks_failed")
                logger.warning("task=%s predicted nothing: %s", task_id, failures[ti])
                out.append(TaskPrediction(task_id=task_id, model_version=model_version, error=failures[ti]))
            else:
                out.append(TaskPrediction(task_id=task_id, model_version=model_version, choices=tuple(choices[ti]),
                                          regions=tuple(boxes[ti])))
        self.metrics.inc("tasks_predicted", len(tasks) - len(failures))
        self.metrics.inc("images_from_cache", len(call.known))
        return out

    def _call(self, tasks: Sequence[object], ids: list[int | None], choice_controls: tuple[Control, ...],
              rect_controls: tuple[Control, ...], drawn: Sequence[DrawnRegion], heads: Mapping[str, Head],
              project: ProjectState | None, from_cache: bool) -> _Call:
        ctx, auth = self.connections.source_context(project)
        keys = sorted({c.image_key for c in (*choice_controls, *rect_controls)})
        refs = {(ti, k): image_ref(tasks[ti], k) for ti in range(len(tasks)) for k in keys}
        known = self.references.known_images(refs, ctx, {c.image_key for c in choice_controls},
                                             {c.image_key for c in rect_controls}) if from_cache and not drawn else {}
        lazy = {job: BoxImage(image.content_hash, wh=image.wh,
                              load=functools.partial(self._load_full, tasks[job[0]], ids[job[0]], job[1], ctx, auth))
                for job, image in known.items() if image.wh is not None}
        return _Call(tasks, ids, keys, choice_controls, rect_controls, drawn, heads, ctx, auth, refs, known, lazy)

    def _download(self, call: _Call, rows: range) -> list[tuple[Job, Future[bytes | CliplabelError]]]:
        return [((ti, k), self._fetch_pool.submit(self._fetch, call, ti, k))
                for ti in rows for k in call.keys if (ti, k) not in call.known]

    def _score_chunk(self, call: _Call, rows: range,
                     downloads: list[tuple[Job, Future[bytes | CliplabelError]]]) -> _Chunk:
        chunk = _Chunk()
        for job, future in downloads:
            result = future.result()
            if isinstance(result, CliplabelError):
                chunk.failures.setdefault(job[0], result.detail)
            else:
                chunk.blobs[job] = result
        known = {job: image for job, image in call.known.items() if job[0] in rows}
        chunk.choices, lost = self._choices(call, rows, chunk.blobs, known, chunk.failures)
        _keep_first(chunk.failures, lost)
        chunk.regions, chunk.sizes, lost = self._regions(call, rows, chunk.blobs, chunk.failures)
        _keep_first(chunk.failures, lost)
        return chunk

    def _choices(self, call: _Call, rows: range, blobs: Mapping[Job, bytes], known: Mapping[Job, KnownImage],
                 failed: Mapping[int, str]) -> tuple[dict[int, list[ChoicePrediction]], _Failures]:
        """Choices per task of the chunk, and the tasks whose image could not be encoded."""
        out: dict[int, list[ChoicePrediction]] = {}
        lost: _Failures = {}
        if not call.choice_controls:
            return out, lost
        keys = {c.image_key for c in call.choice_controls}
        wanted = sorted(job for job in blobs if job[1] in keys)
        emb_of = {job: image.embedding for job, image in known.items() if image.embedding is not None}
        for job, emb in zip(wanted, self.embeddings.images([blobs[j] for j in wanted])):
            if isinstance(emb, CliplabelError):
                lost.setdefault(job[0], emb.detail)
            else:
                emb_of[job] = emb
        for control in call.choice_controls:
            ok = [ti for ti in rows if ti not in failed and ti not in lost and (ti, control.image_key) in emb_of]
            if not ok:
                continue
            served = self.vectors.served(control, call.heads.get(control.from_name))
            probs = classify.head_probabilities(np.stack([emb_of[(ti, control.image_key)] for ti in ok]), served)
            for ti, p in zip(ok, probs):
                choice = classify.choose(control, p)
                if choice is not None:
                    out.setdefault(ti, []).append(choice)
        return out, lost

    def _regions(self, call: _Call, rows: range, blobs: Mapping[Job, bytes], failed: Mapping[int, str]
                 ) -> tuple[dict[int, list[RegionPrediction]], dict[Job, tuple[int, int]], _Failures]:
        """Boxes per task of the chunk, the sizes of the images decoded on the way, and the tasks lost."""
        if not call.rect_controls:
            return {}, {}, {}
        keys = {c.image_key for c in call.rect_controls}
        wanted = sorted(job for job in blobs if job[1] in keys and job[0] not in failed)
        lost: _Failures = {}
        items: dict[Job, BoxImage] = {}
        for job, item in zip(wanted, self.pool.map(lambda j: self._decode(blobs[j]), wanted)):
            if isinstance(item, CliplabelError):
                lost.setdefault(job[0], item.detail)
            else:
                items[job] = item
        sizes = {job: item.wh for job, item in items.items()}
        items.update({job: item for job, item in call.lazy.items() if job[0] in rows})
        out: dict[int, list[RegionPrediction]] = {}
        if call.drawn:
            for ti in rows:
                if ti not in failed and ti not in lost:
                    out[ti] = label_drawn_regions(self.detector, call.rect_controls, call.drawn,
                                                  {k: items[(ti, k)] for k in call.keys if (ti, k) in items}, call.heads)
            return out, sizes, lost
        for control in call.rect_controls:
            ok = [ti for ti in rows if ti not in failed and ti not in lost and (ti, control.image_key) in items]
            found, lost_here = self._detect(call, control, ok, [items[(ti, control.image_key)] for ti in ok])
            _keep_first(lost, lost_here)
            for ti, regs in zip(ok, found):
                out.setdefault(ti, []).extend(regs)
        return out, sizes, lost

    def _detect(self, call: _Call, control: Control, rows: list[int], items: list[BoxImage]
                ) -> tuple[list[list[RegionPrediction]], _Failures]:
        """One control's boxes for each image (all in one batch), and the tasks lost on the way."""
        head = call.heads.get(control.from_name)
        try:
            return (self.detector.detect(items, control, head) if items else []), {}
        except CliplabelError:
            if not any((ti, control.image_key) in call.lazy for ti in rows):
                raise
        # A cached image had to be downloaded after all and that failed: score the images one by one so only the
        # broken task loses its prediction.
        found: list[list[RegionPrediction]] = []
        lost: _Failures = {}
        for ti, item in zip(rows, items):
            try:
                found.extend(self.detector.detect([item], control, head))
            except CliplabelError as exc:
                lost.setdefault(ti, exc.detail)
                found.append([])
        return found, lost

    def _fetch(self, call: _Call, ti: int, key: str) -> bytes | CliplabelError:
        try:
            return self.fetcher.fetch_task_image(call.tasks[ti], call.ids[ti], key, call.ctx, call.auth)
        except CliplabelError as exc:
            return exc

    def _decode(self, blob: bytes) -> BoxImage | CliplabelError:
        try:
            return self.detector.load_image(blob)
        except CliplabelError as exc:
            return exc

    def _load_full(self, task: object, task_id: int | None, key: str, ctx: SourceContext,
                   auth: LabelStudioAuth | None) -> Image.Image:
        """A known image's pixels, downloaded when a re-score misses one of its crops. Raises CliplabelError."""
        return self.detector.load_image(self.fetcher.fetch_task_image(task, task_id, key, ctx, auth)).image
