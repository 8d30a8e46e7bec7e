"""Label Studio JSON of auto-accept and the audit: annotations with their parent prediction, the requests we send."""

from __future__ import annotations

from cliplabel.labelstudio import format as ls_format


def _ann(aid: int, label: str | None, **fields: object) -> dict:
    result = [] if label is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                        "value": {"choices": [label]}}]
    return {"id": aid, "result": result, **fields}


def test_exported_choices_keep_skips_and_parent_predictions() -> None:
    export = [
        {"id": 1, "annotations": [_ann(10, "cat"), _ann(11, "dog", parent_prediction=3)]},
        {"id": 2, "annotations": [_ann(12, None, was_cancelled=True)]},
        {"id": 5, "annotations": [_ann(15, "cat", was_cancelled=True)]},  # skipped: no label, whatever it holds
        {"id": "x", "annotations": [_ann(13, "cat")]},  # no task id: left out
        {"id": 3, "annotations": "broken"},
        {"id": 4, "annotations": [{"no": "id"}, _ann(14, "dog", parent_prediction=True)]},  # a bool is no id
    ]
    assert ls_format.exported_choices(export, "label") == [
        (1, 10, ("cat",), None), (1, 11, ("dog",), 3), (2, 12, (), None), (5, 15, (), None), (4, 14, ("dog",), None)]
    assert ls_format.exported_choices(export[:1], "other") == [(1, 10, (), None), (1, 11, (), 3)]


def test_listed_annotations_of_a_task() -> None:
    assert ls_format.listed_annotations({"detail": "not a list"}, "label") == []
    assert ls_format.listed_annotations([_ann(1, "cat", parent_prediction=9)], "label") == [(1, ("cat",), 9)]


def test_requests() -> None:
    assert ls_format.predictions_to_annotations_request([3, 4], "m-r1.accepted") == {
        "selectedItems": {"all": False, "included": [3, 4]}, "model_version": "m-r1.accepted"}
    assert ls_format.mislabeling_update(0.1234567) == {"mislabeling": 0.123457}
    view = ls_format.task_ids_view("Audit", [7, 9])
    assert view["filters"]["conjunction"] == "or"
    assert [i["value"] for i in view["filters"]["items"]] == [7, 9]
