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
