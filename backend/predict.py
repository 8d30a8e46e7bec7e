"""The prediction service: tasks + label config → one `TaskPrediction` per task, in order.

Images are fetched concurrently, encoded through the cache in full batches across all tasks of a request, and scored
against each control's prompt-ensemble class vectors. A task that fails gets an empty prediction and a warning.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend import classify, images, ls_format, prompts, regions, sources
from backend.detect import BoxDetector, BoxImage, DetectorConfig
from backend.domain import ChoicePrediction, Control, DrawnRegion, LabelConfig, ProjectState, RegionPrediction, TaskPrediction
from backend.embeddings import EmbeddingService, content_hash
from backend.errors import CliplabelError
from backend.fetch import ImageFetcher
from backend.ls_auth import LabelStudioAuth
from backend.metrics import Metrics
from backend.train import Head

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelStudioDefaults:
    """Label Studio's URL and key from the settings; when set they win over what `/setup` sent."""

    url: str | None
    api_key: str | None
    allowed_hosts: tuple[str, ...]
    local_files_root: str | None


class Predictor:
    def __init__(self, embeddings: EmbeddingService, fetcher: ImageFetcher, pool: ThreadPoolExecutor,
                 templates: Sequence[str], defaults: LabelStudioDefaults, metrics: Metrics,
                 detector_config: DetectorConfig | None = None) -> None:
        self.embeddings = embeddings
        self.fetcher = fetcher
        self.pool = pool
        self.templates = tuple(templates)
        self.defaults = defaults
        self.metrics = metrics
        self._auth: dict[tuple[str, str], LabelStudioAuth] = {}
        self._lock = threading.Lock()
        self.detector = BoxDetector(embeddings, pool, self.class_vectors, detector_config or DetectorConfig())

    # -- where images come from ------------------------------------------------------------------------------------
    def source_context(self, project: ProjectState | None) -> tuple[sources.SourceContext, LabelStudioAuth | None]:
        base_url = self.defaults.url or (project.hostname.rstrip("/") if project and project.hostname else None)
        token = self.defaults.api_key or (project.access_token if project else None)
        ctx = sources.SourceContext(base_url=base_url, allowed_hosts=self.defaults.allowed_hosts,
                                    local_files_root=self.defaults.local_files_root)
        if not base_url or not token:
            return ctx, None
        key = (base_url, hashlib.sha256(token.encode()).hexdigest())
        with self._lock:
            auth = self._auth.get(key)
            if auth is None:
                auth = self._auth[key] = LabelStudioAuth(base_url, token, self.fetcher.session,
                                                         self.fetcher.timeout_s)
        return ctx, auth

    # -- class vectors ---------------------------------------------------------------------------------------------
    def class_vectors(self, control: Control) -> np.ndarray:
        """(K, D) prompt-ensemble vectors of a control's classes (computed once per label set)."""
        return self.embeddings.ensemble_vectors([prompts.build_ensemble(c, self.templates) for c in control.classes])

    # -- prediction ------------------------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[object], config: LabelConfig, project: ProjectState | None,
                model_version: str, params: dict[str, Any] | None = None,
                heads: Mapping[str, Head] | None = None) -> list[TaskPrediction]:
        """One prediction per task, in task order; failures become empty predictions with `error` set.

        With `params.context` holding regions an annotator drew (interactive pre-annotation), the answer is those
        regions labelled, not a full prediction.
        """
        ids = [ls_format.task_id(t) for t in tasks]
        self.metrics.inc("tasks_received", len(tasks))
        choice_controls, rect_controls = config.of_kind("choices"), config.of_kind("rectanglelabels")
        drawn = ls_format.drawn_regions(params)
        if drawn:
            choice_controls = ()
        if not choice_controls and not rect_controls:
            return [TaskPrediction(task_id=i, model_version=model_version) for i in ids]
        ctx, auth = self.source_context(project)
        keys = sorted({c.image_key for c in (*choice_controls, *rect_controls)})
        jobs = [(ti, k) for ti in range(len(tasks)) for k in keys]
        fetched = list(self.pool.map(lambda job: self._fetch(tasks[job[0]], ids[job[0]], job[1], ctx, auth), jobs))
        errors: dict[int, str] = {}
        blobs: dict[tuple[int, str], bytes] = {}
        for job, result in zip(jobs, fetched):
            if isinstance(result, CliplabelError):
                errors.setdefault(job[0], result.detail)
            else:
                blobs[job] = result
        heads = heads or {}
        choices = self._choices(choice_controls, blobs, errors, len(tasks), heads)
        regions_by_task = self._regions(rect_controls, drawn, blobs, errors, len(tasks), heads)
        out = []
        for ti in range(len(tasks)):
            if ti in errors:
                self.metrics.inc("tasks_failed")
                logger.warning("task=%s predicted nothing: %s", ids[ti], errors[ti])
                out.append(TaskPrediction(task_id=ids[ti], model_version=model_version, error=errors[ti]))
            else:
                out.append(TaskPrediction(task_id=ids[ti], model_version=model_version, choices=tuple(choices[ti]),
                                          regions=tuple(regions_by_task[ti])))
        self.metrics.inc("tasks_predicted", len(tasks) - len(errors))
        return out

    def _choices(self, controls: Sequence[Control], blobs: dict[tuple[int, str], bytes], errors: dict[int, str],
                 n_tasks: int, heads: Mapping[str, Head]) -> list[list[ChoicePrediction]]:
        per_task: list[list[ChoicePrediction]] = [[] for _ in range(n_tasks)]
        if not controls:
            return per_task
        wanted = sorted({(ti, c.image_key) for c in controls for ti in range(n_tasks) if (ti, c.image_key) in blobs})
        emb_of: dict[tuple[int, str], np.ndarray] = {}
        for job, emb in zip(wanted, self.embeddings.images([blobs[j] for j in wanted])):
            if isinstance(emb, CliplabelError):
                errors.setdefault(job[0], emb.detail)
            else:
                emb_of[job] = emb
        for control in controls:
            rows = [ti for ti in range(n_tasks) if ti not in errors and (ti, control.image_key) in emb_of]
            if not rows:
                continue
            vecs, scale = self.head_vectors(control, heads.get(control.from_name))
            probs = classify.softmax_probabilities(np.stack([emb_of[(ti, control.image_key)] for ti in rows]),
                                                   vecs, scale)
            for ti, p in zip(rows, probs):
                choice = classify.choose(control, p)
                if choice is not None:
                    per_task[ti].append(choice)
        return per_task

    def _regions(self, controls: Sequence[Control], drawn: Sequence[DrawnRegion],
                 blobs: dict[tuple[int, str], bytes], errors: dict[int, str], n_tasks: int,
                 heads: Mapping[str, Head]) -> list[list[RegionPrediction]]:
        per_task: list[list[RegionPrediction]] = [[] for _ in range(n_tasks)]
        if not controls:
            return per_task
        wanted = sorted({(ti, c.image_key) for c in controls for ti in range(n_tasks)
                         if ti not in errors and (ti, c.image_key) in blobs})
        decoded = dict(zip(wanted, self.pool.map(lambda j: self._decode_full(blobs[j]), wanted)))
        items: dict[tuple[int, str], BoxImage] = {}
        for job, item in decoded.items():
            if isinstance(item, CliplabelError):
                errors.setdefault(job[0], item.detail)
            else:
                items[job] = item
        if drawn:
            for ti in range(n_tasks):
                per_task[ti] = self._interactive(controls, drawn, items, ti, heads) if ti not in errors else []
            return per_task
        for control in controls:
            rows = [ti for ti in range(n_tasks) if ti not in errors and (ti, control.image_key) in items]
            found = self.detector.detect([items[(ti, control.image_key)] for ti in rows], control,
                                         heads.get(control.from_name)) if rows else []
            for ti, regs in zip(rows, found):
                per_task[ti].extend(regs)
        return per_task

    def _interactive(self, controls: Sequence[Control], drawn: Sequence[DrawnRegion],
                     items: dict[tuple[int, str], BoxImage], ti: int, heads: Mapping[str, Head]
                     ) -> list[RegionPrediction]:
        out = []
        for region in drawn:
            control = next((c for c in controls if c.from_name == region.from_name), None) or next(
                (c for c in controls if c.to_name == region.to_name), None)
            item = items.get((ti, control.image_key)) if control else None
            if control is None or item is None:
                continue
            w, h = item.wh
            if region.kind == "rectangle" and region.box_pct is not None:
                x0, y0, x1, y1 = region.box_pct
                box = regions.from_percent(x0, y0, x1 - x0, y1 - y0, (w, h))
                if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                    found = self.detector.label_box(item, control, box, heads.get(control.from_name))
                    out.extend([found] if found else [])
            elif region.kind == "keypoint" and region.point_pct is not None:
                point = (region.point_pct[0] * w / 100.0, region.point_pct[1] * h / 100.0)
                found = self.detector.box_around_point(item, control, point, heads.get(control.from_name))
                out.extend([found] if found else [])
        return out

    def _decode_full(self, blob: bytes) -> BoxImage | CliplabelError:
        try:
            return self.decode_full(blob)
        except CliplabelError as exc:
            return exc

    def decode_full(self, blob: bytes) -> BoxImage:
        """The full-resolution upright image for the box path. Raises ImageFetchError."""
        decoded = images.decode(blob, self.embeddings.max_pixels)
        return BoxImage(content_hash=content_hash(blob), image=decoded.image)

    def fetch_image(self, task: object, key: str, project: ProjectState | None) -> bytes:
        """One task's image bytes, under the same policy as prediction. Raises CliplabelError."""
        ctx, auth = self.source_context(project)
        result = self._fetch(task, ls_format.task_id(task), key, ctx, auth)
        if isinstance(result, CliplabelError):
            raise result
        return result

    def head_vectors(self, control: Control, head: Head | None) -> tuple[np.ndarray, float]:
        """(class vectors, logit scale) served for a control: the learned head when it fits the control's labels."""
        if head is not None and head.labels == control.values:
            return head.class_vecs, head.logit_scale
        return self.class_vectors(control), self.embeddings.encoder.logit_scale

    def top_choice(self, control: Control, emb: np.ndarray, head: Head | None) -> str:
        vecs, _ = self.head_vectors(control, head)
        return control.values[int(np.argmax(vecs @ emb))]

    def _fetch(self, task: object, task_id: int | None, key: str, ctx: sources.SourceContext,
               auth: LabelStudioAuth | None) -> bytes | CliplabelError:
        try:
            ref = ls_format.task_image_ref(task, key)
            source = sources.resolve(ref, ctx, task_id)
            return self.fetcher.fetch(source, ctx, auth)
        except CliplabelError as exc:
            return exc
