"""Boxes for `<RectangleLabels>` through the real HTTP app, on both tiny CLIPs (the framed one and the plain one)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests import synthetic
from tests.detection_eval import evaluate

CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
LABELS = "".join(f'<Label value="{c}"/>' for c in CLASSES)
BOX_CONFIG = f'<View><Image name="image" value="$image"/><RectangleLabels name="bbox" toName="image">{LABELS}' \
             "</RectangleLabels></View>"
BOTH_CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
               + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices>"
               + f'<RectangleLabels name="bbox" toName="image">{LABELS}</RectangleLabels></View>')


@pytest.fixture(scope="session")
def encoder(any_encoder):  # type: ignore[no-untyped-def]
    """Every test here runs on both test models: `serve` (tests/conftest.py) builds the app on this encoder."""
    return any_encoder


def _setup(http, url: str, host_url: str, config: str) -> str:  # type: ignore[no-untyped-def]
    resp = http.post(f"{url}/setup", json={"project": "3.1", "schema": config, "hostname": host_url,
                                           "access_token": "test-legacy-token-0123456789"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["model_version"])


def _boxes_px(result: dict, wh: tuple[int, int]) -> list[tuple[tuple[float, ...], str, float]]:
    out = []
    for item in result["result"]:
        if item["type"] != "rectanglelabels":
            continue
        v = item["value"]
        assert (item["original_width"], item["original_height"]) == wh
        assert all(0.0 <= v[k] <= 100.0 for k in ("x", "y", "width", "height"))
        assert v["x"] + v["width"] <= 100.0 + 1e-6 and v["y"] + v["height"] <= 100.0 + 1e-6
        box = (v["x"] * wh[0] / 100, v["y"] * wh[1] / 100, (v["x"] + v["width"]) * wh[0] / 100,
               (v["y"] + v["height"]) * wh[1] / 100)
        out.append((box, v["rectanglelabels"][0], item["score"]))
    return out


def test_boxes_on_synthetic_scenes(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    rng = np.random.default_rng(77)
    scenes = [synthetic.scene(rng, 256, 256, n_objects=int(rng.integers(1, 4))) for _ in range(16)]
    empties = [synthetic.scene(rng, 256, 256, n_objects=0) for _ in range(4)]
    tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/s{i}.png", synthetic.encode_png(img))}}
             for i, (img, _) in enumerate(scenes + empties)]
    version = _setup(http, live.url, image_host.url, BOX_CONFIG)
    results = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "3.1"}).json()["results"]
    assert len(results) == 20 and all(r["model_version"] == version for r in results)
    found = [_boxes_px(r, (256, 256)) for r in results]
    scores = evaluate(found[:16], [[(o.bbox_xyxy, o.name) for o in objs] for _, objs in scenes])
    # measured on this suite's scenes: recall 0.9+, AP50 ≈ 0.6 (see bench/bench_boxes.py for the larger run)
    assert scores.recall50 >= 0.8, scores
    assert scores.ap50 >= 0.4, scores
    # empty scenes: background wins
    assert sum(len(f) for f in found[16:]) <= 1
    # the prediction score is the mean of its regions' scores
    for r in results:
        if r["result"]:
            assert r["score"] == pytest.approx(float(np.mean([x["score"] for x in r["result"]])), abs=2e-6)


def test_choices_and_boxes_in_one_prediction(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    img, objs = synthetic.scene(np.random.default_rng(5), 256, 256, n_objects=1, min_radius_frac=0.3,
                                max_radius_frac=0.4)
    _setup(http, live.url, image_host.url, BOTH_CONFIG)
    tasks = [{"id": 1, "data": {"image": image_host.add("/data/upload/both.png", synthetic.encode_png(img))}}]
    (res,) = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "3.1"}).json()["results"]
    kinds = {item["type"] for item in res["result"]}
    assert kinds == {"choices", "rectanglelabels"}
    choice = next(i for i in res["result"] if i["type"] == "choices")
    assert choice["value"]["choices"] == [objs[0].name]
    assert any(label == objs[0].name for _, label, _ in _boxes_px(res, (256, 256)))


def _interactive(http, url: str, task: dict, context: list[dict]) -> dict:  # type: ignore[no-untyped-def]
    resp = http.post(f"{url}/predict", json={"tasks": [task], "project": "3.1",
                                             "params": {"login": None, "password": None,
                                                        "context": {"result": context}}})
    assert resp.status_code == 200, resp.text
    (res,) = resp.json()["results"]
    return res  # type: ignore[no-any-return]


def test_interactive_labels_the_drawn_box(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    img, objs = synthetic.scene(np.random.default_rng(9), 320, 240, n_objects=3)
    task = {"id": 5, "data": {"image": image_host.add("/data/upload/i.png", synthetic.encode_png(img))}}
    _setup(http, live.url, image_host.url, BOTH_CONFIG)
    _interactive(http, live.url, task, [])  # warm the model's prompt vectors
    for obj in objs:
        x0, y0, x1, y1 = obj.bbox_xyxy
        drawn = {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
                 "original_width": 320, "original_height": 240,
                 "value": {"x": x0 / 3.2, "y": y0 / 2.4, "width": (x1 - x0) / 3.2, "height": (y1 - y0) / 2.4,
                           "rotation": 0, "rectanglelabels": [CLASSES[0]]}, "is_positive": True}
        started = time.perf_counter()
        res = _interactive(http, live.url, task, [drawn])
        assert time.perf_counter() - started < 1.0  # one crop, warm model: well under a second
        (item,) = res["result"]
        assert item["type"] == "rectanglelabels" and item["value"]["rectanglelabels"] == [obj.name]
        # the same geometry comes back
        for k in ("x", "y", "width", "height"):
            assert abs(item["value"][k] - drawn["value"][k]) < 0.01


def test_interactive_box_over_background_gets_no_label(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    img, _ = synthetic.scene(np.random.default_rng(10), 256, 256, n_objects=0)
    task = {"id": 6, "data": {"image": image_host.add("/data/upload/bg.png", synthetic.encode_png(img))}}
    _setup(http, live.url, image_host.url, BOX_CONFIG)
    drawn = {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
             "value": {"x": 30, "y": 30, "width": 25, "height": 25, "rotation": 0, "rectanglelabels": []}}
    res = _interactive(http, live.url, task, [drawn])
    assert res["result"] == [] and res["score"] == 0.0


def test_interactive_keypoint_proposes_the_box_around_it(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    # proposals at the server's default side, 256 px, as the box benchmark measures them
    live = serve(make_store("embedded"))
    img, objs = synthetic.scene(np.random.default_rng(12), 256, 256, n_objects=2, min_radius_frac=0.12)
    task = {"id": 7, "data": {"image": image_host.add("/data/upload/k.png", synthetic.encode_png(img))}}
    config = BOX_CONFIG.replace("</View>", '<KeyPointLabels name="kp" toName="image" smart="true">'
                                           '<Label value="point"/></KeyPointLabels></View>')
    _setup(http, live.url, image_host.url, config)
    obj = objs[0]
    cx, cy = (obj.bbox_xyxy[0] + obj.bbox_xyxy[2]) / 2, (obj.bbox_xyxy[1] + obj.bbox_xyxy[3]) / 2
    res = _interactive(http, live.url, task, [{"from_name": "kp", "to_name": "image", "type": "keypointlabels",
                                               "value": {"x": cx / 2.56, "y": cy / 2.56, "keypointlabels": ["point"]}}])
    ((box, label, _),) = _boxes_px(res, (256, 256))
    from cliplabel.vision.regions import iou_matrix

    assert label == obj.name
    assert iou_matrix(np.array([box]), np.array([obj.bbox_xyxy]))[0, 0] >= 0.5


def test_rescoring_needs_no_new_crop_encodings(serve, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store("redis")
    live = serve(store)
    rng = np.random.default_rng(3)
    tasks = [{"id": i, "data": {"image": image_host.add(f"/data/upload/r{i}.png",
                                                         synthetic.encode_png(synthetic.scene(rng, 256, 256)[0]))}}
             for i in range(3)]
    _setup(http, live.url, image_host.url, BOX_CONFIG)
    first = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "3.1"}).json()
    encoded = http.get(f"{live.url}/metrics").json()["crops_encoded"]
    assert encoded > 0
    # a new process on the same store: every crop comes from the cache
    live.stop()
    live2 = serve(store)
    _setup(http, live2.url, image_host.url, BOX_CONFIG)
    assert http.post(f"{live2.url}/predict", json={"tasks": tasks, "project": "3.1"}).json() == first
    assert http.get(f"{live2.url}/metrics").json().get("crops_encoded", 0) == 0
