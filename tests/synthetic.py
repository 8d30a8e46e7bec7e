"""The tiny CLIP's world: coloured shapes on noisy backgrounds, deterministic per seed.

Used to train the test model (`tests.tinyclip`), to make test images, and by the benchmarks. Pure PIL + numpy.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 180),
    "orange": (245, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: its class and its tight box in pixels (x0, y0, x1, y1)."""

    colour: str
    shape: str
    bbox_xyxy: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A low-saturation tinted background with a gradient, grey clutter and noise.

    Returns:
        (height, width, 3) float32 in [0, 255].
    """
    base = rng.uniform(70, 190)
    tint = rng.normal(0, 12, size=3)
    img = np.empty((height, width, 3), np.float32)
    img[:] = base + tint
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xx / max(width, 1) + np.sin(angle) * yy / max(height, 1)) * rng.uniform(-50, 50)
    img += ramp[..., None]
    clutter = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0, x1, y1 = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line([(x0, y0), (x1, y1)], fill=int(rng.integers(20, 60)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, 1, 2) * [width, height]
        r = rng.uniform(0.03, 0.12) * min(width, height)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.integers(15, 45)))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    img += sign * np.asarray(clutter, np.float32)[..., None]
    img += rng.normal(0, rng.uniform(2, 18), size=img.shape).astype(np.float32)
    return img


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(angle + math.pi / 4 + k * math.pi / 2), math.sin(angle + math.pi / 4 + k * math.pi / 2))
               for k in range(4)]
        scale = r * 0.95
    elif shape == "triangle":
        pts = [(math.cos(angle - math.pi / 2 + k * 2 * math.pi / 3), math.sin(angle - math.pi / 2 + k * 2 * math.pi / 3))
               for k in range(3)]
        scale = r
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = angle - math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        scale = r
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(cx + scale * x, cy + scale * y) for x, y in pts]


def draw_shape(img: np.ndarray, colour: str, shape: str, cx: float, cy: float, r: float, angle: float,
               rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Composites an anti-aliased shape onto `img` in place and returns its tight box (x0, y0, x1, y1) in pixels."""
    height, width = img.shape[:2]
    s = _SUPERSAMPLE
    mask = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in _polygon(shape, cx, cy, r, angle)], fill=255)
    alpha = np.asarray(mask.resize((width, height), Image.Resampling.BOX), np.float32) / 255.0
    rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.normal(0, 12, size=3), 0, 255)
    shade = 1.0 + rng.normal(0, 0.06, size=(height, width, 1)).astype(np.float32)
    img *= 1.0 - alpha[..., None]
    img += alpha[..., None] * rgb * shade
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        return (cx, cy, cx, cy)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def object_image(rng: np.random.Generator, colour: str | None, shape: str | None, size: int = 64) -> Image.Image:
    """A framed single object (or, with colour/shape None, an empty background) of `size`×`size` pixels."""
    img = background(rng, size, size)
    if colour is not None and shape is not None:
        r = rng.uniform(0.35, 0.9) * size / 2
        cx = rng.uniform(r, size - r)
        cy = rng.uniform(r, size - r)
        angle = 0.0 if shape == "circle" else rng.uniform(0, 2 * math.pi)
        draw_shape(img, colour, shape, cx, cy, r, angle, rng)
    return to_pil(img)


def partial_object_image(rng: np.random.Generator, colour: str, shape: str, size: int = 64) -> Image.Image:
    """A crop that cuts through an object: 30–65 % of its extent lies outside the frame (what a bad box sees)."""
    img = background(rng, size, size)
    r = rng.uniform(0.5, 1.2) * size / 2
    outside = rng.uniform(0.3, 0.65) * 2 * r  # how much of the object's width is cut off
    side = int(rng.integers(0, 4))
    along = rng.uniform(r * 0.3, size - r * 0.3)
    cx, cy = {0: (r - outside, along), 1: (size - r + outside, along),
              2: (along, r - outside), 3: (along, size - r + outside)}[side]
    angle = 0.0 if shape == "circle" else rng.uniform(0, 2 * math.pi)
    draw_shape(img, colour, shape, cx, cy, r, angle, rng)
    return to_pil(img)


def random_object_image(rng: np.random.Generator, size: int = 64, background_rate: float = 0.1
                        ) -> tuple[Image.Image, str | None, str | None]:
    """A random object image and its (colour, shape), both None for a background-only image."""
    if rng.random() < background_rate:
        return object_image(rng, None, None, size), None, None
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    return object_image(rng, colour, shape, size), colour, shape


def scene(rng: np.random.Generator, width: int = 256, height: int = 256, n_objects: int | None = None,
          min_radius_frac: float = 0.08, max_radius_frac: float = 0.2) -> tuple[Image.Image, list[SceneObject]]:
    """A scene with 0–4 non-overlapping shapes and their ground-truth boxes."""
    img = background(rng, width, height)
    n = int(rng.integers(0, 5)) if n_objects is None else n_objects
    placed: list[tuple[float, float, float]] = []
    objects: list[SceneObject] = []
    side = min(width, height)
    for _ in range(n):
        for _attempt in range(50):
            r = rng.uniform(min_radius_frac, max_radius_frac) * side
            cx = rng.uniform(r + 2, width - r - 2)
            cy = rng.uniform(r + 2, height - r - 2)
            if all(math.hypot(cx - px, cy - py) > r + pr + 6 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        angle = 0.0 if shape == "circle" else rng.uniform(0, 2 * math.pi)
        box = draw_shape(img, colour, shape, cx, cy, r, angle, rng)
        objects.append(SceneObject(colour, shape, box))
    return to_pil(img), objects


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
