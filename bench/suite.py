"""The speed suite: every number against the raw encoder, measured in one run (ratios are the headline).

    python bench/suite.py                                    # tiny CLIP and ViT-B-32 (random weights), CPU, torch
    python bench/suite.py --models tiny,ViT-B-32 --runtimes torch,onnx          # both CPU runtimes, side by side
    python bench/suite.py --models ViT-B-32,ViT-L-14 --device cuda --images 1024 --batch 256 --source local

Per model and runtime (`CLIPLABEL_RUNTIME`), on a fresh store (cold cache) and a real HTTP app (uvicorn in this
process, images from a real HTTP host). Every row is measured `--repeats` times (new images each time, so caches
stay cold) and printed as the median with min–max; rows that time very little work loop until they have at least
`--min-seconds` of it per repeat:
- raw encoder: images/s (= crops/s) on prepared uint8 arrays at `--batch`, texts/s (one batch of 256 prompts);
- CPU decode ceiling: JPEG decode + resize with the app's fetch threads (no encoder; the PIL path);
- `/predict` classification end to end: tasks → HTTP → download → decode → resize → encode → score → JSON, and its
  ratio to the raw encoder measured just before it in the same repeat. A ratio above 1.0 cannot be a gain over the
  encoder that does the work: it is printed as "at raw (noise)". On CUDA also with `CLIPLABEL_DECODE=cpu` (PIL)
  beside the default (nvjpeg);
- `/predict` boxes end to end: crops/s of the box path (proposals, crops, encode, context check, NMS) vs raw;
- 16 concurrent single-image clients, with and without micro-batching;
- interactive latency (one task, a drawn box) p50/p95 over all repeats, idle and while a bulk client keeps
  `/predict` busy; peak resident memory.
With two runtimes of one model, a row gives each runtime's raw encoder against torch's in this run.
Per embedding width D (once per model), two more tables:
- re-scoring a 100,000-task project from the store with a new head through the product's path
  (bench/bench_rescore.py's `measure`: task refs → one store read of the matrix → head → predictions);
- retraining time vs number of examples: `cliplabel.vision.train.fit` (the trainer's own call) on 1,000 and 10,000
  labelled embeddings of 48 classes (synthetic clusters around 16-prompt ensembles).
Bulk jobs against a real Label Studio are in bench/bench_bulk.py (they start a Label Studio server: not cheap).
Speed does not depend on weight values, so models without a local checkpoint run with random weights.
Prints the tables and writes bench/out/suite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.api.app import create_app  # noqa: E402
from cliplabel.core.domain import Head  # noqa: E402
from cliplabel.core.settings import Settings  # noqa: E402
from cliplabel.model.encoder import load_encoder  # noqa: E402
from cliplabel.store import open_store  # noqa: E402
from cliplabel.vision import images, train  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402
from tests.support import LS_TOKEN, free_port, start_server  # noqa: E402

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
CHOICES = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
           + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
BOXES = ('<View><Image name="image" value="$image"/><RectangleLabels name="bbox" toName="image">'
         + "".join(f'<Label value="{c}"/>' for c in CLASSES) + "</RectangleLabels></View>")
Samples = dict[str, list[float]]


def jpegs(n: int, width: int, height: int, seed: int, objects: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [synthetic.encode_jpeg(synthetic.scene(rng, width, height, n_objects=objects, min_radius_frac=0.15,
                                                  max_radius_frac=0.3 if objects > 1 else 0.45)[0])
            for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def add(samples: Samples, one: dict[str, float]) -> None:
    for key, value in one.items():
        samples.setdefault(key, []).append(value)


def timed_loop(work: Callable[[], int], min_s: float) -> float:
    """Items/s of `work` (which returns how many items it did), called until at least `min_s` have passed."""
    items, t0 = 0, time.perf_counter()
    while True:
        items += work()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return items / elapsed


def fresh_session() -> requests.Session:
    """A session with no pooled connection, for a request after an idle wait: uvicorn closes a keep-alive connection
    idle for 5 s, and a request sent on it as it closes fails with ConnectionResetError (a busy process widens the
    race)."""
    http = requests.Session()
    http.trust_env = False
    return http


class ImageServer:
    """Task images served by another process, as Label Studio serves them (an in-process host would share the GIL)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data" / "upload" / "1").mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # HTTP/1.1: connections are kept alive between images, as Label Studio's server keeps them (Python's
        # default, HTTP/1.0, opens a connection and a server thread per image).
        self.process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                         "--directory", str(root), "--protocol", "HTTP/1.1"], stdout=subprocess.DEVNULL,
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
    # Settings every app of this run gets (`--selective-search`).
    common: dict[str, Any] = {}
    # How long predict() keeps asking again while the app answers 503 model_warming.
    warm_deadline_s = 1800.0

    def __init__(self, encoder, tmp: Path, batch: int, **settings: Any) -> None:  # type: ignore[no-untyped-def]
        self.host = ImageServer(tmp / "www")
        self.store = open_store(None, tmp)
        values: dict[str, Any] = {"model": "bench", "data_dir": tmp, "batch_size": batch,
                                  "fetch_workers": max(8, os.cpu_count() or 1), "local_files_root": tmp / "www",
                                  **self.common, **settings}
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
        # A label set's prompt vectors encode in the background: until they are ready /predict answers 503
        # model_warming with Retry-After, and a client (Label Studio, or this suite) asks again.
        deadline = time.monotonic() + self.warm_deadline_s
        resp = (http or self.http).post(f"{self.live.url}/predict", json=body, timeout=3600)
        while resp.status_code == 503 and time.monotonic() < deadline:
            time.sleep(max(0.1, min(float(resp.headers.get("Retry-After", "1")), deadline - time.monotonic())))
            with fresh_session() as again:
                resp = again.post(f"{self.live.url}/predict", json=body, timeout=3600)
        resp.raise_for_status()
        return list(resp.json()["results"])

    def metrics(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.live.url}/metrics", timeout=10).json())

    def close(self) -> None:
        self.live.stop()
        self.host.stop()
        self.store.close()


def raw(encoder, blobs: list[bytes], batch: int, workers: int, min_s: float = 1.0) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One run: raw encoder images/s and texts/s, and the CPU decode+resize ceiling, each over ≥ `min_s`."""
    size = encoder.image_size

    def prep(b: bytes) -> np.ndarray:
        return images.prepare(images.decode(b, 10**9, min_side=size).image, size, encoder.resize_mode)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(prep, blobs[:workers]))
        t0 = time.perf_counter()
        prepared = np.stack(list(pool.map(prep, blobs)))
        decode_s = time.perf_counter() - t0
    encoder.encode_images(prepared[:batch])  # warm-up

    def encode_all() -> int:
        for i in range(0, len(prepared), batch):
            encoder.encode_images(prepared[i:i + batch])
        return len(prepared)

    img_s = timed_loop(encode_all, min_s)
    texts = [f"a photo of a {c} number {i}." for i in range(16) for c in CLASSES][:256]
    encoder.encode_texts(texts[:8])
    txt_s = timed_loop(lambda: len(encoder.encode_texts(texts)), min_s)
    return {"raw_img_s": img_s, "decode_ceiling_img_s": len(blobs) / decode_s, "raw_txt_s": txt_s}


def classification(encoder, tmp: Path, make_blobs: Callable[[int], list[bytes]], args: argparse.Namespace  # type: ignore[no-untyped-def]
                   ) -> Samples:
    """Per repeat: the raw encoder on that repeat's images, then /predict on the same images (cold cache), then the
    same tasks again (cached), so the ratio pairs two measurements taken back to back."""
    samples: Samples = {}
    apps = {"": App(encoder, tmp / "cls", args.batch)}
    if encoder.device == "cuda":  # nvjpeg (the default there) against PIL
        apps["_pil"] = App(encoder, tmp / "cls-pil", args.batch, decode="cpu")
    try:
        for app in apps.values():
            app.setup("1", CHOICES)
            app.predict("1", app.tasks(jpegs(1, 64, 64, seed=99)))  # prompt ensembles: once per label set
        workers = max(8, os.cpu_count() or 1)
        per_request = args.batch * 4
        for rep in range(args.repeats):
            blobs = make_blobs(rep)
            add(samples, raw(encoder, blobs, args.batch, workers, args.min_seconds))
            for suffix, app in apps.items():
                tasks = app.tasks(blobs)

                def predict_all(app: App = app, tasks: list[dict[str, Any]] = tasks) -> int:
                    for i in range(0, len(tasks), per_request):
                        results = app.predict("1", tasks[i:i + per_request])
                        if not all(r["result"] for r in results):
                            raise RuntimeError("a task was not predicted")
                    return len(tasks)

                t0 = time.perf_counter()
                predict_all()
                samples.setdefault(f"predict_cls{suffix}_img_s", []).append(len(tasks) / (time.perf_counter() - t0))
                if not suffix:
                    samples.setdefault("cls_ratio", []).append(samples["predict_cls_img_s"][-1]
                                                               / samples["raw_img_s"][-1])
                    # cached: every image's embedding is in the store; little work per pass, so loop
                    samples.setdefault("predict_cls_warm_img_s", []).append(timed_loop(predict_all, args.min_seconds))
        return samples
    finally:
        for app in apps.values():
            app.close()


def boxes(encoder, tmp: Path, n_scenes: int, args: argparse.Namespace) -> Samples:  # type: ignore[no-untyped-def]
    samples: Samples = {}
    app = App(encoder, tmp / "box", args.batch)
    try:
        app.setup("2", BOXES)
        app.predict("2", app.tasks(jpegs(1, 128, 128, seed=98, objects=2)))
        for rep in range(args.repeats):
            before = app.metrics().get("crops_encoded", 0)
            tasks = app.tasks(jpegs(n_scenes, 320, 240, seed=2000 + rep, objects=3))
            t0 = time.perf_counter()
            for i in range(0, len(tasks), args.batch):
                app.predict("2", tasks[i:i + args.batch])
            seconds = time.perf_counter() - t0
            crops = app.metrics().get("crops_encoded", 0) - before
            add(samples, {"predict_box_img_s": len(tasks) / seconds, "predict_box_crops_s": crops / seconds,
                          "crops_per_image": crops / len(tasks)})
        return samples
    finally:
        app.close()


def concurrency(encoder, tmp: Path, n: int, args: argparse.Namespace) -> Samples:  # type: ignore[no-untyped-def]
    """16 clients with one image per request: micro-batching on, then off, in turns within each repeat."""
    samples: Samples = {}
    apps = {label: App(encoder, tmp / f"conc-{label}", args.batch, microbatch=on)
            for label, on in (("on", True), ("off", False))}
    sessions = [requests.Session() for _ in range(16)]
    for s in sessions:
        s.trust_env = False
    try:
        for app in apps.values():
            app.setup("3", CHOICES)
            app.predict("3", app.tasks(jpegs(1, 64, 64, seed=97)))
        for rep in range(args.repeats):
            blobs = jpegs(n, 640, 480, seed=3000 + rep)
            for label, app in apps.items():
                tasks = app.tasks(blobs)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(lambda i, a=app, t=tasks: a.predict("3", [t[i]], http=sessions[i % 16]),
                                  range(len(tasks))))
                samples.setdefault(f"concurrent16_microbatch_{label}_img_s", []).append(
                    len(tasks) / (time.perf_counter() - t0))
        return samples
    finally:
        for app in apps.values():
            app.close()


def rescore_table(dim: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The product's re-score path on a `--rescore-tasks` project per store (bench/bench_rescore.py's `measure`)."""
    # Imported here: the re-score bench brings the Redis client and the bulk job's modules, which only this table uses.
    from bench.bench_rescore import measure

    out = []
    for kind in (k for k in args.rescore_stores.split(",") if k):
        r = measure(kind, n_tasks=args.rescore_tasks, repeats=args.repeats, dim=dim, n_classes=len(CLASSES))
        out.append({"store": kind, "dim": dim, "dtype": r["dtype"], "tasks": r["tasks"], "cold_s": r["cold_s"],
                    "warm_s": r["warm_s"]})
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def retrain_table(dim: int, args: argparse.Namespace, n_classes: int = 48, n_prompts: int = 16) -> list[dict[str, Any]]:
    """Seconds of `train.fit` (the trainer's call) on N labelled embeddings: synthetic clusters, one per class, around
    each class's prompt ensemble, so the fit has something to learn and is accepted like a real one."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((n_classes, dim)))
    spread_of = 8 / np.sqrt(dim)
    prompt_embs = [_unit(c + 0.3 * spread_of * rng.standard_normal((n_prompts, dim))) for c in centres]
    labels = tuple(f"class {i}" for i in range(n_classes))
    zero_shot = Head("label", labels, _unit(np.stack([e.mean(0) for e in prompt_embs])),
                     np.zeros((0, dim), np.float32), 100.0)
    out = []
    for n in (int(v) for v in args.retrain_examples.split(",")):
        y = np.arange(n) % n_classes
        examples = train.Examples(_unit(centres[y] + 0.6 * spread_of * rng.standard_normal((n, dim))), y)
        seconds, accepted = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = train.fit("label", labels, prompt_embs, examples, zero_shot, np.zeros((0, dim), np.float32),
                               100.0)
            seconds.append(time.perf_counter() - t0)
            accepted.append(result.accepted)
        out.append({"dim": dim, "examples": n, "classes": n_classes, "fit_s": seconds, "accepted": all(accepted)})
    return out


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


# (title, key, format of one value, how a row prints: "spread" median (min–max), "ratio" against raw, "text")
COLUMNS = [
    ("raw encoder img/s (= crops/s)", "raw_img_s", "{:.1f}", "spread"),
    ("raw texts/s", "raw_txt_s", "{:.0f}", "spread"),
    ("raw img/s ÷ torch's raw img/s (this run)", "runtime_img_ratio", "{:.2f}×", "text"),
    ("raw texts/s ÷ torch's raw texts/s (this run)", "runtime_txt_ratio", "{:.2f}×", "text"),
    ("CPU decode+resize ceiling img/s (PIL)", "decode_ceiling_img_s", "{:.0f}", "spread"),
    ("/predict classification img/s", "predict_cls_img_s", "{:.1f}", "spread"),
    ("  ratio to raw (paired per repeat)", "cls_ratio", "{:.2f}", "ratio"),
    ("/predict classification, PIL decode img/s", "predict_cls_pil_img_s", "{:.1f}", "spread"),
    ("/predict classification, cached img/s", "predict_cls_warm_img_s", "{:.0f}", "spread"),
    ("/predict boxes crops/s", "predict_box_crops_s", "{:.1f}", "spread"),
    ("  ratio to raw (medians)", "box_ratio", "{:.2f}", "ratio"),
    ("/predict boxes img/s", "predict_box_img_s", "{:.2f}", "spread"),
    ("  crops per image", "crops_per_image", "{:.0f}", "spread"),
    ("16 clients × 1 image, micro-batching on, img/s", "concurrent16_microbatch_on_img_s", "{:.1f}", "spread"),
    ("16 clients × 1 image, micro-batching off, img/s", "concurrent16_microbatch_off_img_s", "{:.1f}", "spread"),
    ("interactive p50 / p95 idle, s", "interactive_idle", "{}", "text"),
    ("interactive p50 / p95 during bulk, s", "interactive_busy", "{}", "text"),
    ("bulk img/s during the interactive test", "bulk_during_interactive_img_s", "{:.1f}", "text"),
    ("peak RSS MiB (process so far)", "peak_rss_mib", "{:.0f}", "text"),
]


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def cell(row: dict[str, Any], key: str, fmt: str, kind: str) -> str:
    if key not in row:
        return "–"
    if kind == "text":
        return row[key] if isinstance(row[key], str) else fmt.format(row[key])
    values: list[float] = row[key]
    text = spread(values, fmt) if len(values) > 1 else fmt.format(values[0])
    # Nothing in the pipeline can run faster than the encoder that does its work: above 1.0 is measurement noise.
    return f"at raw (noise): {text}" if kind == "ratio" and statistics.median(values) > 1.0 else text


def run_model(name: str, runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    model = f"local-dir:{tinyclip.ensure_model()}" if name == "tiny" else name
    encoder = load_encoder(model, None, args.device, runtime=runtime,  # type: ignore[arg-type]
                           cache_dir=Path(tempfile.gettempdir()) / "cliplabel-bench-onnx")
    big = name != "tiny" and args.device == "cpu"
    n = args.cpu_images if big else args.images
    width, height = (int(v) for v in args.size.split("x"))
    row: dict[str, Any] = {"name": name, "runtime": encoder.runtime, "model": f"{name} {encoder.runtime}",
                           "device": encoder.device, "input_px": encoder.image_size, "dim": encoder.embed_dim,
                           "batch": args.batch, "images": n, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("raw + classification", lambda: classification(
                encoder, tmp, lambda rep: jpegs(n, width, height, seed=1000 + rep), args)),
            ("boxes", lambda: boxes(encoder, tmp, 4 if big else args.scenes, args)),
            ("concurrency", lambda: concurrency(encoder, tmp, 48 if big else 256, args)),
            ("interactive", lambda: interactive(encoder, tmp, jpegs(n, width, height, seed=1),
                                                min(args.batch, 16) if big else args.batch,
                                                (4 if big else 10) * args.repeats))]
        for label, step in steps:
            if label.split()[-1] not in args.steps.split(","):
                continue
            t0 = time.perf_counter()
            row.update(step())
            print(f"  {name} {encoder.runtime}: {label} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr,
                  flush=True)
    if "raw_img_s" in row and "predict_box_crops_s" in row:
        row["box_ratio"] = [statistics.median(row["predict_box_crops_s"]) / statistics.median(row["raw_img_s"])]
    if "interactive_idle_p50_s" in row:
        row["interactive_idle"] = f"{row['interactive_idle_p50_s']:.3f} / {row['interactive_idle_p95_s']:.3f}"
        row["interactive_busy"] = f"{row['interactive_busy_p50_s']:.3f} / {row['interactive_busy_p95_s']:.3f}"
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def print_tables(rows: list[dict[str, Any]], rescores: list[dict[str, Any]], retrains: list[dict[str, Any]],
                 args: argparse.Namespace) -> None:
    for r in rows:  # each runtime against torch on the same model, in this run
        base = next((b for b in rows if b["name"] == r["name"] and b["runtime"] == "torch"), None)
        if base is not None and r is not base and "raw_img_s" in r and "raw_img_s" in base:
            r["runtime_img_ratio"] = statistics.median(r["raw_img_s"]) / statistics.median(base["raw_img_s"])
            r["runtime_txt_ratio"] = statistics.median(r["raw_txt_s"]) / statistics.median(base["raw_txt_s"])
    print(f"\n# cliplabel speed suite: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {args.device}, batch {args.batch}, {args.size} JPEG, images via {args.source}, {args.repeats} "
          "repeats: median (min–max)")
    print("| | " + " | ".join(f"{r['model']} ({r['input_px']} px)" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for title, key, fmt, kind in COLUMNS:
        print(f"| {title} | " + " | ".join(cell(r, key, fmt, kind) for r in rows) + " |")
    if rescores:
        print(f"\nRe-scoring a {args.rescore_tasks:,}-task project from the store with a new head (product path, "
              "bench/bench_rescore.py `measure`; cold = a fresh process's first call), s")
        print("| D | store | stored as | cold s | warm s | tasks/s (cold median) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rescores:
            print(f"| {r['dim']} | {r['store']} | {r['dtype']} | {spread(r['cold_s'], '{:.3f}')} | "
                  f"{spread(r['warm_s'], '{:.3f}')} | {r['tasks'] / statistics.median(r['cold_s']):,.0f} |")
    if retrains:
        print("\nRetraining a head: `train.fit` on N labelled embeddings (48 classes, 16 prompts each), s")
        print("| D | examples | fit s | accepted |")
        print("| --- | --- | --- | --- |")
        for r in retrains:
            print(f"| {r['dim']} | {r['examples']:,} | {spread(r['fit_s'], '{:.2f}')} | {r['accepted']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,ViT-B-32", help="comma-separated: tiny and/or open_clip names")
    parser.add_argument("--runtimes", default="torch", help="comma-separated CLIPLABEL_RUNTIME values: torch, onnx, openvino "
                                                            "(CPU only), auto")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=256, help="classification images per repeat (tiny model, or "
                                                                "any model on CUDA)")
    parser.add_argument("--cpu-images", type=int, default=96, help="classification images per repeat for real-size "
                                                                   "models on CPU")
    parser.add_argument("--scenes", type=int, default=32, help="box scenes per repeat (4 for big models on CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="rows of little work (raw encoder, cached /predict) loop for at least this per repeat")
    parser.add_argument("--size", default="640x480", help="classification image size WxH (JPEG)")
    parser.add_argument("--source", default="http", choices=("http", "local"),
                        help="task images from an HTTP server (default) or Label Studio local-files storage")
    parser.add_argument("--steps", default="classification,boxes,concurrency,interactive",
                        help="which per-model steps run (classification includes the raw encoder)")
    parser.add_argument("--selective-search", default="fast", choices=("fast", "quality", "off"),
                        help="CLIPLABEL_SELECTIVE_SEARCH of the apps (off: no opencv-contrib needed)")
    parser.add_argument("--rescore-tasks", type=int, default=100_000)
    parser.add_argument("--rescore-stores", default="embedded,redis", help="'' to skip the re-score table")
    parser.add_argument("--retrain-examples", default="1000,10000", help="'' to skip the retrain table")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "suite.json"))
    args = parser.parse_args()
    App.source = args.source
    App.common = {"selective_search": args.selective_search}
    rows = [run_model(name, runtime, args) for name in args.models.split(",") for runtime in args.runtimes.split(",")]
    rescores: list[dict[str, Any]] = []
    retrains: list[dict[str, Any]] = []
    for dim in dict.fromkeys(r["dim"] for r in rows):
        if args.rescore_stores:
            rescores += rescore_table(dim, args)
        if args.retrain_examples:
            retrains += retrain_table(dim, args)
    print_tables(rows, rescores, retrains, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows,
                                          "rescore": rescores, "retrain": retrains}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
