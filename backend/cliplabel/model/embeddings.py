"""Cache-through embeddings: an image or prompt is encoded once per encoder, then read from the store."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from cliplabel.core.domain import Encoder, PromptEnsemble
from cliplabel.core.errors import ImageFetchError, ModelWarmingError
from cliplabel.core.lru import LruCache
from cliplabel.core.metrics import Metrics
from cliplabel.store import Store, matrix
from cliplabel.vision import images, prompts

logger = logging.getLogger(__name__)
IMAGE_NS = "image"
TEXT_NS = "text"
CROP_NS = "crop"
# In-memory copies in front of the store (which keeps every vector): prompt vectors, about 2–5 KB each (up to 40 MB
# at D = 1280), and the (K, D) vectors of a label set's ensembles, a few per control of each active project.
MAX_MEMO_TEXTS = 8192
MAX_MEMO_ENSEMBLES = 256
# Groups of image embeddings kept in memory for bulk reads (`group_matrix`): about 1 KB per image in float16 at
# D = 512, so 100 MB per 100,000 images.
MAX_MEMO_GROUPS = 4
# Prompts encoded per step of a label set's warm-up (the progress `warming` reports moves by this much).
WARM_CHUNK = 256
WARM_CHUNK_GUESS_S = 5.0  # Retry-After before the first chunk is done
MAX_RETRY_AFTER_S = 30.0


@dataclass(eq=False)
class _Warming:
    """One label set's prompt vectors being computed."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    future: Future[np.ndarray] = field(default_factory=Future)

    def as_json(self) -> dict[str, float]:
        return {"prompts_done": self.done, "prompts_total": self.total,
                "running_s": round(time.monotonic() - self.started, 1)}

    def not_ready(self) -> ModelWarmingError:
        elapsed = time.monotonic() - self.started
        left_s = elapsed / self.done * (self.total - self.done) if self.done else elapsed + WARM_CHUNK_GUESS_S
        retry_after_s = int(min(MAX_RETRY_AFTER_S, max(1.0, left_s)))
        progress = self.done / self.total if self.total else 1.0
        return ModelWarmingError(f"class vectors are being computed: {self.done:,} of {self.total:,} prompts encoded "
                                 f"({progress:.0%}); retry in {retry_after_s} s", progress, retry_after_s)


def content_hash(data: bytes) -> str:
    """The key of an image in every cache: SHA-256 of its encoded bytes."""
    return hashlib.sha256(data).hexdigest()


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class EmbeddingService:
    """Encodes images and texts through the store's cache, in full batches."""

    def __init__(self, encoder: Encoder, store: Store, batch_size: int, max_pixels: int, pool: ThreadPoolExecutor,
                 metrics: Metrics, device_decode: bool = False, matrix_dtype: str = "float16") -> None:
        self.encoder = encoder
        self.store = store
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.pool = pool
        self.metrics = metrics
        self.resize_mode = encoder.resize_mode
        # JPEGs decoded and resized by the encoder on its device (nvjpeg on CUDA): past a few thousand images/s the
        # CPU cannot decode as fast as a GPU encodes. Anything else takes the PIL path, as do models whose resize
        # mode the device path does not implement.
        self.device_decode = device_decode and self.resize_mode == "shortest"
        # Prompt vectors never change for a given encoder, so a process-local copy cannot go stale.
        self._text_memo: LruCache[str, np.ndarray] = LruCache(MAX_MEMO_TEXTS)
        self._ensembles: LruCache[str, np.ndarray] = LruCache(MAX_MEMO_ENSEMBLES)
        self._warming: dict[str, _Warming] = {}  # ensemble key → its computation in progress
        self._warming_lock = threading.Lock()
        self.matrix_dtype = matrix_dtype
        self._groups: LruCache[str, matrix.GrowingMatrix] = LruCache(MAX_MEMO_GROUPS)

    @property
    def encoder_id(self) -> str:
        return self.encoder.encoder_id

    @property
    def image_size(self) -> int:
        """Side of the encoder's square input, in pixels (crops are made at this size)."""
        return self.encoder.image_size

    @property
    def logit_scale(self) -> float:
        return self.encoder.logit_scale

    def texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """text → (D,) float32 L2-normalised, encoding only what neither memory nor the store holds."""
        wanted = list(dict.fromkeys(texts))
        out: dict[str, np.ndarray] = {}
        for t in wanted:
            memo = self._text_memo.get(t)
            if memo is not None:
                out[t] = memo
        missing = [t for t in wanted if t not in out]
        if missing:
            cached = self.store.get_vectors(TEXT_NS, self.encoder.encoder_id, [_text_key(t) for t in missing])
            to_encode = [t for t, v in zip(missing, cached) if v is None]
            out.update({t: v for t, v in zip(missing, cached) if v is not None})
            if to_encode:
                vecs = self.encoder.encode_texts(to_encode)
                self.metrics.inc("texts_encoded", len(to_encode))
                self.store.put_vectors(TEXT_NS, self.encoder.encoder_id,
                                       {_text_key(t): v for t, v in zip(to_encode, vecs)})
                out.update(zip(to_encode, vecs))
            for t in missing:
                self._text_memo.put(t, out[t])
        return out

    def ensemble_vectors(self, ensembles: Sequence[PromptEnsemble], wait_s: float | None = None) -> np.ndarray:
        """(K, D) weighted prompt-ensemble vectors, computed once per distinct set of ensembles.

        The computation runs on its own thread, in chunks whose progress `warming` reports; concurrent callers for
        the same set (the /setup warm-up and a first /predict) wait for that one computation.

        Args:
            wait_s: how long to wait for a computation in progress (None: until it is done).

        Raises:
            ModelWarmingError: not done within `wait_s`; the computation goes on, a later call finds its result.
        """
        key = hashlib.sha256(repr([(e.prompts, e.weights) for e in ensembles]).encode()).hexdigest()
        cached = self._ensembles.get(key)
        if cached is not None:
            return cached
        with self._warming_lock:
            warming = self._warming.get(key)
            if warming is None:
                warming = _Warming(total=len({p for e in ensembles for p in e.prompts}))
                self._warming[key] = warming
                threading.Thread(target=self._warm, args=(key, list(ensembles), warming), daemon=True,
                                 name="cliplabel-warm").start()
        try:
            return warming.future.result(timeout=wait_s)
        except FutureTimeout:
            raise warming.not_ready() from None

    def warming(self) -> list[dict[str, float]]:
        """Prompt-vector computations in progress: prompts done and in all, seconds running."""
        with self._warming_lock:
            return [w.as_json() for w in self._warming.values()]

    def _warm(self, key: str, ensembles: list[PromptEnsemble], warming: _Warming) -> None:
        try:
            wanted = list(dict.fromkeys(p for e in ensembles for p in e.prompts))
            emb: dict[str, np.ndarray] = {}
            for i in range(0, len(wanted), WARM_CHUNK):
                emb.update(self.texts(wanted[i:i + WARM_CHUNK]))
                warming.done = len(emb)
            vecs = prompts.class_vectors(ensembles, emb)
            self._ensembles.put(key, vecs)
            warming.future.set_result(vecs)
        except BaseException as exc:  # handed to every waiting caller (a CliplabelError becomes their HTTP answer)
            warming.future.set_exception(exc)
        finally:
            with self._warming_lock:
                self._warming.pop(key, None)

    def images(self, blobs: Sequence[bytes]) -> list[np.ndarray | ImageFetchError]:
        """One (D,) embedding per image, or the decode error for that image; cached by content hash."""
        hashes = [content_hash(b) for b in blobs]
        unique = list(dict.fromkeys(hashes))
        cached = dict(zip(unique, self.store.get_vectors(IMAGE_NS, self.encoder.encoder_id, unique)))
        misses = [h for h in unique if cached[h] is None]
        self.metrics.inc("image_cache_hits", len(unique) - len(misses))
        self.metrics.inc("image_cache_misses", len(misses))
        results: dict[str, np.ndarray | ImageFetchError] = {h: v for h, v in cached.items() if v is not None}
        if misses:
            blob_of = dict(zip(hashes, blobs))
            if self.device_decode:
                results.update(self._encode_on_device([h for h in misses
                                                       if images.device_decodable(blob_of[h], self.max_pixels)],
                                                      blob_of))
                misses = [h for h in misses if h not in results]
            prepared = list(self.pool.map(lambda h: self._prepare(blob_of[h]), misses))
            ok = [(h, p) for h, p in zip(misses, prepared) if not isinstance(p, ImageFetchError)]
            results.update({h: p for h, p in zip(misses, prepared) if isinstance(p, ImageFetchError)})
            for i in range(0, len(ok), self.batch_size):
                chunk = ok[i:i + self.batch_size]
                vecs = self.encoder.encode_images(np.stack([p for _, p in chunk]))
                self.metrics.inc("images_encoded", len(chunk))
                self.store.put_vectors(IMAGE_NS, self.encoder.encoder_id, {h: v for (h, _), v in zip(chunk, vecs)})
                results.update({h: v for (h, _), v in zip(chunk, vecs)})
        return [results[h] for h in hashes]

    def _encode_on_device(self, hashes: list[str], blob_of: dict[str, bytes]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(hashes), self.batch_size):
            chunk = hashes[i:i + self.batch_size]
            try:
                vecs = self.encoder.encode_jpegs([blob_of[h] for h in chunk])
            except RuntimeError as exc:  # a JPEG the device decoder rejects: these go through PIL, one by one
                logger.info("device decode failed for %d images (%s); decoding them on the CPU", len(chunk), exc)
                continue
            self.metrics.inc("images_encoded", len(chunk))
            self.metrics.inc("images_device_decoded", len(chunk))
            self.store.put_vectors(IMAGE_NS, self.encoder.encoder_id, dict(zip(chunk, vecs)))
            out.update(zip(chunk, vecs))
        return out

    def cached_images(self, hashes: Sequence[str]) -> list[np.ndarray | None]:
        """Image embeddings by content hash, from the cache only (None where an image was never encoded)."""
        return self.store.get_vectors(IMAGE_NS, self.encoder.encoder_id, list(hashes)) if hashes else []

    def cached_crops(self, pairs: Sequence[tuple[str, str]]) -> list[np.ndarray | None]:
        """Crop embeddings by (image content hash, crop key) as `crops` caches them, from the cache only (None where
        a crop was never encoded)."""
        keys = [f"{h}:{k}" for h, k in pairs]
        return self.store.get_vectors(CROP_NS, self.encoder.encoder_id, keys) if keys else []

    def remember_group(self, group: str, keys: Sequence[str], emb: np.ndarray) -> None:
        """Appends image embeddings to a group's bulk matrix (e.g. a Label Studio host's), read back by
        `group_matrix`, in the precision `matrix_dtype` names (float16 halves memory and disk; bench/bench_rescore.py
        measures its cost).

        Args:
            keys: one per row of `emb` (N, D) float32; `"<tag> <key>"` stores a tag with the row.
        """
        if len(keys):
            self.store.append_matrix(IMAGE_NS, self.encoder.encoder_id, group,
                                     matrix.pack_segment(keys, emb, self.matrix_dtype))

    def group_matrix(self, group: str) -> matrix.EmbeddingMatrix:
        """A group's image embeddings as one (N, D) matrix with its key → row index.

        The first call of a process reads the whole group in one store read; later calls read only what was appended
        since. The store only ever appends to a group, so the copy kept here is current after each call (a group
        found shorter than what was read — deleted or evicted — is read again from its start).
        """
        grown = self._groups.get_or_put(group, lambda: matrix.GrowingMatrix(group))
        return grown.refresh(lambda cursor: self.store.matrix_tail(IMAGE_NS, self.encoder.encoder_id, group, cursor))

    def crops(self, jobs: Sequence[tuple[str, str, Callable[[], np.ndarray]]]) -> list[np.ndarray]:
        """Cached crop embeddings, encoded in full batches across every job of the call.

        Args:
            jobs: (image content hash, crop key, function making the (S, S, 3) uint8 crop). The crop key names the
                window (and its masking), so a re-score after retraining finds every crop in the cache.

        Returns:
            One (D,) embedding per job, in order.
        """
        keys = [f"{h}:{k}" for h, k, _ in jobs]
        unique = list(dict.fromkeys(keys))
        cached = dict(zip(unique, self.store.get_vectors(CROP_NS, self.encoder.encoder_id, unique)))
        misses = [k for k in unique if cached[k] is None]
        self.metrics.inc("crop_cache_hits", len(unique) - len(misses))
        make = {key: job[2] for key, job in zip(keys, jobs)}
        results: dict[str, np.ndarray] = {k: v for k, v in cached.items() if v is not None}
        chunks = [misses[i:i + self.batch_size] for i in range(0, len(misses), self.batch_size)]

        def make_chunk(chunk: list[str]) -> np.ndarray:
            return np.stack([make[k]() for k in chunk])

        # Pipelined: while the encoder works on one batch (torch releases the GIL), the next batch's crops are made.
        pending: list[Future[np.ndarray]] = [self.pool.submit(make_chunk, chunks[0])] if chunks else []
        for i, chunk in enumerate(chunks):
            arrays = pending.pop().result()
            if i + 1 < len(chunks):
                pending.append(self.pool.submit(make_chunk, chunks[i + 1]))
            vecs = self.encoder.encode_images(arrays)
            self.metrics.inc("crops_encoded", len(chunk))
            self.store.put_vectors(CROP_NS, self.encoder.encoder_id, dict(zip(chunk, vecs)))
            results.update(zip(chunk, vecs))
        return [results[k] for k in keys]

    def _prepare(self, blob: bytes) -> np.ndarray | ImageFetchError:
        size = self.encoder.image_size
        try:
            decoded = images.decode(blob, self.max_pixels, min_side=size)
            return images.prepare(decoded.image, size, self.resize_mode)
        except ImageFetchError as exc:
            return exc
