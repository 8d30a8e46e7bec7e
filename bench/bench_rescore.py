"""Re-scoring a 100,000-task project with a new head through the product's own path, on both stores.

    flock /tmp/cliplabel-heavy.lock python bench/bench_rescore.py            # 100,000 tasks, D = 512, both stores
    python bench/bench_rescore.py --tasks 100000 --dim 512 --classes 16 --repeats 5 --stores embedded,redis \
        --dtypes float16,float32 --fp16-images 256

The cache is built through the product's write path, as predicting the project once leaves it: per chunk of 64
tasks, the images' vectors go into the per-image cache (`Store.put_vectors`, what `EmbeddingService.images` does
after encoding) and `ReferenceIndex.remember` records each task's image reference, which appends the new rows to the
Label Studio host's embedding matrix. The embeddings are random unit vectors (no image is encoded: the encoder here
only names D and the cache key); the tasks are Label Studio task dicts.

Timed, per repeat: what a `rescore` job runs for the project's tasks before sending anything to Label Studio —
`CachedRescorer.predict` on all tasks: task references → one store read of the host's matrix → rows → the new
head's probabilities (one matrix product, `classify.head_probabilities`) → `classify.choose` → one `TaskPrediction`
per task. Sending the predictions to Label Studio (an HTTP import per chunk) is not included. "cold" is one call
for all tasks in a fresh process (the whole matrix read from the store); "warm" is the same call again in that
process (only segments appended since are read); "job chunks" is the same process calling it once per chunk of
`--chunk` tasks, as a `rescore` job's chunks do (64: twice the default batch).

Also printed: what the store holds per 1M cached images (SQLite: file growth with its WAL, and the matrix rows
alone; Redis: `used_memory` growth, and `MEMORY USAGE` of the matrix list), the process memory the matrix takes
once read (tracemalloc), and float16's accuracy cost on real embeddings of both tiny test CLIPs (synthetic scenes,
zero-shot over the synthetic classes): top-1 agreement with float32 and the largest |Δ probability| of any class.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.container import Services, build_services  # noqa: E402
from cliplabel.core.domain import Head, ProjectState  # noqa: E402
from cliplabel.core.settings import Settings  # noqa: E402
from cliplabel.labelstudio import label_config  # noqa: E402
from cliplabel.model.embeddings import IMAGE_NS, content_hash  # noqa: E402
from cliplabel.services.bulk.rescore import CachedRescorer  # noqa: E402
from cliplabel.services.reference_index import host_group  # noqa: E402

REDIS_URL = os.environ.get("CLIPLABEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LS_URL = "http://label-studio.bench.invalid:8080"
WRITE_CHUNK = 64  # tasks per predicted chunk (twice the default batch), as a prelabel job writes them


@dataclass(frozen=True)
class VectorsOnly:
    """An encoder that names D and the cache key but encodes nothing: the cache is filled with given vectors."""

    embed_dim: int
    encoder_id: str = "bench-vectors-only"
    image_size: int = 224
    logit_scale: float = 100.0
    slug: str = "bench"
    device: str = "cpu"
    resize_mode: str = "shortest"

    def encode_images(self, images_u8: np.ndarray) -> np.ndarray:
        raise RuntimeError("the re-score bench encodes nothing: every image must come from the cache")

    def encode_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        raise RuntimeError("the re-score bench encodes nothing: every image must come from the cache")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("the re-score bench encodes nothing: the new head carries its class vectors")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _config(n_classes: int) -> str:
    return ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
            + "".join(f'<Choice value="class {i}"/>' for i in range(n_classes)) + "</Choices></View>")


def _services(kind: str, data_dir: Path, prefix: str, dim: int, dtype: str) -> Services:
    settings = Settings.model_validate({
        "model": "bench", "data_dir": data_dir, "redis_url": REDIS_URL if kind == "redis" else None,
        "redis_prefix": prefix, "microbatch": False, "matrix_dtype": dtype, "label_studio_url": LS_URL,
        "label_studio_api_key": "bench-token"})
    return build_services(settings, encoder=VectorsOnly(dim), worker=True)  # type: ignore[arg-type]


def _stored_bytes(kind: str, data_dir: Path, prefix: str) -> tuple[int, int]:
    """(everything the store holds, the matrix rows alone), in bytes."""
    if kind == "embedded":
        db = data_dir / "cliplabel.sqlite3"
        with sqlite3.connect(db) as conn:
            matrix_bytes = int(conn.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM matrices").fetchone()[0])
        return sum(p.stat().st_size for p in data_dir.glob("cliplabel.sqlite3*")), matrix_bytes
    client = redis.Redis.from_url(REDIS_URL)
    matrix_bytes = sum(int(client.memory_usage(k, samples=0) or 0)  # type: ignore[arg-type,misc]
                       for k in client.scan_iter(f"{prefix}:*:matrix:*"))
    return int(client.info("memory")["used_memory"]), matrix_bytes  # type: ignore[index]


def _fill(services: Services, tasks: list[dict[str, object]], emb: np.ndarray) -> float:
    """Writes the project's cache through the product's write path; returns the seconds it took."""
    enc_id = services.embeddings.encoder_id
    references = services.predictor.references
    ctx, _ = services.predictor.connections.source_context(None)
    t0 = time.perf_counter()
    for start in range(0, len(tasks), WRITE_CHUNK):
        rows = range(start, min(start + WRITE_CHUNK, len(tasks)))
        blobs = {(i - start, "image"): f"bench image {i}".encode() for i in rows}
        services.store.put_vectors(IMAGE_NS, enc_id, {content_hash(b): emb[i + start] for (i, _), b in blobs.items()})
        refs = {(i - start, "image"): str(tasks[i]["data"]["image"]) for i in rows}  # type: ignore[index]
        references.remember(refs, ctx, blobs, {})
    return time.perf_counter() - t0


def measure(store_kind: str, n_tasks: int = 100_000, repeats: int = 3, dim: int = 512, n_classes: int = 16,
            dtype: str = "float16", chunk: int = 64) -> dict[str, object]:
    """Builds an `n_tasks` project's cache in one store and times the re-score path `repeats` times.

    Returns:
        store, dtype, tasks, cold_s, warm_s and chunked_s (lists of seconds, one per repeat: all tasks in one call
        in a fresh process, again in that process, and in a job's chunks of `chunk` tasks), write_s (building the
        cache, once), store_mib_per_1m and matrix_mib_per_1m (stored), process_mib_per_1m (the matrix read into memory).
    """
    rng = np.random.default_rng(0)
    emb = _unit(rng, n_tasks, dim)
    config = label_config.parse_label_config(_config(n_classes))
    control = config.of_kind("choices")[0]
    head = Head(control.from_name, control.values, _unit(rng, n_classes, dim), np.zeros((0, dim), np.float32), 100.0)
    tasks: list[dict[str, object]] = [{"id": i, "data": {"image": f"/data/upload/7/bench-{i:06d}.jpg"}}
                                      for i in range(n_tasks)]
    state = ProjectState(project_id="7", label_config=_config(n_classes))
    prefix = f"cliplabel-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        services = _services(store_kind, data_dir, prefix, dim, dtype)
        try:
            before, _ = _stored_bytes(store_kind, data_dir, prefix)
            write_s = _fill(services, tasks, emb)
            after, matrix_bytes = _stored_bytes(store_kind, data_dir, prefix)
        finally:
            services.close(close_store=True)
        cold, warm, in_chunks = [], [], []
        try:
            for _ in range(repeats):
                services = _services(store_kind, data_dir, prefix, dim, dtype)  # a fresh process's state
                try:
                    rescorer = CachedRescorer(services.predictor)
                    t0 = time.perf_counter()
                    preds = rescorer.predict(tasks, config, state, "bench-r1", {control.from_name: head})
                    cold.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    again = rescorer.predict(tasks, config, state, "bench-r1", {control.from_name: head})
                    warm.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    chunked = [p for i in range(0, n_tasks, chunk) for p in rescorer.predict(
                        tasks[i:i + chunk], config, state, "bench-r1", {control.from_name: head})]
                    in_chunks.append(time.perf_counter() - t0)
                    # (a product over fewer rows may round the last bit of a score differently: labels must agree)
                    if (len(preds) != n_tasks or any(not p.choices for p in preds) or again != preds
                            or [p.choices[0].choices for p in chunked] != [p.choices[0].choices for p in preds]):
                        raise RuntimeError("the re-score lost tasks or changed its answer")
                finally:
                    services.close(close_store=True)
            services = _services(store_kind, data_dir, prefix, dim, dtype)
            try:
                tracemalloc.start()
                m = services.embeddings.group_matrix(host_group(services.predictor.connections.source_context(None)[0]))
                held = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
                if m.emb.shape[0] != n_tasks:
                    raise RuntimeError(f"the matrix holds {m.emb.shape[0]} rows, not {n_tasks}")
            finally:
                services.close(close_store=True)
        finally:
            if store_kind == "redis":
                client = redis.Redis.from_url(REDIS_URL)
                keys = list(client.scan_iter(f"{prefix}:*", count=10_000))
                for i in range(0, len(keys), 10_000):
                    client.delete(*keys[i:i + 10_000])
    per_m = 1e6 / n_tasks / 2**20
    return {"store": store_kind, "dtype": dtype, "tasks": n_tasks, "cold_s": cold, "warm_s": warm, "chunked_s": in_chunks,
            "write_s": write_s, "store_mib_per_1m": (after - before) * per_m,
            "matrix_mib_per_1m": matrix_bytes * per_m, "process_mib_per_1m": held * per_m}


def fp16_cost(n_images: int) -> list[tuple[str, int, float, float]]:
    """(test model, D, top-1 agreement fp16 vs fp32, largest |Δ probability| of any class) on real embeddings."""
    from cliplabel.model.encoder import load_encoder
    from cliplabel.vision import classify, images
    from tests import synthetic, tinyclip

    classes = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
    rng = np.random.default_rng(3)
    scenes = [synthetic.scene(rng, 160, 160, n_objects=1, min_radius_frac=0.2, max_radius_frac=0.4)[0]
              for _ in range(n_images)]
    out = []
    for variant in tinyclip.VARIANTS:
        enc = load_encoder(f"local-dir:{tinyclip.ensure_model(variant=variant)}", None, "cpu")
        vecs = enc.encode_texts([f"a photo of a {c}." for c in classes])
        head = Head("label", tuple(classes), vecs, np.zeros((0, vecs.shape[1]), np.float32), enc.logit_scale)
        emb = enc.encode_images(np.stack([images.prepare(s.convert("RGB"), enc.image_size, enc.resize_mode)
                                          for s in scenes]))
        p32 = classify.head_probabilities(emb, head)
        p16 = classify.head_probabilities(emb.astype(np.float16).astype(np.float32), head)
        out.append((variant, emb.shape[1], float(np.mean(p32.argmax(1) == p16.argmax(1))),
                    float(np.max(np.abs(p32 - p16)))))
    return out


def _spread(t: list[float]) -> str:
    return f"{statistics.median(t):.3f} ({min(t):.3f}–{max(t):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64, help="tasks per job chunk")
    parser.add_argument("--stores", default="embedded,redis")
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--fp16-images", type=int, default=256, help="images per test model for float16's cost "
                                                                        "(0: skip)")
    args = parser.parse_args()
    print(f"{args.tasks:,} cached tasks, D = {args.dim}, {args.classes} classes, {args.repeats} repeats (median, "
          "min–max): CachedRescorer.predict = task refs → store read of the matrix → new head → TaskPrediction per "
          "task (no Label Studio import)")
    results = [measure(kind, args.tasks, args.repeats, args.dim, args.classes, dtype, args.chunk)
               for kind in args.stores.split(",") for dtype in args.dtypes.split(",")]
    for kind in args.stores.split(","):
        print(f"\n{kind} store")
        print(f"| stored as | re-score cold s | re-score warm s | in job chunks of {args.chunk}, s | tasks/s (cold "
              "median) | cache written once, s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in (r for r in results if r["store"] == kind):
            cold, warm, chunked = r["cold_s"], r["warm_s"], r["chunked_s"]
            assert isinstance(cold, list) and isinstance(warm, list) and isinstance(chunked, list)
            print(f"| {r['dtype']} | {_spread(cold)} | {_spread(warm)} | {_spread(chunked)} | "
                  f"{args.tasks / statistics.median(cold):,.0f} | {r['write_s']:.1f} |")
    print("\nPer 1M cached images (measured at the size above, scaled): MiB")
    print("| store | stored as | whole store (vectors, refs, matrix) | matrix alone | matrix in process memory |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['store']} | {r['dtype']} | {r['store_mib_per_1m']:,.0f} | {r['matrix_mib_per_1m']:,.0f} | "
              f"{r['process_mib_per_1m']:,.0f} |")
    if args.fp16_images:
        print(f"\nfloat16's accuracy cost, {args.fp16_images} synthetic scenes per test model, zero-shot:")
        print("| test model | D | top-1 agreement fp16 vs fp32 | largest abs. change of a probability |")
        print("| --- | --- | --- | --- |")
        for variant, d, agree, delta in fp16_cost(args.fp16_images):
            print(f"| {variant} | {d} | {agree:.4f} | {delta:.6f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
