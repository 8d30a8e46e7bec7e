"""Background work with Redis: rq queues, and the `cliplabel worker` processes that serve them.

rq jobs are module-level functions called with primitive arguments (a job id, a chunk index). What they work with
(the loaded model and the services around it) belongs to the worker process, not to the job: `ServicesWorker`
holds it as a `WorkerContext` and hands it to each job it runs, which reads it with `current_context()`.

Feedback: the `process_events` job only drains the store's durable event queue, so an event survives a crash of
whoever was processing it, and processing twice changes nothing. Bulk jobs: the plan step, then one rq job per
chunk, so every worker listening shares the job; a chunk's result is recorded once in the store, so a redelivered
chunk changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from cliplabel.core.errors import CliplabelError, StoreUnavailableError
from cliplabel.services.bulk import BulkJobs
from cliplabel.services.feedback import FeedbackService

logger = logging.getLogger(__name__)
JOB_TIMEOUT_S = 600


def queue_name(prefix: str) -> str:
    return f"{prefix}-feedback"


def bulk_queue_name(prefix: str) -> str:
    return f"{prefix}-bulk"


def worker_queues(prefix: str) -> list[str]:
    """What `cliplabel worker` listens to, in priority order: feedback first, so learning never waits on a bulk job."""
    return [queue_name(prefix), bulk_queue_name(prefix)]


# -- the worker side ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerContext:
    """The services rq jobs run with, built once per worker process (the model loads once, not once per job)."""

    feedback: FeedbackService
    bulk: BulkJobs


# Set only while a `ServicesWorker` runs a job, in the thread that runs it.
_running_with: ContextVar[WorkerContext | None] = ContextVar("cliplabel_worker_context", default=None)


def current_context(job: str) -> WorkerContext:
    """The context of the worker running `job` now.

    Raises:
        RuntimeError: the job runs outside `cliplabel worker` (e.g. in a plain `rq worker`).
    """
    context = _running_with.get()
    if context is None:
        raise RuntimeError(f"{job} runs inside `cliplabel worker`, which loads the model first")
    return context


class ServicesWorker(SimpleWorker):
    """An rq worker that runs each job in its own process (no fork), with its services as the job's context.

    SimpleWorker, not the forking Worker: the model stays loaded, and no fork breaks torch's or our thread pools.
    """

    def __init__(self, queues: Sequence[str], context: WorkerContext, **kwargs: Any) -> None:
        super().__init__(queues, **kwargs)
        self.context = context

    def execute_job(self, job: Job, queue: Queue) -> None:
        token = _running_with.set(self.context)
        try:
            super().execute_job(job, queue)
        finally:
            _running_with.reset(token)


def run_worker(redis_url: str, prefix: str, context: WorkerContext, burst: bool) -> None:
    """Serves the feedback and bulk queues until stopped (or, with `burst`, until they are empty)."""
    queues = worker_queues(prefix)
    worker = ServicesWorker(queues, context, connection=redis.Redis.from_url(redis_url))
    logger.info("worker %s listening on queues=%s", context.bulk.worker, ",".join(queues))
    worker.work(burst=burst, with_scheduler=True)


# -- the jobs ----------------------------------------------------------------------------------------------------------
def process_events() -> int:
    """The rq job that drains the feedback event queue."""
    return current_context("process_events").feedback.process_pending()


def plan_bulk_job(job_id: str) -> int:
    """The rq job that plans a bulk job and enqueues one rq job per chunk on the same queue."""
    bulk = current_context("plan_bulk_job").bulk
    try:
        plan = bulk.plan(job_id)
    except CliplabelError as exc:
        bulk.record_error(job_id, exc.detail, final=True)
        raise
    current = get_current_job()
    if current is None:
        raise RuntimeError("plan_bulk_job runs as an rq job: it enqueues the chunks on its own queue")
    chunks = Queue(current.origin, connection=current.connection)
    for i in range(plan.chunks):
        chunks.enqueue_call(run_bulk_chunk, args=(job_id, i), job_id=f"{current.origin}-{job_id}-{i}",
                            timeout=JOB_TIMEOUT_S, result_ttl=60, failure_ttl=24 * 3600,
                            retry=Retry(max=2, interval=[5, 30]))
    return plan.chunks


def run_bulk_chunk(job_id: str, index: int) -> int:
    """The rq job for one chunk: predicted tasks, or -1 when another worker had already finished it."""
    bulk = current_context("run_bulk_chunk").bulk
    try:
        result = bulk.run_chunk(job_id, index)
    except CliplabelError as exc:
        bulk.record_error(job_id, f"chunk {index}: {exc.detail}")
        raise  # rq retries it; a retried chunk skips the tasks it already wrote
    return -1 if result is None else result.predicted


# -- the API side ------------------------------------------------------------------------------------------------------
class RqTrigger:
    """Enqueues at most one waiting `process_events` job (a second while one runs, for events that arrive late)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.connection = redis.Redis.from_url(redis_url)
        self.queue = Queue(queue_name(prefix), connection=self.connection)
        self.job_ids = (f"{prefix}-process", f"{prefix}-process-next")

    def _status(self, job_id: str) -> str | None:
        try:
            return str(Job.fetch(job_id, connection=self.connection).get_status())
        except NoSuchJobError:
            return None

    def kick(self) -> None:
        try:
            self._kick()
        except redis.RedisError as exc:
            # The event is already in the durable queue; say so loudly rather than answer 500.
            raise StoreUnavailableError(f"Redis unavailable while queueing feedback: {type(exc).__name__}") from exc

    def _kick(self) -> None:
        statuses = [self._status(j) for j in self.job_ids]
        if any(s in ("queued", "scheduled", "deferred") for s in statuses):
            return  # a waiting job will see the new events
        job_id = self.job_ids[1] if statuses[0] == "started" else self.job_ids[0]
        if self._status(job_id) == "started":
            job_id = self.job_ids[0]
        self.queue.enqueue_call(process_events, job_id=job_id, timeout=JOB_TIMEOUT_S, result_ttl=60,
                                failure_ttl=24 * 3600, retry=Retry(max=3, interval=[2, 10, 30]))

    def stop(self) -> None:
        self.connection.close()


class RqBulk:
    """The plan step goes to the bulk queue; any `cliplabel worker` on any machine picks it up."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.connection = redis.Redis.from_url(redis_url)
        self.queue = Queue(bulk_queue_name(prefix), connection=self.connection)

    def start(self, job_id: str) -> None:
        try:
            self.queue.enqueue_call(plan_bulk_job, args=(job_id,), job_id=f"{self.queue.name}-{job_id}-plan",
                                    timeout=JOB_TIMEOUT_S, result_ttl=3600, failure_ttl=24 * 3600,
                                    retry=Retry(max=2, interval=[5, 30]))
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis unavailable while queueing a bulk job: {type(exc).__name__}") from exc

    def stop(self) -> None:
        self.connection.close()
