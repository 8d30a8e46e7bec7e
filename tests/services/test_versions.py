"""`GET /versions` reads: any project id a client sends leaves no record behind."""

from __future__ import annotations

import time

from cliplabel.core.domain import ModelVersion, ProjectState
from cliplabel.services.versions import current_version, known_versions


def test_listing_versions_writes_nothing(make_store, store_kind: str) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    # a project never set up has no versions, and asking leaves none behind
    assert known_versions(store, "999", "enc", "clip") == []
    assert store.list_versions("999", "enc") == []
    # a project set up serves the zero-shot r0 even before anything recorded it
    store.put_project(ProjectState("5", "<View/>"))
    assert known_versions(store, "5", "enc", "clip") == ["clip-r0"]
    assert store.list_versions("5", "enc") == []
    # once recorded (the first prediction), the recorded versions
    assert current_version(store, "5", "enc", "clip").name == "clip-r0"
    store.add_version(ModelVersion(project_id="5", encoder_id="enc", revision=1, name="clip-r1",
                                   created_at=time.time()))
    assert known_versions(store, "5", "enc", "clip") == ["clip-r0", "clip-r1"]


def test_get_versions_of_an_unknown_project_is_empty_and_stays_so(serve, make_store, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    live = serve(store)
    for _ in range(2):
        resp = http.get(f"{live.url}/versions", params={"project": "424242"})
        assert resp.status_code == 200 and resp.json() == {"versions": []}
    encoder_id = http.get(f"{live.url}/health").json()["encoder_id"]
    assert store.list_versions("424242", encoder_id) == [] and store.get_project("424242") is None
