"""Dataset formats for labelled folders: YOLO (detection), COCO JSON, class folders (classification).

Pure file writing from `LabelledImage` records; no model here.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Box:
    label: str
    score: float
    bbox_xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelledImage:
    """One image and what was predicted for it: a top class (or None) and boxes, in pixels of the upright image."""

    path: Path
    image_wh: tuple[int, int]
    label: str | None = None
    score: float = 0.0
    boxes: tuple[Box, ...] = ()


def stratified_split(items: Sequence[LabelledImage], val_frac: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Train/val indices, split within each class (the image's first box label, its label, or background)."""
    if not 0.0 <= val_frac < 1.0:
        raise ValueError("val_frac must be in [0, 1)")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        key = it.boxes[0].label if it.boxes else (it.label or "__background__")
        groups[key].append(i)
    rng = np.random.default_rng(seed)
    keys = sorted(groups)
    # Largest remainder: each class gets its share of the validation set, and the total stays round(N × val_frac)
    # even when many classes hold a single image.
    quotas = {k: len(groups[k]) * val_frac for k in keys}
    n_val = {k: int(quotas[k]) for k in keys}
    leftover = int(round(len(items) * val_frac)) - sum(n_val.values())
    for k in sorted(keys, key=lambda k: (-(quotas[k] - n_val[k]), k))[:max(leftover, 0)]:
        n_val[k] += 1
    train, val = [], []
    for key in keys:
        idx = list(groups[key])
        rng.shuffle(idx)
        val += idx[:n_val[key]]
        train += idx[n_val[key]:]
    return sorted(train), sorted(val)


def write_yolo(items: Sequence[LabelledImage], classes: Sequence[str], out: Path, val_frac: float = 0.2,
               min_box_px: float = 4.0, seed: int = 0) -> dict[str, int]:
    """A training-ready YOLO dataset: images/{train,val}, labels/{train,val} (`cls cx cy w h`, normalised), data.yaml.

    Images without boxes get an empty label file (background images are hard negatives); boxes smaller than
    `min_box_px` on either side are dropped.
    """
    index = {c: i for i, c in enumerate(classes)}
    train, val = stratified_split(items, val_frac, seed)
    counts = {"train": len(train), "val": len(val), "boxes": 0, "background": 0}
    for split, ids in (("train", train), ("val", val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in ids:
            it = items[i]
            name = f"{i:06d}_{it.path.stem}"
            shutil.copy2(it.path, out / "images" / split / f"{name}{it.path.suffix.lower()}")
            w, h = it.image_wh
            lines = []
            for b in it.boxes:
                x0, y0, x1, y1 = b.bbox_xyxy
                if b.label not in index or min(x1 - x0, y1 - y0) < min_box_px:
                    continue
                lines.append(f"{index[b.label]} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                             f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
            counts["boxes"] += len(lines)
            counts["background"] += not lines
            (out / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {json.dumps(c)}" for i, c in enumerate(classes))
    (out / "data.yaml").write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\n"
                                   f"nc: {len(classes)}\nnames:\n{names}\n")
    return counts


def write_coco(items: Sequence[LabelledImage], classes: Sequence[str], out_json: Path) -> dict[str, int]:
    """COCO detection JSON (1-based category ids; boxes as [x, y, width, height] in pixels, with `score`)."""
    categories = [{"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(classes)]
    index = {c: i + 1 for i, c in enumerate(classes)}
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, it in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": str(it.path), "width": it.image_wh[0], "height": it.image_wh[1]})
        for b in it.boxes:
            if b.label not in index:
                continue
            x0, y0, x1, y1 = b.bbox_xyxy
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": index[b.label],
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0, "score": round(b.score, 6)})
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return {"images": len(images), "annotations": len(annotations)}


def write_folders(items: Sequence[LabelledImage], out: Path, threshold: float) -> dict[str, int]:
    """Class folders for classification; images under `threshold` go to `_review/` and are listed in review.txt."""
    counts: dict[str, int] = defaultdict(int)
    review = []
    for i, it in enumerate(items):
        folder = it.label if it.label is not None and it.score >= threshold else "_review"
        (out / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(it.path, out / folder / f"{i:06d}_{it.path.name}")
        counts[folder] += 1
        if folder == "_review":
            review.append(f"{it.path}\t{it.label or ''}\t{it.score:.4f}")
    (out / "review.txt").write_text("\n".join(review) + ("\n" if review else ""))
    return dict(counts)
