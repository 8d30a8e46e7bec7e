"""The routes: Label Studio 1.23's ML backend protocol, bulk jobs and the quality report.

Each handler is thin: the body is validated by its schema, one method of `Services` does the work, and the answer
is serialised here. Errors are raised, never answered here (`cliplabel.api.errors` maps them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam

from cliplabel.api.schemas import (
    JOB_ID_PATTERN,
    AcceptRequest,
    AuditRequest,
    JobRequest,
    PredictRequest,
    ReviewRequest,
    SetupRequest,
    UndoAcceptRequest,
    WebhookRequest,
)
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


@router.post("/review")
def review(body: ReviewRequest, request: Request) -> dict[str, Any]:
    """Uncertainty sampling on, clusters on the stored predictions, and a Data Manager view, least certain first."""
    return dataclasses.asdict(_services(request).review.start(body.project, body.title, body.update_predictions))


@router.get("/search")
def search(request: Request, project: str, q: str | None = Query(default=None, max_length=500),
           task: int | None = None, k: int = Query(default=20, ge=1, le=1000)) -> dict[str, Any]:
    """The project's tasks ranked by cosine similarity of their cached image embedding to a text (`q`) or to
    another task's image (`task`)."""
    if q is not None and task is None:
        found = _services(request).search.by_text(project, q, k)
    elif task is not None and q is None:
        found = _services(request).search.by_task(project, task, k)
    else:
        raise InvalidRequestError("give exactly one of q (a text) or task (a task id)")
    return {"project": ls_format.project_id(project), "query": {"q": q} if q is not None else {"task": task},
            "indexed": found.indexed, "missing": found.missing,
            "results": [{"task": t, "score": s} for t, s in zip(found.task_ids, found.scores)]}


@router.get("/duplicates")
def duplicates(request: Request, project: str,
               threshold: float = Query(default=0.97, gt=0.0, le=1.0)) -> dict[str, Any]:
    """Groups of the project's tasks whose images' cosine similarity reaches `threshold` (single linkage)."""
    groups, found = _services(request).search.duplicates(project, threshold)
    return {"project": found.project_id, "threshold": threshold, "indexed": len(found.task_ids),
            "missing": found.missing, "groups": groups}


@router.post("/accept")
def auto_accept(body: AcceptRequest, request: Request, response: Response) -> dict[str, Any]:
    """Certified per-class thresholds, coverage and expected errors; without `dry_run`, also a job that turns the
    predictions above them into marked annotations (202; poll `GET /accept/{job_id}`)."""
    report = _services(request).auto_accept(body.project, body.dry_run, body.target, body.confidence,
                                            body.chunk_size)
    if report.job is not None:
        response.status_code = 202
    return dataclasses.asdict(report)


@router.get("/accept/{job_id}")
def accept_status(request: Request, job_id: str = PathParam(pattern=JOB_ID_PATTERN)) -> dict[str, Any]:
    return _services(request).accept.status(job_id).as_json()


@router.post("/accept/undo")
def undo_accept(body: UndoAcceptRequest, request: Request) -> dict[str, Any]:
    return {"project": ls_format.project_id(body.project), "job_id": body.job_id,
            "deleted": _services(request).accept.undo(body.project, body.job_id)}


@router.get("/audit")
def audit(project: str, request: Request) -> dict[str, Any]:
    """Human labels that likely disagree with their image (confident learning on cross-validated probabilities);
    a read: `POST /audit` also writes `mislabeling` to the predictions and a view of the suspects."""
    return dataclasses.asdict(_services(request).audit_labels(project, write=False))


@router.post("/audit")
def audit_and_mark(body: AuditRequest, request: Request) -> dict[str, Any]:
    return dataclasses.asdict(_services(request).audit_labels(body.project, write=True))
