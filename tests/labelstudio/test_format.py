"""The exact JSON Label Studio 1.23 accepts (with prediction validation on), and what it sends us."""

from __future__ import annotations

import pytest

from cliplabel.core.domain import ChoicePrediction, DrawnRegion, RegionPrediction, TaskPrediction
from cliplabel.core.errors import InvalidRequestError, TaskDataError
from cliplabel.labelstudio import format as ls_format


def test_prediction_with_choices_and_rectangles() -> None:
    pred = TaskPrediction(
        task_id=7, model_version="tiny-r0",
        choices=(ChoicePrediction("label", "image", ("Circle",), 0.9),),
        regions=(RegionPrediction("bbox", "image", "Circle", 0.8, (25.0, 12.5, 50.0, 25.0), (100, 50)),))
    out = ls_format.prediction_json(pred)
    assert out["model_version"] == "tiny-r0" and out["score"] == pytest.approx(0.85)
    choice, rect = out["result"]
    assert choice == {"id": choice["id"], "from_name": "label", "to_name": "image", "type": "choices",
                      "value": {"choices": ["Circle"]}, "score": 0.9}
    assert rect == {
        "id": rect["id"], "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
        "original_width": 100, "original_height": 50, "image_rotation": 0,
        "value": {"x": 25.0, "y": 25.0, "width": 25.0, "height": 25.0, "rotation": 0, "rectanglelabels": ["Circle"]},
        "score": 0.8,
    }
    assert choice["id"] != rect["id"]


def test_empty_prediction() -> None:
    assert ls_format.prediction_json(TaskPrediction(task_id=1, model_version="m-r0")) == {
        "model_version": "m-r0", "score": 0.0, "result": []}


@pytest.mark.parametrize(("project", "pid"), [("1.1795816392", "1"), ("12", "12"), (3, "3")])
def test_project_id(project: object, pid: str) -> None:
    assert ls_format.project_id(project) == pid


@pytest.mark.parametrize("project", [None, True, "", "abc.1", 1.5, [1]])
def test_bad_project_id(project: object) -> None:
    with pytest.raises(InvalidRequestError):
        ls_format.project_id(project)


@pytest.mark.parametrize("task", [None, "x", {}, {"data": []}, {"data": {}}, {"data": {"image": ""}},
                                  {"data": {"image": 5}}, {"data": {"image": None}}])
def test_unusable_task_data(task: object) -> None:
    with pytest.raises(TaskDataError):
        ls_format.task_image_ref(task, "image")


def test_drawn_regions_as_label_studio_sends_them() -> None:
    params = {"login": None, "password": None, "context": {"result": [
        {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
         "original_width": 64, "original_height": 48,
         "value": {"x": 20, "y": 20, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["Box"]},
         "is_positive": True},
        {"from_name": "kp", "to_name": "image", "type": "keypointlabels", "value": {"x": 50.5, "y": 10}},
        # malformed entries are skipped, not fatal
        {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 0,
                                                                                      "height": 5}},
        {"type": "rectanglelabels", "value": {"x": 1}},
        "junk",
    ]}}
    assert ls_format.drawn_regions(params) == [
        DrawnRegion("bbox", "image", "rectangle", box_pct=(20.0, 20.0, 50.0, 50.0)),
        DrawnRegion("kp", "image", "keypoint", point_pct=(50.5, 10.0)),
    ]
    assert ls_format.drawn_regions({"context": None}) == [] and ls_format.drawn_regions(None) == []
