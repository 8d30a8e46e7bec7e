"""Interactive pre-annotation: the regions an annotator drew in Label Studio, labelled.

A drawn box gets its most likely label (or nothing when background wins); a clicked point gets the best box around
it. Positions arrive in Label Studio percent and are converted with the image's upright size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cliplabel.core.domain import Control, DrawnRegion, Head, RegionPrediction
from cliplabel.services.detect import BoxDetector, BoxImage
from cliplabel.vision import regions


def _control_of(region: DrawnRegion, controls: Sequence[Control]) -> Control | None:
    """The control the region was drawn with; failing that, one on the same image (a keypoint tool, say)."""
    return next((c for c in controls if c.from_name == region.from_name), None) or next(
        (c for c in controls if c.to_name == region.to_name), None)


def label_drawn_regions(detector: BoxDetector, controls: Sequence[Control], drawn: Sequence[DrawnRegion],
                        images_by_key: Mapping[str, BoxImage], heads: Mapping[str, Head]) -> list[RegionPrediction]:
    """The labelled regions of one task, in the order they were drawn; regions nothing fits are left out.

    Args:
        detector: scores boxes against a control's classes and background.
        controls: the task's `<RectangleLabels>` controls.
        drawn: what the annotator drew.
        images_by_key: the task's decoded images by data key (a control whose image is missing is skipped).
        heads: learned heads by control name.
    """
    out: list[RegionPrediction] = []
    for region in drawn:
        control = _control_of(region, controls)
        item = images_by_key.get(control.image_key) if control is not None else None
        if control is None or item is None:
            continue
        head = heads.get(control.from_name)
        w, h = item.wh
        if region.kind == "rectangle" and region.box_pct is not None:
            x0, y0, x1, y1 = region.box_pct
            box = regions.from_percent(x0, y0, x1 - x0, y1 - y0, (w, h))
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                found = detector.label_box(item, control, box, head)
                out.extend([found] if found else [])
        elif region.kind == "keypoint" and region.point_pct is not None:
            point = (region.point_pct[0] * w / 100.0, region.point_pct[1] * h / 100.0)
            found = detector.box_around_point(item, control, point, head)
            out.extend([found] if found else [])
    return out
