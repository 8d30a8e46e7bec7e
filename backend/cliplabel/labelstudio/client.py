"""A small Label Studio API client for bulk jobs and the quality report: a project's label config, its tasks, its
predictions, new predictions. Answers come back as domain values (`cliplabel.labelstudio.format` reads the JSON);
errors are `LabelStudioError`s whose `upstream_status` says what Label Studio answered."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import requests

from cliplabel.core.domain import AnnotationEvent, ProjectState, ProjectTask, StoredPrediction, TaskPrediction
from cliplabel.core.errors import InvalidRequestError, LabelStudioAuthError, LabelStudioError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.auth import LabelStudioAuth

logger = logging.getLogger(__name__)
PAGE_SIZE = 100
# Waits before the retries of an idempotent request (a GET) that got no answer, a 5xx, a 408 or a 429.
RETRY_DELAYS_S = (0.5, 1.0, 2.0)
# Label Studio before 1.14 lacks the bulk import endpoint: it answers one of these, and we store one by one.
NO_BULK_IMPORT = (404, 405)


def is_transient(exc: LabelStudioError) -> bool:
    """True when the same request may succeed later: no answer (a timeout, a refused connection), or an answer that
    says "not now" (5xx, 408, 429). A 4xx otherwise is permanent."""
    return exc.upstream_status is None or exc.upstream_status >= 500 or exc.upstream_status in (408, 429)


class LabelStudioClient:
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S

    def __init__(self, base_url: str, token: str, timeout_s: float = 60.0) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.timeout_s = timeout_s
        self.auth = LabelStudioAuth(base_url, token, self.session, timeout_s)
        self.base_url = self.auth.base_url

    @classmethod
    def with_auth(cls, auth: LabelStudioAuth, session: requests.Session, timeout_s: float) -> LabelStudioClient:
        """A client sharing an existing session and credentials (e.g. those a project's /setup gave)."""
        client = cls.__new__(cls)
        client.session, client.timeout_s, client.auth, client.base_url = session, timeout_s, auth, auth.base_url
        return client

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        """One request; a GET (idempotent) is retried with backoff on a transient failure, anything else is not."""
        delays = self.retry_delays_s if method == "GET" else ()
        for delay in delays:
            try:
                return self._call_once(method, path, **kw)
            except LabelStudioError as exc:
                if isinstance(exc, LabelStudioAuthError) or not is_transient(exc):
                    raise
                logger.info("Label Studio %s %s: %s; retrying in %.1fs", method, path, exc.detail, delay)
                time.sleep(delay)
        return self._call_once(method, path, **kw)

    def _call_once(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout_s,
                                        headers={"Authorization": self.auth.header()}, **kw)
        except requests.RequestException as exc:
            raise LabelStudioError(f"Label Studio did not answer {method} {path}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise LabelStudioError(f"Label Studio answered {resp.status_code} to {method} {path}",
                                   upstream_status=resp.status_code)
        try:
            return resp.json() if resp.content else None
        except ValueError as exc:
            raise LabelStudioError(f"Label Studio's answer to {method} {path} is not JSON") from exc

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project with its annotations (Label Studio's JSON export)."""
        body = self._call("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})
        if not isinstance(body, list):
            raise LabelStudioError(f"the export of project {project_id} is not a list of tasks")
        return [t for t in body if isinstance(t, dict)]

    def label_config(self, project_id: int) -> str:
        """The project's label config (XML; empty when it has none)."""
        return ls_format.project_label_config(self._call("GET", f"/api/projects/{project_id}"))

    def tasks(self, project_id: int) -> Iterator[ProjectTask]:
        """Every task of a project, page by page (entries without an integer id are skipped)."""
        page = 1
        while True:
            try:
                body = self._call("GET", "/api/tasks", params={"project": project_id, "page": page,
                                                               "page_size": PAGE_SIZE})
            except LabelStudioError as exc:
                if exc.upstream_status == 404 and page > 1:  # past the last page
                    return
                raise
            listed = ls_format.listed_tasks(body)
            for raw in listed:
                task = ls_format.project_task(raw)
                if task is not None:
                    yield task
            if len(listed) < PAGE_SIZE:
                return
            page += 1

    def predictions(self, project_id: int) -> list[StoredPrediction]:
        """Every prediction of a project (all model versions)."""
        return ls_format.stored_predictions(self._call("GET", "/api/predictions", params={"project": project_id}))

    def predicted_task_ids(self, project_id: int, model_version: str) -> set[int]:
        """Tasks that already hold a prediction of this model version (what a resumed job skips)."""
        return {p.task_id for p in self.predictions(project_id)
                if p.model_version == model_version and p.task_id is not None}

    def prediction_versions(self, project_id: int, task_ids: list[int]) -> dict[int, set[str]]:
        """The model versions of the predictions each of these tasks holds, in one request (a chunk checks what is
        already stored before it predicts, so two runs never store the same task twice)."""
        if not task_ids:
            return {}
        query = json.dumps({"selectedItems": {"all": False, "included": task_ids}})
        body = self._call("GET", "/api/tasks", params={"project": project_id, "fields": "all", "query": query,
                                                       "page_size": len(task_ids)})
        found = (ls_format.task_prediction_versions(t) for t in ls_format.listed_tasks(body))
        return dict(f for f in found if f is not None)

    def import_predictions(self, project_id: int, predictions: Sequence[tuple[int, TaskPrediction]]) -> None:
        """Stores many (task id, prediction) pairs in one request; one by one where Label Studio lacks the bulk
        endpoint (before 1.14)."""
        if not predictions:
            return
        payloads = [ls_format.prediction_import(task_id, pred) for task_id, pred in predictions]
        try:
            self._call("POST", f"/api/projects/{project_id}/import/predictions", json=payloads)
        except LabelStudioError as exc:
            if exc.upstream_status not in NO_BULK_IMPORT:
                raise
            for payload in payloads:
                self._call("POST", "/api/predictions", json=payload)

    def annotation(self, annotation_id: int) -> AnnotationEvent | None:
        """The annotation as Label Studio stores it (its task and project ids, its result; no task data); None when
        Label Studio has no such annotation (404: deleted, or never made).

        Raises:
            LabelStudioError: any other failure; InvalidRequestError: an answer without task or project.
        """
        try:
            body = self._call("GET", f"/api/annotations/{annotation_id}")
        except LabelStudioError as exc:
            if exc.upstream_status == 404:
                return None
            raise
        return ls_format.stored_annotation(body)

    def task(self, project_id: int, task_id: int) -> ProjectTask | None:
        """One task of a project, its data as stored (storage URIs unresolved, like `/predict` gets them); None when
        the project has no such task. Listed through the data manager, which (unlike `GET /api/tasks/{id}`) never
        asks the ML backend for a prediction."""
        query = json.dumps({"selectedItems": {"all": False, "included": [task_id]}})
        body = self._call("GET", "/api/tasks", params={"project": project_id, "query": query, "resolve_uri": "false",
                                                       "page_size": 1})
        found = (ls_format.project_task(t) for t in ls_format.listed_tasks(body))
        return next((t for t in found if t is not None and t.task_id == task_id), None)

    # -- review the uncertain first (`services.review`) -------------------------------------------------------------
    def project_sampling(self, project_id: int) -> tuple[str | None, str | None]:
        """(sampling, model_version) of a project's settings."""
        return ls_format.project_sampling(self._call("GET", f"/api/projects/{project_id}"))

    def use_uncertainty_sampling(self, project_id: int, model_version: str) -> None:
        """Switches the project's labelling stream to uncertainty sampling over `model_version`'s predictions."""
        self._call("PATCH", f"/api/projects/{project_id}", json=ls_format.uncertainty_sampling(model_version))

    def views(self, project_id: int) -> list[tuple[int, str]]:
        """(id, title) of the project's Data Manager views (tabs)."""
        return ls_format.listed_views(self._call("GET", "/api/dm/views", params={"project": project_id}))

    def put_view(self, project_id: int, data: dict[str, Any], view_id: int | None = None) -> int:
        """Creates a Data Manager view (or replaces view `view_id`'s filters and ordering); returns its id."""
        body = ls_format.view_request(project_id, data)
        if view_id is not None:
            self._call("PATCH", f"/api/dm/views/{view_id}", json=body)
            return view_id
        return ls_format.view_id(self._call("POST", "/api/dm/views", json=body))

    def place_prediction(self, prediction_id: int, cluster: int | None, neighbors: Sequence[int]) -> None:
        """Sets a stored prediction's `cluster` and `neighbors`."""
        self._call("PATCH", f"/api/predictions/{prediction_id}",
                   json=ls_format.prediction_placement(cluster, neighbors))

    # -- auto-accept and the label audit (`services.accept`, `services.audit`) --------------------------------------
    def predictions_to_annotations(self, project_id: int, task_ids: Sequence[int], model_version: str) -> None:
        """Label Studio's own action: the `model_version` predictions of these tasks become (marked) annotations."""
        self._call("POST", "/api/dm/actions", params={"id": ls_format.PREDICTIONS_TO_ANNOTATIONS,
                                                      "project": project_id},
                   json=ls_format.predictions_to_annotations_request(task_ids, model_version))

    def listed_tasks(self, project_id: int, task_ids: Sequence[int]) -> list[ProjectTask]:
        """These tasks of a project with their annotation counts, in one request."""
        if not task_ids:
            return []
        query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        body = self._call("GET", "/api/tasks", params={"project": project_id, "query": query, "resolve_uri": "false",
                                                       "page_size": len(task_ids)})
        found = (ls_format.project_task(t) for t in ls_format.listed_tasks(body))
        return [t for t in found if t is not None]

    def task_annotations(self, task_id: int, from_name: str) -> list[tuple[int, tuple[str, ...], int | None]]:
        """(annotation id, labels of `from_name`, parent prediction id) of each annotation of one task."""
        return ls_format.listed_annotations(self._call("GET", f"/api/tasks/{task_id}/annotations"), from_name)

    def task_predictions(self, task_id: int) -> list[StoredPrediction]:
        """Every prediction of one task."""
        return ls_format.stored_predictions(self._call("GET", "/api/predictions", params={"task": task_id}))

    def delete_prediction(self, prediction_id: int) -> None:
        """Deletes one prediction (a 404, already gone, counts as done)."""
        try:
            self._call("DELETE", f"/api/predictions/{prediction_id}")
        except LabelStudioError as exc:
            if exc.upstream_status != 404:
                raise

    def delete_annotation(self, annotation_id: int) -> None:
        """Deletes one annotation (a 404, already gone, counts as done)."""
        try:
            self._call("DELETE", f"/api/annotations/{annotation_id}")
        except LabelStudioError as exc:
            if exc.upstream_status != 404:
                raise

    def set_mislabeling(self, prediction_id: int, value: float) -> None:
        """Sets a stored prediction's `mislabeling` score."""
        self._call("PATCH", f"/api/predictions/{prediction_id}", json=ls_format.mislabeling_update(value))


class ProjectClients:
    """The API client of each project's Label Studio: the configured URL and key, else what the project's /setup sent.

    Args:
        projects: the stored state of a project id (None when it never called /setup).
        connect: the client for a project's state, None when neither the settings nor the project give a URL and key.
    """

    def __init__(self, projects: Callable[[str], ProjectState | None],
                 connect: Callable[[ProjectState | None], LabelStudioClient | None]) -> None:
        self._projects = projects
        self._connect = connect

    def __call__(self, project_id: str) -> LabelStudioClient:
        """Raises:
            InvalidRequestError: neither is known (a 400 at once, rather than a failure in a worker later).
        """
        client = self._connect(self._projects(project_id))
        if client is None:
            raise InvalidRequestError(
                f"bulk jobs on project {project_id} need Label Studio's API: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY, or connect the project in Label Studio (its /setup sends both)")
        return client
