"""Box quality on BOTH test models (the framed one and the plain one that never learned "part of"), through the real
detector with the real tiny CLIPs. A small slice of bench/bench_boxes.py, with thresholds well under its numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cliplabel.core.domain import Control, LabelClass
from cliplabel.core.metrics import Metrics
from cliplabel.model.embeddings import EmbeddingService, content_hash
from cliplabel.services.class_vectors import ClassVectors
from cliplabel.services.detect import BoxDetector, BoxImage, DetectorConfig
from cliplabel.store import open_store
from cliplabel.vision.prompts import DEFAULT_TEMPLATES
from tests import scenes, synthetic
from tests.detection_eval import evaluate


def _control(classes: tuple[str, ...]) -> Control:
    return Control(kind="rectanglelabels", from_name="bbox", to_name="image", image_key="image",
                   classes=tuple(LabelClass(c) for c in classes))


@pytest.fixture
def detector(any_encoder: Any, tmp_path: Path) -> Iterator[BoxDetector]:
    with ThreadPoolExecutor(4) as pool:
        store = open_store(None, tmp_path)
        emb = EmbeddingService(any_encoder, store, 64, 10**8, pool, Metrics())
        yield BoxDetector(emb, store, pool, ClassVectors(emb, DEFAULT_TEMPLATES), DetectorConfig())
        store.close()


def _items(scene_list: list[tuple[Any, list[synthetic.SceneObject]]]) -> list[BoxImage]:
    return [BoxImage(content_hash(synthetic.encode_png(img)), img) for img, _ in scene_list]


def test_boxes_on_varied_empty_and_clutter_scenes(detector: BoxDetector) -> None:
    rng = np.random.default_rng(13)
    varied = [scenes.varied_scene(rng) for _ in range(12)]
    empty = [scenes.varied_scene(rng, n_objects=0) for _ in range(4)]
    clutter = [scenes.clutter_scene(rng) for _ in range(6)]
    found = detector.detect(_items(varied + empty), _control(scenes.ALL_CLASSES))
    score = evaluate([[(r.bbox_xyxy, r.label, r.score) for r in regs] for regs in found[:12]],
                     [[(o.bbox_xyxy, o.name) for o in objs] for _, objs in varied])
    # bench/bench_boxes.py on 120 scenes: recall 0.90, AP50 (pycocotools) 0.80–0.81 across the two models; on 12
    # scenes this asserts less, to stay clear of noise
    assert score.recall50 >= 0.6, score
    assert score.ap50 >= 0.4, score
    assert sum(len(f) for f in found[12:]) <= 1  # empty scenes: ≤ 0.25 per scene
    # shapes of colours the config does not name are not boxed: ≤ 0.5 per scene (bench: 0.10 on both)
    on_clutter = detector.detect(_items(clutter), _control(scenes.CLUTTER_CONFIG_CLASSES))
    assert sum(len(f) for f in on_clutter) <= 3, [[r.label for r in f] for f in on_clutter]


def test_a_drawn_box_gets_its_label_and_background_gets_none(detector: BoxDetector) -> None:
    rng = np.random.default_rng(9)
    img, objs = synthetic.scene(rng, 320, 240, n_objects=3)
    control = _control(scenes.ALL_CLASSES)
    (item,) = _items([(img, objs)])
    for obj in objs:
        got = detector.label_box(item, control, np.array(obj.bbox_xyxy))
        assert got is not None and got.label == obj.name
        assert got.bbox_xyxy == pytest.approx(obj.bbox_xyxy)
        assert 0.0 <= got.score <= 1.0
    bg_img, _ = synthetic.scene(np.random.default_rng(10), 256, 256, n_objects=0)
    (bg_item,) = _items([(bg_img, [])])
    for box in ([76, 76, 140, 140], [10, 10, 60, 60], [0, 128, 128, 256]):
        assert detector.label_box(bg_item, control, np.array(box, float)) is None


def test_a_clicked_point_gets_the_box_around_it(detector: BoxDetector) -> None:
    img, objs = synthetic.scene(np.random.default_rng(12), 256, 256, n_objects=2, min_radius_frac=0.12)
    (item,) = _items([(img, objs)])
    from cliplabel.vision.regions import iou_matrix

    hits = 0
    for obj in objs:
        cx, cy = (obj.bbox_xyxy[0] + obj.bbox_xyxy[2]) / 2, (obj.bbox_xyxy[1] + obj.bbox_xyxy[3]) / 2
        got = detector.box_around_point(item, _control(scenes.ALL_CLASSES), (cx, cy))
        assert got is None or got.bbox_xyxy[0] <= cx <= got.bbox_xyxy[2]
        if got is not None and got.label == obj.name:
            hits += iou_matrix(np.array([got.bbox_xyxy]), np.array([obj.bbox_xyxy]))[0, 0] >= 0.5
    assert hits >= 1
