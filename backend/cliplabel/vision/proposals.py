"""Class-agnostic region proposals: OpenCV selective search plus a multi-scale window grid.

The only module that imports OpenCV. Proposals are computed on a copy downscaled to `proposal_side` pixels (the cost
of selective search grows with pixels; object boundaries survive the downscale) and returned in full-size pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image

SelectiveSearch = Literal["fast", "quality", "off"]


@dataclass(frozen=True)
class ProposalParams:
    """How densely to propose. Defaults and their measured cost are in the README."""

    selective_search: SelectiveSearch = "fast"
    proposal_side: int = 256
    window_scales: tuple[float, ...] = ()
    window_stride: float = 0.5

    def __post_init__(self) -> None:
        if self.proposal_side < 32:
            raise ValueError("proposal_side must be at least 32 pixels")
        if not 0.05 <= self.window_stride <= 1.0:
            raise ValueError("window_stride must be in [0.05, 1]")
        if any(not 0.0 < s <= 1.0 for s in self.window_scales):
            raise ValueError("window scales must be in (0, 1]")


@functools.cache
def _single_threaded_opencv() -> None:
    """One OpenCV thread per call: we already run several images in parallel, and the cores are shared with torch.

    OpenCV's thread count is process-wide (its pthreads pool), so setting it once is enough.
    """
    cv2.setNumThreads(1)


def selective_search(image: Image.Image, params: ProposalParams) -> np.ndarray:
    """(N, 4) xyxy boxes in pixels of `image`, smallest first (a deterministic order)."""
    if params.selective_search == "off":
        return np.zeros((0, 4), np.float64)
    w, h = image.size
    scale = min(1.0, params.proposal_side / max(w, h))
    small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR) \
        if scale < 1.0 else image
    bgr = np.ascontiguousarray(np.asarray(small.convert("RGB"))[:, :, ::-1])
    _single_threaded_opencv()
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if params.selective_search == "quality":
        ss.switchToSelectiveSearchQuality()
    else:
        ss.switchToSelectiveSearchFast()
    rects = ss.process()
    if len(rects) == 0:
        return np.zeros((0, 4), np.float64)
    r = np.asarray(rects, np.float64)
    boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)
    # OpenCV randomises the order of its regions on every call (the set is stable). Our filters keep the first of
    # near-duplicates and cap the count, so fix an order: smallest first, then by position.
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], r[:, 2] * r[:, 3]))
    return boxes[order] / scale


def windows(image_wh: tuple[int, int], params: ProposalParams) -> np.ndarray:
    """(N, 4) square sliding windows at each scale (a fraction of the short side), stride a fraction of the window."""
    w, h = image_wh
    out = []
    for s in params.window_scales:
        side = s * min(w, h)
        step = max(1.0, side * params.window_stride)
        xs = np.arange(0.0, max(w - side, 0.0) + 1e-6, step)
        ys = np.arange(0.0, max(h - side, 0.0) + 1e-6, step)
        for y in ys:
            for x in xs:
                out.append((x, y, x + side, y + side))
    return np.asarray(out, np.float64) if out else np.zeros((0, 4), np.float64)


def propose(image: Image.Image, params: ProposalParams) -> np.ndarray:
    """Selective search first (its boxes follow object edges), then windows."""
    return np.concatenate([selective_search(image, params), windows(image.size, params)])
