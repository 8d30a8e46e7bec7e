"""A small Label Studio API client for bulk jobs: a project's config, its tasks, its predictions, new predictions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests

from backend.errors import CliplabelError
from backend.ls_auth import LabelStudioAuth

PAGE_SIZE = 100


class LabelStudioAPIError(CliplabelError):
    code = "label_studio_api_error"
    status = 502


class LabelStudioClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        self.timeout_s = timeout_s
        self.auth = LabelStudioAuth(self.base_url, token, self.session, timeout_s)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout_s,
                                        headers={"Authorization": self.auth.header()}, **kw)
        except requests.RequestException as exc:
            raise LabelStudioAPIError(f"Label Studio did not answer {method} {path}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise LabelStudioAPIError(f"Label Studio answered {resp.status_code} to {method} {path}")
        return resp.json() if resp.content else None

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

    def predicted_task_ids(self, project_id: int, model_version: str) -> set[int]:
        """Tasks that already hold a prediction of this model version (what a resumed job skips)."""
        preds = self._call("GET", "/api/predictions", params={"project": project_id})
        return {int(p["task"]) for p in preds if p.get("model_version") == model_version}

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> None:
        self._call("POST", "/api/predictions", json={"task": task_id, **prediction})
