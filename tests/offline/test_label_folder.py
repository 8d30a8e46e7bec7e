"""`cliplabel label`: labelling a folder without Label Studio, run as the user would, checked by reading it back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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
    env = {**os.environ, "CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_DATA_DIR": str(tmp_path / "d"),
           "CLIPLABEL_PROPOSAL_SIDE": "256"}  # the box benchmark's setting: 128 px misses small objects on these scenes
    env.pop("CLIPLABEL_REDIS_URL", None)
    proc = subprocess.run([sys.executable, "-m", "cliplabel.cli", "label", str(tmp_path / "imgs"), "--classes",
                           ",".join(CLASSES), "--out", str(tmp_path / "yolo"), "--format", "yolo", "--val", "0.25"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "13/13" in proc.stderr and "img/s" in proc.stderr  # the progress bar reached the end
    # quiet by default: open_clip's model-loading lines and our INFO lines stay out; the skipped file's warning stays
    assert " INFO " not in proc.stderr and "WARNING" in proc.stderr and "broken.png" in proc.stderr
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
