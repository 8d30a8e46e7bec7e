"""Decode image bytes safely and prepare the encoder's square uint8 input.

Pure PIL + numpy. Pixel counts are checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cliplabel.core.domain import ResizeMode
from cliplabel.core.errors import ImageFetchError

# Truncated files are a client's problem: we want an error, not a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image after EXIF orientation, and the size Label Studio sees (EXIF-transposed, before any draft)."""

    image: Image.Image
    original_wh: tuple[int, int]


def decode(data: bytes, max_pixels: int, min_side: int | None = None) -> DecodedImage:
    """Decodes bytes into an EXIF-upright RGB image.

    Args:
        data: the encoded image.
        max_pixels: refuse images with more pixels than this (checked before decoding).
        min_side: when set, JPEGs may be decoded at a reduced scale as long as both sides stay ≥ this (much faster
            for large photos that are resized for the encoder anyway).

    Raises:
        ImageFetchError: not an image, truncated, too many pixels, or an unsupported mode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ImageFetchError(f"image is {width}×{height} pixels; at most {max_pixels} pixels are allowed")
            transposed = _exif_transposes(img)
            original_wh = (height, width) if transposed else (width, height)
            if getattr(img, "is_animated", False):
                img.seek(0)
            if min_side is not None and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            img.load()
            upright = ImageOps.exif_transpose(img)
            return DecodedImage(image=_to_rgb(upright), original_wh=original_wh)
    except ImageFetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageFetchError(f"the image declares too many pixels; at most {max_pixels} pixels are allowed") from exc
    except UnidentifiedImageError as exc:
        raise ImageFetchError(f"not a decodable image: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFetchError(f"the image is broken or truncated: {exc}") from exc


def device_decodable(data: bytes, max_pixels: int) -> bool:
    """True for bytes a JPEG decoder on the model's device can take as they are: a JPEG in RGB or greyscale, upright
    (no EXIF rotation), within the pixel cap. Reads the header only."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        return (img.format == "JPEG" and img.mode in ("RGB", "L") and 0 < width * height <= max_pixels
                and img.getexif().get(0x0112, 1) == 1)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False


def _exif_transposes(img: Image.Image) -> bool:
    """True when the EXIF orientation swaps width and height (rotations by 90° or 270°)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        return False
    return orientation in (5, 6, 7, 8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: stretch to 8 bits rather than let PIL clip everything to white.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.min(arr)), float(np.max(arr))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become mid-grey, a neutral background for CLIP rather than black.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def prepare(image: Image.Image, size: int, resize_mode: ResizeMode = "shortest") -> np.ndarray:
    """The encoder's input for one image, resized on uint8 as open_clip's own transform does.

    Args:
        image: RGB image.
        size: the encoder's square input side in pixels.
        resize_mode: `shortest` (resize the short side, centre-crop; CLIP's default), `squash` (resize both sides),
            or `longest` (resize the long side, pad to a square).

    Returns:
        (size, size, 3) uint8.
    """
    w, h = image.size
    if resize_mode == "squash":
        out = image.resize((size, size), Image.Resampling.BICUBIC)
    elif resize_mode == "longest":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(image.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
        out = canvas
    else:
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        resized = image.resize((nw, nh), Image.Resampling.BICUBIC) if (nw, nh) != (w, h) else image
        left, top = (nw - size) // 2, (nh - size) // 2
        out = resized.crop((left, top, left + size, top + size))
    return np.asarray(out, dtype=np.uint8)


def crop_square(image: Image.Image, window_xyxy: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The encoder's input for one crop window (which may extend past the image; that part is mid-grey).

    Returns:
        (size, size, 3) uint8.
    """
    x0, y0, x1, y1 = (int(round(v)) for v in window_xyxy)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    iw, ih = image.size
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(iw, x1), min(ih, y1)
    if ix0 == x0 and iy0 == y0 and ix1 == x1 and iy1 == y1:
        region = image.crop((x0, y0, x1, y1))
    else:
        region = Image.new("RGB", (w, h), (128, 128, 128))
        if ix1 > ix0 and iy1 > iy0:
            region.paste(image.crop((ix0, iy0, ix1, iy1)), (ix0 - x0, iy0 - y0))
    return np.asarray(region.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0), dtype=np.uint8)


def masked_context_square(image: Image.Image, box_xyxy: tuple[float, float, float, float], factor: float,
                          size: int) -> np.ndarray:
    """The surroundings of a box: a square `factor` times the box's long side, with the box itself greyed out.

    If the box cut through an object, the rest of it is still visible here; a box that holds its whole object leaves
    only background. Returns (size, size, 3) uint8.
    """
    x0, y0, x1, y1 = box_xyxy
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * factor
    window = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    arr = crop_square(image, window, size).copy()
    scale = size / side
    mx0, my0 = int((x0 - window[0]) * scale), int((y0 - window[1]) * scale)
    mx1, my1 = int(math.ceil((x1 - window[0]) * scale)), int(math.ceil((y1 - window[1]) * scale))
    arr[max(0, my0):max(0, my1), max(0, mx0):max(0, mx1)] = 128
    return arr
