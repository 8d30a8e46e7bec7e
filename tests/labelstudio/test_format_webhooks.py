"""Webhook payloads and JSON exports → annotation events: what feedback learning reads of Label Studio's JSON."""

from __future__ import annotations

import pytest

from cliplabel.core.domain import AnnotatedRegion
from cliplabel.core.errors import InvalidRequestError
from cliplabel.labelstudio import format as ls_format

TASK = {"id": 7, "data": {"image": "/data/upload/1/a.png"}}
ANNOTATION = {"id": 3, "task": 7, "was_cancelled": False,
              "result": [{"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]}


@pytest.mark.parametrize(("payload", "action"), [({}, "None"),  # no action: never one we learn from
                                                 ({"action": "ANNOTATION_CREATED"}, "ANNOTATION_CREATED")])
def test_webhook_action(payload: dict, action: str) -> None:
    assert ls_format.webhook_action(payload) == action


def test_webhook_annotation_event() -> None:
    event = ls_format.webhook_annotation_event({"action": "ANNOTATION_CREATED", "project": {"id": 4},
                                                "task": TASK, "annotation": ANNOTATION})
    assert (event.project_id, event.annotation_id, event.task_id, event.cancelled) == ("4", 3, 7, False)
    assert event.regions == (AnnotatedRegion("kind", ("cat",)),)
    # the task as prediction's image fetching reads it
    assert ls_format.event_task(event) == TASK


def test_a_webhook_without_an_annotation_id_is_invalid() -> None:
    with pytest.raises(InvalidRequestError, match="integer id"):
        ls_format.webhook_annotation_event({"project": {"id": 4}, "task": TASK, "annotation": {"result": []}})


def test_exported_events_keep_order_and_report_malformed_annotations() -> None:
    tasks: list[object] = [
        "not a task",  # skipped
        {"id": 1, "data": {}},  # no annotations key
        {"id": 2, "data": {}, "annotations": [{"id": 10, "result": []}, {"result": []}]},  # the second has no id
        {**TASK, "annotations": [ANNOTATION, {**ANNOTATION, "id": 4, "was_cancelled": True}]},
    ]
    events = ls_format.exported_events(tasks, "4")
    assert isinstance(events[1], InvalidRequestError)
    ok = [e for e in events if not isinstance(e, InvalidRequestError)]
    assert [(e.annotation_id, e.task_id, e.cancelled) for e in ok] == [(10, 2, False), (3, 7, False), (4, 7, True)]
    assert all(e.project_id == "4" for e in ok)
