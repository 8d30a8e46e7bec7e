"""Brute-force search, neighbours, near-duplicates and k-means on a project's cached embeddings: where it stops.

    flock /tmp/cliplabel-heavy.lock python bench/bench_search.py
    python bench/bench_search.py --tasks 10000,100000 --pairs 5000,20000 --dim 512 --repeats 3

Random unit vectors stand in for the embeddings (the cost does not depend on their values). Per size: one text or
example query (an (N, D) × (D,) product and the top 20, `search.top_k`), and the all-pairs work `review` and
`/duplicates` do (`search.nearest` with 5 neighbours, `search.duplicate_groups` at cosine 0.97, `review.place`'s
k-means). Prints the median with min–max over the repeats. The loading of the embeddings from the store and Label
Studio's task list is not included (see bench_matrix.py for the store's bulk read).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.services.review import cluster_count, kmeans  # noqa: E402
from cliplabel.services.search import duplicate_groups, nearest, top_k  # noqa: E402


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _time(fn: Callable[..., object], repeats: int, *args: object) -> str:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args)
        runs.append(time.perf_counter() - started)
    return f"{statistics.median(runs):.3f} ({min(runs):.3f}–{max(runs):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="10000,100000", help="sizes for a single query")
    parser.add_argument("--pairs", default="2000,10000", help="sizes for the all-pairs work and k-means")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"D = {args.dim}, {args.repeats} repeats, seconds: median (min–max)\n")
    print("| tasks | one query (rank + top 20) |")
    print("| --- | --- |")
    for n in (int(x) for x in args.tasks.split(",")):
        emb, q = _unit(rng, n, args.dim), _unit(rng, 1, args.dim)[0]
        print(f"| {n:,} | {_time(lambda e, v: top_k(e @ v, 20), args.repeats, emb, q)} |")
    print("\n| tasks | neighbours (5 each) | near-duplicates (0.97) | k-means (k) |")
    print("| --- | --- | --- | --- |")
    for n in (int(x) for x in args.pairs.split(",")):
        emb = _unit(rng, n, args.dim)
        k = cluster_count(n)
        print(f"| {n:,} | {_time(nearest, args.repeats, emb, 5)} | "
              f"{_time(duplicate_groups, args.repeats, emb, 0.97)} | "
              f"{_time(kmeans, args.repeats, emb, k)} ({k}) |")


if __name__ == "__main__":
    main()
