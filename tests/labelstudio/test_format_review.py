"""The Label Studio JSON of review: cluster and neighbours on imported predictions, sampling, Data Manager views."""

from __future__ import annotations

import pytest

from cliplabel.core.errors import InvalidRequestError
from cliplabel.labelstudio import format as ls_format


@pytest.mark.parametrize(("cluster", "neighbors", "expected"), [
    (None, (), {}),  # not placed yet: nothing to set
    (0, (), {"cluster": 0}),  # cluster 0 is a cluster
    (3, (9, 4), {"cluster": 3, "neighbors": [9, 4]}),
])
def test_prediction_placement(cluster: int | None, neighbors: tuple[int, ...], expected: dict[str, object]) -> None:
    assert ls_format.prediction_placement(cluster, neighbors) == expected


def test_uncertainty_sampling_and_the_view() -> None:
    assert ls_format.uncertainty_sampling("tiny-r1") == {"sampling": "Uncertainty sampling", "model_version": "tiny-r1"}
    view = ls_format.least_certain_view("Review", "tiny-r1")
    assert view["title"] == "Review" and view["ordering"] == ["tasks:predictions_score"]
    assert {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number",
            "value": 0} in view["filters"]["items"]
    # the version filter's value is a list: Label Studio iterates it (a bare string would match letter by letter)
    assert {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
            "value": ["tiny-r1"]} in view["filters"]["items"]
    assert ls_format.view_request(3, view) == {"project": 3, "data": view}


@pytest.mark.parametrize(("body", "expected"), [
    (None, []),
    ([{"id": 1, "data": {"title": "Default"}}, {"id": "x"}, {"id": 2}], [(1, "Default"), (2, "")]),
    ({"results": [{"id": 5, "data": {"title": "Review"}}]}, [(5, "Review")]),  # a paginated answer
])
def test_listed_views(body: object, expected: list[tuple[int, str]]) -> None:
    assert ls_format.listed_views(body) == expected


def test_view_id_and_project_sampling() -> None:
    assert ls_format.view_id({"id": 4, "data": {}}) == 4
    with pytest.raises(InvalidRequestError):
        ls_format.view_id({"detail": "nope"})
    assert ls_format.project_sampling({"sampling": "Sequential sampling", "model_version": ""}) == (
        "Sequential sampling", "")
    assert ls_format.project_sampling([]) == (None, None)


def test_stored_predictions_read_id_score_and_cluster() -> None:
    (got,) = ls_format.stored_predictions([{"id": 11, "task": 7, "model_version": "tiny-r1", "score": 0.25,
                                            "cluster": 2, "result": []}])
    assert (got.prediction_id, got.task_id, got.score, got.cluster) == (11, 7, 0.25, 2)
    (bare,) = ls_format.stored_predictions([{"task": 7, "cluster": None, "score": "high"}])
    assert (bare.prediction_id, bare.score, bare.cluster) == (None, None, None)
