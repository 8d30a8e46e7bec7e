"""Background work on the embedded store: daemon threads of the API process.

Feedback: the thread only drains the store's durable event queue (`FeedbackService.process_pending`), so an event
survives a crash of whoever was processing it, and processing twice changes nothing (examples are replaced per
annotation). Bulk jobs: one thread runs queued jobs one after the other, chunk by chunk.
"""

from __future__ import annotations

import logging
import queue
import threading

from cliplabel.core.errors import CliplabelError
from cliplabel.services.bulk import BulkJobs
from cliplabel.services.feedback import FeedbackService

logger = logging.getLogger(__name__)


class BackgroundThread:
    """One daemon thread drains the feedback queue when kicked (and every `poll_s` as a safety net)."""

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


class BulkThread:
    """One daemon thread runs queued bulk jobs one after the other, chunk by chunk."""

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
