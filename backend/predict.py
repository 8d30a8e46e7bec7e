"""The prediction service: tasks + label config → one `TaskPrediction` per task, in order.

Images are fetched concurrently, encoded through the cache in full batches across all tasks of a request, and scored
against each control's prompt-ensemble class vectors. A task that fails gets an empty prediction and a warning.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from backend import classify, ls_format, prompts, sources
from backend.domain import ChoicePrediction, Control, LabelConfig, ProjectState, TaskPrediction
from backend.embeddings import EmbeddingService
from backend.errors import CliplabelError
from backend.fetch import ImageFetcher
from backend.ls_auth import LabelStudioAuth
from backend.metrics import Metrics

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
                 templates: Sequence[str], defaults: LabelStudioDefaults, metrics: Metrics) -> None:
        self.embeddings = embeddings
        self.fetcher = fetcher
        self.pool = pool
        self.templates = tuple(templates)
        self.defaults = defaults
        self.metrics = metrics
        self._class_vecs: dict[str, np.ndarray] = {}
        self._class_locks: dict[str, threading.Lock] = {}
        self._auth: dict[tuple[str, str], LabelStudioAuth] = {}
        self._lock = threading.Lock()

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
        """(K, D) prompt-ensemble vectors of a control's classes, built once per label set.

        Concurrent callers for the same label set (the /setup warm-up and a first /predict) wait for one computation
        instead of each encoding the same prompts.
        """
        key = hashlib.sha256(repr((control.classes, self.templates)).encode()).hexdigest()
        with self._lock:
            key_lock = self._class_locks.setdefault(key, threading.Lock())
        with key_lock:
            cached = self._class_vecs.get(key)
            if cached is not None:
                return cached
            ensembles = [prompts.build_ensemble(c, self.templates) for c in control.classes]
            emb = self.embeddings.texts([p for e in ensembles for p in e.prompts])
            vecs = prompts.class_vectors(ensembles, emb)
            self._class_vecs[key] = vecs
            return vecs

    # -- prediction ------------------------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[object], config: LabelConfig, project: ProjectState | None,
                model_version: str) -> list[TaskPrediction]:
        """One prediction per task, in task order; failures become empty predictions with `error` set."""
        controls = config.of_kind("choices")
        ids = [ls_format.task_id(t) for t in tasks]
        self.metrics.inc("tasks_received", len(tasks))
        if not controls:
            return [TaskPrediction(task_id=i, model_version=model_version) for i in ids]
        ctx, auth = self.source_context(project)
        keys = sorted({c.image_key for c in controls})
        jobs = [(ti, k) for ti in range(len(tasks)) for k in keys]
        fetched = list(self.pool.map(lambda job: self._fetch(tasks[job[0]], ids[job[0]], job[1], ctx, auth), jobs))
        errors: dict[int, str] = {}
        blobs: list[bytes] = []
        blob_jobs: list[tuple[int, str]] = []
        for job, result in zip(jobs, fetched):
            if isinstance(result, CliplabelError):
                errors.setdefault(job[0], result.detail)
            else:
                blobs.append(result)
                blob_jobs.append(job)
        emb_of: dict[tuple[int, str], np.ndarray] = {}
        for job, emb in zip(blob_jobs, self.embeddings.images(blobs)):
            if isinstance(emb, CliplabelError):
                errors.setdefault(job[0], emb.detail)
            else:
                emb_of[job] = emb
        per_task: list[list[ChoicePrediction]] = [[] for _ in tasks]
        for control in controls:
            rows = [ti for ti in range(len(tasks)) if ti not in errors and (ti, control.image_key) in emb_of]
            if not rows:
                continue
            probs = classify.softmax_probabilities(np.stack([emb_of[(ti, control.image_key)] for ti in rows]),
                                                   self.class_vectors(control), self.embeddings.encoder.logit_scale)
            for ti, p in zip(rows, probs):
                choice = classify.choose(control, p)
                if choice is not None:
                    per_task[ti].append(choice)
        out = []
        for ti, task_preds in enumerate(per_task):
            if ti in errors:
                self.metrics.inc("tasks_failed")
                logger.warning("task=%s predicted nothing: %s", ids[ti], errors[ti])
                out.append(TaskPrediction(task_id=ids[ti], model_version=model_version, error=errors[ti]))
            else:
                out.append(TaskPrediction(task_id=ids[ti], model_version=model_version, choices=tuple(task_preds)))
        self.metrics.inc("tasks_predicted", len(tasks) - len(errors))
        return out

    def _fetch(self, task: object, task_id: int | None, key: str, ctx: sources.SourceContext,
               auth: LabelStudioAuth | None) -> bytes | CliplabelError:
        try:
            ref = ls_format.task_image_ref(task, key)
            source = sources.resolve(ref, ctx, task_id)
            return self.fetcher.fetch(source, ctx, auth)
        except CliplabelError as exc:
            return exc
