"""Spoofed webhooks teach nothing: every annotation event is confirmed against Label Studio's API (here the image
host's, a real HTTP server) before it becomes an example, through the real HTTP app and its feedback worker."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cliplabel.core.errors import AnnotationNotConfirmedError, TransientError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.model.embeddings import content_hash
from cliplabel.services.feedback.confirm import AnnotationConfirmer
from tests import synthetic
from tests.support import LS_TOKEN

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
          '<Choice value="Type A"/><Choice value="Type B"/></Choices></View>')
PROJECT = {"id": 4, "title": "confirm"}


def _png(seed: int, colour: str) -> bytes:
    return synthetic.encode_png(synthetic.object_image(np.random.default_rng(seed), colour, "circle", 64))


def _event(aid: int, task_id: int, image: str, label: str, project: int = 4) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {**PROJECT, "id": project},
            "task": {"id": task_id, "data": {"image": image}},
            "annotation": {"id": aid, "task": task_id, "project": project, "was_cancelled": False,
                           "result": [{"from_name": "kind", "to_name": "image", "type": "choices",
                                       "value": {"choices": [label]}}]}}


def _drain(store, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while store.pending_events(1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.pending_events(1), "events left unprocessed"


def _setup(http, url: str, host_url: str) -> None:  # type: ignore[no-untyped-def]
    http.post(f"{url}/setup", json={"project": "4.1", "schema": CONFIG, "hostname": host_url,
                                    "access_token": LS_TOKEN}).raise_for_status()


def test_only_what_label_studio_stores_teaches(serve, make_store, image_host, http, caplog) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    live = serve(store, retrain_every=1000)
    _setup(http, live.url, image_host.url)
    red = image_host.add("/data/upload/4/red.png", _png(1, "red"))
    blue = image_host.add("/data/upload/4/blue.png", _png(2, "blue"))
    # Label Studio stores annotation 1 on task 10 (the red image) as "Type A", and annotation 2 on task 11
    image_host.annotate(_event(1, 10, red, "Type A"))
    image_host.annotate(_event(2, 11, blue, "Type B"))
    image_host.annotate(_event(3, 12, blue, "Type B", project=9))  # another project's annotation
    events = [
        # genuine id, forged body: another label and another image; Label Studio's version must win
        _event(1, 10, blue, "Type B"),
        _event(404, 10, red, "Type B"),   # no such annotation in Label Studio
        _event(2, 10, red, "Type A"),     # a real annotation, claimed for another task
        _event(3, 12, blue, "Type A"),    # a real annotation of project 9, claimed for project 4
    ]
    for event in events:
        resp = http.post(f"{live.url}/webhook", json=event)
        assert resp.status_code == 200 and resp.json()["status"] == "queued", resp.text
    _drain(store)
    feedback = store.list_feedback("4")
    assert [(e.annotation_id, e.label) for e in feedback] == [(1, "Type A")]
    assert feedback[0].image_hash == content_hash(image_host.files[red])
    refused = [r.getMessage() for r in caplog.records if "not confirmed by Label Studio" in r.getMessage()]
    assert len(refused) == 3, refused
    assert ("GET", "/api/annotations/404") in image_host.requests_seen


def test_a_label_studio_outage_delays_an_event_and_loses_nothing(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    live = serve(store, retrain_every=1000)
    _setup(http, live.url, image_host.url)
    red = image_host.add("/data/upload/4/red.png", _png(1, "red"))
    image_host.api_status = 503
    http.post(f"{live.url}/webhook", json=image_host.annotate(_event(1, 10, red, "Type A"))).raise_for_status()
    deadline = time.monotonic() + 3
    while ("GET", "/api/annotations/1") not in image_host.requests_seen and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert ("GET", "/api/annotations/1") in image_host.requests_seen
    assert store.pending_events(1) and store.list_feedback("4") == []  # still queued, not dropped
    image_host.api_status = None
    http.post(f"{live.url}/webhook", json=image_host.annotate(_event(2, 10, red, "Type A"))).raise_for_status()
    _drain(store, timeout_s=90)
    assert sorted(e.annotation_id for e in store.list_feedback("4")) == [1, 2]


@pytest.mark.parametrize("with_credentials", [False, True])
def test_with_basic_auth_webhook_takes_only_confirmable_events(serve, make_store, image_host, http,  # type: ignore[no-untyped-def]
                                                              with_credentials: bool) -> None:
    store = make_store("embedded")
    live = serve(store, retrain_every=1000, basic_auth_user="ls", basic_auth_pass="pw-0123")
    auth = ("ls", "pw-0123")
    http.post(f"{live.url}/setup", auth=auth, json={"project": "4.1", "schema": CONFIG, "hostname": image_host.url,
                                                    "access_token": LS_TOKEN}).raise_for_status()
    red = image_host.add("/data/upload/4/red.png", _png(1, "red"))
    creds = auth if with_credentials else None
    assert http.post(f"{live.url}/predict", json={"tasks": [], "project": "4.1"}).status_code == 401
    # wrong credentials count as none; without them, only annotation events are taken
    assert http.post(f"{live.url}/webhook", auth=("ls", "wrong"), json={"action": "TASKS_CREATED",
                                                                         "project": PROJECT}).status_code == 401
    genuine = http.post(f"{live.url}/webhook", auth=creds, json=image_host.annotate(_event(1, 10, red, "Type A")))
    forged = http.post(f"{live.url}/webhook", auth=creds, json=_event(2, 10, red, "Type B"))
    train = http.post(f"{live.url}/webhook", auth=creds, json={"action": "START_TRAINING", "project": PROJECT})
    assert genuine.json()["status"] == forged.json()["status"] == "queued"
    assert train.status_code == (200 if with_credentials else 401), train.text
    _drain(store)
    assert [(e.annotation_id, e.label) for e in store.list_feedback("4")] == [(1, "Type A")]


def test_deletions_and_label_studio_answers_sorted_into_permanent_and_transient(image_host) -> None:  # type: ignore[no-untyped-def]
    client = LabelStudioClient(image_host.url, LS_TOKEN)
    confirmer = AnnotationConfirmer(lambda state: client, required=True)
    image_host.annotate(_event(1, 10, "/data/upload/4/red.png", "Type A"))
    # a deletion removes feedback only of annotations Label Studio no longer has
    assert confirmer.deleted("4", [1, 2], None) == [2]
    event = ls_format.webhook_annotation_event(_event(1, 10, "/data/upload/4/forged.png", "Type B"))
    confirmed = confirmer.confirm(event, None)
    assert confirmed.confirmed and confirmed.task_data == {"image": "/data/upload/4/red.png"}
    assert [r.labels for r in confirmed.regions] == [("Type A",)]
    for status, error in [(503, TransientError), (429, TransientError), (401, TransientError),
                          (403, AnnotationNotConfirmedError), (404, AnnotationNotConfirmedError)]:
        image_host.api_status = status
        with pytest.raises(error):
            confirmer.confirm(event, None)
    image_host.api_status = 503
    with pytest.raises(TransientError):
        confirmer.deleted("4", [1], None)
    image_host.api_status = None
    # without a known Label Studio: refused when confirmation is required (basic auth on), trusted otherwise
    assert AnnotationConfirmer(lambda state: None, required=True).deleted("4", [1], None) == []
    with pytest.raises(AnnotationNotConfirmedError):
        AnnotationConfirmer(lambda state: None, required=True).confirm(event, None)
    assert AnnotationConfirmer(lambda state: None, required=False).confirm(event, None) == event
