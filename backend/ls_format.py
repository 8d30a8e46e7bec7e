"""Label Studio's JSON: the only module that knows its field names.

Converts tasks and `/setup` fields into domain values and predictions into Label Studio results (see
`../shared/LABEL_STUDIO.md` for the wire contract of Label Studio 1.23).
"""

from __future__ import annotations

import hashlib
from typing import Any

from backend.domain import ChoicePrediction, TaskPrediction
from backend.errors import InvalidRequestError, TaskDataError

MAX_IMAGE_REF_CHARS = 64 * 1024 * 1024  # data: URIs can be long; the image byte cap applies after decoding


def project_id(project: object) -> str:
    """Label Studio's `project` field (`"<id>.<created_at>"`, or a bare id) → the project id.

    Raises:
        InvalidRequestError: the field is missing or not of that form.
    """
    if isinstance(project, bool) or project is None:
        raise InvalidRequestError("the request has no project")
    if isinstance(project, int):
        return str(project)
    if isinstance(project, str):
        head = project.strip().split(".", 1)[0]
        if head.isdigit():
            return head
    raise InvalidRequestError('project must look like "<id>.<timestamp>" or be an integer id')


def task_id(task: object) -> int | None:
    """The task's integer id, or None when it has none (the result still goes at the task's position)."""
    if isinstance(task, dict):
        value = task.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def task_image_ref(task: object, key: str) -> str:
    """The image reference stored under `data[key]` of a task, as Label Studio stored it (URL, path or data URI).

    Raises:
        TaskDataError: the task is not an object, has no `data`, lacks the key, or its value is not a usable string.
    """
    if not isinstance(task, dict):
        raise TaskDataError("the task is not a JSON object")
    data = task.get("data")
    if not isinstance(data, dict):
        raise TaskDataError("the task has no data object")
    if key not in data:
        raise TaskDataError(f"the task's data has no {key!r} key")
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise TaskDataError(f"the task's data[{key!r}] is not a non-empty string")
    if len(value) > MAX_IMAGE_REF_CHARS:
        raise TaskDataError(f"the task's data[{key!r}] is longer than {MAX_IMAGE_REF_CHARS} characters")
    return value.strip()


def _result_id(task: int | None, from_name: str, index: int) -> str:
    return hashlib.sha1(f"{task}:{from_name}:{index}".encode()).hexdigest()[:10]


def choice_result(pred: ChoicePrediction, task: int | None, index: int) -> dict[str, Any]:
    """One `choices` result, as Label Studio stores it in a prediction."""
    return {
        "id": _result_id(task, pred.from_name, index),
        "from_name": pred.from_name,
        "to_name": pred.to_name,
        "type": "choices",
        "value": {"choices": list(pred.choices)},
        "score": round(pred.score, 6),
    }


def prediction_json(pred: TaskPrediction) -> dict[str, Any]:
    """A task's entry in the `/predict` response's `results` (empty `result` and score 0 when nothing predicted)."""
    result = [choice_result(c, pred.task_id, i) for i, c in enumerate(pred.choices)]
    return {"model_version": pred.model_version, "score": round(pred.score, 6), "result": result}
