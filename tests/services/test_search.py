"""Search by text and by example, near-duplicates and placements, through the real app with the real tiny CLIP.

A real HTTP host plays Label Studio: it serves the images and the project's task list (`GET /api/tasks`). The tasks
are predicted once (`/predict` caches their embeddings); search then reads those embeddings back, downloading nothing.
"""

from __future__ import annotations

import io
import urllib.parse
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from cliplabel.services.review import place
from tests import synthetic
from tests.support import LS_TOKEN, ImageHost

KINDS = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")]
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c} {s}"/>' for c, s in KINDS) + "</Choices></View>")
PROJECT = 5
PER_KIND = 4


def _noised(png: bytes, rng: np.random.Generator) -> bytes:
    """The same picture with faint pixel noise: other bytes, nearly the same image (a re-encoded copy)."""
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
    return synthetic.encode_png(synthetic.to_pil(arr + rng.normal(0, 2.0, arr.shape)))


def _project(host: ImageHost) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """16 tasks (4 of each kind), then an exact copy of task 1 (task 17) and a noised copy of task 2 (task 18)."""
    rng = np.random.default_rng(17)
    pngs, kinds = [], {}
    for i in range(PER_KIND * len(KINDS)):
        colour, shape = KINDS[i % len(KINDS)]
        pngs.append(synthetic.encode_png(synthetic.object_image(rng, colour, shape, 64).resize((128, 128))))
        kinds[i + 1] = f"{colour} {shape}"
    pngs += [pngs[0], _noised(pngs[1], rng)]
    kinds.update({17: kinds[1], 18: kinds[2]})
    tasks = [{"id": i + 1, "data": {"image": host.add(f"/data/upload/{PROJECT}/{i}.png", png)},
              "total_annotations": 0, "cancelled_annotations": 0} for i, png in enumerate(pngs)]
    answer = host.api_answer

    def with_task_list(path: str) -> Any:  # Label Studio's paged task list of the project
        url = urllib.parse.urlsplit(path)
        params = urllib.parse.parse_qs(url.query)
        if url.path == "/api/tasks" and "query" not in params and params.get("project") == [str(PROJECT)]:
            page, size = int(params["page"][0]), int(params["page_size"][0])
            return {"tasks": tasks[(page - 1) * size:page * size]}
        return answer(path)

    host.api_answer = with_task_list  # type: ignore[method-assign]
    return tasks, kinds


def test_search_by_text_and_example_and_duplicates(serve, make_store, store_kind, image_host: ImageHost,  # type: ignore[no-untyped-def]
                                                   http: requests.Session) -> None:
    live = serve(make_store(store_kind))
    tasks, kinds = _project(image_host)
    project = f"{PROJECT}.1795816392"

    # before anything was predicted: nothing is indexed, every task is missing (and search says so)
    resp = http.post(f"{live.url}/setup", json={"project": project, "schema": CONFIG, "hostname": image_host.url,
                                                "access_token": LS_TOKEN}, timeout=10)
    assert resp.status_code == 200, resp.text
    empty = http.get(f"{live.url}/search", params={"project": PROJECT, "q": "red circle"}, timeout=30).json()
    assert (empty["indexed"], empty["missing"], empty["results"]) == (0, len(tasks), [])

    resp = http.post(f"{live.url}/predict", json={"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks],
                                                  "project": project}, timeout=120)
    assert resp.status_code == 200, resp.text
    downloads = len(image_host.requests_seen)

    # text: for each kind, its 4 (or 5 with a copy) tasks come first
    for colour, shape in KINDS:
        kind = f"{colour} {shape}"
        want = {t for t, k in kinds.items() if k == kind}
        got = http.get(f"{live.url}/search", params={"project": PROJECT, "q": kind, "k": len(want)}, timeout=30)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["indexed"] == len(tasks) and body["missing"] == 0
        ranked = [r["task"] for r in body["results"]]
        assert set(ranked) == want, f"{kind}: {ranked} ({[kinds[t] for t in ranked]})"
        scores = [r["score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)

    # by example: the exact copy first (cosine 1), then its kind; the task itself is never listed
    body = http.get(f"{live.url}/search", params={"project": PROJECT, "task": 1, "k": 4}, timeout=30).json()
    ranked = [r["task"] for r in body["results"]]
    assert ranked[0] == 17 and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert 1 not in ranked and all(kinds[t] == kinds[1] for t in ranked)
    body = http.get(f"{live.url}/search", params={"project": PROJECT, "task": 2, "k": 1}, timeout=30).json()
    assert [r["task"] for r in body["results"]] == [18]  # the noised copy is task 2's nearest

    # near-duplicates: at cosine 1 only the byte-identical pair; at 0.99 the noised copy joins its original too
    exact = http.get(f"{live.url}/duplicates", params={"project": PROJECT, "threshold": 1.0}, timeout=30).json()
    assert exact["groups"] == [[1, 17]]
    near = http.get(f"{live.url}/duplicates", params={"project": PROJECT, "threshold": 0.99}, timeout=30).json()
    # (two drawings of one kind may be that close too: a group never mixes kinds)
    assert any({1, 17} <= set(g) for g in near["groups"]) and any({2, 18} <= set(g) for g in near["groups"])
    assert all(len({kinds[t] for t in g}) == 1 for g in near["groups"])  # no group mixes kinds
    # 8 searches, one task-list page each: no image was downloaded again
    assert image_host.requests_seen[downloads:] == [("GET", p) for _, p in image_host.requests_seen[downloads:]
                                                    if p.startswith("/api/tasks?")]
    assert len(image_host.requests_seen) - downloads == 8

    # placement (what bulk jobs and `review` store as cluster and neighbours): every task placed, the copy nearest
    services = live.server.config.app.state.services
    placement = place(services.search.index.load(PROJECT))
    assert set(placement.clusters) == set(kinds) and placement.n_clusters == 2  # k = round(√18 / 2)
    assert placement.neighbors[1][0] == 17 and placement.clusters[1] == placement.clusters[17]


@pytest.mark.parametrize(("params", "status", "error"), [
    ({"project": PROJECT}, 400, "invalid_request"),  # neither q nor task
    ({"project": PROJECT, "q": "red", "task": 1}, 400, "invalid_request"),  # both
    ({"project": PROJECT, "q": "  "}, 400, "invalid_request"),  # empty text
    ({"project": "abc", "q": "red"}, 400, "invalid_request"),  # not a project id
    ({"project": 99, "q": "red"}, 400, "invalid_request"),  # a project without Label Studio URL and key
    ({"project": PROJECT, "q": "red", "k": 0}, 422, "invalid_request"),
    ({"project": PROJECT, "task": "x"}, 422, "invalid_request"),
    ({"project": PROJECT, "task": 12345}, 404, "not_found"),  # not in the project (or never encoded)
])
def test_bad_search_requests_answer_4xx(params: dict[str, Any], status: int, error: str, serve, make_store,  # type: ignore[no-untyped-def]
                                        image_host: ImageHost, http: requests.Session) -> None:
    live = serve(make_store("embedded"))
    _project(image_host)
    http.post(f"{live.url}/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": image_host.url,
                                         "access_token": LS_TOKEN}, timeout=10)
    resp = http.get(f"{live.url}/search", params=params, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error and resp.json()["detail"]


@pytest.mark.parametrize("threshold", ["0", "1.5", "x"])
def test_bad_duplicate_thresholds_answer_422(threshold: str, serve, make_store, http: requests.Session) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    resp = http.get(f"{live.url}/duplicates", params={"project": PROJECT, "threshold": threshold}, timeout=10)
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_request"


@pytest.mark.parametrize(("body", "status"), [
    ({"project": 99}, 400),  # no Label Studio URL and key for this project: nothing to set up
    ({"project": PROJECT, "sampling": "random"}, 422),  # not a field of the request
    ({"project": PROJECT, "title": ""}, 422),  # a view needs a title
])
def test_bad_review_requests_answer_4xx(body: dict[str, Any], status: int, serve, make_store,  # type: ignore[no-untyped-def]
                                        http: requests.Session) -> None:
    live = serve(make_store("embedded"))
    resp = http.post(f"{live.url}/review", json=body, timeout=10)
    assert resp.status_code == status and resp.json()["error"] == "invalid_request" and resp.json()["detail"]
