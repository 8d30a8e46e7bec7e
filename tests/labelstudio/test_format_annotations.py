"""`GET /api/annotations/{id}` as a domain event: what Label Studio stores, marked confirmed."""

from __future__ import annotations

import pytest

from cliplabel.core.errors import InvalidRequestError
from cliplabel.labelstudio import format as ls_format

RESULT = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["Circle"]}}]


@pytest.mark.parametrize("body", [
    None,                                                   # not an object
    {"id": 1, "task": 2, "result": RESULT},                 # no project
    {"id": 1, "project": 3, "result": RESULT},              # no task
    {"id": 1, "task": True, "project": 3},                  # a bool is not a task id
    {"id": "1", "task": 2, "project": 3},                   # no integer id
])
def test_an_annotation_without_id_task_or_project_is_refused(body: object) -> None:
    with pytest.raises(InvalidRequestError):
        ls_format.stored_annotation(body)


def test_a_stored_annotation_is_a_confirmed_event_without_task_data() -> None:
    event = ls_format.stored_annotation({"id": 1, "task": 2, "project": 3, "result": RESULT, "was_cancelled": True})
    assert (event.project_id, event.annotation_id, event.task_id, event.task_data) == ("3", 1, 2, {})
    assert event.confirmed and event.cancelled and [r.labels for r in event.regions] == [("Circle",)]
    # a webhook's body is not confirmed; an export is
    assert not ls_format.webhook_annotation_event({"project": {"id": 3}, "annotation": {"id": 1}}).confirmed
    assert all(e.confirmed for e in ls_format.exported_events([{"id": 2, "annotations": [{"id": 1}]}], 3))  # type: ignore[union-attr]
