"""Micro-batching across concurrent requests: one encoder thread, full batches, small requests first.

Without it each request encodes its own images under the model's lock: sixteen clients asking for one image each
make sixteen forward passes of one image, and an annotator's single interactive image waits behind a bulk request's
whole batch. Here every caller queues its images and waits; one thread drains the queue into batches of up to
`max_batch` — images that arrived while the previous batch was encoding go together, without any added wait unless
`wait_ms` asks for one — and takes small (interactive) requests before large (bulk) ones.

Prepared uint8 images (`encode_images`) and JPEG files decoded on the device (`encode_jpegs`) share the queue and its
priorities; a batch holds one kind only, since each kind is one call of the encoder.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from cliplabel.core.domain import Encoder, ResizeMode

logger = logging.getLogger(__name__)
SMALL_REQUEST = 4  # images: at most this many is an interactive request, served first


@dataclass(eq=False)  # identity: a queue removes the very request it finished
class _Request:
    items: np.ndarray | Sequence[bytes]  # (N, S, S, 3) uint8 images, or N JPEG files
    future: Future[np.ndarray] = field(default_factory=Future)
    done: int = 0  # rows already handed to a batch
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (start row, embeddings)

    @property
    def jpegs(self) -> bool:
        return not isinstance(self.items, np.ndarray)


class MicroBatcher:
    """An `Encoder` that batches `encode_images` and `encode_jpegs` across threads; texts pass straight through."""

    def __init__(self, encoder: Encoder, max_batch: int, wait_ms: float = 0.0) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self._small: deque[_Request] = deque()
        self._large: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # forward passes run, for /metrics and the bench
        self._thread = threading.Thread(target=self._run, name="cliplabel-encoder", daemon=True)
        self._thread.start()

    # -- the Encoder protocol --------------------------------------------------------------------------------------
    @property
    def encoder_id(self) -> str:
        return self.encoder.encoder_id

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def logit_scale(self) -> float:
        return self.encoder.logit_scale

    @property
    def slug(self) -> str:
        return self.encoder.slug

    @property
    def device(self) -> str:
        return self.encoder.device

    @property
    def resize_mode(self) -> ResizeMode:
        return self.encoder.resize_mode

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        # Prompts are encoded once per label set and cached: no queue to jump.
        return self.encoder.encode_texts(texts)

    def encode_images(self, images_u8: np.ndarray) -> np.ndarray:
        if len(images_u8) == 0:
            return self.encoder.encode_images(images_u8)
        return self._submit(_Request(images_u8))

    def encode_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Like the encoder's; a JPEG the device refuses fails every request of its batch with the RuntimeError,
        and each caller falls back to the CPU path as it would alone."""
        if len(blobs) == 0:
            return self.encoder.encode_jpegs(blobs)
        return self._submit(_Request(list(blobs)))

    def _submit(self, request: _Request) -> np.ndarray:
        with self._cond:
            if self._closed:
                raise RuntimeError("the encoder is closed")
            (self._small if len(request.items) <= SMALL_REQUEST else self._large).append(request)
            self._cond.notify()
        return request.future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the encoder thread ----------------------------------------------------------------------------------------
    def _take(self) -> list[tuple[_Request, int, int]]:
        """(request, first row, row count) slices filling one batch: small requests first, then in arrival order.

        The first request waiting sets the batch's kind (images or JPEGs); requests of the other kind keep their
        place and start the next batch.
        """
        batch: list[tuple[_Request, int, int]] = []
        room = self.max_batch
        first = self._small[0] if self._small else self._large[0]
        for queue in (self._small, self._large):
            for req in [r for r in queue if r.jpegs == first.jpegs]:
                if room == 0:
                    break
                n = min(room, len(req.items) - req.done)
                batch.append((req, req.done, n))
                req.done += n
                room -= n
                if req.done == len(req.items):
                    queue.remove(req)
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._small or self._large or self._closed):
                    self._cond.wait()
                if self._closed and not (self._small or self._large):
                    return
                if self.wait_s and sum(len(r.items) - r.done for r in (*self._small, *self._large)) \
                        < self.max_batch:
                    self._cond.wait(self.wait_s)  # a moment for more requests to join this batch
                batch = self._take()
            self._encode(batch)

    def _encode(self, batch: list[tuple[_Request, int, int]]) -> None:
        try:
            if batch[0][0].jpegs:
                emb = self.encoder.encode_jpegs([blob for req, start, n in batch for blob in req.items[start:start + n]])
            else:
                emb = self.encoder.encode_images(np.concatenate([req.items[start:start + n] for req, start, n in batch]))
            self.batches += 1
        except BaseException as exc:  # noqa: BLE001 - the callers get the error, the thread keeps serving
            for req, _, _ in batch:
                if not req.future.done():
                    req.future.set_exception(exc)
            return
        offset = 0
        for req, start, n in batch:
            if req.future.done():  # an earlier slice of it failed
                offset += n
                continue
            req.parts.append((start, emb[offset:offset + n]))
            offset += n
            if sum(len(p) for _, p in req.parts) == len(req.items):
                req.future.set_result(np.concatenate([p for _, p in sorted(req.parts, key=lambda x: x[0])]))
