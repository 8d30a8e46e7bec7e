"""Classification throughput: `/predict` end to end against the raw encoder, at the same batch size.

    python bench/bench_predict.py                       # the tiny CLIP and ViT-B-32 (random weights), 2 CPU cores
    python bench/bench_predict.py --models tiny --images 512 --batch 64

End to end means: Label Studio-style tasks → HTTP `/predict` → image download from a real HTTP host → decode →
resize → encode → score → JSON, on a cold cache (every image new), then the same request again (warm: cache hits).
Raw means `encode_images` on already prepared uint8 arrays. Speed does not depend on weight values, so ViT-B-32 runs
with random weights where no pretrained checkpoint can be downloaded. Prints a table and writes bench/out/predict.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import images  # noqa: E402
from backend.api import create_app  # noqa: E402
from backend.config import Settings  # noqa: E402
from backend.encoder import load_encoder  # noqa: E402
from backend.store import open_store  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402
from tests.support import LS_TOKEN, start_image_host, start_server  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c} {s}"/>' for c in synthetic.COLOURS for s in synthetic.SHAPES)
          + "</Choices></View>")


def make_images(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img, _objects = synthetic.scene(rng, width, height, n_objects=1, min_radius_frac=0.3, max_radius_frac=0.45)
        out.append(synthetic.encode_jpeg(img))
    return out


def raw_throughput(encoder, blobs: list[bytes], batch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(encoder images/s on prepared arrays, single-thread decode+resize images/s)."""
    t0 = time.perf_counter()
    prepared = np.stack([images.prepare(images.decode(b, 10**8, min_side=encoder.image_size).image,
                                        encoder.image_size, encoder.resize_mode) for b in blobs])
    prep_rate = len(blobs) / (time.perf_counter() - t0)
    encoder.encode_images(prepared[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch):
        encoder.encode_images(prepared[i:i + batch])
    return len(prepared) / (time.perf_counter() - t0), prep_rate


def end_to_end(encoder, blobs: list[bytes], batch: int, tasks_per_request: int  # type: ignore[no-untyped-def]
               ) -> tuple[float, float, float]:
    """(cold images/s, warm images/s, seconds to encode the prompt ensembles) through the real HTTP app."""
    host, host_server = start_image_host()
    tasks = [{"id": i, "data": {"image": host.add(f"/data/upload/1/{i}.jpg", b)}} for i, b in enumerate(blobs)]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp))
        settings = Settings(model="bench", data_dir=Path(tmp), batch_size=batch, fetch_workers=8)
        live = start_server(create_app(settings, encoder=encoder, store=store))
        http = requests.Session()
        http.trust_env = False
        try:
            http.post(f"{live.url}/setup", json={"project": "1.1", "schema": CONFIG, "hostname": host.url,
                                                 "access_token": LS_TOKEN}).raise_for_status()
            # One request with an image outside the set: the prompt ensembles get encoded here, once per label set.
            extra = host.add("/data/upload/1/extra.jpg", make_images(1, 64, 64, seed=99)[0])
            t0 = time.perf_counter()
            http.post(f"{live.url}/predict", json={"tasks": [{"id": -1, "data": {"image": extra}}],
                                                   "project": "1.1"}).raise_for_status()
            prompt_s = time.perf_counter() - t0
            rates = []
            for _ in ("cold", "warm"):
                t0 = time.perf_counter()
                for i in range(0, len(tasks), tasks_per_request):
                    resp = http.post(f"{live.url}/predict", json={"tasks": tasks[i:i + tasks_per_request],
                                                                  "project": "1.1"}, timeout=600)
                    resp.raise_for_status()
                    assert all(r["result"] for r in resp.json()["results"]), "a task was not predicted"
                rates.append(len(tasks) / (time.perf_counter() - t0))
        finally:
            live.stop()
            host_server.shutdown()
            store.close()
    return rates[0], rates[1], prompt_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,ViT-B-32", help="comma-separated: tiny and/or open_clip names")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tasks-per-request", type=int, default=128)
    parser.add_argument("--size", default="640x480", help="image size WxH (JPEG)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "predict.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    blobs = make_images(args.images, width, height)
    rows = []
    for name in args.models.split(","):
        model = f"local-dir:{tinyclip.ensure_model()}" if name == "tiny" else name
        encoder = load_encoder(model, None, "cpu")
        n = args.images if name == "tiny" else min(args.images, 128)  # ViT-B-32 runs ~15 images/s here
        raw, prep = raw_throughput(encoder, blobs[:n], args.batch)
        cold, warm, prompt_s = end_to_end(encoder, blobs[:n], args.batch, args.tasks_per_request)
        rows.append({"model": name, "input": encoder.image_size, "batch": args.batch, "images": n,
                     "raw_encoder_img_s": round(raw, 1), "decode_resize_1thread_img_s": round(prep, 1),
                     "predict_cold_img_s": round(cold, 1), "predict_warm_img_s": round(warm, 1),
                     "cold_vs_raw": round(cold / raw, 3), "prompt_ensembles_s": round(prompt_s, 2)})
    header = ["model", "input", "batch", "images", "raw_encoder_img_s", "decode_resize_1thread_img_s",
              "predict_cold_img_s", "predict_warm_img_s", "cold_vs_raw", "prompt_ensembles_s"]
    print(f"# /predict classification vs raw encoder; {args.size} JPEG, 2 CPU cores")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in header) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"size": args.size, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
