"""Retraining time vs examples, and what the learned head costs to serve: pure numpy, no model.

    flock /tmp/cliplabel-heavy.lock python bench/bench_retrain.py            # 1k and 10k examples, 48 classes
    flock /tmp/cliplabel-heavy.lock python bench/bench_retrain.py --sizes 1000 --repeats 1   # quick look

Embeddings are constructed at ViT-B/32's width (D = 512) with CLIP's geometry (images near a shared direction, the
modality gap; each of the 48 classes has two looks its text does not describe, so the memory is built, capped and
searched). Rows:
- `decode`: the stored feedback records → FeedbackExamples (what a retrain reads from the store);
- `fit`: `train.fit` with the trainer's settings (prompt weights, leave-one-out search over α, ρ, β and the
  temperature, the memory's k-means, the acceptance check against zero-shot);
- `score 100k`: `classify.head_probabilities` of 100,000 embeddings with the learned head (the re-score product).
Each row: median and min–max over `--repeats` runs.
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

from cliplabel.core.domain import FeedbackExample, Head  # noqa: E402
from cliplabel.store import records  # noqa: E402
from cliplabel.vision import classify, train  # noqa: E402

DIM = 512
CLASSES = 48
PROMPTS_PER_CLASS = 8


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def world(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, Head]:
    """(prompt embeddings per class, (n, D) embeddings, (n,) labels, the zero-shot head)."""
    rng = np.random.default_rng(seed)
    text = _unit(rng.standard_normal((CLASSES, DIM)))
    prompt_embs = [_unit(t + 0.3 * rng.standard_normal((PROMPTS_PER_CLASS, DIM))) for t in text]
    gap = _unit(rng.standard_normal(DIM))
    looks = _unit(text[:, None, :] + 1.5 * rng.standard_normal((CLASSES, 2, DIM)))
    y = rng.integers(0, CLASSES, n)
    x = _unit(4 * gap + looks[y, rng.integers(0, 2, n)] + 0.05 * rng.standard_normal((n, DIM)))
    uniform = [np.full(PROMPTS_PER_CLASS, 1.0 / PROMPTS_PER_CLASS)] * CLASSES
    zero_shot = Head("label", tuple(f"class {k}" for k in range(CLASSES)), train.ensemble_vectors(prompt_embs, uniform),
                     np.zeros((0, DIM), np.float32), 100.0)
    return prompt_embs, x, y, zero_shot


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    runs, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - started)
    return runs, out


def row(name: str, n: int, runs: list[float], note: str = "") -> None:
    print(f"| {name:<11} | {n:>6} | {statistics.median(runs):8.3f} | {min(runs):.3f}–{max(runs):.3f} | {note}")


def bench_size(n: int, repeats: int) -> None:
    prompt_embs, x, y, zero_shot = world(n, seed=n)
    labels = zero_shot.labels
    stored = records.dump_examples([FeedbackExample("1", i, "label", f"h{i}", labels[c], "new", x[i])
                                    for i, c in enumerate(y)])
    runs, _ = timed(lambda: records.load_examples(stored), repeats)
    row("decode", n, runs)
    examples = train.Examples(x, y)
    runs, result = timed(lambda: train.fit("label", labels, prompt_embs, examples, zero_shot,
                                           np.zeros((0, DIM), np.float32), 100.0), repeats)
    if not isinstance(result, train.TrainResult):
        raise TypeError("train.fit returned no TrainResult")
    m = result.metrics
    row("fit", n, runs, f"accepted={result.accepted} loo={m['loo_accuracy']:.3f} "
        f"text-only loo={m['text_loo_accuracy']:.3f} alpha={m['alpha']} rho={m['memory_ratio']} "
        f"beta={m['memory_beta']} keys={int(m['memory_keys'])}")
    many = _unit(np.repeat(x, -(-100_000 // n), axis=0)[:100_000])
    head = result.head
    runs, _ = timed(lambda: classify.head_probabilities(many, head), repeats)
    row("score 100k", n, runs, f"head of {int(m['memory_keys'])} keys + {CLASSES} class vectors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"48 classes, D = {DIM}, {args.repeats} runs each; numpy {np.__version__}")
    print("| step        |      n | median s | min–max s | notes")
    print("| ---         |    --- |      --- |       --- | ---")
    for n in args.sizes:
        bench_size(n, args.repeats)


if __name__ == "__main__":
    main()
