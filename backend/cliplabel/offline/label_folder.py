"""Label a folder of images without Label Studio: classes from the command line or a label config, in batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cliplabel.core.domain import Control, LabelClass
from cliplabel.core.errors import CliplabelError
from cliplabel.model.embeddings import EmbeddingService
from cliplabel.offline.export import Box, LabelledImage
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.detect import BoxDetector
from cliplabel.vision import classify

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, sorted (symlinks are not followed out of it)."""
    base = root.resolve()
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and p.resolve().is_relative_to(base))


def controls_for(classes: Sequence[str], boxes: bool) -> tuple[Control, Control | None]:
    labels = tuple(LabelClass(c) for c in classes)
    choice = Control(kind="choices", from_name="label", to_name="image", image_key="image", classes=labels)
    rect = Control(kind="rectanglelabels", from_name="bbox", to_name="image", image_key="image",
                   classes=labels) if boxes else None
    return choice, rect


def label_images(embeddings: EmbeddingService, detector: BoxDetector, vectors: ClassVectors, max_bytes: int,
                 paths: Sequence[Path], classes: Sequence[str], boxes: bool, batch: int = 64,
                 progress: Callable[[int, int], None] | None = None) -> list[LabelledImage]:
    """Top class (and boxes) for each readable image; unreadable ones (or over `max_bytes`) are logged and skipped."""
    choice, rect = controls_for(classes, boxes)
    served = vectors.served(choice, None)
    out: list[LabelledImage] = []
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        blobs, items, kept = [], [], []
        for path in chunk:
            try:
                if path.stat().st_size > max_bytes:
                    raise CliplabelError(f"more than {max_bytes} bytes")
                blob = path.read_bytes()
                items.append(detector.load_image(blob))
                blobs.append(blob)
                kept.append(path)
            except OSError as exc:
                logger.warning("skipped %s: %s", path, type(exc).__name__)
            except CliplabelError as exc:
                logger.warning("skipped %s: %s", path, exc.detail)
        embs = embeddings.images(blobs)
        found: list[list] = detector.detect(items, rect) if rect is not None and items else [[]] * len(items)
        for path, item, emb, regs in zip(kept, items, embs, found):
            if isinstance(emb, CliplabelError):
                continue
            probs = classify.head_probabilities(emb[None, :], served)[0]
            k = int(np.argmax(probs))
            out.append(LabelledImage(path=path, image_wh=item.wh, label=choice.values[k], score=float(probs[k]),
                                     boxes=tuple(Box(r.label, r.score, r.bbox_xyxy) for r in regs)))
        if progress is not None:
            progress(min(start + batch, len(paths)), len(paths))
    return out



