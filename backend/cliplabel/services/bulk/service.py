"""The bulk-jobs service: create, plan, run, cancel and report jobs; their state lives in the store, so any process
can do any step."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from cliplabel.core.domain import Head, ModelVersion
from cliplabel.core.errors import CliplabelError, NotFoundError
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.services.bulk.journal import JobJournal
from cliplabel.services.bulk.model import ACTIVE_STATES, ChunkResult, JobKind, JobSpec, JobStatus, Plan
from cliplabel.services.bulk.planner import Planner
from cliplabel.services.bulk.runner import ChunkRunner
from cliplabel.services.bulk.status import job_status, still_active
from cliplabel.services.predict import Predictor
from cliplabel.services.versions import current_version, version_name
from cliplabel.store import Store

logger = logging.getLogger(__name__)
IN_FLIGHT = 2  # chunks one runner works on at once
Progress = Callable[[JobStatus], None]


def worker_name() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:6]}"


class BulkJobs:
    """Bulk jobs on whole Label Studio projects.

    Args:
        clients: the API client of a project's Label Studio (raises InvalidRequestError when it has none).
        heads_for: the learned heads a model version serves.
    """

    def __init__(self, store: Store, predictor: Predictor, clients: Callable[[str], LabelStudioClient],
                 encoder_id: str, slug: str, heads_for: Callable[[ModelVersion], Mapping[str, Head]]) -> None:
        self.journal = JobJournal(store)
        self.clients = clients
        self.worker = worker_name()
        self._store, self._encoder_id, self._slug = store, encoder_id, slug
        self.planner = Planner(self.journal, clients, self._version)
        self.runner = ChunkRunner(self.journal, clients, predictor, store, encoder_id, heads_for, self.worker)

    def _version(self, project_id: str) -> ModelVersion:
        return current_version(self._store, project_id, self._encoder_id, self._slug)

    # -- create ------------------------------------------------------------------------------------------------------
    def active(self, project_id: str, kind: JobKind) -> JobStatus | None:
        """The project's job of this kind still making progress on the current version, if any. A read: it changes
        nothing (superseding an older version's job happens in `start`)."""
        version = self._version_name(project_id)
        for job in reversed(self.list(project_id)):
            if job.kind == kind and still_active(job, time.time()) and job.model_version in (None, version):
                return job
        return None

    def start(self, project_id: str, kind: JobKind, chunk_size: int) -> tuple[JobStatus, bool]:
        """The project's job of this kind, created unless one still makes progress on the current version: (its
        status, True when created here). Atomic across processes: two concurrent calls create one job.

        A job still running on an older version is superseded: cancelled, once the new job holds the slot.
        """
        self.clients(project_id)  # fail now, with a 400, rather than in a worker later
        version = self._version_name(project_id)
        while True:
            holder = self.journal.holder(project_id, kind)
            superseded = None
            if holder is not None:
                try:
                    job: JobStatus | None = self.status(holder)
                except NotFoundError:
                    job = None  # a claim whose job was never written (its process died): free
                if job is not None and still_active(job, time.time()):
                    if job.model_version in (None, version):
                        return job, False
                    superseded = job.job_id
            spec = self._spec(project_id, kind, chunk_size)
            self.journal.put_spec(spec)
            if not self.journal.claim(project_id, kind, holder, spec.job_id):
                continue  # another process changed the slot first: look again
            self.journal.index(spec)
            if superseded is not None:
                logger.info("bulk job=%s superseded by job=%s on version %s", superseded, spec.job_id, version)
                self.cancel(superseded)
            logger.info("bulk job=%s %s project=%s created", spec.job_id, kind, project_id)
            return self.status(spec.job_id), True

    def _version_name(self, project_id: str) -> str:
        versions = self._store.list_versions(project_id, self._encoder_id)
        return versions[-1].name if versions else version_name(self._slug, 0)

    @staticmethod
    def _spec(project_id: str, kind: JobKind, chunk_size: int) -> JobSpec:
        return JobSpec(job_id=uuid.uuid4().hex[:16], project_id=project_id, kind=kind, chunk_size=chunk_size,
                       created_at=time.time())

    def create(self, project_id: str, kind: JobKind, chunk_size: int) -> JobSpec:
        """A new job, whatever else runs (the CLI's `prelabel`); `start` is the one-job-at-a-time path."""
        self.clients(project_id)  # fail now, with a 400, rather than in a worker later
        spec = self._spec(project_id, kind, chunk_size)
        self.journal.create(spec)
        logger.info("bulk job=%s %s project=%s created", spec.job_id, kind, project_id)
        return spec

    # -- run ---------------------------------------------------------------------------------------------------------
    def plan(self, job_id: str) -> Plan:
        """Lists the tasks still to do and cuts them into chunks (once: a second call returns the first plan)."""
        return self.planner.plan(job_id)

    def run_chunk(self, job_id: str, index: int) -> ChunkResult | None:
        """Predicts one chunk and writes its predictions to Label Studio; None when it was already done."""
        return self.runner.run_chunk(job_id, index)

    def run_all(self, job_id: str, should_stop: Callable[[], bool] = lambda: False,
                progress: Progress | None = None) -> JobStatus:
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
                    if should_stop() or self.journal.is_cancelled(job_id):
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
                progress: Progress | None) -> set[Future[ChunkResult | None]]:
        """Waits for one chunk to finish (re-raising its error); returns those still running."""
        finished, pending = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            future.result()
        if progress is not None:
            progress(self.status(job_id))
        return set(pending)

    def cancel(self, job_id: str) -> JobStatus:
        """Stops a job after the chunks in progress; what was stored in Label Studio stays."""
        self.journal.spec(job_id)
        self.journal.cancel(job_id)
        logger.info("bulk job=%s cancelled", job_id)
        return self.status(job_id)

    def unfinished(self) -> list[str]:
        """Jobs still planning or running (a restarted embedded process picks them up again)."""
        return [j for j in self.journal.all_job_ids() if self.status(j).state in ACTIVE_STATES]

    def give_up_chunk(self, job_id: str, index: int, detail: str) -> None:
        """Ends a chunk that failed on its last retry: its tasks count as failed and the job ends failed."""
        try:
            n_tasks = len(self.journal.chunk_tasks(job_id, index))
        except NotFoundError:
            n_tasks = 0
        result = ChunkResult(predicted=0, failed=n_tasks, errors=(f"chunk {index}: {detail}",), worker=self.worker,
                             seconds=0.0, finished_at=time.time(), gave_up=True)
        if self.journal.record_chunk(job_id, index, result):
            logger.warning("bulk job=%s chunk=%d given up after its last retry: %s", job_id, index, detail)

    def record_error(self, job_id: str, detail: str, final: bool = False) -> None:
        logger.warning("bulk job=%s: %s", job_id, detail)
        self.journal.record_error(job_id, detail, final)

    # -- report ------------------------------------------------------------------------------------------------------
    def status(self, job_id: str) -> JobStatus:
        """Raises NotFoundError for an unknown job."""
        return job_status(self.journal.record(job_id))

    def list(self, project_id: str) -> list[JobStatus]:
        return [self.status(j) for j in self.journal.job_ids(project_id)]
