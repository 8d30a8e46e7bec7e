"""Running one chunk of a bulk job: predict its tasks and store the predictions in Label Studio, once.

Every chunk first asks Label Studio which of its tasks already hold the job's version, so a task is never stored
twice: not after a crash, a redelivery, a rerun or a resumed job. One request carries one chunk's predictions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from cliplabel.core.domain import Head, ModelVersion, ProjectState, TaskPrediction
from cliplabel.core.errors import LabelStudioAuthError, LabelStudioError, NotFoundError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio import label_config
from cliplabel.labelstudio.client import RETRY_DELAYS_S, LabelStudioClient, is_transient
from cliplabel.services.bulk.journal import JobJournal
from cliplabel.services.bulk.model import MAX_ERRORS, ChunkResult
from cliplabel.services.bulk.rescore import CachedRescorer
from cliplabel.services.predict import Predictor
from cliplabel.store import Store

logger = logging.getLogger(__name__)


def sort_predictions(task_ids: list[int], preds: list[TaskPrediction]) -> tuple[list[tuple[int, TaskPrediction]],
                                                                               list[str]]:
    """(what to store, one error line per task that failed), in task order.

    A prediction that found nothing (no choice above threshold, no box) is stored as such, an empty result: the task
    was predicted, so a rerun of the job skips it instead of predicting it again.
    """
    keep, errors = [], []
    for task_id, pred in zip(task_ids, preds):
        if pred.error is not None:
            errors.append(f"task {task_id}: {pred.error}")
        else:
            keep.append((task_id, pred))
    return keep, errors


class ChunkRunner:
    """Runs chunks of any job; `worker` names this process in the chunks' results."""

    import_retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    import_lease_s = 60.0  # a worker that dies while storing holds the project's import lease this long at most
    # Predicts a `rescore` chunk from the cached embeddings in bulk (`CachedRescorer`, wired by the container), with
    # the predictor's answers; None: `Predictor.predict(from_cache=True)`.
    rescorer: CachedRescorer | None = None

    def __init__(self, journal: JobJournal, clients: Callable[[str], LabelStudioClient], predictor: Predictor,
                 store: Store, encoder_id: str, heads_for: Callable[[ModelVersion], Mapping[str, Head]],
                 worker: str) -> None:
        self.journal = journal
        self.clients = clients
        self.predictor = predictor
        self.store = store
        self.encoder_id = encoder_id
        self.heads_for = heads_for
        self.worker = worker

    def run_chunk(self, job_id: str, index: int) -> ChunkResult | None:
        """Predicts one chunk and writes its predictions to Label Studio; None when it was already done (or the job
        was cancelled)."""
        record = self.journal.record(job_id)
        if index in record.chunks or record.cancelled:
            return None
        if record.plan is None:
            raise NotFoundError(f"bulk job {job_id} has no plan yet")
        started = time.monotonic()
        spec, plan = record.spec, record.plan
        tasks = self.journal.chunk_tasks(job_id, index)
        project = int(spec.project_id)
        client = self.clients(spec.project_id)
        # What Label Studio already holds wins over the plan: a chunk cut off after storing, a redelivered chunk, or
        # another job on the same project (a rerun, a resumed job) never stores a task's prediction twice.
        check_started = time.monotonic()
        ids = [ls_format.task_id(t) for t in tasks]
        stored = client.prediction_versions(project, [i for i in ids if i is not None])
        check_s = time.monotonic() - check_started
        todo = [(i, t) for i, t in zip(ids, tasks) if i is not None and plan.model_version not in stored.get(i, set())]
        config = label_config.parse_label_config(plan.label_config)
        state = self.store.get_project(spec.project_id) or ProjectState(project_id=spec.project_id,
                                                                      label_config=plan.label_config)
        version = next((v for v in self.store.list_versions(spec.project_id, self.encoder_id)
                        if v.name == plan.model_version), None)
        heads = self.heads_for(version) if version is not None else {}
        predict_started = time.monotonic()
        preds = []
        if todo and spec.kind == "rescore" and self.rescorer is not None:
            preds = self.rescorer.predict([t for _, t in todo], config, state, plan.model_version, heads)
        elif todo:
            preds = self.predictor.predict([t for _, t in todo], config, state, plan.model_version, {}, heads,
                                           from_cache=spec.kind == "rescore")
        keep, errors = sort_predictions([i for i, _ in todo], preds)
        write_started = time.monotonic()
        # One request per chunk: Label Studio stores a chunk's predictions in one transaction. Under the project's
        # import lease, the check is made again: a chunk delivered twice at once (a redelivery while it still ran)
        # may predict twice, but stores once.
        with self._import_lease(spec.project_id):
            again = client.prediction_versions(project, [i for i, _ in keep]) if keep else {}
            fresh = [(i, p) for i, p in keep if plan.model_version not in again.get(i, set())]
            self._import(client, project, plan.model_version, fresh)
        already = len(keep) - len(fresh)
        keep = fresh
        done = time.monotonic()
        result = ChunkResult(predicted=len(keep), failed=len(errors), errors=tuple(errors[:MAX_ERRORS]),
                             worker=self.worker, seconds=round(done - started, 3), finished_at=time.time(),
                             predict_s=round(write_started - predict_started, 3),
                             label_studio_s=round(check_s + done - write_started, 3),
                             already_stored=len(tasks) - len(todo) + already)
        if not self.journal.record_chunk(job_id, index, result):
            logger.warning("bulk job=%s chunk=%d finished twice; counted once", job_id, index)
        return result

    def _import(self, client: LabelStudioClient, project: int, model_version: str,
                keep: list[tuple[int, TaskPrediction]]) -> None:
        """Stores a chunk's predictions; after a transient failure (the request may have been stored or not), asks
        Label Studio again which tasks hold the version and retries with the others only, so none is stored twice."""
        for delay in (*self.import_retry_delays_s, None):
            try:
                client.import_predictions(project, keep)
                return
            except LabelStudioError as exc:
                if delay is None or isinstance(exc, LabelStudioAuthError) or not is_transient(exc):
                    raise
                logger.info("project=%s: storing predictions failed (%s); checking and retrying in %.1fs", project,
                            exc.detail, delay)
                time.sleep(delay)
                stored = client.prediction_versions(project, [i for i, _ in keep])
                keep = [(i, p) for i, p in keep if model_version not in stored.get(i, set())]

    @contextmanager
    def _import_lease(self, project_id: str) -> Iterator[None]:
        """Holds the project's import lease (waiting while another worker stores a chunk of it)."""
        name, owner = f"bulk-import:{project_id}", f"{self.worker}:{uuid.uuid4().hex[:6]}"
        while not self.store.acquire_lease(name, owner, self.import_lease_s):
            time.sleep(0.05)
        try:
            yield
        finally:
            self.store.release_lease(name, owner)
