"""Micro-batching across concurrent requests, on the real tiny CLIP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cliplabel.model.batcher import MicroBatcher


def _images(encoder, n: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    s = encoder.image_size
    return np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(encoder) -> None:  # type: ignore[no-untyped-def]
    batcher = MicroBatcher(encoder, max_batch=32, wait_ms=20)
    try:
        requests = [_images(encoder, n, seed) for seed, n in enumerate([1, 3, 7, 1, 20, 2, 5, 40, 1, 9] * 3)]
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(batcher.encode_images, requests))
        for arr, emb in zip(requests, got):
            np.testing.assert_allclose(emb, encoder.encode_images(arr), atol=2e-5)
        total = sum(len(r) for r in requests)
        # 30 requests, 267 images: at most ceil(267/32) + a few partial batches, far fewer than one per request
        assert batcher.batches < len(requests) / 2, batcher.batches
        assert batcher.batches >= -(-total // 32)
    finally:
        batcher.close()


class _SlowEncoder:
    """The tiny CLIP, slowed down and recording the batches it sees (to observe the queue's order)."""

    def __init__(self, encoder, delay_s: float) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.delay_s, self.seen, self.fail_next = encoder, delay_s, [], False
        self.encoder_id, self.image_size, self.logit_scale = encoder.encoder_id, encoder.image_size, 1.0

    def encode_images(self, arr: np.ndarray) -> np.ndarray:
        self.seen.append(len(arr))
        time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("out of memory (simulated by the test's encoder)")
        return self.inner.encode_images(arr)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.inner.encode_texts(texts)


def test_an_interactive_image_jumps_the_bulk_queue(encoder) -> None:  # type: ignore[no-untyped-def]
    slow = _SlowEncoder(encoder, 0.2)
    batcher = MicroBatcher(slow, max_batch=8)  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(4) as pool:
            bulk = pool.submit(batcher.encode_images, _images(encoder, 64, 1))  # 8 batches of 8: 1.6 s
            time.sleep(0.3)  # the bulk request is being encoded
            started = time.monotonic()
            one = pool.submit(batcher.encode_images, _images(encoder, 1, 2)).result()
            waited = time.monotonic() - started
            assert bulk.result().shape == (64, one.shape[1])
        # it waited for the batch in progress (and rode along with the next), not for the whole bulk request
        assert waited < 0.7, waited
        assert sum(slow.seen) == 65 and max(slow.seen) == 8
    finally:
        batcher.close()


def test_a_failed_batch_fails_its_callers_and_the_next_batch_works(encoder) -> None:  # type: ignore[no-untyped-def]
    slow = _SlowEncoder(encoder, 0.0)
    batcher = MicroBatcher(slow, max_batch=8)  # type: ignore[arg-type]
    try:
        slow.fail_next = True
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.encode_images(_images(encoder, 3, 3))
        emb = batcher.encode_images(_images(encoder, 3, 4))
        assert emb.shape[0] == 3
        assert batcher._thread.is_alive()
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.encode_images(_images(encoder, 1, 5))
