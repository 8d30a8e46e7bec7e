"""Where bulk jobs live in the store: every namespace and part name they use, and their JSON, in one place.

A job is a spec blob plus parts added once each (`Store.add_part` keeps the first writer): `plan`, `chunk:<i>` per
finished chunk, `failed`, `cancelled`. So a chunk delivered twice is counted once, and two processes planning the
same job agree on one plan.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from cliplabel.core.errors import NotFoundError
from cliplabel.services.bulk.model import ChunkResult, JobRecord, JobSpec, Plan
from cliplabel.store import Store

SPEC_NS = "bulk-job"  # blob: the job's spec; parts: plan, chunk:<i>, failed, cancelled
TASKS_NS = "bulk-tasks"  # blob per chunk: its tasks
ERROR_NS = "bulk-error"  # blob: the last error of a job (shown by its status until the job finishes)
INDEX_NS = "bulk-jobs"  # parts per project: job id → created_at
ACTIVE_NS = "bulk-active"  # blob per project and kind: the job id holding the one-job-at-a-time slot
ALL_JOBS = "all"  # ... and under this key every job (what a restarted process resumes)
PLAN, FAILED, CANCELLED, CHUNK = "plan", "failed", "cancelled", "chunk:"


def _chunk_result(raw: str) -> ChunkResult:
    fields = json.loads(raw)
    return ChunkResult(**{**fields, "errors": tuple(fields["errors"])})


def _by_creation(index: dict[str, str]) -> list[str]:
    return [job_id for job_id, _ in sorted(index.items(), key=lambda kv: float(kv[1]))]


class JobJournal:
    """Reads and records bulk jobs' facts in the store; any process can read what another recorded."""

    def __init__(self, store: Store, prefix: str = "bulk") -> None:
        """`prefix` keeps another kind of job's records apart (auto-accept jobs use "accept"): the bulk runner and
        its resume never see them."""
        self.store = store
        self.spec_ns, self.tasks_ns, self.error_ns, self.index_ns, self.active_ns = (
            ns.replace("bulk", prefix, 1) for ns in (SPEC_NS, TASKS_NS, ERROR_NS, INDEX_NS, ACTIVE_NS))

    def create(self, spec: JobSpec) -> None:
        self.put_spec(spec)
        self.index(spec)

    def put_spec(self, spec: JobSpec) -> None:
        """Writes the spec only: an unindexed job is invisible (what a create that lost a claim leaves)."""
        self.store.put_blob(self.spec_ns, spec.job_id, json.dumps(asdict(spec)))

    def index(self, spec: JobSpec) -> None:
        self.store.add_part(self.index_ns, spec.project_id, spec.job_id, str(spec.created_at))
        self.store.add_part(self.index_ns, ALL_JOBS, spec.job_id, str(spec.created_at))

    def holder(self, project_id: str, kind: str) -> str | None:
        """The job that holds a project's slot for jobs of this kind (maybe finished since)."""
        return self.store.get_blob(self.active_ns, f"{project_id}:{kind}")

    def claim(self, project_id: str, kind: str, holder: str | None, job_id: str) -> bool:
        """Hands the slot from `holder` (None: nobody) to `job_id`, atomically; False when someone else did first."""
        return self.store.claim_blob(self.active_ns, f"{project_id}:{kind}", holder, job_id)

    def spec(self, job_id: str) -> JobSpec:
        """Raises:
            NotFoundError: no such job.
        """
        raw = self.store.get_blob(self.spec_ns, job_id)
        if raw is None:
            raise NotFoundError(f"no bulk job {job_id!r}")
        return JobSpec(**json.loads(raw))

    def record(self, job_id: str) -> JobRecord:
        """Everything recorded about a job (raises NotFoundError for an unknown one)."""
        spec = self.spec(job_id)
        parts = self.store.list_parts(self.spec_ns, job_id)
        return JobRecord(spec=spec, plan=Plan(**json.loads(parts[PLAN])) if PLAN in parts else None,
                         chunks={int(k[len(CHUNK):]): _chunk_result(v) for k, v in parts.items() if k.startswith(CHUNK)},
                         failed=parts.get(FAILED), cancelled=CANCELLED in parts,
                         last_error=self.store.get_blob(self.error_ns, job_id))

    def plan(self, job_id: str) -> Plan | None:
        raw = self.store.list_parts(self.spec_ns, job_id).get(PLAN)
        return None if raw is None else Plan(**json.loads(raw))

    def record_plan(self, job_id: str, plan: Plan, chunks: list[list[dict[str, Any]]]) -> Plan | None:
        """Stores the chunks' tasks, then the plan; returns the plan another process recorded first, if one did."""
        for i, chunk in enumerate(chunks):
            self.store.put_blob(self.tasks_ns, f"{job_id}:{i}", json.dumps(chunk))
        if self.store.add_part(self.spec_ns, job_id, PLAN, json.dumps(asdict(plan))):
            return None
        return Plan(**json.loads(self.store.list_parts(self.spec_ns, job_id)[PLAN]))

    def chunk_tasks(self, job_id: str, index: int) -> list[dict[str, Any]]:
        """The tasks of one chunk, as the plan stored them (raises NotFoundError for a chunk never planned)."""
        raw = self.store.get_blob(self.tasks_ns, f"{job_id}:{index}")
        if raw is None:
            raise NotFoundError(f"bulk job {job_id} has no chunk {index}")
        tasks: list[dict[str, Any]] = json.loads(raw)
        return tasks

    def record_chunk(self, job_id: str, index: int, result: ChunkResult) -> bool:
        """False when the chunk had already been recorded (it then counts once)."""
        return self.store.add_part(self.spec_ns, job_id, f"{CHUNK}{index}", json.dumps(asdict(result)))

    def is_cancelled(self, job_id: str) -> bool:
        return CANCELLED in self.store.list_parts(self.spec_ns, job_id)

    def cancel(self, job_id: str) -> None:
        self.store.add_part(self.spec_ns, job_id, CANCELLED, str(time.time()))

    def record_error(self, job_id: str, detail: str, final: bool) -> None:
        self.store.put_blob(self.error_ns, job_id, detail)
        if final:
            self.store.add_part(self.spec_ns, job_id, FAILED, detail)

    def job_ids(self, project_id: str) -> list[str]:
        """A project's jobs, oldest first."""
        return _by_creation(self.store.list_parts(self.index_ns, project_id))

    def all_job_ids(self) -> list[str]:
        """Every job of every project, oldest first."""
        return _by_creation(self.store.list_parts(self.index_ns, ALL_JOBS))
