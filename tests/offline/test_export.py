"""The dataset writers of `cliplabel label`: YOLO splits, COCO and class folders, checked by reading them back."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from cliplabel.offline import export
from cliplabel.offline.export import Box, LabelledImage


def read_coco(path: Path) -> list[LabelledImage]:
    """COCO JSON back into records (the round trip of `write_coco`)."""
    data = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    boxes: dict[int, list[Box]] = defaultdict(list)
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append(Box(names[a["category_id"]], float(a.get("score", 1.0)), (x, y, x + w, y + h)))
    return [LabelledImage(Path(im["file_name"]), (im["width"], im["height"]), boxes=tuple(boxes[im["id"]]))
            for im in data["images"]]


def test_coco_round_trip(tmp_path: Path) -> None:
    items = [LabelledImage(Path("a.png"), (100, 50), boxes=(Box("cat", 0.9, (1.0, 2.0, 30.0, 40.0)),
                                                          Box("dog", 0.5, (10.0, 5.0, 20.0, 15.0)))),
             LabelledImage(Path("b.png"), (64, 64))]
    counts = export.write_coco(items, ["cat", "dog"], tmp_path / "c.json")
    assert counts == {"images": 2, "annotations": 2}
    back = read_coco(tmp_path / "c.json")
    assert [(b.path, b.image_wh) for b in back] == [(Path("a.png"), (100, 50)), (Path("b.png"), (64, 64))]
    assert [(x.label, x.bbox_xyxy) for x in back[0].boxes] == [("cat", (1.0, 2.0, 30.0, 40.0)),
                                                                ("dog", (10.0, 5.0, 20.0, 15.0))]
    assert back[1].boxes == ()


def test_folders_and_review_list(tmp_path: Path) -> None:
    files = []
    for name in ("x.png", "y.png", "z.png"):
        (tmp_path / name).write_bytes(b"img")
        files.append(tmp_path / name)
    items = [LabelledImage(files[0], (1, 1), "cat", 0.9), LabelledImage(files[1], (1, 1), "dog", 0.2),
             LabelledImage(files[2], (1, 1), "cat", 0.7)]
    counts = export.write_folders(items, tmp_path / "out", threshold=0.5)
    assert counts == {"cat": 2, "_review": 1}
    assert len(list((tmp_path / "out" / "cat").iterdir())) == 2
    assert (tmp_path / "out" / "review.txt").read_text().startswith(f"{files[1]}\tdog\t0.2000")


@pytest.mark.parametrize("val", [0.0, 0.2, 0.5])
def test_split_is_stratified_and_complete(val: float) -> None:
    items = [LabelledImage(Path(f"{i}"), (1, 1), "a" if i < 10 else "b") for i in range(20)]
    train, val_ids = export.stratified_split(items, val)
    assert sorted(train + val_ids) == list(range(20))
    assert sum(1 for i in val_ids if i < 10) == round(10 * val) == sum(1 for i in val_ids if i >= 10)
