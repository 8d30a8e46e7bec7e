"""A small Label Studio API client for bulk jobs: a project's config, its tasks, its predictions, new predictions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

from cliplabel.core.errors import CliplabelError
from cliplabel.labelstudio.auth import LabelStudioAuth

PAGE_SIZE = 100


class LabelStudioAPIError(CliplabelError):
    code = "label_studio_api_error"
    status = 502


class LabelStudioClient:
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
        try:
            resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout_s,
                                        headers={"Authorization": self.auth.header()}, **kw)
        except requests.RequestException as exc:
            raise LabelStudioAPIError(f"Label Studio did not answer {method} {path}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise LabelStudioAPIError(f"Label Studio answered {resp.status_code} to {method} {path}")
        try:
            return resp.json() if resp.content else None
        except ValueError as exc:
            raise LabelStudioAPIError(f"Label Studio's answer to {method} {path} is not JSON") from exc

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project with its annotations (Label Studio's JSON export)."""
        body = self._call("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})
        if not isinstance(body, list):
            raise LabelStudioAPIError(f"the export of project {project_id} is not a list of tasks")
        return [t for t in body if isinstance(t, dict)]

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/projects/{project_id}"))

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of a project, page by page."""
        page = 1
        while True:
            try:
                body = self._call("GET", "/api/tasks", params={"project": project_id, "page": page,
                                                               "page_size": PAGE_SIZE})
            except LabelStudioAPIError as exc:
                if "404" in exc.detail and page > 1:  # past the last page
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            if len(tasks) < PAGE_SIZE:
                return
            page += 1

    def predictions(self, project_id: int) -> list[dict[str, Any]]:
        """Every prediction of a project (all model versions)."""
        body = self._call("GET", "/api/predictions", params={"project": project_id})
        return [p for p in body if isinstance(p, dict)] if isinstance(body, list) else []

    def predicted_task_ids(self, project_id: int, model_version: str) -> set[int]:
        """Tasks that already hold a prediction of this model version (what a resumed job skips)."""
        return {int(p["task"]) for p in self.predictions(project_id) if p.get("model_version") == model_version}

    def prediction_versions(self, project_id: int, task_ids: list[int]) -> dict[int, set[str]]:
        """The model versions of the predictions each of these tasks holds, in one request (a chunk checks what is
        already stored before it predicts, so two runs never store the same task twice)."""
        if not task_ids:
            return {}
        query = json.dumps({"selectedItems": {"all": False, "included": task_ids}})
        body = self._call("GET", "/api/tasks", params={"project": project_id, "fields": "all", "query": query,
                                                       "page_size": len(task_ids)})
        tasks = body.get("tasks", []) if isinstance(body, dict) else body
        out: dict[int, set[str]] = {}
        for task in tasks if isinstance(tasks, list) else []:
            if not isinstance(task, dict) or not isinstance(task.get("id"), int):
                continue
            versions = task.get("predictions_model_versions") or []
            if isinstance(versions, str):
                versions = versions.split(",")
            out[task["id"]] = {str(v).strip() for v in versions if str(v).strip()}
        return out

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> None:
        """Stores many predictions in one request (each dict carries its `task`); one by one where Label Studio
        lacks the bulk endpoint (before 1.14)."""
        if not predictions:
            return
        try:
            self._call("POST", f"/api/projects/{project_id}/import/predictions", json=predictions)
        except LabelStudioAPIError as exc:
            if not any(f" {code} " in exc.detail for code in (404, 405)):
                raise
            for p in predictions:
                self._call("POST", "/api/predictions", json=p)
