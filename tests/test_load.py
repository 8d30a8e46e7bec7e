"""A bounded load test on loopback: 50 concurrent /predict batches and a stream of webhooks, zero errors.

CI runs it for 20 s; `CLIPLABEL_LOAD_SECONDS=300 python -m pytest tests/test_load.py -s` is the longer variant.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import requests

from tests import synthetic
from tests.support import LS_TOKEN

pytestmark = pytest.mark.slow
CLIENTS = 50
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
          + "".join(f'<Choice value="{c} {s}"/>' for c in synthetic.COLOURS for s in synthetic.SHAPES)
          + "</Choices></View>")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_concurrent_predictions_and_webhooks(serve, make_store, image_host) -> None:  # type: ignore[no-untyped-def]
    seconds = float(os.environ.get("CLIPLABEL_LOAD_SECONDS", "20"))
    live = serve(make_store("embedded"), fetch_workers=16)
    rng = np.random.default_rng(0)
    paths = [image_host.add(f"/data/upload/l{i}.png", synthetic.encode_png(
        synthetic.random_object_image(rng, 64, 0.0)[0].resize((128, 128)))) for i in range(60)]
    requests.post(f"{live.url}/setup", json={"project": "7.1", "schema": CONFIG, "hostname": image_host.url,
                                             "access_token": LS_TOKEN}, timeout=10).raise_for_status()
    requests.post(f"{live.url}/predict", json={"tasks": [{"id": i, "data": {"image": p}} for i, p in enumerate(paths)],
                                               "project": "7.1"}, timeout=120).raise_for_status()  # warm
    rss_start = _rss_mb()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        with requests.Session() as session:
            run_client(session, np.random.default_rng(k))

    def run_client(session: requests.Session, local: np.random.Generator) -> None:
        while time.monotonic() < end:
            batch = [{"id": int(i), "data": {"image": paths[int(i)]}} for i in local.integers(0, len(paths), 8)]
            started = time.perf_counter()
            try:
                resp = session.post(f"{live.url}/predict", json={"tasks": batch, "project": "7.1"}, timeout=60)
                ok = resp.status_code == 200 and len(resp.json()["results"]) == 8
            except requests.RequestException as exc:
                ok, resp = False, exc  # type: ignore[assignment]
            with lock:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors.append(str(resp)[:200])

    def webhooks() -> None:
        with requests.Session() as session:
            run_webhooks(session)

    def run_webhooks(session: requests.Session) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            task = {"id": n % 60, "data": {"image": paths[n % 60]}}
            payload = {"action": "ANNOTATION_UPDATED" if n % 3 else "ANNOTATION_CREATED", "project": {"id": 7},
                       "task": task, "annotation": {"id": n % 25, "task": task["id"], "result": [
                           {"from_name": "c", "to_name": "image", "type": "choices",
                            "value": {"choices": ["red circle"]}}]}}
            resp = session.post(f"{live.url}/webhook", json=payload, timeout=10)
            if resp.status_code != 200:
                with lock:
                    errors.append(f"webhook {resp.status_code}")
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)] + [threading.Thread(target=webhooks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    rss_growth = _rss_mb() - rss_start
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"\nload: {len(latencies)} /predict batches of 8 from {CLIENTS} clients in {seconds:.0f}s, "
          f"{len(errors)} errors, p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, RSS +{rss_growth:.0f} MB")
    assert not errors, errors[:5]
    assert len(latencies) >= CLIENTS
    assert rss_growth < 500
