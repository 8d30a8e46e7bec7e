"""Request bodies: loose on input (Label Studio adds fields between versions), except where we define the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cliplabel.services.bulk import JobKind

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"  # what `BulkJobs.create` hands out; anything else never reaches the store


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: str | int
    label_config: str = Field(alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[Any]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | int
    kind: JobKind = "prelabel"
    chunk_size: int = Field(default=64, ge=1, le=1000)


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str


class ReviewRequest(BaseModel):
    """`POST /review`: uncertainty sampling and a least-certain-first view for a project."""

    model_config = ConfigDict(extra="forbid")
    project: str | int
    title: str = Field(default="Review: least certain first", min_length=1, max_length=200)
    update_predictions: bool = True  # set cluster and neighbours on the current version's stored predictions


class AcceptRequest(BaseModel):
    """`POST /accept`: auto-accept the predictions certain enough (a dry run only reports what would happen)."""

    model_config = ConfigDict(extra="forbid")
    project: str | int
    dry_run: bool = False
    target: float = Field(default=0.98, gt=0.5, lt=1.0)  # the precision to certify
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)  # of its Clopper–Pearson lower bound
    chunk_size: int = Field(default=64, ge=1, le=1000)


class UndoAcceptRequest(BaseModel):
    """`POST /accept/undo`: delete auto-accepted annotations not edited since (one job's, or the project's)."""

    model_config = ConfigDict(extra="forbid")
    project: str | int
    job_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")


class AuditRequest(BaseModel):
    """`POST /audit`: find suspect labels and mark them in Label Studio."""

    model_config = ConfigDict(extra="forbid")
    project: str | int
