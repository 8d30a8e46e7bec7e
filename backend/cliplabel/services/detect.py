"""Boxes for `<RectangleLabels>`: proposals → cached crop embeddings → class vs background → context check → boxes.

Also the interactive path: name the box an annotator drew, or find the box around the point they clicked.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cliplabel.core.domain import Control, Head, PromptEnsemble, RegionPrediction
from cliplabel.model.embeddings import EmbeddingService, content_hash
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.store import Store
from cliplabel.vision import boxes, images, prompts, proposals, regions

DEFAULT_BACKGROUND_PROMPTS: tuple[str, ...] = (
    "an empty background.", "a photo of an empty background.", "a plain texture.", "nothing.", "background",
    "an empty scene.", "a blurry photo of nothing in particular.",
)
PROPOSALS_NS = "proposals"
# Class-conditional negatives: a crop that cuts through an object is "part of" it. CLIP scores such crops almost as
# high as whole objects against the class prompts; against these it loses.
PARTIAL_TEMPLATES: tuple[str, ...] = ("part of a {}.", "a cropped part of a {}.", "a piece of a {}.", "the edge of a {}.")


@dataclass(frozen=True)
class DetectorConfig:
    proposals: proposals.ProposalParams = field(default_factory=proposals.ProposalParams)
    boxes: boxes.BoxParams = field(default_factory=boxes.BoxParams)
    context_factor: float | None = 2.0  # None turns the context check off
    background_prompts: tuple[str, ...] = DEFAULT_BACKGROUND_PROMPTS
    partial_templates: tuple[str, ...] = PARTIAL_TEMPLATES


class BoxImage:
    """One image of the box path: its content hash (the key of its proposals and crops in the cache), its upright
    size, and its pixels, which a re-score from the cache never needs unless something is missing (then `load`).
    """

    def __init__(self, content_hash: str, image: Image.Image | None = None, *, wh: tuple[int, int] | None = None,
                 load: Callable[[], Image.Image] | None = None) -> None:
        self.content_hash = content_hash
        self.wh: tuple[int, int]
        self._source: Image.Image | Callable[[], Image.Image]
        if image is not None:
            self.wh, self._source = image.size, image
        elif wh is not None and load is not None:
            self.wh, self._source = wh, load
        else:
            raise ValueError("a BoxImage needs its image, or its size and a way to load it")
        self._lock = threading.Lock()

    @property
    def image(self) -> Image.Image:
        with self._lock:
            if not isinstance(self._source, Image.Image):
                self._source = self._source()  # loaded once, by the first crop a cache miss needs
            return self._source


def _box_key(prefix: str, box: np.ndarray) -> str:
    return prefix + ",".join(str(int(round(v))) for v in box)


class BoxDetector:
    """Boxes of `<RectangleLabels>` controls. Proposals are cached in the store, crop embeddings by `embeddings`."""

    def __init__(self, embeddings: EmbeddingService, store: Store, pool: ThreadPoolExecutor,
                 class_vectors: ClassVectors, config: DetectorConfig) -> None:
        self.embeddings = embeddings
        self.store = store
        self.pool = pool
        self.class_vectors = class_vectors
        self.config = config
        # Proposals depend on the proposal and box settings only (not on the model): cached under their digest.
        self._proposal_id = hashlib.sha256(repr((config.proposals, config.boxes)).encode()).hexdigest()[:16]

    @property
    def _size(self) -> int:
        return self.embeddings.image_size

    def load_image(self, blob: bytes) -> BoxImage:
        """The full-resolution upright image of the box path.

        Raises:
            ImageFetchError: not an image we can decode, or more pixels than the embeddings' cap.
        """
        return BoxImage(content_hash=content_hash(blob), image=images.decode(blob, self.embeddings.max_pixels).image)

    def background_vectors(self, control: Control) -> np.ndarray:
        """(1 + K, D): the generic background ensemble, then one "part of a <class>" ensemble per class."""
        generic = PromptEnsemble(label="background", prompts=self.config.background_prompts,
                                 weights=(1.0,) * len(self.config.background_prompts))
        partial = [prompts.build_ensemble(c, self.config.partial_templates) for c in control.classes]
        return self.embeddings.ensemble_vectors([generic, *partial])

    # -- automatic boxes ---------------------------------------------------------------------------------------------
    def vectors(self, control: Control, head: Head | None) -> tuple[np.ndarray, np.ndarray, float]:
        """(class vectors, background vectors, logit scale): zero-shot, or a learned head's with the background it
        learned from rejected boxes appended after the prompt-based ones."""
        bg = self.background_vectors(control)
        class_vecs, scale = self.class_vectors.for_control(control, head)
        if head is not None and head.labels == control.values and len(head.background_vecs):
            bg = np.concatenate([bg, head.background_vecs])
        return class_vecs, bg, scale

    def embed_boxes(self, item: BoxImage, boxes_xyxy: np.ndarray) -> list[np.ndarray]:
        """Embeddings of boxes' square crops, under the same cache keys the detector uses."""
        windows = regions.square_windows(boxes_xyxy, self.config.boxes.pad_frac)
        return self.embeddings.crops([(item.content_hash, _box_key("w", w), self._crop_maker(item, w))
                                      for w in windows])

    def detect(self, items: Sequence[BoxImage], control: Control, head: Head | None = None
               ) -> list[list[RegionPrediction]]:
        """Boxes of one control for each image; crops of all images are encoded together in full batches."""
        cfg = self.config
        props = self.proposals(items)
        windows = [regions.square_windows(p, cfg.boxes.pad_frac) for p in props]
        jobs = [(it.content_hash, _box_key("w", w), self._crop_maker(it, w))
                for it, ws in zip(items, windows) for w in ws]
        flat = self.embeddings.crops(jobs)
        class_vecs, bg_vecs, scale = self.vectors(control, head)
        per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        start = 0
        context_jobs: list[tuple[str, str, Callable[[], np.ndarray]]] = []
        for it, p in zip(items, props):
            emb = np.stack(flat[start:start + len(p)]) if len(p) else np.zeros((0, 1), np.float32)
            start += len(p)
            if len(p) == 0:
                per_image.append((p, np.zeros((0, len(control.classes)), np.float32), np.zeros(0, np.float32),
                                  np.zeros(0, np.int64)))
                continue
            cp, bg = boxes.class_and_background_probs(emb, class_vecs, bg_vecs, scale)
            cand = boxes.confident(cp, bg, control.score_threshold, cfg.boxes)
            per_image.append((p, cp, bg, cand))
            if cfg.context_factor is not None:
                for i in cand:
                    context_jobs.append((it.content_hash, _box_key(f"c{cfg.context_factor}:", p[i]),
                                         self._context_maker(it, p[i])))
        context = iter(self.embeddings.crops(context_jobs))
        out = []
        for it, (p, cp, bg, cand) in zip(items, per_image):
            if len(p) and cfg.context_factor is not None:
                if len(cand):
                    ctx_emb = np.stack([next(context) for _ in cand])
                    continues = self._object_continues(ctx_emb, cp.argmax(axis=1)[cand], class_vecs, bg_vecs)
                    cp = cp.copy()
                    cp[cand[continues]] = 0.0
            dets = boxes.detect(p, cp, bg, control.score_threshold, cfg.boxes)
            out.append([RegionPrediction(control.from_name, control.to_name, control.values[d.label_index], d.score,
                                         d.bbox_xyxy, it.wh) for d in dets])
        return out

    def proposals(self, items: Sequence[BoxImage]) -> list[np.ndarray]:
        """Selected proposals of each image, (N, 4) xyxy pixels: from the cache, else computed (in parallel) and cached.

        Cached boxes are float32, and fresh ones are rounded the same way, so a re-score finds the same crop keys.
        """
        hashes = [it.content_hash for it in items]
        cached = self.store.get_vectors(PROPOSALS_NS, self._proposal_id, hashes)
        missing = [i for i, c in enumerate(cached) if c is None]
        cfg = self.config
        fresh = list(self.pool.map(lambda i: boxes.select_proposals(
            proposals.propose(items[i].image, cfg.proposals), items[i].wh, cfg.boxes).astype(np.float32), missing))
        if missing:
            self.store.put_vectors(PROPOSALS_NS, self._proposal_id,
                                   {hashes[i]: p.reshape(-1) for i, p in zip(missing, fresh)})
        out = [c.reshape(-1, 4) if c is not None else None for c in cached]
        for i, p in zip(missing, fresh):
            out[i] = p
        return [p.astype(np.float64) for p in out if p is not None]

    def _object_continues(self, ctx_emb: np.ndarray, labels: np.ndarray, class_vecs: np.ndarray,
                          bg_vecs: np.ndarray) -> np.ndarray:
        """True where the surroundings (box greyed out) still show the box's class, whole or in part."""
        k = len(class_vecs)
        logits = ctx_emb @ np.concatenate([class_vecs, bg_vecs]).T
        best = logits.argmax(axis=1)
        # columns: K classes, the generic background, then K "part of" ensembles
        return (best == labels) | (best == k + 1 + labels)

    # Crop makers read `item.image` only when called, i.e. on a cache miss: a re-score never decodes the image.
    def _crop_maker(self, item: BoxImage, window: np.ndarray) -> Callable[[], np.ndarray]:
        size = self._size
        return lambda: images.crop_square(item.image, tuple(float(v) for v in window), size)  # type: ignore[arg-type]

    def _context_maker(self, item: BoxImage, box: np.ndarray) -> Callable[[], np.ndarray]:
        size, factor = self._size, float(self.config.context_factor or 2.0)
        return lambda: images.masked_context_square(item.image, tuple(float(v) for v in box), factor, size)  # type: ignore[arg-type]

    # -- interactive ---------------------------------------------------------------------------------------------------
    def label_box(self, item: BoxImage, control: Control, box_xyxy: np.ndarray, head: Head | None = None
                  ) -> RegionPrediction | None:
        """The drawn box with its most likely label, or None when background wins ("not one of our classes")."""
        (emb,) = self.embed_boxes(item, box_xyxy[None, :])
        class_vecs, bg_vecs, scale = self.vectors(control, head)
        # The annotator chose this box, so "part of" competitors do not apply: the generic and learned background do.
        k = len(control.classes)
        generic_bg = np.concatenate([bg_vecs[:1], bg_vecs[1 + k:]])
        cp, bg = boxes.class_and_background_probs(emb[None, :], class_vecs, generic_bg, scale)
        k = int(cp[0].argmax())
        if cp[0, k] <= bg[0]:
            return None
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        return RegionPrediction(control.from_name, control.to_name, control.values[k], float(cp[0, k]),
                                (x0, y0, x1, y1), item.wh)

    def box_around_point(self, item: BoxImage, control: Control, point_xy: tuple[float, float],
                         head: Head | None = None) -> RegionPrediction | None:
        """The best box that contains the clicked point, or None when no proposal there holds one of our classes."""
        (found,) = self.detect([item], _with_threshold(control, 0.0), head)
        px, py = point_xy
        around = [r for r in found if r.bbox_xyxy[0] <= px <= r.bbox_xyxy[2] and r.bbox_xyxy[1] <= py <= r.bbox_xyxy[3]]
        return max(around, key=lambda r: r.score) if around else None


def _with_threshold(control: Control, threshold: float) -> Control:
    return Control(kind=control.kind, from_name=control.from_name, to_name=control.to_name,
                   image_key=control.image_key, classes=control.classes, multiple=control.multiple,
                   score_threshold=threshold)
