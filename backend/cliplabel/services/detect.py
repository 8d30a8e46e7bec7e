"""Boxes for `<RectangleLabels>`: proposals → cached crop embeddings → pairwise label margin → whole-object context
test → boxes (see `cliplabel.vision.boxes` for what a score means).

Nothing here assumes that the model learned our prompts: the only prompts are the class ensembles and one generic
background ensemble, and every comparison is a two-way one at the model's own logit scale (so no constant depends on
the temperature or on the number of classes).

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
from cliplabel.vision import box_verifier, boxes, classify, images, proposals, regions

DEFAULT_BACKGROUND_PROMPTS: tuple[str, ...] = (
    "an empty background.", "a photo of an empty background.", "a plain texture.", "nothing.", "background",
    "an empty scene.", "a blurry photo of nothing in particular.",
)
PROPOSALS_NS = "proposals"
# A drawn box is scored on a tight crop (10 % margin): the annotator has already placed it, and the detector's wide
# context crop (BoxParams.pad_frac) would let neighbouring shapes decide its label.
DRAWN_BOX_PAD_FRAC = 0.1


@dataclass(frozen=True)
class DetectorConfig:
    proposals: proposals.ProposalParams = field(default_factory=proposals.ProposalParams)
    boxes: boxes.BoxParams = field(default_factory=boxes.BoxParams)
    context_factor: float | None = 2.0  # None turns the whole-object (context) test off
    background_prompts: tuple[str, ...] = DEFAULT_BACKGROUND_PROMPTS


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
        """(1, D): the generic background ensemble.

        Class-conditional "part of a <class>" prompts are deliberately absent: a CLIP that never learned framing
        captions scores whole objects higher for them than for the class. Parts are found by the context test.
        """
        generic = PromptEnsemble(label="background", prompts=self.config.background_prompts,
                                 weights=(1.0,) * len(self.config.background_prompts))
        return self.embeddings.ensemble_vectors([generic])

    # -- automatic boxes ---------------------------------------------------------------------------------------------
    def vectors(self, control: Control, head: Head | None) -> tuple[Head, np.ndarray]:
        """(the served head, background vectors): zero-shot, or a learned head with the background it learned from
        rejected boxes appended after the prompt-based ones. Crops are scored by `classify.similarities`."""
        bg = self.background_vectors(control)
        served = self.class_vectors.served(control, head)
        if len(served.background_vecs):
            bg = np.concatenate([bg, served.background_vecs])
        return served, bg

    def embed_boxes(self, item: BoxImage, boxes_xyxy: np.ndarray, pad_frac: float | None = None
                    ) -> list[np.ndarray]:
        """Embeddings of boxes' square crops, under the same cache keys the detector uses (`pad_frac` defaults to
        the detector's, so feedback examples look like the proposals they will score)."""
        pad = self.config.boxes.pad_frac if pad_frac is None else pad_frac
        windows = regions.square_windows(boxes_xyxy, pad)
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
        served, bg_vecs = self.vectors(control, head)
        context_bg = self.context_background(control)
        k, scale = len(served.labels), served.logit_scale
        thr = self.threshold(control, served)
        per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        context_jobs: list[tuple[str, str, Callable[[], np.ndarray]]] = []
        start = 0
        for it, p in zip(items, props):
            emb = np.stack(flat[start:start + len(p)]) if len(p) else np.zeros((0, bg_vecs.shape[1]), np.float32)
            start += len(p)
            labels, margin = boxes.margin_from_similarities(classify.similarities(emb, served, bg_vecs), k, scale)
            # only confident boxes need the context test (and its crop); a verifier reads it for all its candidates
            cand = np.flatnonzero(margin >= thr) if served.box_verifier is None else box_verifier.candidates(margin)
            per_image.append((p, labels, margin, cand))
            if context_bg is not None:
                context_jobs.extend((it.content_hash, self._context_key(p[i]), self._context_maker(it, p[i]))
                                    for i in cand)
        context = iter(self.embeddings.crops(context_jobs))
        out = []
        for it, (p, labels, margin, cand) in zip(items, per_image):
            ctx: np.ndarray | None = None
            if context_bg is not None:
                ctx = np.ones(len(p), np.float64)  # never read for boxes under the threshold
                if len(cand):
                    ctx_emb = np.stack([next(context) for _ in cand])
                    ctx[cand] = boxes.context_from_similarities(
                        classify.similarities(ctx_emb, served, context_bg), labels[cand], k, scale)
            dets = box_verifier.detect(p, labels, margin, ctx, thr, cfg.boxes, served.box_verifier)
            out.append([RegionPrediction(control.from_name, control.to_name, control.values[d.label_index], d.score,
                                         d.bbox_xyxy, it.wh) for d in dets])
        return out

    def context_background(self, control: Control) -> np.ndarray | None:
        """What a box's masked surroundings are compared with (None: the context test is off): the prompt background
        alone. Background learned from rejected boxes stays out of it: rejected boxes look like objects and their
        parts, so beside them every surrounding would look like background and every part box would pass as whole."""
        return None if self.config.context_factor is None else self.background_vectors(control)

    def threshold(self, control: Control, served: Head) -> float:
        """The margin threshold boxes must reach: the label config's `model_score_threshold`, else the one the served
        head learned on annotated scenes, else the default."""
        if control.score_threshold is not None:
            return control.score_threshold
        if served.box_threshold is not None:
            return served.box_threshold
        return self.config.boxes.default_margin_threshold

    # -- annotated scenes (what a retrain judges a box head on) -------------------------------------------------------
    def scene_embeddings(self, item: BoxImage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(proposals (N, 4), crop embeddings (N, D), context embeddings (N, D)) of every proposal of one image,
        encoding what the cache misses. Called on each annotated scene, so that a retrain can run the detector on it
        with any head from the cache alone (`cached_scene`); costs one context crop per proposal, once per image."""
        (props,) = self.proposals([item])
        crops = self.embed_boxes(item, props)
        contexts = self.embeddings.crops([(item.content_hash, self._context_key(p), self._context_maker(item, p))
                                          for p in props])
        if not len(props):
            empty = np.zeros((0, self.embeddings.encoder.embed_dim), np.float32)
            return props, empty, empty
        return props, np.stack(crops), np.stack(contexts)

    def cached_scene(self, content_hash: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """`scene_embeddings` of an image from the caches alone; None when any part was never computed (or was
        evicted)."""
        (raw,) = self.store.get_vectors(PROPOSALS_NS, self._proposal_id, [content_hash])
        if raw is None:
            return None
        props = raw.reshape(-1, 4).astype(np.float64)
        if not len(props):
            return None
        windows = regions.square_windows(props, self.config.boxes.pad_frac)
        vecs = self.embeddings.cached_crops([(content_hash, _box_key("w", w)) for w in windows]
                                            + [(content_hash, self._context_key(p)) for p in props])
        if any(v is None for v in vecs):
            return None
        stacked = np.stack([v for v in vecs if v is not None])
        return props, stacked[:len(props)], stacked[len(props):]

    def _context_key(self, box: np.ndarray) -> str:
        return _box_key(f"c{self.config.context_factor or 2.0}:", box)

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
        (emb,) = self.embed_boxes(item, box_xyxy[None, :], DRAWN_BOX_PAD_FRAC)
        served, bg_vecs = self.vectors(control, head)
        # The annotator chose this box, so only "which class, or none?" is asked: the best class must beat every
        # background vector (a pairwise test, whatever the temperature and the number of classes).
        sims = classify.similarities(emb[None, :], served, bg_vecs)
        n = len(served.labels)
        k = int(sims[0, :n].argmax())
        if sims[0, k] <= sims[0, n:].max():
            return None
        _, margin = boxes.margin_from_similarities(sims, n, served.logit_scale)
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        return RegionPrediction(control.from_name, control.to_name, control.values[k], float(margin[0]),
                                (x0, y0, x1, y1), item.wh)

    def box_around_point(self, item: BoxImage, control: Control, point_xy: tuple[float, float],
                         head: Head | None = None) -> RegionPrediction | None:
        """The best box that contains the clicked point, or None when no proposal there holds one of our classes.

        Boxes that pass the control's threshold come first (their tight-box preference ran among confident boxes);
        only when none contains the point is every whole box considered (the click says something is there).
        """
        px, py = point_xy
        for threshold in (control.score_threshold, 0.0):
            (found,) = self.detect([item], _with_threshold(control, threshold), head)
            around = [r for r in found
                      if r.bbox_xyxy[0] <= px <= r.bbox_xyxy[2] and r.bbox_xyxy[1] <= py <= r.bbox_xyxy[3]]
            if around:
                return max(around, key=lambda r: r.score)
        return None


def _with_threshold(control: Control, threshold: float | None) -> Control:
    return Control(kind=control.kind, from_name=control.from_name, to_name=control.to_name,
                   image_key=control.image_key, classes=control.classes, multiple=control.multiple,
                   score_threshold=threshold)
