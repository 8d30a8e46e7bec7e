"""Auto-accepted annotations are not learned as if a person had made them: neither through `START_TRAINING`'s
import of Label Studio's export nor through a webhook confirmed against Label Studio's API. One a person relabelled
is theirs and teaches. Pure: Label Studio is a fake speaking its JSON (parsed by the real format module)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cliplabel.core.domain import AnnotatedRegion, AnnotationEvent, FeedbackExample, ProjectTask, StoredPrediction
from cliplabel.labelstudio import format as ls_format
from cliplabel.services.accepted import made_by_auto_accept
from cliplabel.services.feedback.confirm import AnnotationConfirmer
from cliplabel.services.feedback.examples import ExampleMaker
from cliplabel.services.feedback.record import FeedbackService


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


# Label Studio's predictions of task 1..4: 7 and 8 stored by auto-accept, 9 an ordinary pre-label.
PREDICTIONS = [
    {"id": 7, "task": 2, "model_version": "tiny-r1.accepted", "score": 0.99, "result": _choice("cat")},
    {"id": 8, "task": 3, "model_version": "tiny-r1.accepted", "score": 0.99, "result": _choice("cat")},
    {"id": 9, "task": 4, "model_version": "tiny-r1", "score": 0.6, "result": _choice("cat")},
]


def _annotation(aid: int, task: int, label: str, parent: int | None) -> dict[str, Any]:
    # as the export and `GET /api/annotations/{id}` carry it (the action leaves `prediction` empty)
    return {"id": aid, "task": task, "project": 5, "result": _choice(label), "was_cancelled": False,
            "ground_truth": False, "prediction": {}, "parent_prediction": parent}


ANNOTATIONS = {
    101: _annotation(101, 1, "dog", None),  # a person's, from scratch
    102: _annotation(102, 2, "cat", 7),  # auto-accepted, untouched: not a person's
    103: _annotation(103, 3, "dog", 8),  # auto-accepted, then relabelled by a person: theirs
    104: _annotation(104, 4, "cat", 9),  # a person accepted an ordinary pre-label in the editor: theirs
}


class FakeLabelStudio:
    """The calls feedback makes, answered with Label Studio's JSON through the real format module."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def export(self, project_id: int) -> list[dict[str, Any]]:
        self.calls.append("export")
        return [{"id": a["task"], "data": {"image": f"/data/upload/5/{a['task']}.png"}, "annotations": [a]}
                for a in ANNOTATIONS.values()]

    def predictions(self, project_id: int) -> list[StoredPrediction]:
        self.calls.append("predictions")
        return ls_format.stored_predictions(PREDICTIONS)

    def task_predictions(self, task_id: int) -> list[StoredPrediction]:
        self.calls.append(f"predictions?task={task_id}")
        return ls_format.stored_predictions([p for p in PREDICTIONS if p["task"] == task_id])

    def annotation(self, annotation_id: int) -> AnnotationEvent | None:
        self.calls.append(f"annotation {annotation_id}")
        found = ANNOTATIONS.get(annotation_id)
        return None if found is None else ls_format.stored_annotation(found)

    def task(self, project_id: int, task_id: int) -> ProjectTask | None:
        return ProjectTask(task_id=task_id, data={"image": f"/data/upload/5/{task_id}.png"})


class FakeStore:
    def __init__(self) -> None:
        self.feedback: dict[int, list[FeedbackExample]] = {}

    def get_project(self, project_id: str) -> object:
        return object()  # set up (its contents are not read before the auto-accept check)

    def put_feedback(self, project_id: str, annotation_id: int, examples: list[FeedbackExample]) -> None:
        self.feedback[annotation_id] = examples


class OneExamplePerEvent:
    """Stands in for the image-embedding part of `ExampleMaker`: what was asked to teach, one example each."""

    def __init__(self) -> None:
        self.taught: list[int] = []

    def examples(self, event: AnnotationEvent) -> list[FeedbackExample]:
        assert not event.auto_accepted, "an auto-accepted annotation reached the example maker"
        self.taught.append(event.annotation_id)
        label = event.regions[0].labels[0]
        return [FeedbackExample(event.project_id, event.annotation_id, "label", "h", label, "new",
                                np.ones(4, np.float32))]


@pytest.mark.parametrize(("labels", "parent", "expected"), [
    (("cat",), None, False),  # made by hand: no parent
    (("cat",), 404, False),  # its parent is gone (undone): nothing says auto-accept made it
    (("cat",), 9, False),  # an ordinary pre-label a person accepted in the editor
    (("dog",), 7, False),  # auto-accept's, relabelled by a person
    ((), 7, False),  # auto-accept's, its choice cleared by a person
    (("cat",), 7, True),  # auto-accept's, untouched
])
def test_made_by_auto_accept(labels: tuple[str, ...], parent: int | None, expected: bool) -> None:
    regions = (AnnotatedRegion("label", labels),) if labels else ()
    assert made_by_auto_accept(regions, parent, ls_format.stored_predictions(PREDICTIONS)) is expected


def test_the_annotation_event_carries_its_parent_prediction() -> None:
    assert ls_format.stored_annotation(ANNOTATIONS[102]).parent_prediction == 7
    assert ls_format.stored_annotation(ANNOTATIONS[101]).parent_prediction is None
    webhook = {"action": "ANNOTATION_UPDATED", "project": {"id": 5}, "task": {"id": 2, "data": {}},
               "annotation": {**ANNOTATIONS[102], "parent_prediction": "7"}}  # not an integer id: no link
    assert ls_format.webhook_annotation_event(webhook).parent_prediction is None


def test_start_training_imports_every_annotation_but_the_auto_accepted() -> None:
    ls, store, maker = FakeLabelStudio(), FakeStore(), OneExamplePerEvent()
    service = FeedbackService(store, None, None, maker, None, lambda state: ls)  # type: ignore[arg-type]
    store.feedback[102] = ["stale"]  # type: ignore[list-item]  # what an older import recorded for it
    assert service.import_annotations("5") == 3
    assert maker.taught == [101, 103, 104]
    assert [e.label for aid in (101, 103, 104) for e in store.feedback[aid]] == ["dog", "dog", "cat"]
    assert store.feedback[102] == []  # recorded as teaching nothing: the stale examples are gone
    assert ls.calls == ["export", "predictions"]  # one request for every prediction, not one per annotation


def test_start_training_asks_for_no_predictions_when_no_annotation_came_from_one() -> None:
    ls, store, maker = FakeLabelStudio(), FakeStore(), OneExamplePerEvent()
    ls.export = lambda project_id: [{"id": 1, "data": {}, "annotations": [ANNOTATIONS[101]]}]  # type: ignore[method-assign]
    service = FeedbackService(store, None, None, maker, None, lambda state: ls)  # type: ignore[arg-type]
    assert service.import_annotations("5") == 1
    assert "predictions" not in ls.calls


@pytest.mark.parametrize(("aid", "auto"), [
    (101, False),  # by hand: no parent to look up
    (102, True),  # untouched auto-accepted
    (103, False),  # relabelled by a person
    (104, False),  # an ordinary pre-label accepted in the editor
])
def test_a_webhook_of_an_auto_accepted_annotation_teaches_nothing(aid: int, auto: bool) -> None:
    ls, store = FakeLabelStudio(), FakeStore()
    confirmer = AnnotationConfirmer(lambda state: ls, required=True)  # type: ignore[arg-type,return-value]
    body = {"action": "ANNOTATION_UPDATED", "project": {"id": 5}, "task": {"id": ANNOTATIONS[aid]["task"]},
            # the body claims nothing about a parent: the mark is read from what Label Studio stores
            "annotation": {**ANNOTATIONS[aid], "parent_prediction": None}}
    confirmed = confirmer.confirm(ls_format.webhook_annotation_event(body), None)
    assert confirmed.auto_accepted is auto
    assert (f"predictions?task={ANNOTATIONS[aid]['task']}" in ls.calls) is (ANNOTATIONS[aid]["parent_prediction"]
                                                                          is not None)
    if auto:
        # the example maker stops before it fetches or embeds anything (its other parts are absent here)
        maker = ExampleMaker(store, None, None, None, None, None, "enc", "slug",  # type: ignore[arg-type]
                             confirmer=confirmer)
        assert maker.examples(ls_format.webhook_annotation_event(body)) == []
