"""`/webhook` latency: what Label Studio waits for when an annotation is saved (its webhook timeout is 1 s).

    python bench/bench_webhook.py                               # both stores, 3 repeats × 200 events, with retraining
    python bench/bench_webhook.py --stores redis --events 50 --repeats 1 --no-retrain   # a quick look

The real app on a real port (uvicorn in this process), the tiny CLIP, and a stand-in Label Studio (tests.support's
image host: it serves the task images and answers the annotation look-ups the worker confirms each event with).
Each event is a realistic `ANNOTATION_CREATED` payload (the full project, task and annotation objects, as Label
Studio 1.23 sends them), posted one after the other as fast as the answers come, a new task and annotation each.
Rows per store:
- events processed meanwhile: the feedback work (confirm the annotation, fetch its image, embed it) runs while the
  events arrive — in a thread of the API process on the embedded store, in one `cliplabel worker` process on Redis;
- retraining meanwhile: the same with `CLIPLABEL_RETRAIN_EVERY=20`, so the project's heads are retrained (and a new
  model version made) again and again while the events arrive; the "retrains" column counts the versions made
  before the last event of a repeat was answered.
Each repeat uses a new project; between repeats the queue is drained, so repeats do not pile up on one another.
Five warm-up events on another project (the first requests of a new app) are not counted. Redis: a key prefix of
this run alone (deleted at the end) on `--redis-url`, database 11 by default.
Prints one table per store: p50 / p95 / max in ms per repeat, as the median and min–max over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.api.app import create_app  # noqa: E402
from cliplabel.core.settings import Settings  # noqa: E402
from cliplabel.model.encoder import load_encoder  # noqa: E402
from cliplabel.store import Store, open_store  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402
from tests.support import LS_TOKEN, ImageHost, start_image_host, start_server  # noqa: E402

KINDS = {"Circle": ("red", "circle"), "Square": ("blue", "square"), "Triangle": ("green", "triangle"),
         "Star": ("yellow", "star")}
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{k}"/>' for k in KINDS) + "</Choices></View>")
TARGET_MS = 100.0
STAMP = "2026-12-04T18:00:00.000000Z"


@dataclass
class Row:
    label: str
    p50_ms: list[float]
    p95_ms: list[float]
    max_ms: list[float]
    retrains: list[int]
    drain_s: list[float]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Annotations:
    """Tasks with images on the stand-in Label Studio, and the webhook payloads Label Studio 1.23 would send."""

    def __init__(self, host: ImageHost, seed: int) -> None:
        self.host = host
        self.rng = np.random.default_rng(seed)
        self.next_id = 1

    def event(self, project: int) -> dict[str, Any]:
        n = self.next_id
        self.next_id += 1
        label = list(KINDS)[n % len(KINDS)]
        png = synthetic.encode_png(synthetic.object_image(self.rng, *KINDS[label], 64).resize((96, 96)))
        image = self.host.add(f"/data/upload/{project}/{n}.png", png)
        task = {"id": n, "data": {"image": image}, "meta": {}, "created_at": STAMP, "updated_at": STAMP,
                "is_labeled": True, "overlap": 1, "inner_id": n, "total_annotations": 1, "cancelled_annotations": 0,
                "total_predictions": 1, "comment_count": 0, "unresolved_comment_count": 0,
                "last_comment_updated_at": None, "project": project, "updated_by": 1, "file_upload": n,
                "comment_authors": []}
        annotation = {"id": n, "result": [{"id": f"r{n}", "type": "choices", "value": {"choices": [label]},
                                           "origin": "manual", "to_name": "image", "from_name": "label"}],
                      "created_username": " annotator@example.com, 1", "created_ago": "0 minutes",
                      "completed_by": 1, "was_cancelled": False, "ground_truth": False, "created_at": STAMP,
                      "updated_at": STAMP, "draft_created_at": None, "lead_time": 4.2, "import_id": None,
                      "last_action": None, "bulk_created": False, "task": n, "project": project, "updated_by": 1,
                      "parent_prediction": None, "parent_annotation": None, "last_created_by": None}
        project_obj = {"id": project, "title": f"webhook bench {project}", "description": "", "label_config": CONFIG,
                       "expert_instruction": "", "show_instruction": False, "show_skip_button": True,
                       "enable_empty_annotation": True, "show_annotation_history": False, "organization": 1,
                       "color": "#FFFFFF", "maximum_annotations": 1, "is_published": False, "model_version": "",
                       "is_draft": False, "created_by": {"id": 1, "first_name": "", "last_name": "",
                                                         "email": "annotator@example.com", "avatar": None},
                       "created_at": STAMP, "min_annotations_to_start_training": 0, "start_training_on_annotation_update": False,
                       "show_collab_predictions": True, "num_tasks_with_annotations": n,
                       "task_number": n, "useful_annotation_number": n, "ground_truth_number": 0,
                       "skipped_annotations_number": 0, "total_annotations_number": n, "total_predictions_number": 0,
                       "sampling": "Sequential sampling", "show_ground_truth_first": False,
                       "show_overlap_first": False, "overlap_cohort_percentage": 100, "task_data_login": None,
                       "task_data_password": None, "control_weights": {"label": {"overall": 1.0, "type": "Choices",
                                                                                 "labels": {k: 1.0 for k in KINDS}}},
                       "parsed_label_config": {"label": {"type": "Choices", "to_name": ["image"],
                                                         "inputs": [{"type": "Image", "value": "image"}],
                                                         "labels": list(KINDS)}},
                       "evaluate_predictions_automatically": False, "config_has_control_tags": True,
                       "skip_queue": "REQUEUE_FOR_OTHERS", "reveal_preannotations_interactively": False,
                       "pinned_at": None, "finished_task_number": n, "queue_total": 0, "queue_done": n}
        return self.host.annotate({"action": "ANNOTATION_CREATED", "annotation": annotation, "project": project_obj,
                                   "task": task})


@contextmanager
def worker_process(model_dir: Path, redis_url: str, prefix: str, tmp: Path, retrain_every: int
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """One `cliplabel worker` on the run's prefix, listening before it is handed out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPLABEL_", "LABEL_STUDIO_", "BASIC_AUTH"))}
    env.update({"CLIPLABEL_MODEL": f"local-dir:{model_dir}", "CLIPLABEL_REDIS_URL": redis_url,
                "CLIPLABEL_REDIS_PREFIX": prefix, "CLIPLABEL_DATA_DIR": str(tmp / "worker"),
                "CLIPLABEL_RETRAIN_EVERY": str(retrain_every), "CLIPLABEL_TORCH_THREADS": "1"})
    log_path = tmp / f"worker-{retrain_every}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cliplabel.cli", "worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 120
        while not client.scard(f"rq:workers:{prefix}-feedback"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        client.close()


def drain(store: Store, timeout_s: float = 600) -> float:
    started = time.monotonic()
    while store.event_projects():
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"events left after {timeout_s:.0f}s: projects {store.event_projects()}")
        time.sleep(0.1)
    return time.monotonic() - started


def stream(url: str, http: requests.Session, events: list[dict[str, Any]]) -> list[float]:
    """Posts the events one after the other; the latency of each, in ms."""
    out = []
    for body in events:
        t0 = time.perf_counter()
        resp = http.post(f"{url}/webhook", json=body, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200 or resp.json().get("status") != "queued":
            raise RuntimeError(f"/webhook answered {resp.status_code}: {resp.text[:300]}")
    return out


def measure(label: str, kind: str, retrain_every: int, args: argparse.Namespace, encoder: Any, model_dir: Path,
            tmp: Path, host: ImageHost, annotations: Annotations) -> Row:
    prefix = f"bench-webhook-{uuid.uuid4().hex[:10]}"
    redis_url = args.redis_url if kind == "redis" else None
    data = tmp / f"{kind}-{retrain_every}"
    data.mkdir()
    store = open_store(redis_url, data, prefix)
    settings = Settings(model="bench", data_dir=data, batch_size=16, fetch_workers=4, retrain_every=retrain_every,
                        redis_url=redis_url, redis_prefix=prefix)
    live = start_server(create_app(settings, encoder=encoder, store=store))
    http = requests.Session()
    http.trust_env = False
    row = Row(label, [], [], [], [], [])
    try:
        with (worker_process(model_dir, args.redis_url, prefix, data, retrain_every) if redis_url
              else nullcontext()):
            for run in range(args.repeats + 1):
                project = 1000 * (run + 1)
                setup = http.post(f"{live.url}/setup", json={"project": project, "schema": CONFIG,
                                                             "hostname": host.url, "access_token": LS_TOKEN},
                                  timeout=60)
                setup.raise_for_status()
                events = [annotations.event(project) for _ in range(5 if run == 0 else args.events)]
                lat_ms = stream(live.url, http, events)
                versions = store.list_versions(str(project), encoder.encoder_id)
                drain_s = drain(store)
                if run == 0:
                    continue  # warm-up
                row.p50_ms.append(pct(lat_ms, 50))
                row.p95_ms.append(pct(lat_ms, 95))
                row.max_ms.append(max(lat_ms))
                row.retrains.append(versions[-1].revision if versions else 0)
                row.drain_s.append(drain_s)
                print(f"  {kind} {label}, repeat {run}: p50 {row.p50_ms[-1]:.1f} ms, p95 {row.p95_ms[-1]:.1f} ms, "
                      f"max {row.max_ms[-1]:.1f} ms, {row.retrains[-1]} retrains during the stream, "
                      f"queue drained {drain_s:.1f}s after it", file=sys.stderr, flush=True)
    finally:
        http.close()
        live.stop()
        store.close()
        if redis_url:
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(f"*{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    return row


def cell(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="embedded,redis", help="comma-separated: embedded and/or redis")
    parser.add_argument("--events", type=int, default=200, help="webhook events per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-retrain", action="store_true", help="skip the rows with retraining meanwhile")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    model_dir = tinyclip.ensure_model()
    encoder = load_encoder(f"local-dir:{model_dir}", None, "cpu")
    host, server = start_image_host()
    annotations = Annotations(host, seed=7)
    cases = [("events processed meanwhile", 1_000_000)]
    if not args.no_retrain:
        cases.append(("retraining meanwhile (every 20 events)", 20))
    tables: dict[str, list[Row]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            for kind in args.stores.split(","):
                tables[kind] = [measure(label, kind, every, args, encoder, model_dir, Path(tmp_dir), host,
                                        annotations) for label, every in cases]
    finally:
        server.shutdown()
        server.server_close()
    print(f"# /webhook latency, ms: {args.events} ANNOTATION_CREATED events per repeat, {args.repeats} repeats; "
          f"median (min–max) over repeats; tiny CLIP, {os.cpu_count()} CPUs; target < {TARGET_MS:.0f} ms")
    for kind, rows in tables.items():
        worker = "a thread of the API process" if kind == "embedded" else "1 `cliplabel worker` process"
        print(f"\n## {kind} store (feedback processed by {worker})\n")
        print("| while | p50 ms | p95 ms | max ms | retrains during the stream | drained after, s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r.label} | {cell(r.p50_ms)} | {cell(r.p95_ms)} | {cell(r.max_ms)} | "
                  f"{cell([float(x) for x in r.retrains], '{:.0f}')} | {cell(r.drain_s)} |")
    worst_p95 = max(v for rows in tables.values() for r in rows for v in r.p95_ms)
    print(f"\nworst p95 over all repeats: {worst_p95:.1f} ms ({'under' if worst_p95 < TARGET_MS else 'OVER'} the "
          f"{TARGET_MS:.0f} ms target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
