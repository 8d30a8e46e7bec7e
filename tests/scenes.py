"""Benchmark scenes for the box path, built on the tiny CLIP's world (`tests.synthetic`, which stays untouched: the
test models' cache is keyed by its content).

- `varied_scene`: 1–4 shapes of varied size — about a third small (box side 5–10 % of the image side) — some of them
  touching or cut by the image border; ground truth is the visible part of each shape.
- `clutter_scene`: distractor shapes only, in colours that the label config does not name (see `CLUTTER_COLOURS`):
  a box path that boxes them confuses "something coloured" with one of its classes.
Pure PIL + numpy, deterministic per generator.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from tests import synthetic
from tests.synthetic import SceneObject

# The config of the clutter variant names three colours; distractors use the other three (the model knows them).
CONFIG_COLOURS: tuple[str, ...] = ("red", "green", "blue")
CLUTTER_COLOURS: tuple[str, ...] = ("yellow", "purple", "orange")
ALL_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES)
CLUTTER_CONFIG_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in CONFIG_COLOURS for s in synthetic.SHAPES)


def _place(rng: np.random.Generator, width: int, height: int, r: float, border: bool,
           placed: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    for _attempt in range(60):
        if border:
            # the shape touches one image edge or is cut by it (up to 30 % of its radius outside)
            edge, inset = int(rng.integers(0, 4)), rng.uniform(0.7, 1.0) * r
            along_x, along_y = rng.uniform(r, width - r), rng.uniform(r, height - r)
            cx, cy = ((inset, along_y), (width - inset, along_y), (along_x, inset), (along_x, height - inset))[edge]
        else:
            cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
        if all(math.hypot(cx - px, cy - py) > r + pr + 6 for px, py, pr in placed):
            return cx, cy
    return None


def _draw_objects(rng: np.random.Generator, img: np.ndarray, n: int, colours: tuple[str, ...],
                  small_rate: float, border_rate: float) -> list[SceneObject]:
    height, width = img.shape[:2]
    side = min(width, height)
    placed: list[tuple[float, float, float]] = []
    objects: list[SceneObject] = []
    for _ in range(n):
        small = rng.random() < small_rate
        # box side 5–10 % of the image side for small shapes, else 12–40 %; r is half the box side
        r = (rng.uniform(0.05, 0.10) if small else rng.uniform(0.12, 0.40)) * side / 2
        centre = _place(rng, width, height, r, (not small) and rng.random() < border_rate, placed)
        if centre is None:
            continue
        cx, cy = centre
        placed.append((cx, cy, r))
        colour = str(rng.choice(list(colours)))
        shape = str(rng.choice(synthetic.SHAPES))
        angle = 0.0 if shape == "circle" else rng.uniform(0, 2 * math.pi)
        box = synthetic.draw_shape(img, colour, shape, cx, cy, r, angle, rng)
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            objects.append(SceneObject(colour, shape, box))
    return objects


def varied_scene(rng: np.random.Generator, width: int = 256, height: int = 256, n_objects: int | None = None,
                 small_rate: float = 0.3, border_rate: float = 0.25) -> tuple[Image.Image, list[SceneObject]]:
    """A scene of 1–4 shapes (or `n_objects`, 0 for an empty scene) of varied size and their visible boxes."""
    img = synthetic.background(rng, width, height)
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    objects = _draw_objects(rng, img, n, tuple(synthetic.COLOURS), small_rate, border_rate)
    return synthetic.to_pil(img), objects


def clutter_scene(rng: np.random.Generator, width: int = 256, height: int = 256
                  ) -> tuple[Image.Image, list[SceneObject]]:
    """2–4 distractor shapes in `CLUTTER_COLOURS` (none of which `CLUTTER_CONFIG_CLASSES` names), and their boxes."""
    img = synthetic.background(rng, width, height)
    objects = _draw_objects(rng, img, int(rng.integers(2, 5)), CLUTTER_COLOURS, 0.2, 0.2)
    return synthetic.to_pil(img), objects
