"""Labelling a folder without Label Studio: YOLO, COCO and class folders, checked by reading them back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliplabel.offline import export
from cliplabel.offline.export import Box, LabelledImage
from tests import synthetic

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]


def _folder(tmp: Path) -> dict[str, list]:
    rng = np.random.default_rng(31)
    truth = {}
    (tmp / "imgs" / "sub").mkdir(parents=True)
    for i in range(10):
        img, objs = synthetic.scene(rng, 256, 256, n_objects=1 + i % 3, min_radius_frac=0.12)
        name = f"scene{i}.png" if i % 2 else f"sub/scene{i}.png"
        img.save(tmp / "imgs" / name)
        truth[Path(name).stem] = objs
    for i in range(2):
        img, _ = synthetic.scene(rng, 256, 256, n_objects=0)
        img.save(tmp / "imgs" / f"empty{i}.png")
        truth[f"empty{i}"] = []
    (tmp / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    return truth


def test_label_command_writes_a_yolo_dataset(tiny_model_dir: Path, tmp_path: Path) -> None:
    truth = _folder(tmp_path)
    env = {**os.environ, "CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_DATA_DIR": str(tmp_path / "d")}
    env.pop("CLIPLABEL_REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-m", "cliplabel.cli", "label", str(tmp_path / "imgs"), "--classes",
                           ",".join(CLASSES), "--out", str(tmp_path / "yolo"), "--format", "yolo", "--val", "0.25"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "13/13" in proc.stderr and "img/s" in proc.stderr  # the progress bar reached the end
    assert "12 of 13 images labelled" in proc.stdout  # the broken file is skipped, not fatal
    out = tmp_path / "yolo"
    data = (out / "data.yaml").read_text()
    assert "train: images/train" in data and "val: images/val" in data and f"nc: {len(CLASSES)}" in data
    found, truths = [], []
    n_val = 0
    for split in ("train", "val"):
        for label_file in sorted((out / "labels" / split).glob("*.txt")):
            image = next((out / "images" / split).glob(label_file.stem + ".*"))
            n_val += split == "val"
            stem = label_file.stem.split("_", 1)[1]
            boxes = []
            for line in label_file.read_text().splitlines():
                cls, cx, cy, w, h = line.split()
                assert 0 <= int(cls) < len(CLASSES) and all(0.0 <= float(v) <= 1.0 for v in (cx, cy, w, h))
                cx, cy, w, h = (float(v) * 256 for v in (cx, cy, w, h))
                boxes.append(((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), CLASSES[int(cls)], 1.0))
            assert image.is_file()
            found.append(boxes)
            truths.append([(o.bbox_xyxy, o.name) for o in truth[stem]])
    assert len(found) == 12 and n_val == 3
    from tests.detection_eval import evaluate

    scores = evaluate(found, truths)
    assert scores.recall50 >= 0.6, scores
    # background images are there as hard negatives, with empty label files
    assert sum(1 for f in (out / "labels").rglob("*.txt") if f.read_text() == "") >= 1


def test_coco_round_trip(tmp_path: Path) -> None:
    items = [LabelledImage(Path("a.png"), (100, 50), boxes=(Box("cat", 0.9, (1.0, 2.0, 30.0, 40.0)),
                                                          Box("dog", 0.5, (10.0, 5.0, 20.0, 15.0)))),
             LabelledImage(Path("b.png"), (64, 64))]
    counts = export.write_coco(items, ["cat", "dog"], tmp_path / "c.json")
    assert counts == {"images": 2, "annotations": 2}
    back = export.read_coco(tmp_path / "c.json")
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
