"""rq jobs find their worker's services through the worker that runs them, and only there (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq import Queue

from cliplabel.jobs import rq as jobs


class CountingFeedback:
    def __init__(self) -> None:
        self.runs = 0

    def process_pending(self) -> int:
        self.runs += 1
        return 7


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
