"""Box quality and speed of `<RectangleLabels>` on synthetic scenes with known boxes, per test model.

    python bench/bench_boxes.py                          # both test models, 120 varied + 20 empty + 30 clutter scenes
    python bench/bench_boxes.py --models plain --scenes 200 --variants default,no-context
    python bench/bench_boxes.py --speed ViT-B-32 --runs 5    # crops/s of the box path against the raw encoder

Quality (per model and variant): AP50 and AP50:95 from pycocotools (the reference COCO implementation), recall at
IoU 0.5 and false positives per image (greedy matching, tests/detection_eval.py) on scenes of 1–4 shapes of varied
size (a third small: 5–10 % of the image side; some touching or cut by the border, tests/scenes.py); boxes per empty
scene; boxes per clutter scene (distractor shapes whose colours the config does not name: every box is wrong); and
images/s of the whole path (proposals included). Writes bench/out/boxes.json.

Speed (`--speed MODEL`, an open_clip name run with random weights): the box path's crops/s (crop + encode + cache;
proposals excluded) against the raw encoder on the same number of ready crops at the same batch, `--runs` times
each, interleaved; median and min–max.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
from tests import scenes, synthetic, tinyclip  # noqa: E402
from tests.detection_eval import evaluate  # noqa: E402

BASE = DetectorConfig()
VARIANTS: dict[str, DetectorConfig] = {
    "default": BASE,
    "no-context": dataclasses.replace(BASE, context_factor=None),
    "proposal-side-128": dataclasses.replace(BASE, proposals=dataclasses.replace(BASE.proposals, proposal_side=128)),
    "margin-0.8": dataclasses.replace(BASE, boxes=dataclasses.replace(BASE.boxes, default_margin_threshold=0.8)),
    "pad-0.1": dataclasses.replace(BASE, boxes=dataclasses.replace(BASE.boxes, pad_frac=0.1)),
}
Scene = tuple[Any, list[synthetic.SceneObject]]


def control_of(classes: Sequence[str]) -> Control:
    return Control(kind="rectanglelabels", from_name="bbox", to_name="image", image_key="image",
                   classes=tuple(LabelClass(c) for c in classes))


def coco_ap(found: Sequence[Sequence[tuple[Any, str, float]]], truths: Sequence[Sequence[tuple[Any, str]]],
            classes: Sequence[str]) -> tuple[float, float]:
    """(AP50, AP50:95) from pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat = {c: i + 1 for i, c in enumerate(classes)}
    gt: dict[str, Any] = {"images": [{"id": i + 1, "width": 256, "height": 256} for i in range(len(truths))],
                          "categories": [{"id": v, "name": k} for k, v in cat.items()], "annotations": []}
    for i, objs in enumerate(truths):
        for box, name in objs:
            x0, y0, x1, y1 = box
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": cat[name],
                                      "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                      "iscrowd": 0})
    dets = [{"image_id": i + 1, "category_id": cat[name], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
             "score": score} for i, regs in enumerate(found) for b, name, score in regs]
    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def run_detector(encoder: Any, config: DetectorConfig, scene_list: Sequence[Scene], classes: Sequence[str],
                 batch: int) -> tuple[list[list[tuple[Any, str, float]]], float, int, float]:
    """(boxes per scene, seconds of the whole path, crops encoded, seconds of proposals alone) on a fresh store."""
    control = control_of(classes)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
        store = open_store(None, Path(tmp))
        metrics = Metrics()
        emb = EmbeddingService(encoder, store, batch, 10**8, pool, metrics)
        detector = BoxDetector(emb, store, pool, ClassVectors(emb, DEFAULT_TEMPLATES), config)
        detector.background_vectors(control)
        detector.class_vectors.zero_shot(control)
        items = [BoxImage(content_hash(synthetic.encode_png(img)), img) for img, _ in scene_list]
        t0 = time.perf_counter()
        found = []
        for i in range(0, len(items), 8):  # 8 images per request, as a batch of tasks would arrive
            found.extend(detector.detect(items[i:i + 8], control))
        total_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(pool.map(lambda it: proposals.propose(it.image, config.proposals), items))
        proposal_s = time.perf_counter() - t0
        store.close()
    n_crops = int(metrics.snapshot().get("crops_encoded", 0))
    return [[(r.bbox_xyxy, r.label, r.score) for r in regs] for regs in found], total_s, n_crops, proposal_s


def quality(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(2024)
    varied = [scenes.varied_scene(rng) for _ in range(args.scenes)]
    empty = [scenes.varied_scene(rng, n_objects=0) for _ in range(args.empty)]
    clutter = [scenes.clutter_scene(rng) for _ in range(args.clutter)]
    truths = [[(o.bbox_xyxy, o.name) for o in objs] for _, objs in varied]
    rows = []
    for model in args.models.split(","):
        encoder = load_encoder(f"local-dir:{tinyclip.ensure_model(variant=model)}", None, "cpu")
        for name in args.variants.split(","):
            config = VARIANTS[name]
            found, total_s, n_crops, _ = run_detector(encoder, config, varied + empty, scenes.ALL_CLASSES,
                                                      args.batch)
            on_clutter, _, _, _ = run_detector(encoder, config, clutter, scenes.CLUTTER_CONFIG_CLASSES, args.batch)
            greedy = evaluate(found[:len(varied)], truths)
            ap50, ap = coco_ap(found[:len(varied)], truths, scenes.ALL_CLASSES)
            rows.append({"model": model, "logit_scale": round(float(encoder.logit_scale), 1), "variant": name,
                         "AP50": round(ap50, 3), "AP50:95": round(ap, 3), "recall50": round(greedy.recall50, 3),
                         "fp_per_image": round(greedy.fp_per_image, 2),
                         "boxes_per_empty_scene": round(float(np.mean([len(f) for f in found[len(varied):]])), 2),
                         "boxes_per_clutter_scene": round(float(np.mean([len(f) for f in on_clutter])), 2),
                         "crops_per_image": round(n_crops / (len(varied) + len(empty)), 1),
                         "images_s": round((len(varied) + len(empty)) / total_s, 2)})
    n_obj = sum(len(t) for t in truths)
    print(f"# boxes on {args.scenes} varied scenes ({n_obj} objects), {args.empty} empty, {args.clutter} clutter; "
          f"256×256, batch {args.batch}, 2 CPU cores")
    _table(rows)
    return rows


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    encoder = load_encoder(args.speed, None, "cpu")
    rng = np.random.default_rng(7)
    scene_list = [scenes.varied_scene(rng) for _ in range(args.speed_scenes)]
    pipeline, raw = [], []
    encoder.encode_images(np.zeros((args.batch, encoder.image_size, encoder.image_size, 3), np.uint8))
    for _ in range(args.runs):
        _, total_s, n_crops, proposal_s = run_detector(encoder, BASE, scene_list, scenes.ALL_CLASSES, args.batch)
        pipeline.append(n_crops / max(total_s - proposal_s, 1e-9))
        crops = np.random.default_rng(0).integers(0, 255, (n_crops, encoder.image_size, encoder.image_size, 3),
                                                 dtype=np.uint8)
        t0 = time.perf_counter()
        for i in range(0, len(crops), args.batch):
            encoder.encode_images(crops[i:i + args.batch])
        raw.append(len(crops) / (time.perf_counter() - t0))
    ratios = [p / r for p, r in zip(pipeline, raw)]
    row = {"model": args.speed, "runs": args.runs, "crops_per_run": n_crops,
           "pipeline_crops_s": _spread(pipeline, 1), "raw_crops_s": _spread(raw, 1),
           "crops_vs_raw": _spread(ratios, 3)}
    print(f"# box-path crops/s against the raw encoder, {args.speed} (random weights), batch {args.batch}, "
          f"{args.speed_scenes} scenes per run, median (min–max)")
    _table([row])
    return [row]


def _spread(values: Sequence[float], digits: int) -> str:
    return f"{round(statistics.median(values), digits)} ({round(min(values), digits)}–{round(max(values), digits)})"


def _table(rows: Sequence[dict[str, Any]]) -> None:
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in header) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(tinyclip.VARIANTS))
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--empty", type=int, default=20)
    parser.add_argument("--clutter", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--variants", default="default")
    parser.add_argument("--speed", default=None, help="an open_clip model name: measure crops/s only")
    parser.add_argument("--speed-scenes", type=int, default=12)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "boxes.json"))
    args = parser.parse_args()
    rows = speed(args) if args.speed else quality(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
