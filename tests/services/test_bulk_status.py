"""The bulk-job state machine: a job's state and progress read off what the store recorded. Pure, exact."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cliplabel.services.bulk.model import MAX_ERRORS, ChunkResult, JobRecord, JobSpec, JobStatus, Plan
from cliplabel.services.bulk.status import STALE_S, job_state, job_status, still_active

SPEC = JobSpec(job_id="0123456789abcdef", project_id="7", kind="prelabel", chunk_size=10, created_at=100.0)
PLAN = Plan(model_version="clip-r1", label_config="<View/>", total=30, skipped=5, chunks=3, planned_at=110.0)


def chunk(finished_at: float, predicted: int = 8, failed: int = 2, already_stored: int = 0,
          errors: tuple[str, ...] = (), worker: str = "w1") -> ChunkResult:
    return ChunkResult(predicted=predicted, failed=failed, errors=errors, worker=worker, seconds=1.0,
                       finished_at=finished_at, predict_s=0.75, label_studio_s=0.25, already_stored=already_stored)


@pytest.mark.parametrize(("record", "state"), [
    # nothing but the spec: the plan is still to be made
    (JobRecord(SPEC), "planning"),
    # an error a retry may get past does not change the state
    (JobRecord(SPEC, last_error="Label Studio did not answer"), "planning"),
    # a plan with nothing to do is done at once
    (JobRecord(SPEC, plan=replace(PLAN, skipped=30, chunks=0)), "done"),
    # planned, no chunk finished yet
    (JobRecord(SPEC, plan=PLAN), "running"),
    # some chunks finished
    (JobRecord(SPEC, plan=PLAN, chunks={0: chunk(120.0)}), "running"),
    # every chunk finished
    (JobRecord(SPEC, plan=PLAN, chunks={0: chunk(120.0), 1: chunk(130.0), 2: chunk(140.0)}), "done"),
    # the plan failed for good
    (JobRecord(SPEC, failed="invalid label config"), "failed"),
    # failed midway
    (JobRecord(SPEC, plan=PLAN, chunks={0: chunk(120.0)}, failed="internal error: KeyError"), "failed"),
    # an empty failure detail is still a failure
    (JobRecord(SPEC, plan=PLAN, failed=""), "failed"),
    # cancelled before the plan
    (JobRecord(SPEC, cancelled=True), "cancelled"),
    # cancelled midway
    (JobRecord(SPEC, plan=PLAN, chunks={0: chunk(120.0)}, cancelled=True), "cancelled"),
    # stopping wins over a failure recorded at the same time
    (JobRecord(SPEC, plan=PLAN, failed="boom", cancelled=True), "cancelled"),
    # and over chunks that finished anyway
    (JobRecord(SPEC, plan=PLAN, chunks={0: chunk(120.0), 1: chunk(130.0), 2: chunk(140.0)}, cancelled=True),
     "cancelled"),
])
def test_state(record: JobRecord, state: str) -> None:
    assert job_state(record) == state
    assert job_status(record).state == state


def test_a_job_without_a_plan_reports_zeros() -> None:
    assert job_status(JobRecord(SPEC)) == JobStatus(
        job_id=SPEC.job_id, project_id="7", kind="prelabel", state="planning", model_version=None, total=0, done=0,
        predicted=0, skipped=0, failed=0, chunks=0, chunks_done=0, rate_tasks_per_s=None, eta_s=None, errors=(),
        workers=(), created_at=100.0, updated_at=100.0, detail=None, predict_s=0.0, label_studio_s=0.0)


def test_a_planned_job_without_chunks_has_no_rate_yet() -> None:
    status = job_status(JobRecord(SPEC, plan=PLAN, last_error="chunk 0: Label Studio answered 502"))
    assert (status.model_version, status.total, status.done, status.skipped, status.chunks) == ("clip-r1", 30, 5, 5, 3)
    assert (status.rate_tasks_per_s, status.eta_s, status.updated_at) == (None, None, 110.0)
    assert status.detail == "chunk 0: Label Studio answered 502"


def test_progress_rate_and_eta() -> None:
    # 10 s after the plan, two chunks processed 10 + 8 tasks (2 of the second were found already stored)
    record = JobRecord(SPEC, plan=PLAN, chunks={1: chunk(120.0, already_stored=2, predicted=6, errors=("task 9: x",),
                                                         worker="w2"),
                                                0: chunk(115.0, errors=("task 1: a", "task 2: b"))})
    status = job_status(record)
    assert (status.predicted, status.failed, status.skipped, status.done) == (14, 4, 7, 25)
    assert status.rate_tasks_per_s == 1.8  # 18 processed in 10 s; skipped tasks do not count
    assert status.eta_s == 2.8  # 30 - 7 - 18 = 5 left at 1.8/s
    assert status.errors == ("task 1: a", "task 2: b", "task 9: x")  # oldest chunk first
    assert status.workers == ("w1", "w2")
    assert (status.chunks_done, status.updated_at) == (2, 120.0)
    assert (status.predict_s, status.label_studio_s) == (1.5, 0.5)


def test_no_rate_when_no_time_passed_and_no_eta_when_nothing_was_processed() -> None:
    same_instant = job_status(JobRecord(SPEC, plan=PLAN, chunks={0: chunk(110.0)}))
    assert (same_instant.rate_tasks_per_s, same_instant.eta_s) == (None, None)
    all_stored = job_status(JobRecord(SPEC, plan=PLAN, chunks={0: chunk(120.0, predicted=0, failed=0,
                                                                         already_stored=10)}))
    assert (all_stored.rate_tasks_per_s, all_stored.eta_s, all_stored.skipped) == (0.0, None, 15)


def test_a_finished_job_forgets_the_errors_retries_got_past() -> None:
    done = JobRecord(SPEC, plan=replace(PLAN, chunks=1), chunks={0: chunk(120.0)}, last_error="chunk 0: timeout")
    assert job_status(done).detail is None
    cancelled = replace(done, cancelled=True)
    assert job_status(cancelled).detail == "chunk 0: timeout"
    failed = JobRecord(SPEC, plan=PLAN, failed="invalid label config", last_error="chunk 0: timeout")
    assert job_status(failed).detail == "invalid label config"


def test_errors_keep_the_latest() -> None:
    chunks = {i: chunk(120.0 + i, errors=tuple(f"task {i}-{k}: x" for k in range(15))) for i in range(3)}
    errors = job_status(JobRecord(SPEC, plan=PLAN, chunks=chunks)).errors
    assert len(errors) == MAX_ERRORS and errors[0] == "task 1-10: x" and errors[-1] == "task 2-14: x"


@pytest.mark.parametrize(("state", "age_s", "active"), [
    ("planning", 0.0, True),
    ("running", STALE_S, True),  # at the limit it still counts
    ("running", STALE_S + 1, False),  # stuck: a new job may start
    ("done", 0.0, False),
    ("failed", 0.0, False),
    ("cancelled", 0.0, False),
])
def test_still_active(state: str, age_s: float, active: bool) -> None:
    status = replace(job_status(JobRecord(SPEC)), state=state, updated_at=1000.0)  # type: ignore[arg-type]
    assert still_active(status, now=1000.0 + age_s) is active
