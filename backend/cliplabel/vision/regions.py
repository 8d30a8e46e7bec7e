"""Box geometry on numpy arrays: IoU, containment, NMS, filtering, crop windows, Label Studio percents.

Boxes are `(N, 4)` float arrays of `x0, y0, x1, y1` in pixels of the EXIF-upright image (`bbox_xyxy`).
Pure numpy.
"""

from __future__ import annotations

import numpy as np


def as_boxes(boxes: object) -> np.ndarray:
    """Validates and returns `(N, 4)` float64 xyxy boxes.

    Raises:
        ValueError: naming the expected and the actual shape.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {arr.shape}")
    return arr


def areas(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(N,) areas in square pixels (0 for degenerate boxes)."""
    b = as_boxes(boxes_xyxy)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union; 0 where either box is degenerate."""
    a, b = as_boxes(a_xyxy), as_boxes(b_xyxy)
    inter = _intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def containment_matrix(inner_xyxy: np.ndarray, outer_xyxy: np.ndarray) -> np.ndarray:
    """(N, M): the share of inner box i that lies inside outer box j."""
    inner, outer = as_boxes(inner_xyxy), as_boxes(outer_xyxy)
    a = areas(inner)[:, None]
    return np.where(a > 0, _intersections(inner, outer) / np.where(a > 0, a, 1), 0.0)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Returns:
        Indices of the kept boxes, highest score first.
    """
    b = as_boxes(boxes_xyxy)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    iou = iou_matrix(b, b)
    suppressed = np.zeros(len(b), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def classwise_nms(boxes_xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each label; returns kept indices, highest score first."""
    keep: list[int] = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        keep.extend(idx[nms(boxes_xyxy[idx], scores[idx], iou_threshold)].tolist())
    keep.sort(key=lambda i: -float(scores[i]))
    return np.asarray(keep, dtype=np.int64)


def filter_proposals(boxes_xyxy: np.ndarray, image_wh: tuple[int, int], min_side_px: float, max_area_frac: float,
                     max_aspect: float, dedupe_iou: float) -> np.ndarray:
    """Drops tiny, huge, elongated and near-duplicate proposals; keeps the input order otherwise.

    Returns:
        Indices into `boxes_xyxy`.
    """
    b = as_boxes(boxes_xyxy)
    if len(b) == 0:
        return np.zeros(0, np.int64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    img_area = float(image_wh[0] * image_wh[1])
    ok = (np.minimum(w, h) >= min_side_px) & (w * h <= max_area_frac * img_area)
    ok &= np.maximum(w, h) <= max_aspect * np.maximum(np.minimum(w, h), 1e-9)
    idx = np.flatnonzero(ok)
    kept: list[int] = []
    for i in idx:
        if kept and iou_matrix(b[i:i + 1], b[kept]).max() > dedupe_iou:
            continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def square_windows(boxes_xyxy: np.ndarray, pad_frac: float) -> np.ndarray:
    """The square crop around each box: centred on it, side `max(w, h) × (1 + pad_frac)`.

    CLIP sees whole, centred objects with a little margin this way, whatever the box's aspect ratio; the crop may
    extend past the image, where it is filled with grey.
    """
    b = as_boxes(boxes_xyxy)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1.0 + pad_frac)
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def clip_boxes(boxes_xyxy: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray:
    b = as_boxes(boxes_xyxy).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, image_wh[0])
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, image_wh[1])
    return b


def to_percent(box_xyxy: np.ndarray, image_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """One pixel box → Label Studio's `(x, y, width, height)` in percent of the image, clamped to [0, 100]."""
    w, h = image_wh
    x0, y0, x1, y1 = (float(v) for v in clip_boxes(np.asarray([box_xyxy]), image_wh)[0])
    return (100.0 * x0 / w, 100.0 * y0 / h, 100.0 * (x1 - x0) / w, 100.0 * (y1 - y0) / h)


def from_percent(x_pct: float, y_pct: float, width_pct: float, height_pct: float,
                 image_wh: tuple[int, int]) -> np.ndarray:
    """Label Studio's percent rectangle → a (4,) pixel xyxy box, clamped to the image."""
    w, h = image_wh
    box = np.asarray([[x_pct * w / 100.0, y_pct * h / 100.0, (x_pct + width_pct) * w / 100.0,
                       (y_pct + height_pct) * h / 100.0]])
    return clip_boxes(box, image_wh)[0]
