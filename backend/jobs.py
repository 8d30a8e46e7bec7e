"""Where feedback is processed: a background thread on the embedded store, rq workers with Redis.

Both only drain the store's durable event queue (`FeedbackService.process_pending`), so an event survives a crash of
whoever was processing it, and processing twice changes nothing (examples are replaced per annotation).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

from backend.errors import StoreUnavailableError
from backend.feedback import FeedbackService

logger = logging.getLogger(__name__)
JOB_TIMEOUT_S = 600

# Set by `cliplabel worker` before it starts working: rq jobs are module-level functions with primitive arguments,
# and the model is loaded once per worker process, not once per job.
WORKER_FEEDBACK: FeedbackService | None = None


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
