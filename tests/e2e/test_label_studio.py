"""End to end against a real Label Studio 1.23.2, driven only through its HTTP API (prediction validation on).

Each step raises `StepError` naming itself. Run alone with `python -m pytest -m e2e`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cliplabel.store import open_store
from tests import synthetic
from tests.e2e import labelstudio
from tests.e2e.cliplabel_procs import ROOT, _label_of, _retrieve, _upload, _versions, _wait_version, start_backend
from tests.e2e.labelstudio import StepError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SHAPES = ("Circle", "Square", "Triangle", "Star")
SHIFTED = {"Type A": ("red", "circle"), "Type B": ("blue", "square"), "Type C": ("green", "triangle"),
           "Type D": ("yellow", "star")}
SHIFTED_CONFIG = ('<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
                  + "".join(f'<Choice value="{k}"/>' for k in SHIFTED) + "</Choices></View>")


def _two_shape_scene(rng: np.random.Generator) -> tuple[str, bytes, tuple[str, str], tuple[float, float, float, float]]:
    """A 192×192 scene of two shapes of different classes, named after the first (the task's main label): (file name,
    PNG, (main label, second shape's label), a box around the second shape in percent (x, y, width, height))."""
    while True:
        img, objs = synthetic.scene(rng, 192, 192, n_objects=2, min_radius_frac=0.16, max_radius_frac=0.22)
        if len(objs) == 2 and objs[0].shape != objs[1].shape:
            break
    x0, y0, x1, y1 = objs[1].bbox_xyxy
    pad = 4.0
    x0, y0, x1, y1 = max(0.0, x0 - pad), max(0.0, y0 - pad), min(192.0, x1 + pad), min(192.0, y1 + pad)
    main, second = objs[0].shape.capitalize(), objs[1].shape.capitalize()
    return f"{main}_scene.png", synthetic.encode_png(img), (main, second), \
        tuple(round(100 * v / 192, 3) for v in (x0, y0, x1 - x0, y1 - y0))  # type: ignore[return-value]


def _rectangle_labels(answer: object) -> list[str]:
    """The labels of every rectangle in Label Studio's interactive answer, wherever it nests them."""
    if isinstance(answer, dict):
        if answer.get("type") == "rectanglelabels" and isinstance(answer.get("value"), dict):
            return [str(v) for v in answer["value"].get("rectanglelabels", [])]
        return [label for v in answer.values() for label in _rectangle_labels(v)]
    if isinstance(answer, list):
        return [label for v in answer for label in _rectangle_labels(v)]
    return []


def _run_loop(tmp: Path, model_dir: Path, redis: tuple[str, str] | None) -> None:
    ls = labelstudio.start(tmp)
    backend_url, procs = start_backend(tmp, model_dir, redis)
    try:
        # 1. a project from the repository's label_config.xml, with synthetic images
        config = (ROOT / "label_config.xml").read_text()
        project = ls.api("POST", "/api/projects", "1 create project", json={"title": "cliplabel e2e",
                                                                             "label_config": config})["id"]
        rng = np.random.default_rng(7)
        images = []
        for i in range(12):
            shape = SHAPES[i % 4]
            img = synthetic.object_image(rng, str(rng.choice(list(synthetic.COLOURS))), shape.lower(), 96)
            images.append((f"{shape}_{i}.png", synthetic.encode_png(img)))
        tasks = _upload(ls, project, images, "1 upload images")

        # 2. register our backend as an interactive ML backend
        ml = ls.api("POST", "/api/ml", "2 register backend", json={"url": backend_url, "project": project,
                                                                   "title": "cliplabel", "is_interactive": True})
        # Label Studio called /setup when registering; the version it was given is the project's current one.
        version = _versions(backend_url, project)[-1]

        # 3. retrieve predictions for all tasks; every one stored, valid, mostly right, with our version
        preds = _retrieve(ls, project, len(tasks), version, "3 retrieve predictions")
        correct = 0
        for task in tasks:
            result = preds[task["id"]]["result"]
            choices = [r for r in result if r["type"] == "choices"]
            boxes = [r for r in result if r["type"] == "rectanglelabels"]
            if not choices or choices[0]["value"]["choices"][0] not in SHAPES:
                raise StepError(f"3 retrieve predictions: task {task['id']} has no valid choice: {result}")
            correct += choices[0]["value"]["choices"] == [_label_of(task)]
            for box in boxes:
                if box["value"]["rectanglelabels"][0] not in SHAPES or not 0 <= box["value"]["x"] <= 100:
                    raise StepError(f"3 retrieve predictions: invalid box {box}")
        if correct < 9:
            raise StepError(f"3 retrieve predictions: only {correct}/12 choices correct")
        n_boxes = sum(len([r for r in p["result"] if r["type"] == "rectanglelabels"]) for p in preds.values())
        print(f"e2e[{'redis' if redis else 'embedded'}] step 3: {len(preds)} predictions stored, {correct}/12 choices "
              f"correct, {n_boxes} boxes, version {version}")

        # 4. interactive: a rectangle drawn around the scene's second shape comes back labelled with that shape,
        # not with the task's main label (the file's name) nor with what the annotator's tool preset said
        scene_name, scene_png, (main, drawn_label), drawn_pct = _two_shape_scene(rng)
        tasks = _upload(ls, project, [(scene_name, scene_png)], "4 upload scene", expected_total=len(tasks) + 1)
        task = tasks[-1]
        preset = next(s for s in SHAPES if s not in (main, drawn_label))
        x, y, w, h = drawn_pct
        drawn = {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
                 "original_width": 192, "original_height": 192,
                 "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [preset]}}
        answer = ls.api("POST", f"/api/ml/{ml['id']}/interactive-annotating", "4 interactive",
                        json={"task": task["id"], "context": {"result": [drawn]}})
        text = str(answer)
        labels = _rectangle_labels(answer)
        if labels != [drawn_label]:
            raise StepError(f"4 interactive: expected one box labelled {drawn_label} (main label {main}), got "
                            f"{labels}: {text[:500]}")

        # 5. annotate: accept, correct, delete boxes; update and delete an annotation; webhooks recorded once
        ann_ids = []
        for t in tasks[:8]:
            result = [{"from_name": "label", "to_name": "image", "type": "choices",
                       "value": {"choices": [_label_of(t)]}}]
            ann_ids.append(ls.api("POST", f"/api/tasks/{t['id']}/annotations", "5 annotate",
                                  json={"result": result, "project": project})["id"])
        ls.api("PATCH", f"/api/annotations/{ann_ids[0]}", "5 update annotation",
               json={"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                 "value": {"choices": [_label_of(tasks[0])]}}]})
        ls.api("DELETE", f"/api/annotations/{ann_ids[1]}", "5 delete annotation", expect=(200, 204))
        store = open_store(redis[0] if redis else None, tmp / "backend", redis[1] if redis else "cliplabel")
        deadline = time.monotonic() + 60
        recorded: list[int] = []
        while time.monotonic() < deadline:
            recorded = sorted({e.annotation_id for e in store.list_feedback(str(project))})
            if recorded == sorted(ann_ids[:1] + ann_ids[2:]):
                break
            time.sleep(0.5)
        store.close()
        if recorded != sorted(ann_ids[:1] + ann_ids[2:]):
            raise StepError(f"5 webhooks: recorded annotations {recorded}, expected {sorted(ann_ids[:1] + ann_ids[2:])}")

        # 6. train from Label Studio; a new version appears and retrieving predictions stamps it
        ls.api("POST", f"/api/ml/{ml['id']}/train", "6 train", json={})
        r1 = version.replace("-r0", "-r1")
        _wait_version(backend_url, project, r1, "6 train")
        _retrieve(ls, project, len(tasks), r1, "6 retrieve after training")

        # 6b. the shifted-name case scores better after training
        shifted = ls.api("POST", "/api/projects", "6b create shifted project",
                         json={"title": "shifted", "label_config": SHIFTED_CONFIG})["id"]
        simgs = []
        for i in range(16):
            label = list(SHIFTED)[i % 4]
            c, s = SHIFTED[label]
            simgs.append((f"{label.replace(' ', '')}_{i}.png",
                          synthetic.encode_png(synthetic.object_image(rng, c, s, 64).resize((96, 96)))))
        stasks = _upload(ls, shifted, simgs, "6b upload")
        sml = ls.api("POST", "/api/ml", "6b register", json={"url": backend_url, "project": shifted,
                                                             "title": "cliplabel", "is_interactive": True})
        sversion = _versions(backend_url, shifted)[-1]

        held_out = stasks[8:]  # the first 8 are annotated below: accuracy counts the other 8 only

        def shifted_accuracy(v: str) -> float:
            p = _retrieve(ls, shifted, len(stasks), v, "6b retrieve")
            return float(np.mean([p[t["id"]]["result"][0]["value"]["choices"][0].replace(" ", "") == _label_of(t)
                                  for t in held_out]))

        before = shifted_accuracy(sversion)
        for t in stasks[:8]:
            label = _label_of(t)
            ls.api("POST", f"/api/tasks/{t['id']}/annotations", "6b annotate",
                   json={"result": [{"from_name": "kind", "to_name": "image", "type": "choices",
                                     "value": {"choices": [label[:4] + " " + label[4:]]}}], "project": shifted})
        ls.api("POST", f"/api/ml/{sml['id']}/train", "6b train", json={})
        _wait_version(backend_url, shifted, sversion.replace("-r0", "-r1"), "6b train")
        after = shifted_accuracy(sversion.replace("-r0", "-r1"))
        if not after >= before + 0.25:
            raise StepError(f"6b shifted case: accuracy {before:.2f} → {after:.2f}, expected +0.25")
        print(f"e2e[{'redis' if redis else 'embedded'}] step 4 interactive answer: {text[:160]}")
        print(f"e2e[{'redis' if redis else 'embedded'}] step 5: recorded annotations {recorded}; step 6: {r1}; "
              f"shifted accuracy {before:.2f} -> {after:.2f}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
        ls.stop()
    for name in ("serve.log", "worker.log"):
        if (tmp / name).exists() and "Traceback" in (tmp / name).read_text():
            raise StepError(f"{name} holds a traceback: {(tmp / name).read_text()[-3000:]}")


def test_whole_loop_with_redis_and_a_worker(ls_ready, tiny_model_dir, redis_url, redis_prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _run_loop(tmp_path, tiny_model_dir, (redis_url, redis_prefix))


def test_whole_loop_on_the_embedded_default(ls_ready, tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _run_loop(tmp_path, tiny_model_dir, None)
