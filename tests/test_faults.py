"""Faults: Redis stopped and restarted under a running backend."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from cliplabel.store import open_store
from tests import synthetic
from tests.support import LS_TOKEN, free_port

pytestmark = pytest.mark.slow
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="red circle"/>'
          '<Choice value="blue square"/></Choices></View>')


def _start_redis(port: int, tmp: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def test_redis_stopped_and_restarted(serve, image_host, http, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _start_redis(port, tmp_path)
    store = open_store(url, tmp_path)
    try:
        live = serve(store, redis_url=url)
        http.post(f"{live.url}/setup", json={"project": "1.1", "schema": CONFIG, "hostname": image_host.url,
                                             "access_token": LS_TOKEN}).raise_for_status()
        png = synthetic.encode_png(synthetic.object_image(np.random.default_rng(3), "red", "circle", 64))
        tasks = [{"id": 1, "data": {"image": image_host.add("/data/upload/a.png", png)}}]
        first = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json()
        assert first["results"][0]["result"][0]["value"]["choices"] == ["red circle"]
        server.terminate()
        server.wait(timeout=10)
        # Redis is gone: a clear 503, never a 500 or a silent success
        for path, body in (("/predict", {"tasks": tasks, "project": "1.1"}),
                           ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": tasks[0],
                                         "annotation": {"id": 1, "result": []}})):
            resp = http.post(f"{live.url}{path}", json=body)
            assert resp.status_code == 503 and resp.json()["error"] == "store_unavailable", resp.text
        assert http.get(f"{live.url}/health").status_code == 200
        # Redis is back (with its append-only file): the same backend serves again, without a restart
        server = _start_redis(port, tmp_path)
        assert http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}).json() == first
        resp = http.post(f"{live.url}/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                                      "task": tasks[0], "annotation": {"id": 1, "result": []}})
        assert resp.status_code == 200 and resp.json()["status"] == "queued"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_worker_killed_mid_run_loses_nothing(serve, make_store, image_host, http, tiny_model_dir, redis_url,  # type: ignore[no-untyped-def]
                                               redis_prefix, tmp_path) -> None:
    import os
    import signal
    import sys

    store = make_store("redis")
    live = serve(store, redis_url=redis_url, redis_prefix=redis_prefix, retrain_every=5)
    config = ('<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
              '<Choice value="Type A"/><Choice value="Type B"/></Choices></View>')
    http.post(f"{live.url}/setup", json={"project": "5.1", "schema": config, "hostname": image_host.url,
                                         "access_token": LS_TOKEN}).raise_for_status()
    rng = np.random.default_rng(4)
    tasks = []
    for i in range(6):
        colour, shape, label = ("red", "circle", "Type A") if i % 2 == 0 else ("blue", "square", "Type B")
        png = synthetic.encode_png(synthetic.object_image(rng, colour, shape, 64))
        tasks.append(({"id": i + 1, "data": {"image": image_host.add(f"/data/upload/k{i}.png", png)}}, label))
    env = {**os.environ, "CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_REDIS_URL": redis_url,
           "CLIPLABEL_REDIS_PREFIX": redis_prefix, "CLIPLABEL_DATA_DIR": str(tmp_path / "w"),
           "CLIPLABEL_RETRAIN_EVERY": "5"}

    def worker(name: str) -> subprocess.Popen:  # type: ignore[type-arg]
        with (tmp_path / f"{name}.log").open("wb") as log:
            return subprocess.Popen([sys.executable, "-m", "cliplabel.cli", "worker"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def annotate(aid: int, task: dict, label: str) -> None:
        http.post(f"{live.url}/webhook", json=image_host.annotate({
            "action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": task,
            "annotation": {"id": aid, "task": task["id"], "result": [
                {"from_name": "kind", "to_name": "image", "type": "choices",
                 "value": {"choices": [label]}}]}})).raise_for_status()

    image_host.delay_s = 1.0  # every image download takes a second: the worker is mid-run when it dies
    first = worker("a")
    for aid, (task, label) in enumerate(tasks[:5], start=1):
        annotate(aid, task, label)
    deadline = time.monotonic() + 60
    while not any(p.startswith("/data/upload/k") for _, p in image_host.requests_seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    versions = http.get(f"{live.url}/versions", params={"project": "5"}).json()["versions"]
    assert len(versions) == 1 and versions[0].endswith("-r0")  # the current version keeps serving
    assert store.pending_events(10)  # nothing acknowledged that was not done
    image_host.delay_s = 0.0
    second = worker("b")
    try:
        annotate(6, *tasks[5])  # the next event wakes a worker
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            versions = http.get(f"{live.url}/versions", params={"project": "5"}).json()["versions"]
            if len(versions) == 2 and not store.pending_events(1):
                break
            time.sleep(0.3)
        assert versions[-1].endswith("-r1"), versions
        # each annotation is recorded once, whatever was processed twice
        assert sorted(e.annotation_id for e in store.list_feedback("5")) == [1, 2, 3, 4, 5, 6]
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
