"""Webhook → feedback → retrained head → new model version, through the real HTTP app."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests import synthetic
from tests.support import LS_TOKEN

# The shifted case: names that say nothing about the look, so zero-shot is near chance.
SHIFTED = {"Type A": ("red", "circle"), "Type B": ("blue", "square"), "Type C": ("green", "triangle"),
           "Type D": ("yellow", "star")}
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
          + "".join(f'<Choice value="{k}"/>' for k in SHIFTED) + "</Choices></View>")
PROJECT = {"id": 4, "title": "shifted"}


def _tasks(image_host, n_per_class: int, seed: int, first_id: int) -> list[tuple[dict, str]]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_per_class):
        for label, (colour, shape) in SHIFTED.items():
            tid = first_id + len(out)
            png = synthetic.encode_png(synthetic.object_image(rng, colour, shape, 64).resize((96, 96)))
            out.append(({"id": tid, "data": {"image": image_host.add(f"/data/upload/4/{tid}.png", png)}}, label))
    return out


def _annotation(aid: int, task: dict, label: str, action: str = "ANNOTATION_CREATED") -> dict:
    return {"action": action, "project": PROJECT, "task": task,
            "annotation": {"id": aid, "task": task["id"], "project": 4, "was_cancelled": False, "ground_truth": False,
                           "result": [{"id": f"r{aid}", "from_name": "kind", "to_name": "image", "type": "choices",
                                       "value": {"choices": [label]}}]}}


def _accuracy(http, url: str, tasks: list[tuple[dict, str]]) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    res = http.post(f"{url}/predict", json={"tasks": [t for t, _ in tasks], "project": "4.1"}).json()["results"]
    hits = [r["result"][0]["value"]["choices"] == [label] for r, (_, label) in zip(res, tasks)]
    return float(np.mean(hits)), res[0]["model_version"]


def _wait_for_version(http, url: str, name: str, timeout_s: float = 60) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        versions = http.get(f"{url}/versions", params={"project": "4"}).json()["versions"]
        if name in versions:
            return versions  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"{name} did not appear; versions: {versions}")


def _setup(http, url: str, host_url: str) -> str:  # type: ignore[no-untyped-def]
    resp = http.post(f"{url}/setup", json={"project": "4.1", "schema": CONFIG, "hostname": host_url,
                                           "access_token": LS_TOKEN})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["model_version"])


def test_feedback_fixes_the_shifted_case_on_the_embedded_store(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    live = serve(store, retrain_every=20)
    r0 = _setup(http, live.url, image_host.url)
    held_out = _tasks(image_host, 25, seed=2, first_id=1000)
    before, version = _accuracy(http, live.url, held_out)
    assert version == r0 and before < 0.5
    train = _tasks(image_host, 5, seed=1, first_id=1)  # 5 labelled examples per class
    latencies = []
    for aid, (task, label) in enumerate(train, start=1):
        started = time.perf_counter()
        resp = http.post(f"{live.url}/webhook", json=image_host.annotate(_annotation(aid, task, label)))
        latencies.append(time.perf_counter() - started)
        assert resp.status_code == 200 and resp.json()["status"] == "queued", resp.text
    assert max(latencies) < 0.1  # record and enqueue only
    r1 = r0.replace("-r0", "-r1")
    assert _wait_for_version(http, live.url, r1) == [r0, r1]
    after, version = _accuracy(http, live.url, held_out)
    assert version == r1 and after >= before + 0.25 and after >= 0.9, (before, after)
    assert _setup(http, live.url, image_host.url) == r1
    # UPDATED three times counts once; DELETED removes the example
    task, label = train[0]
    for _ in range(3):
        http.post(f"{live.url}/webhook", json=image_host.annotate(_annotation(1, task, label, "ANNOTATION_UPDATED")))
    del image_host.annotations[2]  # deleted in Label Studio
    http.post(f"{live.url}/webhook", json={"action": "ANNOTATIONS_DELETED", "project": PROJECT,
                                           "annotations": [{"id": 2}]})
    deadline = time.monotonic() + 30
    while store.pending_events(1) and time.monotonic() < deadline:
        time.sleep(0.1)
    ids = [e.annotation_id for e in store.list_feedback("4")]
    assert sorted(ids) == [1] + list(range(3, 21))
    # cancelled annotations teach nothing, unknown actions are acknowledged
    cancelled = _annotation(99, task, label)
    cancelled["annotation"]["was_cancelled"] = True
    assert http.post(f"{live.url}/webhook", json=cancelled).status_code == 200
    assert http.post(f"{live.url}/webhook", json={"action": "TASKS_CREATED", "project": PROJECT}).json()[
        "status"] == "ignored"


def test_webhooks_to_a_real_rq_worker_and_a_second_api_process(serve, make_store, image_host, http, tiny_model_dir,  # type: ignore[no-untyped-def]
                                                               redis_url, redis_prefix, tmp_path: Path) -> None:
    store = make_store("redis")
    settings = {"redis_url": redis_url, "redis_prefix": redis_prefix, "retrain_every": 20}
    api_a = serve(store, **settings)
    api_b = serve(make_store("redis"), **settings)  # another API process on the same Redis
    r0 = _setup(http, api_a.url, image_host.url)
    env = {**os.environ, "CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_REDIS_URL": redis_url,
           "CLIPLABEL_REDIS_PREFIX": redis_prefix, "CLIPLABEL_DATA_DIR": str(tmp_path / "w"),
           "CLIPLABEL_RETRAIN_EVERY": "20"}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "cliplabel.cli", "worker"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        held_out = _tasks(image_host, 10, seed=2, first_id=1000)
        before, _ = _accuracy(http, api_b.url, held_out)
        for aid, (task, label) in enumerate(_tasks(image_host, 5, seed=1, first_id=1), start=1):
            assert http.post(f"{api_a.url}/webhook",
                             json=image_host.annotate(_annotation(aid, task, label))).status_code == 200
        r1 = r0.replace("-r0", "-r1")
        _wait_for_version(http, api_b.url, r1, timeout_s=120)
        # the other API process serves the new version without a restart
        after, version = _accuracy(http, api_b.url, held_out)
        assert version == r1 and after >= before + 0.25, (before, after)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def test_start_training_fetches_annotations_from_label_studio(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    import json

    live = serve(make_store("embedded"), retrain_every=1000)
    r0 = _setup(http, live.url, image_host.url)
    held_out = _tasks(image_host, 10, seed=2, first_id=1000)
    before, _ = _accuracy(http, live.url, held_out)
    exported = []
    for aid, (task, label) in enumerate(_tasks(image_host, 5, seed=1, first_id=1), start=1):
        ann = _annotation(aid, task, label)["annotation"]
        exported.append({**task, "annotations": [ann]})
    exported.append({"id": 999, "data": {"image": "/data/upload/4/missing.png"},
                     "annotations": [_annotation(500, {"id": 999, "data": {}}, "Type A")["annotation"]]})
    image_host.add("/api/projects/4/export?exportType=JSON", json.dumps(exported).encode())
    resp = http.post(f"{live.url}/webhook", json={"action": "START_TRAINING", "project": PROJECT})
    assert resp.json()["status"] == "queued"
    _wait_for_version(http, live.url, r0.replace("-r0", "-r1"))
    after, _ = _accuracy(http, live.url, held_out)
    assert after >= before + 0.25, (before, after)
    assert ("GET", "/api/projects/4/export?exportType=JSON") in image_host.requests_seen
