"""The speed suite: every number against the raw encoder, measured in one run (ratios are the headline).

    python bench/suite.py                                    # tiny CLIP and ViT-B-32 (random weights), CPU
    python bench/suite.py --models ViT-B-32,ViT-L-14 --device cuda --images 4096 --batch 256
    python bench/suite.py --runtime onnx                     # the encoder in ONNX Runtime (CLIPLABEL_RUNTIME)

Per model, on a fresh store (cold cache) and a real HTTP app (uvicorn in this process, images from a real HTTP host):
- raw encoder: images/s (= crops/s) on prepared uint8 arrays at `--batch`, texts/s;
- CPU decode ceiling: JPEG decode + resize with the app's fetch threads (no encoder);
- `/predict` classification end to end: tasks → HTTP → download → decode → resize → encode → score → JSON;
- `/predict` boxes end to end: crops/s of the box path (proposals, crops, encode, context check, NMS) vs raw;
- 16 concurrent single-image clients, with and without micro-batching;
- re-scoring: 100,000 cached embeddings against a new head (one matrix product), and a whole project's tasks
  re-scored from the cache through the predictor (tasks/s, no download);
- interactive latency (one task, a drawn box) p50/p95, idle and while a bulk client keeps `/predict` busy;
- peak resident memory.
Speed does not depend on weight values, so models without a local checkpoint run with random weights.
Prints a table and writes bench/out/suite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.api.app import create_app  # noqa: E402
from cliplabel.container import build_services  # noqa: E402
from cliplabel.core.settings import Settings  # noqa: E402
from cliplabel.labelstudio import label_config  # noqa: E402
from cliplabel.model.encoder import load_encoder  # noqa: E402
from cliplabel.store import open_store  # noqa: E402
from cliplabel.vision import images  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402
from tests.support import LS_TOKEN, free_port, start_image_host, start_server  # noqa: E402

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
CHOICES = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
           + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
BOXES = ('<View><Image name="image" value="$image"/><RectangleLabels name="bbox" toName="image">'
         + "".join(f'<Label value="{c}"/>' for c in CLASSES) + "</RectangleLabels></View>")


def jpegs(n: int, width: int, height: int, seed: int, objects: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [synthetic.encode_jpeg(synthetic.scene(rng, width, height, n_objects=objects, min_radius_frac=0.15,
                                                  max_radius_frac=0.3 if objects > 1 else 0.45)[0])
            for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class ImageServer:
    """Task images served by another process, as Label Studio serves them (an in-process host would share the GIL)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data" / "upload" / "1").mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                         "--directory", str(root)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                requests.get(self.url, timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("the image server did not start")

    def add(self, name: str, data: bytes) -> str:
        (self.root / "data" / "upload" / "1" / name).write_bytes(data)
        return f"/data/upload/1/{name}"

    def read(self, ref: str) -> bytes:
        return (self.root / ref.removeprefix("/data/local-files/?d=").lstrip("/")).read_bytes()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class App:
    """The real app on a real port, with an image server; one store per instance (a cold cache)."""

    # "http": images downloaded from the image server (Label Studio uploads); "local": read from disk through
    # Label Studio's local-files storage (`CLIPLABEL_LOCAL_FILES_ROOT`), with no HTTP per image.
    source = "http"

    def __init__(self, encoder, tmp: Path, batch: int, **settings: Any) -> None:  # type: ignore[no-untyped-def]
        self.host = ImageServer(tmp / "www")
        self.store = open_store(None, tmp)
        values: dict[str, Any] = {"model": "bench", "data_dir": tmp, "batch_size": batch,
                                  "fetch_workers": max(8, os.cpu_count() or 1), "local_files_root": tmp / "www",
                                  **settings}
        self.live = start_server(create_app(Settings(**values), encoder=encoder, store=self.store))
        self.http = requests.Session()
        self.http.trust_env = False
        self.n = 0
        self._lock = threading.Lock()

    def tasks(self, blobs: list[bytes]) -> list[dict[str, Any]]:
        out = []
        for b in blobs:
            with self._lock:
                self.n += 1
                n = self.n
            path = self.host.add(f"{n}.jpg", b)
            ref = f"/data/local-files/?d={path.lstrip('/')}" if self.source == "local" else path
            out.append({"id": n, "data": {"image": ref}})
        return out

    def setup(self, project: str, config: str) -> None:
        self.http.post(f"{self.live.url}/setup", json={"project": project, "schema": config, "hostname": self.host.url,
                                                       "access_token": LS_TOKEN}, timeout=60).raise_for_status()

    def predict(self, project: str, tasks: list[dict[str, Any]], params: dict[str, Any] | None = None,
                http: requests.Session | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"tasks": tasks, "project": project}
        if params:
            body["params"] = params
        resp = (http or self.http).post(f"{self.live.url}/predict", json=body, timeout=3600)
        resp.raise_for_status()
        return list(resp.json()["results"])

    def metrics(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.live.url}/metrics", timeout=10).json())

    def close(self) -> None:
        self.live.stop()
        self.host.stop()
        self.store.close()


def raw(encoder, blobs: list[bytes], batch: int, workers: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    size = encoder.image_size

    def prep(b: bytes) -> np.ndarray:
        return images.prepare(images.decode(b, 10**9, min_side=size).image, size, encoder.resize_mode)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(prep, blobs[:workers]))
        t0 = time.perf_counter()
        prepared = np.stack(list(pool.map(prep, blobs)))
        decode_s = time.perf_counter() - t0
    encoder.encode_images(prepared[:batch])  # warm-up
    reps = max(1, int(np.ceil(4 * batch / len(prepared))))
    t0 = time.perf_counter()
    for _ in range(reps):
        for i in range(0, len(prepared), batch):
            encoder.encode_images(prepared[i:i + batch])
    enc_s = (time.perf_counter() - t0) / reps
    texts = [f"a photo of a {c} number {i}." for i in range(8) for c in CLASSES][:256]
    encoder.encode_texts(texts[:8])
    t0 = time.perf_counter()
    encoder.encode_texts(texts)
    txt_s = time.perf_counter() - t0
    return {"raw_img_s": len(prepared) / enc_s, "decode_ceiling_img_s": len(blobs) / decode_s,
            "raw_txt_s": len(texts) / txt_s}


def classification(encoder, tmp: Path, blobs: list[bytes], batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    app = App(encoder, tmp / "cls", batch)
    try:
        app.setup("1", CHOICES)
        app.predict("1", app.tasks(jpegs(1, 64, 64, seed=99)))  # prompt ensembles: once per label set
        tasks = app.tasks(blobs)
        per_request = batch * 4
        t0 = time.perf_counter()
        for i in range(0, len(tasks), per_request):
            results = app.predict("1", tasks[i:i + per_request])
            assert all(r["result"] for r in results), "a task was not predicted"
        cold = len(tasks) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, len(tasks), per_request):
            app.predict("1", tasks[i:i + per_request])
        warm = len(tasks) / (time.perf_counter() - t0)
        return {"predict_cls_img_s": cold, "predict_cls_warm_img_s": warm}
    finally:
        app.close()


def boxes(encoder, tmp: Path, scenes: list[bytes], batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    app = App(encoder, tmp / "box", batch)
    try:
        app.setup("2", BOXES)
        app.predict("2", app.tasks(jpegs(1, 128, 128, seed=98, objects=2)))
        before = app.metrics().get("crops_encoded", 0)
        tasks = app.tasks(scenes)
        t0 = time.perf_counter()
        for i in range(0, len(tasks), batch):
            app.predict("2", tasks[i:i + batch])
        seconds = time.perf_counter() - t0
        crops = app.metrics().get("crops_encoded", 0) - before
        return {"predict_box_img_s": len(tasks) / seconds, "predict_box_crops_s": crops / seconds,
                "crops_per_image": crops / len(tasks)}
    finally:
        app.close()


def concurrency(encoder, tmp: Path, blobs: list[bytes], batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """16 clients with one image per request: micro-batching on, then off."""
    out = {}
    for label, on in (("on", True), ("off", False)):
        app = App(encoder, tmp / f"conc-{label}", batch, microbatch=on)
        try:
            app.setup("3", CHOICES)
            app.predict("3", app.tasks(jpegs(1, 64, 64, seed=97)))
            tasks = app.tasks(blobs)
            sessions = [requests.Session() for _ in range(16)]
            for s in sessions:
                s.trust_env = False
            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i, a=app, t=tasks, s=sessions: a.predict("3", [t[i]], http=s[i % 16]),
                              range(len(tasks))))
            out[f"concurrent16_microbatch_{label}_img_s"] = len(tasks) / (time.perf_counter() - t0)
        finally:
            app.close()
    return out


def rescore(encoder, tmp: Path, blobs: list[bytes], batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    dim = encoder.embed_dim
    emb = rng.standard_normal((100_000, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    head = rng.standard_normal((len(CLASSES), dim)).astype(np.float32)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    t0 = time.perf_counter()
    logits = encoder.logit_scale * emb @ head.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    _ = probs.argmax(axis=1), probs.max(axis=1)
    matrix_s = time.perf_counter() - t0
    # the predictor's own re-score path: a project predicted once, then re-scored from the cache
    host, server = start_image_host()
    settings = Settings(model="bench", data_dir=tmp / "rescore", batch_size=batch, fetch_workers=8,
                        label_studio_url=host.url, label_studio_api_key=LS_TOKEN)
    services = build_services(settings, encoder=encoder, worker=True)
    try:
        tasks = [{"id": i, "data": {"image": host.add(f"/data/upload/r{i}.jpg", b)}} for i, b in enumerate(blobs)]
        config = label_config.parse_label_config(CHOICES)
        services.predictor.predict(tasks, config, None, "r0")
        seen = len(host.requests_seen)
        t0 = time.perf_counter()
        for i in range(0, len(tasks), 256):
            services.predictor.predict(tasks[i:i + 256], config, None, "r1", from_cache=True)
        tasks_s = len(tasks) / (time.perf_counter() - t0)
        assert len(host.requests_seen) == seen, "the re-score downloaded images"
    finally:
        services.close(close_store=True)
        server.shutdown()
    return {"rescore_100k_s": matrix_s, "rescore_cached_tasks_s": tasks_s}


def interactive(encoder, tmp: Path, bulk_blobs: list[bytes], batch: int, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One task with a drawn box, labelled: p50/p95 idle, then while a bulk client keeps /predict busy."""
    app = App(encoder, tmp / "inter", batch)
    try:
        app.setup("4", BOXES)
        app.setup("5", CHOICES)
        target = app.tasks(jpegs(1, 640, 480, seed=96))[0]
        drawn = {"context": {"result": [{"from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
                                         "original_width": 640, "original_height": 480,
                                         "value": {"x": 20, "y": 20, "width": 40, "height": 50,
                                                   "rectanglelabels": [CLASSES[0]]}}]}}
        app.predict("4", [target], drawn)
        app.predict("5", app.tasks(jpegs(1, 64, 64, seed=95)))

        def sample(run: int) -> list[float]:
            out = []
            for i in range(n):
                # a new box each time (and in each run): its crop is not cached
                d = json.loads(json.dumps(drawn))
                d["context"]["result"][0]["value"]["x"] = 1 + i * 2
                d["context"]["result"][0]["value"]["y"] = 1 + run * 10
                t0 = time.perf_counter()
                app.predict("4", [target], d)
                out.append(time.perf_counter() - t0)
            return out

        idle = sample(0)
        stop = threading.Event()
        bulk_tasks = app.tasks(bulk_blobs)
        done = [0]

        def bulk() -> None:
            http = requests.Session()
            http.trust_env = False
            i = 0
            while not stop.is_set():
                chunk = bulk_tasks[i % len(bulk_tasks):][:batch]
                # fresh copies: new ids and URLs, so the cache does not absorb the load
                app.predict("5", app.tasks([app.host.read(t["data"]["image"]) for t in chunk]), http=http)
                done[0] += len(chunk)
                i += batch

        thread = threading.Thread(target=bulk, daemon=True)
        thread.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        busy = sample(1)
        bulk_rate = done[0] / (time.perf_counter() - t0 + 1.0)
        stop.set()
        thread.join(timeout=600)
        return {"interactive_idle_p50_s": pct(idle, 50), "interactive_idle_p95_s": pct(idle, 95),
                "interactive_busy_p50_s": pct(busy, 50), "interactive_busy_p95_s": pct(busy, 95),
                "bulk_during_interactive_img_s": bulk_rate}
    finally:
        app.close()


COLUMNS = [
    ("raw encoder img/s (= crops/s)", "raw_img_s", "{:.1f}"),
    ("raw texts/s", "raw_txt_s", "{:.0f}"),
    ("CPU decode+resize ceiling img/s", "decode_ceiling_img_s", "{:.0f}"),
    ("/predict classification img/s", "predict_cls_img_s", "{:.1f}"),
    ("  ratio to raw", "cls_ratio", "{:.2f}"),
    ("/predict classification, cached img/s", "predict_cls_warm_img_s", "{:.0f}"),
    ("/predict boxes crops/s", "predict_box_crops_s", "{:.1f}"),
    ("  ratio to raw", "box_ratio", "{:.2f}"),
    ("/predict boxes img/s", "predict_box_img_s", "{:.2f}"),
    ("  crops per image", "crops_per_image", "{:.0f}"),
    ("16 clients × 1 image, micro-batching on, img/s", "concurrent16_microbatch_on_img_s", "{:.1f}"),
    ("16 clients × 1 image, micro-batching off, img/s", "concurrent16_microbatch_off_img_s", "{:.1f}"),
    ("re-score 100k cached embeddings, s", "rescore_100k_s", "{:.3f}"),
    ("re-score project from cache, tasks/s", "rescore_cached_tasks_s", "{:.0f}"),
    ("interactive p50 / p95 idle, s", "interactive_idle", "{}"),
    ("interactive p50 / p95 during bulk, s", "interactive_busy", "{}"),
    ("bulk img/s during the interactive test", "bulk_during_interactive_img_s", "{:.1f}"),
    ("peak RSS MiB (process so far)", "peak_rss_mib", "{:.0f}"),
]


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model = f"local-dir:{tinyclip.ensure_model()}" if name == "tiny" else name
    encoder = load_encoder(model, None, args.device, runtime=args.runtime,
                           cache_dir=Path(tempfile.gettempdir()) / "cliplabel-bench-onnx")
    big = name != "tiny" and args.device == "cpu"
    n = min(args.images, 96) if big else args.images
    width, height = (int(v) for v in args.size.split("x"))
    blobs = jpegs(n, width, height, seed=1)
    scenes = jpegs(4 if big else args.scenes, 320, 240, seed=2, objects=3)
    row: dict[str, Any] = {"model": f"{name} {encoder.runtime}", "device": encoder.device, "input_px": encoder.image_size,
                           "batch": args.batch, "images": n}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        steps = [("raw", lambda: raw(encoder, blobs, args.batch, max(8, os.cpu_count() or 1))),
                 ("classification", lambda: classification(encoder, tmp, blobs, args.batch)),
                 ("boxes", lambda: boxes(encoder, tmp, scenes, args.batch)),
                 ("concurrency", lambda: concurrency(encoder, tmp, blobs[:48 if big else 256], args.batch)),
                 ("rescore", lambda: rescore(encoder, tmp, blobs, args.batch)),
                 ("interactive", lambda: interactive(encoder, tmp, blobs, min(args.batch, 16) if big else args.batch,
                                                     8 if big else 20))]
        for label, step in steps:
            t0 = time.perf_counter()
            row.update(step())
            print(f"  {name}: {label} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    row["cls_ratio"] = row["predict_cls_img_s"] / row["raw_img_s"]
    row["box_ratio"] = row["predict_box_crops_s"] / row["raw_img_s"]
    row["interactive_idle"] = f"{row['interactive_idle_p50_s']:.3f} / {row['interactive_idle_p95_s']:.3f}"
    row["interactive_busy"] = f"{row['interactive_busy_p50_s']:.3f} / {row['interactive_busy_p95_s']:.3f}"
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,ViT-B-32", help="comma-separated: tiny and/or open_clip names")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=512, help="classification images (96 for big models on CPU)")
    parser.add_argument("--scenes", type=int, default=48, help="box scenes (4 for big models on CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runtime", default="torch", choices=("auto", "torch", "onnx"),
                        help="CLIPLABEL_RUNTIME of the encoder (bench/bench_runtime.py compares them)")
    parser.add_argument("--size", default="640x480", help="classification image size WxH (JPEG)")
    parser.add_argument("--source", default="http", choices=("http", "local"),
                        help="task images from an HTTP server (default) or Label Studio local-files storage")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "suite.json"))
    args = parser.parse_args()
    App.source = args.source
    rows = [run_model(name, args) for name in args.models.split(",")]

    print(f"\n# cliplabel speed suite: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {args.device}, batch {args.batch}, {args.size} JPEG, images via {args.source}")
    print("| | " + " | ".join(f"{r['model']} ({r['input_px']} px)" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for title, key, fmt in COLUMNS:
        print(f"| {title} | " + " | ".join(fmt.format(r[key]) if key in r else "–" for r in rows) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
