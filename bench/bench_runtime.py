"""CPU runtimes of the encoder, measured in one run: torch fp32 against ONNX Runtime fp32 (CLIPLABEL_RUNTIME).

    flock /tmp/cliplabel-heavy.lock python bench/bench_runtime.py                 # ViT-B-32, random weights
    python bench/bench_runtime.py --models tiny,ViT-B-32 --batch 32 --repeats 5 --threads 2

Per model: image tower img/s on prepared uint8 arrays at `--batch` and text tower prompts/s (a prompt ensemble of
`--prompts` texts), each the median with min–max over `--repeats` runs alternating between the runtimes, after one
warm-up; the cosine of the ONNX embeddings to torch's (lowest over the batch); the export's one-time cost. Speed does
not depend on weight values, so models without a local checkpoint run with random weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.model.encoder import load_encoder  # noqa: E402
from tests import tinyclip  # noqa: E402


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def measure(name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    model = f"local-dir:{tinyclip.ensure_model()}" if name == "tiny" else name
    # The same random weights in every load (the export cache would otherwise, rightly, find its export stale).
    torch.manual_seed(0)
    torch_enc = load_encoder(model, None, "cpu", args.threads, runtime="torch")
    torch.manual_seed(0)
    started = time.perf_counter()
    onnx_enc = load_encoder(model, None, "cpu", args.threads, runtime="onnx", cache_dir=cache)
    first_load_s = time.perf_counter() - started
    torch.manual_seed(0)
    started = time.perf_counter()
    load_encoder(model, None, "cpu", args.threads, runtime="onnx", cache_dir=cache)
    cached_load_s = time.perf_counter() - started
    size = torch_enc.image_size
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    texts = [f"a photo of a {i} thing, number {i * 7}." for i in range(args.prompts)]
    encoders = {"torch": torch_enc, "onnx": onnx_enc}
    img: dict[str, list[float]] = {k: [] for k in encoders}
    txt: dict[str, list[float]] = {k: [] for k in encoders}
    for enc in encoders.values():  # warm-up: first calls allocate
        enc.encode_images(batch[:2])
        enc.encode_texts(texts[:2])
    for _ in range(args.repeats):
        for key, enc in encoders.items():
            t0 = time.perf_counter()
            enc.encode_images(batch)
            img[key].append(args.batch / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            enc.encode_texts(texts)
            txt[key].append(args.prompts / (time.perf_counter() - t0))
    cos_img = float(np.min(np.sum(torch_enc.encode_images(batch) * onnx_enc.encode_images(batch), axis=1)))
    cos_txt = float(np.min(np.sum(torch_enc.encode_texts(texts) * onnx_enc.encode_texts(texts), axis=1)))
    return {"model": name, "img": img, "txt": txt, "cos_img": cos_img, "cos_txt": cos_txt,
            "export_s": first_load_s, "cached_load_s": cached_load_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=256, help="texts per prompt-ensemble run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"batch {args.batch}, {args.prompts} prompts, {args.threads} threads, {args.repeats} repeats "
          "(median, min–max)")
    print("| model | tower | torch fp32 /s | onnx fp32 /s | onnx ÷ torch (median) | cosine (min) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = measure(name, args, Path(tmp) / "onnx")
            for tower, unit, cos in (("img", "images", r["cos_img"]), ("txt", "prompts", r["cos_txt"])):
                t, o = r[tower]["torch"], r[tower]["onnx"]
                ratio = statistics.median(o) / statistics.median(t)
                print(f"| {name} | {unit} | {spread(t)} | {spread(o)} | {ratio:.2f}× | {cos:.7f} |")
            print(f"| {name} | first load with export | | {r['export_s']:.1f} s | | |")
            print(f"| {name} | load from the export cache | | {r['cached_load_s']:.1f} s | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
