"""Faults: Redis stopped and restarted under a running backend."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from backend.store import open_store
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
