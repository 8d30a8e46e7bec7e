"""rq jobs find their worker's services through the worker that runs them, and only there (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq import Callback, Queue, Retry

from cliplabel.core.errors import CliplabelError
from cliplabel.jobs import rq as jobs


class CountingFeedback:
    def __init__(self) -> None:
        self.runs = 0

    def process_pending(self) -> int:
        self.runs += 1
        return 7

    def has_pending(self) -> bool:
        return False


def test_a_job_outside_cliplabel_worker_says_so() -> None:
    with pytest.raises(RuntimeError, match="runs inside `cliplabel worker`"):
        jobs.process_events()


def test_the_worker_hands_its_context_to_the_jobs_it_runs(redis_url: str, redis_prefix: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(jobs.queue_name(redis_prefix), connection=connection)
    job = queue.enqueue(jobs.process_events)
    feedback = CountingFeedback()
    context: Any = jobs.WorkerContext(feedback=feedback, bulk=None)  # type: ignore[arg-type]
    worker = jobs.ServicesWorker(jobs.worker_queues(redis_prefix), context, connection=connection)
    try:
        assert worker.work(burst=True)
        assert feedback.runs == 1 and job.return_value() == 7
    finally:
        job.delete()
        worker.register_death()
        keys = list(connection.scan_iter(f"rq:*{redis_prefix}*"))
        if keys:
            connection.delete(*keys)
    # ... and the context is gone once the job has run
    with pytest.raises(RuntimeError):
        jobs.process_events()


class FailingBulk:
    """A bulk service whose chunks always fail; records what the failure callback gave up."""

    worker = "test"

    def __init__(self) -> None:
        self.runs = 0
        self.given_up: list[tuple[str, int, str]] = []

    def run_chunk(self, job_id: str, index: int) -> None:
        self.runs += 1
        raise CliplabelError("Label Studio answered 502")

    def record_error(self, job_id: str, detail: str, final: bool = False) -> None:
        pass

    def give_up_chunk(self, job_id: str, index: int, detail: str) -> None:
        self.given_up.append((job_id, index, detail))


def test_a_chunk_that_exhausts_its_retries_is_given_up(redis_url: str, redis_prefix: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(jobs.bulk_queue_name(redis_prefix), connection=connection)
    job = queue.enqueue_call(jobs.run_bulk_chunk, args=("j1", 3), retry=Retry(max=2),
                             on_failure=Callback(jobs.chunk_failed))
    bulk = FailingBulk()
    context: Any = jobs.WorkerContext(feedback=None, bulk=bulk)  # type: ignore[arg-type]
    worker = jobs.ServicesWorker(jobs.worker_queues(redis_prefix), context, connection=connection)
    try:
        worker.work(burst=True)
        # tried three times; only the last failure ends the chunk, once
        assert bulk.runs == 3
        assert bulk.given_up == [("j1", 3, "CliplabelError: Label Studio answered 502")]
        assert job.get_status() == "failed"
    finally:
        job.delete()
        worker.register_death()
        keys = list(connection.scan_iter(f"rq:*{redis_prefix}*"))
        if keys:
            connection.delete(*keys)
        connection.close()

