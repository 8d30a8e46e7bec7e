"""Re-scoring cached embeddings in bulk: a project's vectors read as one matrix from each store, scored by a new head.

    flock /tmp/cliplabel-heavy.lock python bench/bench_matrix.py            # 100,000 tasks, D = 512, both stores
    python bench/bench_matrix.py --tasks 100000 --dim 512 --classes 16 --repeats 5 --stores embedded,redis

Per store and stored dtype: the project's embeddings are appended in segments of `--segment` rows (one per encoded
batch, as the product writes them), then each repeat runs the re-score path: one store read of the matrix
(`Store.get_matrix`) → the rows of the tasks' content hashes → a new head's probabilities (`classify`) → the top label
and score of every task. Prints the median with min–max, and the bytes the store holds per 1M cached images (SQLite:
the file's growth; Redis: `MEMORY USAGE` of the list). The accuracy cost of float16 is measured on real embeddings
of both test models (synthetic scenes, zero-shot over the suite's classes): top-1 agreement with float32 and the
largest change of a top probability.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.model.encoder import load_encoder  # noqa: E402
from cliplabel.store import matrix, open_store  # noqa: E402
from cliplabel.vision import classify, images  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402

REDIS_URL = os.environ.get("CLIPLABEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rescore(store, encoder_id: str, group: str, hashes: list[str], head: np.ndarray  # type: ignore[no-untyped-def]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The bulk re-score path: store → matrix → rows of the tasks → head → (top label, top probability) per task."""
    m = store.get_matrix("image", encoder_id, group)
    found, rows = m.rows(hashes)
    probs = classify.softmax_probabilities(m.emb[rows[found]].astype(np.float32), head, 100.0)
    return probs.argmax(axis=1), probs.max(axis=1)


def measure_store(kind: str, dtype: str, args: argparse.Namespace, emb: np.ndarray, hashes: list[str],
                  head: np.ndarray, tmp: Path) -> dict[str, object]:
    prefix = f"cliplabel-bench-{uuid.uuid4().hex[:8]}"
    store = open_store(REDIS_URL if kind == "redis" else None, tmp / f"{kind}-{dtype}", prefix)
    db = tmp / f"{kind}-{dtype}" / "cliplabel.sqlite3"
    try:
        before = db.stat().st_size if kind == "embedded" and db.exists() else 0
        t0 = time.perf_counter()
        for i in range(0, len(hashes), args.segment):
            store.append_matrix("image", "enc", "project-1", matrix.pack_segment(
                hashes[i:i + args.segment], emb[i:i + args.segment], dtype))
        write_s = time.perf_counter() - t0
        if kind == "embedded":
            stored = sum(p.stat().st_size for p in db.parent.glob("cliplabel.sqlite3*")) - before
        else:
            client = redis.Redis.from_url(REDIS_URL)
            stored = int(client.memory_usage(f"{prefix}:v1:matrix:image:enc:project-1", samples=0) or 0)
        times, top = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            top, _ = rescore(store, "enc", "project-1", hashes, head)
            times.append(time.perf_counter() - t0)
        assert top is not None and len(top) == len(hashes), "the re-score lost tasks"
        return {"store": kind, "dtype": dtype, "times": times, "write_s": write_s,
                "per_million_mib": stored / len(hashes) * 1e6 / 2**20}
    finally:
        if kind == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(f"{prefix}:*"))
            if keys:
                client.delete(*keys)
        store.close()


def fp16_cost(n: int) -> list[tuple[str, float, float]]:
    """(test model, top-1 agreement fp16 vs fp32, largest |Δ top probability|) on real embeddings."""
    out = []
    rng = np.random.default_rng(3)
    scenes = [synthetic.scene(rng, 160, 160, n_objects=1, min_radius_frac=0.2, max_radius_frac=0.4)[0]
              for _ in range(n)]
    for variant in tinyclip.VARIANTS:
        enc = load_encoder(f"local-dir:{tinyclip.ensure_model(variant=variant)}", None, "cpu")
        head = enc.encode_texts([f"a photo of a {c}." for c in CLASSES])
        emb = enc.encode_images(np.stack([images.prepare(s.convert("RGB"), enc.image_size, enc.resize_mode)
                                          for s in scenes]))
        p32 = classify.softmax_probabilities(emb, head, enc.logit_scale)
        p16 = classify.softmax_probabilities(emb.astype(np.float16).astype(np.float32), head, enc.logit_scale)
        agree = float(np.mean(p32.argmax(1) == p16.argmax(1)))
        out.append((variant, agree, float(np.max(np.abs(p32.max(1) - p16.max(1))))))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--segment", type=int, default=64, help="rows per appended segment (an encoded batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", default="embedded,redis")
    parser.add_argument("--fp16-images", type=int, default=256, help="images per test model for float16's cost")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    emb = _unit(rng, args.tasks, args.dim)
    head = _unit(rng, args.classes, args.dim)
    hashes = [f"{i:064x}" for i in rng.permutation(args.tasks)]
    print(f"{args.tasks:,} cached tasks, D = {args.dim}, {args.classes} classes, segments of {args.segment} rows, "
          f"{args.repeats} repeats (median, min–max): store read → rows → head → top label per task")
    print("| store | stored as | re-score s | tasks/s (median) | write s (once) | stored MiB per 1M images |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            for dtype in ("float32", "float16"):
                r = measure_store(kind, dtype, args, emb, hashes, head, Path(tmp))
                t = r["times"]
                assert isinstance(t, list)
                med = statistics.median(t)
                print(f"| {kind} | {dtype} | {med:.3f} ({min(t):.3f}–{max(t):.3f}) | {args.tasks / med:,.0f} | "
                      f"{r['write_s']:.1f} | {r['per_million_mib']:,.0f} |")
    print(f"\nfloat16's accuracy cost, {args.fp16_images} synthetic scenes per test model, zero-shot over "
          f"{len(CLASSES)} classes:")
    print("| test model | top-1 agreement fp16 vs fp32 | largest change of the top probability |")
    print("| --- | --- | --- |")
    for variant, agree, delta in fp16_cost(args.fp16_images):
        print(f"| {variant} | {agree:.4f} | {delta:.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
