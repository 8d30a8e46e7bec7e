"""The real HTTP app with the real tiny CLIP, a real image host and both real stores."""

from __future__ import annotations

import base64
import logging
import time

import numpy as np
import pytest
import requests

from tests import synthetic
from tests.support import LS_TOKEN

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def _objects(n: int, seed: int) -> list[tuple[bytes, str]]:
    """n clearly drawn shapes as PNG bytes, upscaled like real uploads, with their class."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img, colour, shape = synthetic.random_object_image(rng, 64, background_rate=0.0)
        out.append((synthetic.encode_png(img.resize((128, 128))), f"{colour} {shape}"))
    return out


def _setup(http: requests.Session, url: str, host_url: str, config: str = CONFIG, project: str = "1.1795816392",
           token: str = LS_TOKEN) -> str:
    resp = http.post(f"{url}/setup", json={"project": project, "schema": config, "hostname": host_url,
                                           "access_token": token, "extra_params": None}, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["model_version"])


def _metrics(http: requests.Session, url: str) -> dict[str, float]:
    return http.get(f"{url}/metrics", timeout=5).json()  # type: ignore[no-any-return]


def test_setup_then_predict_labels_a_batch_correctly(serve, make_store, store_kind, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store(store_kind))
    images = _objects(24, seed=11)
    tasks = [{"id": i + 1, "data": {"image": image_host.add(f"/data/upload/1/{i}.png", png)}}
             for i, (png, _) in enumerate(images)]
    started = time.perf_counter()
    version = _setup(http, live.url, image_host.url)
    assert time.perf_counter() - started < 3.0  # Label Studio's /setup timeout
    resp = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1795816392", "label_config": CONFIG,
                                                  "params": {"login": None, "password": None, "context": None}})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(tasks)
    correct = 0
    for (_, truth), res in zip(images, results):
        assert res["model_version"] == version
        (item,) = res["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == ("label", "image", "choices")
        assert 0.0 <= item["score"] <= 1.0 and res["score"] == item["score"]
        correct += item["value"]["choices"] == [truth]
    assert correct >= 22, f"{correct}/24 correct"
    # Calibrated: a clearly drawn shape gets a confident score, and scores are not all saturated at 1.
    scores = [r["score"] for r in results]
    assert np.mean(scores) > 0.7 and min(scores) < 0.999


def test_bad_tasks_get_empty_results_while_the_batch_is_predicted(serve, make_store, image_host, http,  # type: ignore[no-untyped-def]
                                                                 caplog) -> None:
    live = serve(make_store("embedded"))
    (png, truth), = _objects(1, seed=3)
    good = image_host.add("/data/upload/1/good.png", png)
    image_host.add("/data/upload/1/broken.png", b"\x89PNG\r\n\x1a\n not really")
    tasks = [
        {"id": 1, "data": {"image": good}},
        {"id": 2, "data": {"image": "/data/upload/1/broken.png"}},          # broken image
        {"id": 3, "data": {"picture": good}},                                # missing data key
        {"id": 4, "data": {"image": "http://unknown.invalid/a.png"}},        # host not allowed
        {"id": 5, "data": {"image": "/data/upload/1/missing.png"}},          # 404
        {"id": 6, "data": {"image": 42}},                                    # not a string
        "not a task",                                                        # not even an object
        {"id": 8, "data": {"image": good}},
    ]
    version = _setup(http, live.url, image_host.url)
    with caplog.at_level(logging.WARNING):
        resp = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1795816392"})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 8
    for i in (0, 7):
        assert results[i]["result"][0]["value"]["choices"] == [truth]
    for i in range(1, 7):
        assert results[i] == {"model_version": version, "score": 0.0, "result": []}
    assert "host 'unknown.invalid' is neither" in caplog.text
    # the token never reaches a log line
    assert LS_TOKEN not in caplog.text


def test_the_same_images_are_encoded_once(serve, make_store, store_kind, image_host, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    live = serve(store)
    tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/{i}.png", png)}}
             for i, (png, _) in enumerate(_objects(6, seed=5))]
    # the same bytes under a second URL are the same image
    tasks.append({"id": 99, "data": {"image": image_host.add("/data/upload/copy.png", image_host.files["/data/upload/0.png"])}})
    _setup(http, live.url, image_host.url)
    body = {"tasks": tasks, "project": "1.1"}
    first = http.post(f"{live.url}/predict", json=body).json()
    assert _metrics(http, live.url)["images_encoded"] == 6
    second = http.post(f"{live.url}/predict", json=body).json()
    after = _metrics(http, live.url)
    assert after["images_encoded"] == 6 and after["image_cache_hits"] == 6
    assert first == second
    # a new process on the same store (a restart) hits the cache too
    live.stop()
    live2 = serve(store)
    assert http.post(f"{live2.url}/predict", json=body).json() == first
    assert _metrics(http, live2.url).get("images_encoded", 0) == 0


def test_model_version_is_stable_across_calls_and_restarts(serve, make_store, store_kind, image_host, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store(store_kind)
    live = serve(store)
    v1 = _setup(http, live.url, image_host.url)
    assert v1 == _setup(http, live.url, image_host.url) and v1.endswith("-r0")
    live.stop()
    live2 = serve(make_store(store_kind))
    assert _setup(http, live2.url, image_host.url) == v1
    assert http.get(f"{live2.url}/versions", params={"project": "1"}).json() == {"versions": [v1]}


def test_health_is_fast_and_reports_the_model(serve, make_store, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    started = time.perf_counter()
    resp = http.get(f"{live.url}/health", timeout=1)
    assert time.perf_counter() - started < 1.0
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "UP" and body["store"] == "embedded"


def test_multiple_choice_and_aliases(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    config = ('<View><Image name="image" value="$image"/>'
              '<Choices name="colour" toName="image" choice="multiple">'
              + "".join(f'<Choice value="{c.upper()}" predicted_values="{c}"/>' for c in synthetic.COLOURS)
              + '</Choices><Choices name="shape" toName="image">'
              + "".join(f'<Choice value="{s}" alias="Type {i}"/>' for i, s in enumerate(synthetic.SHAPES))
              + "</Choices></View>")
    objects = _objects(8, seed=21)
    tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/{i}.png", png)}}
             for i, (png, _) in enumerate(objects)]
    _setup(http, live.url, image_host.url, config=config)
    results = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    for (_, truth), res in zip(objects, results):
        colour, shape = truth.split()
        by_name = {r["from_name"]: r["value"]["choices"] for r in res["result"]}
        assert by_name["colour"][0] == colour.upper()
        assert by_name["shape"] == [f"Type {synthetic.SHAPES.index(shape)}"]


def test_controls_not_handled_yet_get_empty_results(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    config = ('<View><Image name="image" value="$image"/><RectangleLabels name="bbox" toName="image">'
              '<Label value="Circle"/></RectangleLabels></View>')
    version = _setup(http, live.url, image_host.url, config=config)
    resp = http.post(f"{live.url}/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/x.png"}}],
                                                  "project": "1.1"})
    assert resp.json() == {"results": [{"model_version": version, "score": 0.0, "result": []}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "error", "detail"),
    [
        ("/predict", b"{not json", 400, "invalid_json", "not valid JSON"),
        ("/setup", b"[]", 422, "invalid_request", ""),
        ("/predict", b'{"tasks": "nope"}', 422, "invalid_request", "tasks"),
        ("/predict", b'{"tasks": []}', 400, "invalid_request", "label_config"),
        ("/setup", b'{"project": "1.1", "schema": "<View><Image"}', 400, "invalid_label_config", "not valid XML"),
        ("/setup", b'{"project": "1.1", "schema": "<View><Text name=\\"t\\" value=\\"$t\\"/></View>"}', 400,
         "invalid_label_config", "no <Image"),
        ("/setup", b'{"project": "abc", "schema": "<View/>"}', 400, "invalid_request", "project"),
        ("/predict", b'{"tasks": [], "project": "9.1"}', 400, "invalid_request", "/setup"),
        ("/webhook", b'{"no_action": 1}', 422, "invalid_request", "action"),
        ("/nope", b"{}", 404, "not_found", ""),
    ],
)
def test_client_mistakes_get_4xx_json(serve, make_store, http, path, body, status, error, detail) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    resp = http.post(f"{live.url}{path}", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    payload = resp.json()
    assert payload["error"] == error and detail in payload["detail"]
    assert "Traceback" not in resp.text


def test_body_size_is_capped(serve, make_store, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"), max_body_bytes=4096)
    resp = http.post(f"{live.url}/predict", data=b"x" * 10_000, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"] == "body_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1000
    resp = http.post(f"{live.url}/predict", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413


def test_basic_auth_guards_every_endpoint(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"), basic_auth_user="ls", basic_auth_pass="s3cret-pass")
    for method, path in [("get", "/health"), ("post", "/setup"), ("post", "/predict"), ("get", "/webhook"),
                         ("get", "/versions"), ("get", "/metrics"), ("get", "/jobs?project=1")]:
        resp = getattr(http, method)(f"{live.url}{path}", json={})
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    # Label Studio sends annotation events without the header: POST /webhook takes those (the worker confirms each
    # against Label Studio's API, tests/services/feedback/test_confirm.py), and nothing else
    for action, status in [("ANNOTATION_CREATED", 200), ("ANNOTATIONS_DELETED", 200), ("START_TRAINING", 401),
                           ("TASKS_CREATED", 401)]:
        resp = http.post(f"{live.url}/webhook", json={"action": action, "project": {"id": 1},
                                                      "annotation": {"id": 1}, "annotations": [{"id": 1}]})
        assert resp.status_code == status, (action, resp.text)
    assert http.get(f"{live.url}/health", auth=("ls", "wrong")).status_code == 401
    assert http.get(f"{live.url}/health", auth=("ls", "s3cret-pass")).status_code == 200
    bad = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
    assert http.get(f"{live.url}/health", headers=bad).status_code == 401


def test_personal_access_token_is_refreshed_to_bearer(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    pat = f"{header}.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2ln"
    image_host.refresh_token = pat
    live = serve(make_store("embedded"), label_studio_url=image_host.url, label_studio_api_key=pat)
    (png, truth), = _objects(1, seed=8)
    tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/{i}.png", png)}} for i in range(3)]
    _setup(http, live.url, "http://ignored.example", token="ignored")  # settings win over /setup's values
    results = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    assert all(r["result"][0]["value"]["choices"] == [truth] for r in results)
    # one refresh served all three downloads
    assert image_host.requests_seen.count(("POST", "/api/token/refresh/")) == 1


def test_redirects_are_rechecked(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    image_host.redirects["/data/upload/r.png"] = "http://127.0.0.2:1/secret.png"
    _setup(http, live.url, image_host.url)
    res = http.post(f"{live.url}/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/r.png"}}],
                                                 "project": "1.1"}).json()["results"]
    assert res[0]["result"] == []


def test_data_uri_and_local_files_root(serve, make_store, image_host, http, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (png, truth), = _objects(1, seed=9)
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png)
    (tmp_path / "outside.png").write_bytes(png)
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    live = serve(make_store("embedded"), local_files_root=root)
    _setup(http, live.url, image_host.url)
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=sub/a.png"}},
             {"id": 2, "data": {"image": data_uri}},
             {"id": 3, "data": {"image": "/data/local-files/?d=link.png"}},        # symlink out of the root
             {"id": 4, "data": {"image": "/data/local-files/?d=../outside.png"}}]
    results = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    assert [r["result"][0]["value"]["choices"] if r["result"] else None for r in results] == [
        [truth], [truth], None, None]
    assert not image_host.requests_seen  # nothing went over HTTP


def test_setup_prepares_prompt_vectors_in_the_background(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    _setup(http, live.url, image_host.url)
    n_prompts = len(CLASSES) * 16  # 24 classes × the 16 default templates
    deadline = time.monotonic() + 30
    while _metrics(http, live.url).get("texts_encoded", 0) < n_prompts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metrics(http, live.url)["texts_encoded"] == n_prompts
    (png, truth), = _objects(1, seed=4)
    tasks = [{"id": 1, "data": {"image": image_host.add("/data/upload/w.png", png)}}]
    res = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    assert res[0]["result"][0]["value"]["choices"] == [truth]
    assert _metrics(http, live.url)["texts_encoded"] == n_prompts  # nothing encoded twice
