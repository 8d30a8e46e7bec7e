"""Synthetic detection benchmark: boxes for `<RectangleLabels>` on scenes of 0–4 shapes with known boxes.

    python bench/bench_boxes.py                 # 60 scenes of 256×256, the tiny CLIP, default + cheaper + denser
    python bench/bench_boxes.py --scenes 200 --variants default

Reports AP50, recall at IoU 0.5, false positives per image (all scenes) and boxes per empty scene, crops/s of the box
path (crop + encode + cache, proposals excluded) next to the raw encoder's crops/s at the same batch size, and
images/s of the whole path. Prints a table and writes bench/out/boxes.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliplabel.core.domain import Control, LabelClass  # noqa: E402
from cliplabel.core.metrics import Metrics  # noqa: E402
from cliplabel.model.embeddings import EmbeddingService, content_hash  # noqa: E402
from cliplabel.model.encoder import load_encoder  # noqa: E402
from cliplabel.services.class_vectors import ClassVectors  # noqa: E402
from cliplabel.services.detect import BoxDetector, BoxImage, DetectorConfig  # noqa: E402
from cliplabel.store import open_store  # noqa: E402
from cliplabel.vision import proposals  # noqa: E402
from cliplabel.vision.prompts import DEFAULT_TEMPLATES  # noqa: E402
from tests import synthetic, tinyclip  # noqa: E402
from tests.detection_eval import evaluate  # noqa: E402

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
BASE = DetectorConfig()
VARIANTS: dict[str, DetectorConfig] = {
    "default": BASE,
    "cheaper": dataclasses.replace(BASE, proposals=dataclasses.replace(BASE.proposals, proposal_side=96),
                                   boxes=dataclasses.replace(BASE.boxes, max_crops=48)),
    "no-context": dataclasses.replace(BASE, context_factor=None),
    "denser": dataclasses.replace(BASE, proposals=dataclasses.replace(BASE.proposals, proposal_side=192),
                                  boxes=dataclasses.replace(BASE.boxes, max_crops=256)),
    "denser+windows": dataclasses.replace(BASE, proposals=dataclasses.replace(
        BASE.proposals, proposal_side=256, window_scales=(0.2, 0.35, 0.5, 0.75)),
        boxes=dataclasses.replace(BASE.boxes, max_crops=384)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--variants", default="default,cheaper,no-context,denser,denser+windows")
    parser.add_argument("--model", default="tiny",
                        help="tiny, or an open_clip name run with random weights to measure speed only (its AP is "
                             "meaningless)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "boxes.json"))
    args = parser.parse_args()
    model = f"local-dir:{tinyclip.ensure_model()}" if args.model == "tiny" else args.model
    encoder = load_encoder(model, None, "cpu")
    rng = np.random.default_rng(2024)
    scenes = [synthetic.scene(rng, args.size, args.size) for _ in range(args.scenes)]
    truths = [[(o.bbox_xyxy, o.name) for o in objs] for _, objs in scenes]
    control = Control(kind="rectanglelabels", from_name="bbox", to_name="image", image_key="image",
                      classes=tuple(LabelClass(c) for c in CLASSES))
    n_raw = args.batch * (8 if args.model == "tiny" else 2)
    crops = np.random.default_rng(0).integers(0, 255, (n_raw, encoder.image_size, encoder.image_size, 3),
                                             dtype=np.uint8)
    encoder.encode_images(crops[:args.batch])
    t0 = time.perf_counter()
    for i in range(0, len(crops), args.batch):
        encoder.encode_images(crops[i:i + args.batch])
    raw_crops_s = len(crops) / (time.perf_counter() - t0)
    rows = []
    for name in args.variants.split(","):
        config = VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
            store = open_store(None, Path(tmp))
            metrics = Metrics()
            emb = EmbeddingService(encoder, store, args.batch, 10**8, pool, metrics)
            detector = BoxDetector(emb, store, pool, ClassVectors(emb, DEFAULT_TEMPLATES), config)
            detector.background_vectors(control)
            detector.class_vectors.zero_shot(control)
            items = [BoxImage(content_hash(synthetic.encode_png(img)), img) for img, _ in scenes]
            t0 = time.perf_counter()
            found = []
            for i in range(0, len(items), 8):  # 8 images per request, as a batch of tasks would arrive
                found.extend(detector.detect(items[i:i + 8], control))
            total_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(lambda it, pp=config.proposals: proposals.propose(it.image, pp), items))
            proposal_s = time.perf_counter() - t0
            store.close()
        n_crops = metrics.snapshot().get("crops_encoded", 0)
        scores = evaluate([[(r.bbox_xyxy, r.label, r.score) for r in regs] for regs in found], truths)
        empty = [len(regs) for regs, (_, objs) in zip(found, scenes) if not objs]
        crops_s = n_crops / max(total_s - proposal_s, 1e-9)
        rows.append({"variant": name, "AP50": round(scores.ap50, 3), "recall50": round(scores.recall50, 3),
                     "fp_per_image": round(scores.fp_per_image, 2),
                     "boxes_per_empty_scene": round(float(np.mean(empty)) if empty else 0.0, 2),
                     "crops_per_image": round(n_crops / len(scenes), 1), "pipeline_crops_s": round(crops_s, 1),
                     "raw_crops_s": round(raw_crops_s, 1), "crops_vs_raw": round(crops_s / raw_crops_s, 3),
                     "images_s": round(len(scenes) / total_s, 2)})
    header = list(rows[0])
    print(f"# boxes on {args.scenes} synthetic {args.size}×{args.size} scenes ({sum(len(t) for t in truths)} objects), "
          f"model {args.model}, batch {args.batch}, 2 CPU cores")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in header) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"scenes": args.scenes, "model": args.model, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
