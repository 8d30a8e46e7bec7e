"""What bulk jobs are made of: a job's spec, its plan, what each chunk did, and the status `GET /jobs/{id}` answers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

JobKind = Literal["prelabel", "rescore"]
# Jobs recorded the same way: bulk jobs, and auto-accept jobs (`services.accept`, in their own "accept-*" journal).
RecordedKind = Literal["prelabel", "rescore", "accept"]
JobState = Literal["planning", "running", "done", "failed", "cancelled"]
ACTIVE_STATES: tuple[JobState, ...] = ("planning", "running")  # a job in these still has work to do
MAX_ERRORS = 20  # per chunk, and in a job's status: enough to see a pattern, short enough to read


@dataclass(frozen=True)
class JobSpec:
    """What was asked: pre-label (or re-score the unlabelled tasks of) a project, in chunks of `chunk_size` tasks."""

    job_id: str
    project_id: str
    kind: RecordedKind
    chunk_size: int
    created_at: float


@dataclass(frozen=True)
class Plan:
    """The tasks a job will predict, fixed once: `total` tasks in scope, `skipped` of them already predicted with
    `model_version`, the rest in `chunks` chunks."""

    model_version: str
    label_config: str
    total: int
    skipped: int
    chunks: int
    planned_at: float


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk did, recorded once whoever ran it."""

    predicted: int
    failed: int
    errors: tuple[str, ...]
    worker: str
    seconds: float
    finished_at: float
    predict_s: float = 0.0  # of `seconds`: fetching, decoding, encoding, scoring
    label_studio_s: float = 0.0  # of `seconds`: asking Label Studio what it holds, storing the predictions
    already_stored: int = 0  # tasks found holding the version already (a cut-off run stored them): skipped
    gave_up: bool = False  # the chunk failed on its last retry: its tasks count as failed, and the job fails


@dataclass(frozen=True)
class JobRecord:
    """Everything the store holds about one job, read at one moment: the input of `status.job_status`."""

    spec: JobSpec
    plan: Plan | None = None
    chunks: dict[int, ChunkResult] = field(default_factory=dict)  # finished chunks by index
    failed: str | None = None  # why the job failed for good
    cancelled: bool = False
    last_error: str | None = None  # the latest error, a retried one included (shown until the job finishes)


@dataclass(frozen=True)
class JobStatus:
    """What `GET /jobs/{id}` answers: done/total, rate, ETA and errors."""

    job_id: str
    project_id: str
    kind: RecordedKind
    state: JobState
    model_version: str | None
    total: int
    done: int
    predicted: int
    skipped: int
    failed: int
    chunks: int
    chunks_done: int
    rate_tasks_per_s: float | None
    eta_s: float | None
    errors: tuple[str, ...]
    workers: tuple[str, ...]
    created_at: float
    updated_at: float  # the last sign of progress: created, planned, or a chunk finished
    detail: str | None
    predict_s: float  # summed over chunks (and workers): where the time went
    label_studio_s: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
