"""A bulk job's state and progress, derived from what the store holds about it. Pure: no store, no clock.

The store records facts, each once, by whoever got there first: a plan, one result per finished chunk, a final
failure, a cancellation. The state is read off those facts, in this order of precedence:

    cancelled  a cancellation was recorded (whatever else happened: stopping wins)
    failed     a final failure was recorded (a plan that could not be made, a job that crashed)
    planning   no plan yet
    failed     every planned chunk has a result, and one of them gave up after its last retry
    done       every planned chunk has a result (at once for a plan of zero chunks)
    running    otherwise
"""

from __future__ import annotations

from cliplabel.services.bulk.model import ACTIVE_STATES, MAX_ERRORS, JobRecord, JobState, JobStatus

STALE_S = 600.0  # a job with no progress for this long no longer blocks a new one on its project


def job_state(record: JobRecord) -> JobState:
    """The job's state (see the module's docstring for the precedence)."""
    if record.cancelled:
        return "cancelled"
    if record.failed is not None:
        return "failed"
    if record.plan is None:
        return "planning"
    if len(record.chunks) >= record.plan.chunks:
        return "failed" if any(r.gave_up for r in record.chunks.values()) else "done"
    return "running"


def job_status(record: JobRecord) -> JobStatus:
    """The job's status: counts summed over finished chunks; a rate and ETA once a chunk finished after the plan.

    The rate counts tasks predicted or failed per second since the plan; tasks skipped (already predicted) count
    towards `done` but not towards the rate. Errors are the last `MAX_ERRORS`, oldest chunk first.
    """
    plan, results = record.plan, list(record.chunks.values())
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
    state = job_state(record)
    # A finished job's last error was one a retry got past: it no longer describes the job.
    gave_up = sorted(i for i, r in record.chunks.items() if r.gave_up)
    detail = record.failed or (f"chunks {gave_up} failed after their last retry" if gave_up else None) or \
        (None if state == "done" else record.last_error)
    errors = tuple(e for r in sorted(results, key=lambda r: r.finished_at) for e in r.errors)[-MAX_ERRORS:]
    spec = record.spec
    return JobStatus(job_id=spec.job_id, project_id=spec.project_id, kind=spec.kind, state=state,
                     model_version=plan.model_version if plan else None, total=total, done=skipped + processed,
                     predicted=predicted, skipped=skipped, failed=failed, chunks=plan.chunks if plan else 0,
                     chunks_done=len(results), rate_tasks_per_s=rate, eta_s=eta, errors=errors,
                     workers=tuple(sorted({r.worker for r in results})), created_at=spec.created_at,
                     updated_at=max([spec.created_at, plan.planned_at if plan else 0.0,
                                     *(r.finished_at for r in results)]),
                     detail=detail,
                     predict_s=round(sum(r.predict_s for r in results), 3),
                     label_studio_s=round(sum(r.label_studio_s for r in results), 3))


def still_active(status: JobStatus, now: float) -> bool:
    """True while a job has work left and made progress within `STALE_S` (a stuck job no longer blocks a new one)."""
    return status.state in ACTIVE_STATES and now - status.updated_at <= STALE_S
