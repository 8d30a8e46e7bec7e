"""Decoding JPEGs on the encoder's device (nvjpeg on CUDA; the same code runs on the CPU here) against the PIL path."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cliplabel.container import build_services
from cliplabel.core.errors import ImageFetchError
from cliplabel.core.settings import Settings
from cliplabel.vision import images
from tests import synthetic


def _embed(encoder, tmp_path, decode: str, blobs: list[bytes]):  # type: ignore[no-untyped-def]
    settings = Settings(model="local-dir:tiny", data_dir=tmp_path / decode, batch_size=4, decode=decode)
    services = build_services(settings, encoder=encoder, worker=True)
    try:
        return services.embeddings.images(blobs), services.metrics.snapshot()
    finally:
        services.close(close_store=True)


def _jpeg(img: Image.Image, **kw) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, **kw)
    return out.getvalue()


def test_device_decode_matches_the_pil_path_and_leaves_the_rest_to_it(encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    plain = [synthetic.encode_jpeg(synthetic.scene(rng, 640, 480, n_objects=1, min_radius_frac=0.3,
                                                   max_radius_frac=0.45)[0]) for _ in range(9)]
    grey = _jpeg(synthetic.scene(rng, 320, 240, n_objects=1)[0].convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the device decoder would not apply it
    rotated = _jpeg(synthetic.scene(rng, 320, 240, n_objects=1)[0], exif=exif.tobytes())
    cmyk = _jpeg(synthetic.scene(rng, 200, 200, n_objects=1)[0].convert("CMYK"))
    png = synthetic.encode_png(synthetic.scene(rng, 200, 200, n_objects=1)[0])
    truncated = plain[0][: len(plain[0]) // 2]
    blobs = [*plain, grey, rotated, cmyk, png, truncated]
    assert [images.device_decodable(b, 10**8) for b in blobs] == [True] * 10 + [False] * 3 + [True]

    on_device, metrics = _embed(encoder, tmp_path, "device", blobs)
    on_cpu, _ = _embed(encoder, tmp_path, "cpu", blobs)
    # batches of 4 decodable files: plain[0:4] and plain[4:8] on the device; the last batch holds the truncated file,
    # so the device decoder refuses it and all three go through PIL (which refuses the truncated one, as on the CPU)
    assert metrics["images_device_decoded"] == 8
    for dev, cpu in zip(on_device[:10], on_cpu[:10]):
        assert isinstance(dev, np.ndarray) and isinstance(cpu, np.ndarray)
        assert float(dev @ cpu) > 0.97  # same image; PIL decodes JPEGs at a reduced scale first, so not identical
    for dev, cpu in zip(on_device[10:13], on_cpu[10:13]):
        np.testing.assert_array_equal(dev, cpu)  # rotated, CMYK and PNG took the PIL path in both runs
    assert isinstance(on_device[13], ImageFetchError) and isinstance(on_cpu[13], ImageFetchError)


def test_auto_decodes_on_the_cpu_with_a_cpu_model(encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blob = synthetic.encode_jpeg(synthetic.scene(np.random.default_rng(5), 320, 240)[0])
    (emb,), metrics = _embed(encoder, tmp_path, "auto", [blob])
    assert isinstance(emb, np.ndarray) and "images_device_decoded" not in metrics
