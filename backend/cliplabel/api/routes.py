"""The routes: Label Studio 1.23's ML backend protocol, bulk jobs and the quality report.

Each handler is thin: the body is validated by its schema, one method of `Services` does the work, and the answer
is serialised here. Errors are raised, never answered here (`cliplabel.api.errors` maps them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam

from cliplabel.api.schemas import JOB_ID_PATTERN, JobRequest, PredictRequest, SetupRequest, WebhookRequest
from cliplabel.container import Services
from cliplabel.core.errors import InvalidRequestError, UnauthorizedError
from cliplabel.labelstudio import format as ls_format

router = APIRouter()


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    return _services(request).health()


@router.post("/setup")
def setup(body: SetupRequest, request: Request) -> dict[str, str]:
    version = _services(request).setup(body.project, body.label_config, body.hostname, body.access_token)
    return {"model_version": version}


@router.post("/predict")
def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
    if body.project is None and body.label_config is None:
        raise InvalidRequestError("the request needs a project (after /setup) or a label_config")
    results = _services(request).predict(body.tasks, body.project, body.label_config, body.params or {})
    return {"results": results}


@router.post("/webhook")
def webhook(body: WebhookRequest, request: Request) -> dict[str, Any]:
    # Without basic-auth credentials (see `middleware.OPEN_PATHS`) only annotation events are taken, and those are
    # confirmed against Label Studio's API before they teach; training on demand needs the credentials.
    authenticated = request.scope.get("state", {}).get("authenticated", True)  # no middleware: no basic auth
    if not authenticated and body.action not in ls_format.CONFIRMABLE_ACTIONS:
        raise UnauthorizedError(f"{body.action} needs HTTP basic auth")
    return _services(request).webhook(body.action, body.model_dump())


@router.post("/jobs", status_code=202)
def start_job(body: JobRequest, request: Request) -> dict[str, Any]:
    """Starts pre-labelling a whole project (or re-scoring its unlabelled tasks); poll GET /jobs/{id}."""
    return _services(request).start_job(body.project, body.kind, body.chunk_size).as_json()


@router.get("/jobs/{job_id}")
def job_status(request: Request, job_id: str = PathParam(pattern=JOB_ID_PATTERN)) -> dict[str, Any]:
    return _services(request).job_status(job_id).as_json()


@router.delete("/jobs/{job_id}")
def cancel_job(request: Request, job_id: str = PathParam(pattern=JOB_ID_PATTERN)) -> dict[str, Any]:
    return _services(request).cancel_job(job_id).as_json()


@router.get("/jobs")
def list_jobs(project: str, request: Request) -> dict[str, Any]:
    return {"jobs": [j.as_json() for j in _services(request).list_jobs(project)]}


@router.get("/report")
def quality_report(project: str, request: Request) -> dict[str, Any]:
    """Per-class counts, scores, acceptance and the learning curve (`cliplabel report` draws it)."""
    return dataclasses.asdict(_services(request).report(project))


@router.get("/versions")
def versions(request: Request, project: str | None = None) -> dict[str, Any]:
    return {"versions": _services(request).versions(project)}


@router.get("/metrics")
def metrics(request: Request) -> dict[str, Any]:
    return _services(request).metrics_snapshot()
