"""The micro-batcher's queue with both kinds of request: prepared images and JPEG files decoded on the device.

A fake encoder records what each forward pass held, so the queue's order is observable without a model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cliplabel.model.batcher import MicroBatcher

SIZE, DIM = 4, 3


class _RecordingEncoder:
    """Encodes an image to its first pixel, a JPEG to its first byte; records (kind, count) per call."""

    encoder_id, image_size, logit_scale, slug, device, resize_mode, embed_dim = "fake", SIZE, 1.0, "fake", "cpu", \
        "shortest", DIM

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[str, int]] = []
        self.started = threading.Event()

    def encode_images(self, images_u8: np.ndarray) -> np.ndarray:
        self.calls.append(("images", len(images_u8)))
        self.started.set()
        time.sleep(self.delay_s)
        return images_u8[:, 0, 0, :].astype(np.float32)

    def encode_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        self.calls.append(("jpegs", len(blobs)))
        self.started.set()
        time.sleep(self.delay_s)
        if any(b == b"broken" for b in blobs):
            raise RuntimeError("the device decoder refused a JPEG")
        return np.array([[b[0], 0, 0] for b in blobs], np.float32).reshape(-1, DIM)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), DIM), np.float32)


def _images(values: Sequence[int]) -> np.ndarray:
    out = np.zeros((len(values), SIZE, SIZE, 3), np.uint8)
    out[:, 0, 0, 0] = values
    return out


def test_the_protocol_passes_through_to_the_encoder() -> None:
    batcher = MicroBatcher(_RecordingEncoder(), max_batch=8)  # type: ignore[arg-type]
    try:
        assert (batcher.slug, batcher.device, batcher.resize_mode, batcher.embed_dim) == ("fake", "cpu", "shortest", DIM)
        # empty requests go straight to the encoder: no forward pass is queued for them
        assert batcher.encode_jpegs([]).shape == (0, DIM) and batcher.batches == 0
    finally:
        batcher.close()


def test_jpegs_come_back_in_order_and_batches_hold_one_kind() -> None:
    enc = _RecordingEncoder(delay_s=0.3)  # both requests below queue up while the first pass runs
    batcher = MicroBatcher(enc, max_batch=8)  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(batcher.encode_images, _images([1] * 8))  # occupies the encoder thread
            enc.started.wait(5)
            jpegs = pool.submit(batcher.encode_jpegs, [bytes([v]) for v in range(10, 16)])
            images = pool.submit(batcher.encode_images, _images([7, 8]))
            got_jpegs, got_images = jpegs.result(5), images.result(5)
            first.result(5)
        np.testing.assert_array_equal(got_jpegs[:, 0], np.arange(10, 16))
        np.testing.assert_array_equal(got_images[:, 0], [7, 8])
        # the small image request was queued ahead of the larger JPEG one; the two kinds never share a pass
        assert enc.calls == [("images", 8), ("images", 2), ("jpegs", 6)]
    finally:
        batcher.close()


def test_a_small_jpeg_request_jumps_a_bulk_jpeg_request() -> None:
    enc = _RecordingEncoder(delay_s=0.1)
    batcher = MicroBatcher(enc, max_batch=4)  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(4) as pool:
            bulk = pool.submit(batcher.encode_jpegs, [bytes([v]) for v in range(16)])  # 4 passes of 4: 0.4 s
            enc.started.wait(5)
            one = pool.submit(batcher.encode_jpegs, [b"\x63"]).result(5)
            bulk_done_first = bulk.done()
            assert bulk.result(5).shape == (16, DIM)
        assert one[0, 0] == 0x63
        # the one-file request rode along with the second pass instead of waiting for the whole bulk request
        assert not bulk_done_first
        assert [n for _, n in enc.calls] == [4, 4, 4, 4, 1]
    finally:
        batcher.close()


def test_a_refused_jpeg_fails_its_batch_with_the_runtime_error_and_the_queue_goes_on() -> None:
    batcher = MicroBatcher(_RecordingEncoder(), max_batch=8)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="refused"):
            batcher.encode_jpegs([b"\x01", b"broken"])
        assert batcher.encode_jpegs([b"\x02"])[0, 0] == 2
    finally:
        batcher.close()


def test_the_default_wait_of_zero_adds_no_latency_and_still_batches_what_queued_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cliplabel.core.settings import Settings

    assert Settings(model="local-dir:tiny", data_dir=tmp_path).microbatch_wait_ms == 0.0

    def lone_latency_s(batcher: MicroBatcher) -> float:
        times = []
        for v in range(5):
            started = time.perf_counter()
            batcher.encode_images(_images([v]))
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    default, waiting = MicroBatcher(_RecordingEncoder(), max_batch=8), MicroBatcher(_RecordingEncoder(), 8, wait_ms=200)  # type: ignore[arg-type]
    try:
        # a lone request goes at once; with a wait it sits out the wait (so this test can tell them apart)
        assert lone_latency_s(default) < 0.05
        assert lone_latency_s(waiting) >= 0.18
    finally:
        default.close()
        waiting.close()
    enc = _RecordingEncoder(delay_s=0.3)
    batcher = MicroBatcher(enc, max_batch=8)  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(batcher.encode_images, _images([1]))
            enc.started.wait(5)
            later = [pool.submit(batcher.encode_images, _images([v])) for v in range(2, 7)]
            time.sleep(0.1)  # all five queued while the first pass runs
            got = [f.result(5)[0, 0] for f in later]
            first.result(5)
        # without any added wait, the five that queued up during the first pass share the second
        assert enc.calls == [("images", 1), ("images", 5)] and got == [2, 3, 4, 5, 6]
    finally:
        batcher.close()
