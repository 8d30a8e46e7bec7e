"""The Label Studio API client: what it asks, how it reads the answers, and how it branches on Label Studio's HTTP
status (never on an error's text). Label Studio is a scripted `requests.Session`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from cliplabel.core.domain import ChoicePrediction, ProjectTask, StoredPrediction, TaskPrediction
from cliplabel.core.errors import LabelStudioAuthError, LabelStudioError
from cliplabel.labelstudio import client as client_module
from cliplabel.labelstudio.auth import LabelStudioAuth
from cliplabel.labelstudio.client import LabelStudioClient

Handler = Callable[[str, str, dict[str, Any]], tuple[int, Any]]


class ScriptedSession(requests.Session):
    """Answers every request with `handler(method, path, kwargs)` → (status, JSON body); records the calls."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        path = url.removeprefix("http://ls.test")
        self.calls.append((method, path))
        status, body = self.handler(method, path, kwargs)
        resp = requests.Response()
        resp.status_code = status
        resp._content = b"" if body is None else json.dumps(body).encode()
        return resp

    def post(self, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        return self.request("POST", url, *args, **kwargs)


def make_client(handler: Handler, token: str = "0123abcd") -> tuple[LabelStudioClient, ScriptedSession]:
    session = ScriptedSession(handler)
    auth = LabelStudioAuth("http://ls.test/", token, session, 5.0)
    client = LabelStudioClient.with_auth(auth, session, 5.0)
    client.retry_delays_s = ()  # retries have their own tests (test_client_retries.py); these answer at once
    return client, session


def _pred(version: str) -> TaskPrediction:
    return TaskPrediction(1, version, choices=(ChoicePrediction("label", "image", ("cat",), 0.5),))


def test_tasks_are_read_page_by_page_until_a_short_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 2)
    pages = {1: [{"id": 1, "data": {"image": "a"}, "total_annotations": 1, "cancelled_annotations": 1},
                 {"id": 2, "data": {"image": "b"}, "annotations": [{"id": 9}]}],
             2: {"tasks": [{"data": {}}, {"id": 3, "data": {"image": "c"}}]},  # no id: skipped, but a full page
             3: []}
    client, _ = make_client(lambda m, p, kw: (200, pages[kw["params"]["page"]]))
    assert list(client.tasks(5)) == [ProjectTask(1, {"image": "a"}, 1, 1), ProjectTask(2, {"image": "b"}, 1, 0),
                                     ProjectTask(3, {"image": "c"}, 0, 0)]


def test_a_404_past_the_first_page_ends_the_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 1)
    client, _ = make_client(lambda m, p, kw: (200, [{"id": 1}]) if kw["params"]["page"] == 1 else (404, None))
    assert [t.task_id for t in client.tasks(5)] == [1]
    # ... but on the first page it means the project does not exist
    missing, _ = make_client(lambda m, p, kw: (404, {"detail": "Not found"}))
    with pytest.raises(LabelStudioError) as info:
        list(missing.tasks(5))
    assert info.value.upstream_status == 404 and info.value.status == 502


@pytest.mark.parametrize("status", [404, 405])
def test_predictions_are_stored_one_by_one_without_the_bulk_endpoint(status: int) -> None:
    def handler(method: str, path: str, kw: dict[str, Any]) -> tuple[int, Any]:
        return (status, None) if path.endswith("/import/predictions") else (201, {"id": 1})

    client, session = make_client(handler)
    client.import_predictions(5, [(1, _pred("m-r0")), (2, _pred("m-r0"))])
    assert session.calls == [("POST", "/api/projects/5/import/predictions"), ("POST", "/api/predictions"),
                             ("POST", "/api/predictions")]


def test_other_errors_of_the_bulk_endpoint_are_raised() -> None:
    client, session = make_client(lambda m, p, kw: (500, None))
    with pytest.raises(LabelStudioError, match="answered 500") as info:
        client.import_predictions(5, [(1, _pred("m-r0"))])
    assert info.value.upstream_status == 500 and len(session.calls) == 1


def test_the_bulk_import_carries_each_prediction_with_its_task() -> None:
    sent: list[Any] = []
    client, _ = make_client(lambda m, p, kw: (sent.append(kw["json"]), (201, None))[1])
    client.import_predictions(5, [(7, _pred("m-r1"))])
    assert sent[0][0]["task"] == 7 and sent[0][0]["model_version"] == "m-r1"
    assert sent[0][0]["result"][0]["value"] == {"choices": ["cat"]}
    client.import_predictions(5, [])  # nothing to store: no request
    assert len(sent) == 1


def test_predictions_versions_and_label_config_are_read_into_domain_values() -> None:
    def handler(method: str, path: str, kw: dict[str, Any]) -> tuple[int, Any]:
        if path == "/api/predictions":
            return 200, [{"task": 1, "model_version": "m-r1", "result": [
                {"from_name": "label", "type": "choices", "value": {"choices": ["cat"]}, "score": 0.5}]},
                {"task": 2, "model_version": "m-r0", "result": []}, "junk"]
        if path == "/api/projects/5":
            return 200, {"id": 5, "label_config": "<View/>"}
        return 200, {"tasks": [{"id": 1, "predictions_model_versions": "m-r0, m-r1"},
                               {"id": 2, "predictions_model_versions": ["m-r0"]}, {"id": 3}]}

    client, _ = make_client(handler)
    assert client.predictions(5) == [StoredPrediction(1, "m-r1", (("label", "cat", 0.5),)),
                                     StoredPrediction(2, "m-r0", ())]
    assert client.predicted_task_ids(5, "m-r1") == {1}
    assert client.prediction_versions(5, [1, 2, 3]) == {1: {"m-r0", "m-r1"}, 2: {"m-r0"}, 3: set()}
    assert client.prediction_versions(5, []) == {}
    assert client.label_config(5) == "<View/>"


def test_unreachable_and_unreadable_answers_carry_no_status() -> None:
    def unreachable(method: str, path: str, kw: dict[str, Any]) -> tuple[int, Any]:
        raise requests.ConnectionError("refused")

    with pytest.raises(LabelStudioError, match="did not answer") as info:
        make_client(unreachable)[0].label_config(5)
    assert info.value.upstream_status is None


def test_a_refused_personal_access_token_is_a_label_studio_auth_error() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    client, _ = make_client(lambda m, p, kw: (401, None), token=f"{header}.e30.c2ln")
    with pytest.raises(LabelStudioAuthError, match="refused the personal access token") as info:
        client.label_config(5)
    assert (info.value.code, info.value.status, info.value.upstream_status) == ("label_studio_auth_failed", 502, 401)
