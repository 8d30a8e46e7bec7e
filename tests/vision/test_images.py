from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cliplabel.core.errors import ImageFetchError
from cliplabel.vision.images import decode, prepare

BIG = 10_000_000


def _png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming huge dimensions, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a decodable image"),
        (b"this is not an image", "not a decodable image"),
        (_png(Image.new("RGB", (64, 64), "red"))[:80], "broken or truncated"),
        (_bomb_png(100_000, 100_000), "at most"),
    ],
)
def test_bad_bytes_give_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageFetchError, match=message):
        decode(data, BIG)


def test_pixel_cap_is_checked_before_decoding() -> None:
    data = _png(Image.new("RGB", (200, 100)))
    assert decode(data, 20_000).original_wh == (200, 100)
    with pytest.raises(ImageFetchError, match="200×100"):
        decode(data, 19_999)


def test_exif_orientation_is_applied_and_reported() -> None:
    img = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    out = decode(buf.getvalue(), BIG)
    assert out.image.size == (20, 40) and out.original_wh == (20, 40)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGBA", (30, 30), (255, 0, 0, 0)),
        lambda: Image.new("LA", (30, 30)),
        lambda: Image.new("P", (30, 30)),
        lambda: Image.new("CMYK", (30, 30), (0, 255, 255, 0)),
        lambda: Image.new("L", (30, 30), 128),
        lambda: Image.fromarray(np.arange(900, dtype=np.uint16).reshape(30, 30) * 70),
        lambda: Image.new("1", (30, 30), 1),
    ],
)
def test_any_mode_becomes_rgb(make) -> None:  # type: ignore[no-untyped-def]
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out = decode(buf.getvalue(), BIG)
    assert out.image.mode == "RGB" and out.image.size == (30, 30)


def test_sixteen_bit_is_stretched_not_clipped() -> None:
    arr = (np.arange(900, dtype=np.uint16).reshape(30, 30) * 70)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    rgb = np.asarray(decode(buf.getvalue(), BIG).image)
    assert rgb.min() == 0 and rgb.max() == 255


def test_transparent_pixels_become_grey() -> None:
    rgb = np.asarray(decode(_png(Image.new("RGBA", (8, 8), (255, 0, 0, 0))), BIG).image)
    assert (rgb == 128).all()


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    rgb = np.asarray(decode(buf.getvalue(), BIG).image)
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 2] < 50


def test_jpeg_draft_keeps_both_sides_at_least_min_side() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), "green").save(buf, format="JPEG")
    out = decode(buf.getvalue(), BIG, min_side=224)
    assert out.original_wh == (2000, 1000)
    assert min(out.image.size) >= 224 and out.image.size[0] < 2000


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("wh", [(1, 1), (64, 64), (300, 100), (100, 300)])
def test_prepare_gives_the_encoder_square(mode: str, wh: tuple[int, int]) -> None:
    out = prepare(Image.new("RGB", wh, "white"), 64, mode)  # type: ignore[arg-type]
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_prepare_shortest_centre_crops() -> None:
    img = Image.new("RGB", (300, 100), "black")
    img.paste((255, 255, 255), (100, 0, 200, 100))
    out = prepare(img, 64)
    assert out.mean() > 250  # only the white centre third survives the crop
