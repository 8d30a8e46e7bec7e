"""Where background work runs: a thread in the API process on the embedded store, rq workers with Redis.

Feedback: both only drain the store's durable event queue (`FeedbackService.process_pending`), so an event survives
a crash of whoever was processing it, and processing twice changes nothing (examples are replaced per annotation).
Bulk jobs: the plan step and then one rq job per chunk, so every worker listening shares the job; a chunk's result is
recorded once in the store, so a redelivered chunk changes nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

import redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from cliplabel.core.errors import CliplabelError, StoreUnavailableError
from cliplabel.services.feedback import FeedbackService
from cliplabel.services.bulk_jobs import BulkJobs

logger = logging.getLogger(__name__)
JOB_TIMEOUT_S = 600

# Set by `cliplabel worker` before it starts working: rq jobs are module-level functions with primitive arguments,
# and the model is loaded once per worker process, not once per job.
WORKER_FEEDBACK: FeedbackService | None = None
WORKER_BULK: BulkJobs | None = None


class Trigger(Protocol):
    def kick(self) -> None:
        """Makes sure queued events get processed soon."""

    def stop(self) -> None: ...


class BackgroundThread:
    """The embedded default: one daemon thread drains the queue when kicked (and every `poll_s` as a safety net)."""

    def __init__(self, feedback: FeedbackService, poll_s: float = 5.0) -> None:
        self.feedback = feedback
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliplabel-feedback", daemon=True)
        self._thread.start()
        self.kick()  # events left by a previous process

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.feedback.process_pending(should_stop=self._stopping.is_set)
            except Exception:  # noqa: BLE001 - the thread must survive; the events stay queued for the next try
                logger.exception("feedback processing failed; the events stay queued")


def process_events() -> int:
    """The rq job: drain the event queue with this worker's preloaded services."""
    if WORKER_FEEDBACK is None:
        raise RuntimeError("process_events runs inside `cliplabel worker`, which loads the model first")
    return WORKER_FEEDBACK.process_pending()


def queue_name(prefix: str) -> str:
    return f"{prefix}-feedback"


def bulk_queue_name(prefix: str) -> str:
    return f"{prefix}-bulk"


def worker_queues(prefix: str) -> list[str]:
    """What `cliplabel worker` listens to, in priority order: feedback first, so learning never waits on a bulk job."""
    return [queue_name(prefix), bulk_queue_name(prefix)]


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


# -- bulk jobs -----------------------------------------------------------------------------------------------------
class Dispatcher(Protocol):
    def start(self, job_id: str) -> None:
        """Makes sure a planned-or-not job gets run to the end."""

    def stop(self) -> None: ...


class BulkThread:
    """The embedded default: one daemon thread runs queued jobs one after the other, chunk by chunk."""

    def __init__(self, bulk: BulkJobs) -> None:
        self.bulk = bulk
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cliplabel-bulk", daemon=True)
        self._thread.start()
        try:
            # Jobs a previous process left unfinished: planned chunks resume, a chunk cut off midway re-checks
            # Label Studio before predicting again, so nothing is stored twice.
            for job_id in bulk.unfinished():
                logger.info("resuming bulk job=%s", job_id)
                self.start(job_id)
        except CliplabelError as exc:
            logger.warning("could not look for unfinished bulk jobs: %s", exc.detail)

    def start(self, job_id: str) -> None:
        self._jobs.put(job_id)

    def stop(self) -> None:
        self._stopping.set()
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            job_id = self._jobs.get()
            if job_id is None:
                break
            try:
                self.bulk.run_all(job_id, should_stop=self._stopping.is_set)
            except CliplabelError:
                pass  # recorded on the job; its status says why
            except Exception as exc:  # noqa: BLE001 - the thread must survive; the job's status says what happened
                logger.exception("bulk job=%s failed", job_id)
                self.bulk.record_error(job_id, f"internal error: {type(exc).__name__}", final=True)


def plan_bulk_job(job_id: str) -> int:
    """The rq job that plans a bulk job and enqueues one rq job per chunk on the same queue."""
    if WORKER_BULK is None:
        raise RuntimeError("plan_bulk_job runs inside `cliplabel worker`, which loads the model first")
    try:
        plan = WORKER_BULK.plan(job_id)
    except CliplabelError as exc:
        WORKER_BULK.record_error(job_id, exc.detail, final=True)
        raise
    current = get_current_job()
    assert current is not None
    chunks = Queue(current.origin, connection=current.connection)
    for i in range(plan.chunks):
        chunks.enqueue_call(run_bulk_chunk, args=(job_id, i), job_id=f"{current.origin}-{job_id}-{i}",
                            timeout=JOB_TIMEOUT_S, result_ttl=60, failure_ttl=24 * 3600,
                            retry=Retry(max=2, interval=[5, 30]))
    return plan.chunks


def run_bulk_chunk(job_id: str, index: int) -> int:
    """The rq job for one chunk: predicted tasks, or -1 when another worker had already finished it."""
    if WORKER_BULK is None:
        raise RuntimeError("run_bulk_chunk runs inside `cliplabel worker`, which loads the model first")
    try:
        result = WORKER_BULK.run_chunk(job_id, index)
    except CliplabelError as exc:
        WORKER_BULK.record_error(job_id, f"chunk {index}: {exc.detail}")
        raise  # rq retries it; a retried chunk skips the tasks it already wrote
    return -1 if result is None else result.predicted


class RqBulk:
    """With Redis: the plan step goes to the bulk queue; any `cliplabel worker` on any machine picks it up."""

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
