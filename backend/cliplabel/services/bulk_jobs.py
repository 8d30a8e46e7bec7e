"""Bulk jobs on a whole Label Studio project: pre-label every task, or re-score the unlabelled ones after a retrain.

A job is planned once: the project's tasks are listed, those already holding a prediction of the job's model version
are skipped, and the rest are cut into chunks. Each chunk is then run by whoever has time: the API process's
background thread on the embedded store, any number of `cliplabel worker` processes (on any machine) with Redis, or
the CLI inline. A finished chunk is recorded once (`Store.add_part`), so a chunk delivered twice is counted once, and
every chunk first asks Label Studio which of its tasks already hold the job's version, so a task is never stored
twice: not after a crash, a redelivery, a rerun or a resumed job. Label Studio's 100 s request limit never applies:
every request here carries one page of tasks or one chunk's predictions.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cliplabel.labelstudio import label_config
from cliplabel.labelstudio import format as ls_format
from cliplabel.core.domain import ModelVersion, ProjectState
from cliplabel.core.errors import CliplabelError, InvalidRequestError, NotFoundError
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.predict import Predictor
from cliplabel.store import Store
from cliplabel.vision.train import Head
from cliplabel.services.versions import current_version

logger = logging.getLogger(__name__)
SPEC_NS = "bulk-job"  # blob: the job's spec; parts: plan, chunk:<i>, failed, cancelled
TASKS_NS = "bulk-tasks"  # blob per chunk: its tasks
ERROR_NS = "bulk-error"  # blob: the last error of a job (shown by its status until the job finishes)
INDEX_NS = "bulk-jobs"  # parts per project: job id → created_at
ALL_JOBS = "all"  # ... and under this key every job (what a restarted process resumes)
MAX_ERRORS = 20
IN_FLIGHT = 2  # chunks one runner works on at once
STALE_S = 600.0  # a job with no progress for this long no longer blocks a new one on its project

JobKind = Literal["prelabel", "rescore"]
JobState = Literal["planning", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    project_id: str
    kind: JobKind
    chunk_size: int
    created_at: float


@dataclass(frozen=True)
class Plan:
    model_version: str
    label_config: str
    total: int
    skipped: int
    chunks: int
    planned_at: float


@dataclass(frozen=True)
class ChunkResult:
    predicted: int
    failed: int
    errors: tuple[str, ...]
    worker: str
    seconds: float
    finished_at: float
    predict_s: float = 0.0  # of `seconds`: fetching, decoding, encoding, scoring
    label_studio_s: float = 0.0  # of `seconds`: asking Label Studio what it holds, storing the predictions
    already_stored: int = 0  # tasks found holding the version already (a cut-off run stored them): skipped


@dataclass(frozen=True)
class JobStatus:
    """What `GET /jobs/{id}` answers: done/total, rate, ETA and errors."""

    job_id: str
    project_id: str
    kind: JobKind
    state: JobState
    model_version: str | None
    total: int
    done: int
    predicted: int
    skipped: int
    failed: int
    chunks: int
    chunks_done: int
    rate_tasks_per_s: float | None
    eta_s: float | None
    errors: tuple[str, ...]
    workers: tuple[str, ...]
    created_at: float
    updated_at: float  # the last sign of progress: created, planned, or a chunk finished
    detail: str | None
    predict_s: float  # summed over chunks (and workers): where the time went
    label_studio_s: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _chunk_result(raw: str) -> ChunkResult:
    fields = json.loads(raw)
    return ChunkResult(**{**fields, "errors": tuple(fields["errors"])})


def worker_name() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:6]}"


def _unlabelled(task: dict[str, Any]) -> bool:
    count = task.get("total_annotations")
    if isinstance(count, int):
        return count - int(task.get("cancelled_annotations") or 0) <= 0
    return not task.get("annotations")


class BulkJobs:
    """Creates, plans, runs and reports bulk jobs; state lives in the store, so any process can do any step."""

    def __init__(self, store: Store, predictor: Predictor, slug: str,
                 heads_for: Callable[[ModelVersion], dict[str, Head]]) -> None:
        self.store = store
        self.predictor = predictor
        self.slug = slug
        self.heads_for = heads_for
        self.worker = worker_name()

    @property
    def encoder_id(self) -> str:
        return self.predictor.embeddings.encoder.encoder_id

    def client(self, project_id: str) -> LabelStudioClient:
        """A Label Studio API client for a project: the configured URL and key, else what its /setup sent.

        Raises:
            InvalidRequestError: neither is known.
        """
        client = self.predictor.label_studio_client(self.store.get_project(project_id))
        if client is None:
            raise InvalidRequestError(
                f"bulk jobs on project {project_id} need Label Studio's API: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY, or connect the project in Label Studio (its /setup sends both)")
        return client

    # -- create ------------------------------------------------------------------------------------------------------
    def active(self, project_id: str, kind: JobKind) -> JobStatus | None:
        """The project's job of this kind still making progress on the current version, if any (two clicks, or two
        retrains in a row, should not run two jobs over the same tasks). Older-version jobs are cancelled here."""
        version = current_version(self.store, project_id, self.encoder_id, self.slug).name
        for job in reversed(self.list(project_id)):
            if job.kind != kind or job.state not in ("planning", "running") or time.time() - job.updated_at > STALE_S:
                continue
            if job.model_version in (None, version):
                return job
            self.cancel(job.job_id)  # superseded by a newer version
        return None

    def create(self, project_id: str, kind: JobKind, chunk_size: int) -> JobSpec:
        self.client(project_id)  # fail now, with a 400, rather than in a worker later
        spec = JobSpec(job_id=uuid.uuid4().hex[:16], project_id=project_id, kind=kind, chunk_size=chunk_size,
                       created_at=time.time())
        self.store.put_blob(SPEC_NS, spec.job_id, json.dumps(asdict(spec)))
        self.store.add_part(INDEX_NS, project_id, spec.job_id, str(spec.created_at))
        self.store.add_part(INDEX_NS, ALL_JOBS, spec.job_id, str(spec.created_at))
        logger.info("bulk job=%s %s project=%s created", spec.job_id, kind, project_id)
        return spec

    def spec(self, job_id: str) -> JobSpec:
        raw = self.store.get_blob(SPEC_NS, job_id)
        if raw is None:
            raise NotFoundError(f"no bulk job {job_id!r}")
        return JobSpec(**json.loads(raw))

    # -- plan --------------------------------------------------------------------------------------------------------
    def plan(self, job_id: str) -> Plan:
        """Lists the tasks still to do and cuts them into chunks (once: a second call returns the first plan)."""
        spec = self.spec(job_id)
        existing = self.store.list_parts(SPEC_NS, job_id).get("plan")
        if existing is not None:
            return Plan(**json.loads(existing))
        client = self.client(spec.project_id)
        schema = str(client.project(int(spec.project_id)).get("label_config", ""))
        label_config.parse_label_config(schema)  # a broken config fails the plan, not every chunk
        version = current_version(self.store, spec.project_id, self.encoder_id, self.slug)
        done = client.predicted_task_ids(int(spec.project_id), version.name)
        todo = []
        total = 0
        for task in client.tasks(int(spec.project_id)):
            if spec.kind == "rescore" and not _unlabelled(task):
                continue  # an annotated task needs no pre-label
            total += 1
            if task.get("id") not in done:
                todo.append({"id": task.get("id"), "data": task.get("data")})
        chunks = [todo[i:i + spec.chunk_size] for i in range(0, len(todo), spec.chunk_size)]
        for i, chunk in enumerate(chunks):
            self.store.put_blob(TASKS_NS, f"{job_id}:{i}", json.dumps(chunk))
        plan = Plan(model_version=version.name, label_config=schema, total=total, skipped=total - len(todo),
                    chunks=len(chunks), planned_at=time.time())
        if not self.store.add_part(SPEC_NS, job_id, "plan", json.dumps(asdict(plan))):
            return Plan(**json.loads(self.store.list_parts(SPEC_NS, job_id)["plan"]))  # another process won
        logger.info("bulk job=%s planned: %d tasks to predict in %d chunks, %d skipped", job_id, len(todo),
                    len(chunks), plan.skipped)
        return plan

    # -- run one chunk -----------------------------------------------------------------------------------------------
    def run_chunk(self, job_id: str, index: int) -> ChunkResult | None:
        """Predicts one chunk and writes its predictions to Label Studio; None when it was already done."""
        parts = self.store.list_parts(SPEC_NS, job_id)
        if f"chunk:{index}" in parts or "cancelled" in parts:
            return None
        started = time.monotonic()
        spec = self.spec(job_id)
        plan = Plan(**json.loads(parts["plan"]))
        raw = self.store.get_blob(TASKS_NS, f"{job_id}:{index}")
        if raw is None:
            raise NotFoundError(f"bulk job {job_id} has no chunk {index}")
        tasks: list[dict[str, Any]] = json.loads(raw)
        client = self.client(spec.project_id)
        # What Label Studio already holds wins over the plan: a chunk cut off after storing, a redelivered chunk, or
        # another job on the same project (a rerun, a resumed job) never stores a task's prediction twice.
        check_started = time.monotonic()
        stored = client.prediction_versions(int(spec.project_id), [int(t["id"]) for t in tasks])
        check_s = time.monotonic() - check_started
        planned = len(tasks)
        tasks = [t for t in tasks if plan.model_version not in stored.get(int(t["id"]), set())]
        config = label_config.parse_label_config(plan.label_config)
        state = self.store.get_project(spec.project_id) or ProjectState(project_id=spec.project_id,
                                                                      label_config=plan.label_config)
        version = next((v for v in self.store.list_versions(spec.project_id, self.encoder_id)
                        if v.name == plan.model_version), None)
        heads = self.heads_for(version) if version is not None else {}
        errors, payloads = [], []
        predict_started = time.monotonic()
        preds = self.predictor.predict(tasks, config, state, plan.model_version, {}, heads,
                                       from_cache=spec.kind == "rescore") if tasks else []
        for task, pred in zip(tasks, preds):
            if pred.error is not None or (not pred.choices and not pred.regions):
                errors.append(f"task {task['id']}: {pred.error or 'nothing found'}")
            else:
                payloads.append({"task": int(task["id"]), **ls_format.prediction_json(pred)})
        write_started = time.monotonic()
        # One request per chunk: Label Studio stores a chunk's predictions in one transaction.
        client.import_predictions(int(spec.project_id), payloads)
        done = time.monotonic()
        result = ChunkResult(predicted=len(payloads), failed=len(errors), errors=tuple(errors[:MAX_ERRORS]),
                             worker=self.worker, seconds=round(done - started, 3), finished_at=time.time(),
                             predict_s=round(write_started - predict_started, 3),
                             label_studio_s=round(check_s + done - write_started, 3),
                             already_stored=planned - len(tasks))
        if not self.store.add_part(SPEC_NS, job_id, f"chunk:{index}", json.dumps(asdict(result))):
            logger.warning("bulk job=%s chunk=%d finished twice; counted once", job_id, index)
        return result

    def run_all(self, job_id: str, should_stop: Callable[[], bool] = lambda: False,
                progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Plans and runs every chunk here, in order (the CLI and the embedded thread)."""
        try:
            plan = self.plan(job_id)
            if progress is not None:
                progress(self.status(job_id))
            # Two chunks in flight: one downloads and talks to Label Studio while the other encodes (the encoder's
            # micro-batcher serialises the forward passes), so neither waits for the other's I/O.
            with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="cliplabel-chunk") as pool:
                running: set[Future[ChunkResult | None]] = set()
                for i in range(plan.chunks):
                    if should_stop() or "cancelled" in self.store.list_parts(SPEC_NS, job_id):
                        break
                    running.add(pool.submit(self.run_chunk, job_id, i))
                    if len(running) >= IN_FLIGHT:
                        running = self._settle(job_id, running, progress)
                while running:
                    running = self._settle(job_id, running, progress)
        except CliplabelError as exc:
            self.record_error(job_id, exc.detail, final=True)
            raise
        return self.status(job_id)

    def _settle(self, job_id: str, running: set[Future[ChunkResult | None]],
                progress: Callable[[JobStatus], None] | None) -> set[Future[ChunkResult | None]]:
        """Waits for one chunk to finish (re-raising its error); returns those still running."""
        finished, pending = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
        if progress is not None:
            progress(self.status(job_id))
        return set(pending)

    def cancel(self, job_id: str) -> JobStatus:
        """Stops a job after the chunks in progress; what was stored in Label Studio stays."""
        self.spec(job_id)
        self.store.add_part(SPEC_NS, job_id, "cancelled", str(time.time()))
        logger.info("bulk job=%s cancelled", job_id)
        return self.status(job_id)

    def unfinished(self) -> list[str]:
        """Jobs still planning or running (a restarted embedded process picks them up again)."""
        jobs = sorted(self.store.list_parts(INDEX_NS, ALL_JOBS).items(), key=lambda kv: float(kv[1]))
        return [j for j, _ in jobs if self.status(j).state in ("planning", "running")]

    def record_error(self, job_id: str, detail: str, final: bool = False) -> None:
        logger.warning("bulk job=%s: %s", job_id, detail)
        self.store.put_blob(ERROR_NS, job_id, detail)
        if final:
            self.store.add_part(SPEC_NS, job_id, "failed", detail)

    # -- report ------------------------------------------------------------------------------------------------------
    def status(self, job_id: str) -> JobStatus:
        spec = self.spec(job_id)
        parts = self.store.list_parts(SPEC_NS, job_id)
        plan = Plan(**json.loads(parts["plan"])) if "plan" in parts else None
        results = [_chunk_result(v) for k, v in parts.items() if k.startswith("chunk:")]
        predicted = sum(r.predicted for r in results)
        failed = sum(r.failed for r in results)
        skipped = (plan.skipped if plan else 0) + sum(r.already_stored for r in results)
        total = plan.total if plan else 0
        processed = predicted + failed
        rate = eta = None
        if plan is not None and results:
            elapsed = max(r.finished_at for r in results) - plan.planned_at
            rate = round(processed / elapsed, 2) if elapsed > 0 else None
            remaining = total - skipped - processed
            eta = round(remaining / rate, 1) if rate else None
        last_error = self.store.get_blob(ERROR_NS, job_id)
        state: JobState
        if "cancelled" in parts:
            state = "cancelled"
        elif "failed" in parts:
            state = "failed"
        elif plan is None:
            state = "planning"
        elif len(results) >= plan.chunks:
            state, last_error = "done", None
        else:
            state = "running"
        errors = tuple(e for r in sorted(results, key=lambda r: r.finished_at) for e in r.errors)[-MAX_ERRORS:]
        return JobStatus(job_id=job_id, project_id=spec.project_id, kind=spec.kind, state=state,
                         model_version=plan.model_version if plan else None, total=total,
                         done=skipped + processed, predicted=predicted, skipped=skipped, failed=failed,
                         chunks=plan.chunks if plan else 0, chunks_done=len(results), rate_tasks_per_s=rate,
                         eta_s=eta, errors=errors, workers=tuple(sorted({r.worker for r in results})),
                         created_at=spec.created_at,
                         updated_at=max([spec.created_at, plan.planned_at if plan else 0.0,
                                         *(r.finished_at for r in results)]),
                         detail=parts.get("failed") or last_error,
                         predict_s=round(sum(r.predict_s for r in results), 3),
                         label_studio_s=round(sum(r.label_studio_s for r in results), 3))

    def list(self, project_id: str) -> list[JobStatus]:
        index = self.store.list_parts(INDEX_NS, project_id)
        return [self.status(j) for j, _ in sorted(index.items(), key=lambda kv: float(kv[1]))]
