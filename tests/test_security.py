"""Security by default: no SSRF (a trap host must see no connection), no secrets in logs or bodies, hard caps."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cliplabel.core.errors import InvalidRequestError
from cliplabel.labelstudio import format as ls_format
from tests import synthetic
from tests.support import LS_TOKEN


class Trap:
    """A TCP listener on another loopback address that counts every connection it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.2:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


CONFIG = ('<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="red circle"/>'
          '<Choice value="blue square"/></Choices><RectangleLabels name="b" toName="image"><Label value="red circle"/>'
          '</RectangleLabels></View>')


def test_no_request_reaches_a_host_nobody_allowed(serve, make_store, image_host, http, trap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Label Studio's URL is configured, so what /setup claims as hostname is not trusted for fetching.
    store = make_store("embedded")
    live = serve(store, label_studio_url=image_host.url, label_studio_api_key=LS_TOKEN, local_files_root=tmp_path)
    http.post(f"{live.url}/setup", json={"project": "1.1", "schema": CONFIG, "hostname": trap.url,
                                         "access_token": "x"}).raise_for_status()
    image_host.redirects["/data/upload/r.png"] = f"{trap.url}/r.png"
    image_host.redirects["/data/upload/r2.png"] = f"//127.0.0.2:{trap.port}/r2.png"
    refs = [
        f"{trap.url}/direct.png",                              # a direct URL
        f"http://127.0.0.2:{trap.port}@{image_host.url[7:]}/x",  # user-info tricks
        f"{image_host.url}@127.0.0.2:{trap.port}/x",
        "/data/upload/r.png",                                  # Label Studio's host redirecting to the trap
        "/data/upload/r2.png",                                 # … with a scheme-relative Location
        f"http://127.0.0.2:{trap.port}/%2e%2e/x",
        f"HTTP://127.0.0.2:{trap.port}/upper.png",
        f"http://[::ffff:127.0.0.2]:{trap.port}/v6.png",
        "/data/local-files/?d=../../etc/passwd",               # traversal out of the local-files root
        f"gs://bucket/{trap.url}",                             # cloud URIs go to Label Studio's presign endpoint only
    ]
    tasks = [{"id": i, "data": {"image": ref}} for i, ref in enumerate(refs)]
    results = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    assert [r["result"] for r in results] == [[]] * len(refs)
    # interactive and webhook paths too
    http.post(f"{live.url}/predict", json={"tasks": tasks[:1], "project": "1.1", "params": {"context": {"result": [
        {"from_name": "b", "to_name": "image", "type": "rectanglelabels",
         "value": {"x": 1, "y": 1, "width": 5, "height": 5}}]}}}).raise_for_status()
    # the webhook: Label Studio (the image host) confirms the annotation, and its stored task points at the trap
    for aid, task in enumerate(tasks, start=1):
        http.post(f"{live.url}/webhook", json=image_host.annotate({
            "action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": task, "annotation": {"id": aid, "result": [
                {"from_name": "c", "to_name": "image", "type": "choices", "value": {"choices": ["red circle"]}}]}})
                  ).raise_for_status()
    deadline = time.monotonic() + 30
    while store.pending_events(1) and time.monotonic() < deadline:
        time.sleep(0.05)
    # every event was processed (confirmed, then its image refused), none taught anything, none reached the trap
    assert not store.pending_events(1)
    assert all(("GET", f"/api/annotations/{aid}") in image_host.requests_seen for aid in range(1, len(tasks) + 1))
    assert store.list_feedback("1") == []
    assert trap.connections == 0


def test_secrets_never_reach_logs_or_bodies(serve, make_store, image_host, http, caplog) -> None:  # type: ignore[no-untyped-def]
    password = "basic-auth-password-XYZ"
    live = serve(make_store("embedded"), basic_auth_user="ls", basic_auth_pass=password)
    auth = ("ls", password)
    png = synthetic.encode_png(synthetic.object_image(np.random.default_rng(1), "red", "circle", 64))
    bodies = []
    with caplog.at_level(logging.DEBUG):
        bodies.append(http.post(f"{live.url}/setup", auth=auth, json={
            "project": "1.1", "schema": CONFIG, "hostname": image_host.url, "access_token": LS_TOKEN}).text)
        bodies.append(http.post(f"{live.url}/predict", auth=auth, json={"tasks": [
            {"id": 1, "data": {"image": image_host.add("/data/upload/a.png", png)}},
            {"id": 2, "data": {"image": f"http://nowhere.invalid/?token={LS_TOKEN}"}}], "project": "1.1"}).text)
        bodies.append(http.post(f"{live.url}/setup", auth=auth, json={"project": "1.1", "schema": "<View",
                                                                       "access_token": LS_TOKEN}).text)
        bodies.append(http.post(f"{live.url}/setup", auth=auth, json={"project": "1.1", "schema": 5,
                                                                       "access_token": LS_TOKEN}).text)
        bodies.append(http.get(f"{live.url}/health", auth=("ls", "wrong-" + password)).text)
        bodies.append(http.post(f"{live.url}/webhook", auth=auth, json={"action": "ANNOTATION_CREATED",
                                                                         "project": {"id": 1},
                                                                         "annotation": {"id": LS_TOKEN}}).text)
    text = caplog.text + "".join(bodies)
    for secret in (LS_TOKEN, password, base64.b64encode(f"ls:{password}".encode()).decode()):
        assert secret not in text


def test_oversized_images_and_configs_are_refused(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"), max_image_bytes=50_000)
    rng = np.random.default_rng(2)
    big = synthetic.encode_png(synthetic.to_pil(synthetic.background(rng, 600, 600)))  # noisy: >> 50 kB as PNG
    small = synthetic.encode_png(synthetic.object_image(rng, "blue", "square", 64))
    http.post(f"{live.url}/setup", json={"project": "1.1", "schema": CONFIG, "hostname": image_host.url,
                                         "access_token": LS_TOKEN}).raise_for_status()
    tasks = [{"id": 1, "data": {"image": image_host.add("/data/upload/big.png", big)}},
             {"id": 2, "data": {"image": image_host.add("/data/upload/small.png", small)}},
             {"id": 3, "data": {"image": "data:image/png;base64," + base64.b64encode(big).decode()}}]
    res = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    assert res[0]["result"] == [] and res[2]["result"] == [] and res[1]["result"]
    many = "".join(f'<Choice value="label {i}"/>' for i in range(3000))
    resp = http.post(f"{live.url}/setup", json={"project": "1.1", "schema": f'<View><Image name="i" value="$i"/>'
                                                f'<Choices name="c" toName="i">{many}</Choices></View>'})
    assert resp.status_code == 400 and "more than 2000 labels" in resp.json()["detail"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                             children, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_converters_never_crash_on_any_json(value: object) -> None:
    ls_format.drawn_regions(value)
    ls_format.drawn_regions({"context": {"result": value}})
    ls_format.annotated_regions(value)
    if isinstance(value, dict):
        ls_format.deleted_annotation_ids(value)
    for call in (lambda: ls_format.annotation_event(value, value, {"id": 1}),
                 lambda: ls_format.annotation_event({"id": 1, "result": value}, value, value),
                 lambda: ls_format.project_id(value), lambda: ls_format.task_image_ref(value, "image")):
        try:
            call()
        except InvalidRequestError:
            pass
        except ls_format.TaskDataError:
            pass
