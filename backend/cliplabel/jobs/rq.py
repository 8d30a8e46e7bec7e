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
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import redis
from rq import Callback, Queue, Retry, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from cliplabel.core.errors import CliplabelError, StoreUnavailableError
from cliplabel.services.bulk import BulkJobs
from cliplabel.services.feedback import FeedbackService

logger = logging.getLogger(__name__)
JOB_TIMEOUT_S = 600
# A chunk's (or a plan's) rq job is found abandoned when its worker died only once its timeout has passed: short
# enough that a killed worker's chunk is retried within minutes, long enough for a chunk on a slow CPU.
CHUNK_TIMEOUT_S = 120
PLAN_TIMEOUT_S = 300
MAINTENANCE_S = 30
CHUNK_RETRY = Retry(max=2, interval=[5, 30])


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

    def clean_registries(self) -> None:
        # Maintenance runs the failure callbacks of jobs whose worker died: they need the context too.
        token = _running_with.set(self.context)
        try:
            super().clean_registries()
        finally:
            _running_with.reset(token)


def run_worker(redis_url: str, prefix: str, context: WorkerContext, burst: bool) -> None:
    """Serves the feedback and bulk queues until stopped (or, with `burst`, until they are empty)."""
    queues = worker_queues(prefix)
    # Maintenance (which finds the jobs of a worker that died) every 30 s rather than rq's 10 minutes, and an idle
    # worker wakes that often to run it (rq's dequeue waits worker_ttl - 15 s): a killed worker's chunk is retried,
    # or ended, within about three minutes.
    worker = ServicesWorker(queues, context, connection=redis.Redis.from_url(redis_url),
                            maintenance_interval=MAINTENANCE_S, worker_ttl=MAINTENANCE_S + 15)
    logger.info("worker %s listening on queues=%s", context.bulk.worker, ",".join(queues))
    sweeper = EventSweeper(context.feedback, RqTrigger(redis_url, prefix))
    try:
        worker.work(burst=burst, with_scheduler=True)
    finally:
        sweeper.stop()


class EventSweeper:
    """Queues a `process_events` job every few seconds while events wait: events left by a worker that died (once
    its lease expires), by a backoff, or by a job that found the project busy, get processed without a new webhook.

    A daemon thread of `cliplabel worker`; a kick while a job already waits changes nothing.
    """

    def __init__(self, feedback: FeedbackService, trigger: RqTrigger) -> None:
        self.feedback = feedback
        self.trigger = trigger
        self.period_s = max(0.5, min(5.0, feedback.lease_s / 3))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliplabel-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.feedback.has_pending():
                    self.trigger.kick()
            except StoreUnavailableError as exc:
                logger.warning("event sweep: %s", exc.detail)
            self._stopping.wait(self.period_s)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self.trigger.stop()


# -- the jobs ----------------------------------------------------------------------------------------------------------
def process_events() -> int:
    """The rq job that applies queued feedback events: any number run at once, each project's lease keeps them apart.

    Projects it could not take (another worker's lease, or a backoff) are left queued: a worker's `EventSweeper`
    queues a new job while events wait, so the events of a worker that died are reclaimed once its lease expires.
    """
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
                            timeout=CHUNK_TIMEOUT_S, result_ttl=60, failure_ttl=24 * 3600, retry=CHUNK_RETRY,
                            on_failure=Callback(chunk_failed))
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


def _last_try(job: Job) -> bool:
    """True when rq will not retry this failure (its retries are used up)."""
    return not (job.retries_left and job.retries_left > 0)


def chunk_failed(job: Job, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """rq's failure callback of a chunk (an error, a timeout, or a worker that died): after the last retry the chunk
    is recorded as given up, so its job ends (failed) instead of showing `running` forever."""
    if not _last_try(job):
        return
    job_id, index = job.args
    context = _running_with.get()
    bulk = context.bulk if context is not None else None
    if bulk is None:
        logger.error("bulk job=%s chunk=%s failed for good outside `cliplabel worker`; not recorded", job_id, index)
        return
    detail = exc.detail if isinstance(exc, CliplabelError) else str(exc)
    bulk.give_up_chunk(job_id, int(index), f"{type(exc).__name__}: {detail}")


def plan_failed(job: Job, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """rq's failure callback of a plan step: after the last retry the job fails for good."""
    context = _running_with.get()
    if _last_try(job) and context is not None:
        (job_id,) = job.args
        context.bulk.record_error(job_id, f"planning failed: {type(exc).__name__}", final=True)


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
                                    timeout=PLAN_TIMEOUT_S, result_ttl=3600, failure_ttl=24 * 3600,
                                    retry=Retry(max=2, interval=[5, 30]), on_failure=Callback(plan_failed))
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis unavailable while queueing a bulk job: {type(exc).__name__}") from exc

    def stop(self) -> None:
        self.connection.close()
