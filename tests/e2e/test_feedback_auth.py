"""Feedback with basic auth on, against a real Label Studio 1.23.2 (prediction validation on).

Label Studio creates the project's `<backend>/webhook` itself and sends annotation events there without the basic-auth
header; the backend takes them and confirms each against Label Studio's API. Checked here: Label Studio really
validates predictions; every annotation made in Label Studio arrives and is learned (N of N, then a new version);
predicted boxes accepted, corrected and deleted become confirm / correct / background examples; forged events teach
nothing, and training on demand still needs the credentials.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

from cliplabel.store import open_store
from tests import synthetic
from tests.e2e import labelstudio
from tests.e2e.cliplabel_procs import ROOT, _retrieve, _upload, _versions, _wait_version, start_backend, stop_all
from tests.e2e.labelstudio import StepError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
AUTH = ("labelstudio", "e2e-basic-auth-pass-0123")
N_TASKS = 12


def _scenes(n: int) -> list[tuple[str, bytes]]:
    """Scenes of two shapes of different classes, named after the first (the task's main label)."""
    rng = np.random.default_rng(11)
    out: list[tuple[str, bytes]] = []
    while len(out) < n:
        img, objs = synthetic.scene(rng, 160, 160, n_objects=2, min_radius_frac=0.15, max_radius_frac=0.22)
        if len(objs) == 2 and objs[0].shape != objs[1].shape:
            out.append((f"{objs[0].shape.capitalize()}_{len(out)}.png", synthetic.encode_png(img)))
    return out


def _boxes(prediction: dict) -> list[dict]:
    return [r for r in prediction["result"] if r["type"] == "rectanglelabels"]


def _iou(a: dict, b: dict) -> float:
    """IoU of two Label Studio boxes (percent units scale both axes alike, so the ratio is the pixels' one)."""
    ax, ay, aw, ah = (a["value"][k] for k in ("x", "y", "width", "height"))
    bx, by, bw, bh = (b["value"][k] for k in ("x", "y", "width", "height"))
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


def _choice(label: str) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


def _region(box: dict, label: str) -> dict:
    """A predicted box kept in an annotation, with the label the annotator gave it."""
    return {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
            "original_width": box["original_width"], "original_height": box["original_height"],
            "value": {**box["value"], "rectanglelabels": [label]}}


def test_annotations_flow_with_basic_auth_and_forged_events_teach_nothing(ls_ready, tiny_model_dir,  # type: ignore[no-untyped-def]
                                                                          tmp_path: Path) -> None:
    ls = labelstudio.start(tmp_path)
    procs: list = []
    try:
        url, procs = start_backend(tmp_path, tiny_model_dir, None, BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1])
        config = (ROOT / "label_config.xml").read_text()
        shapes = [c.split('"')[1] for c in config.split("<Choice ")[1:]]
        project = ls.api("POST", "/api/projects", "1 create project", json={"title": "auth", "label_config": config})["id"]
        tasks = _upload(ls, project, _scenes(N_TASKS), "1 upload")

        # 1. Label Studio really validates predictions: a wrong control or an unknown label is refused (400),
        # the same prediction with valid names is stored
        tid = tasks[0]["id"]
        for bad in ({"from_name": "nope", "to_name": "image", "type": "choices", "value": {"choices": ["Circle"]}},
                    _choice("Hexagon")):
            ls.api("POST", "/api/predictions", "1 invalid prediction", expect=(400,),
                   json={"task": tid, "model_version": "manual", "score": 0.5, "result": [bad]})
        ok = ls.api("POST", "/api/predictions", "1 valid prediction",
                    json={"task": tid, "model_version": "manual", "score": 0.5, "result": [_choice("Circle")]})
        ls.api("DELETE", f"/api/predictions/{ok['id']}", "1 delete valid prediction", expect=(200, 204))

        # 2. register the backend with basic auth; Label Studio makes the project's webhook itself, without it
        ml = ls.api("POST", "/api/ml", "2 register backend", json={
            "url": url, "project": project, "title": "cliplabel", "is_interactive": True,
            "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1]})
        hooks = [h for h in ls.api("GET", f"/api/webhooks?project={project}", "2 webhooks")
                 if h["url"] == f"{url}/webhook"]
        if len(hooks) != 1 or hooks[0].get("headers"):
            raise StepError(f"2 webhooks: expected Label Studio's own webhook without headers, got {hooks}")
        r0 = _versions(url, project, AUTH)[-1]
        preds = _retrieve(ls, project, len(tasks), r0, "3 retrieve predictions")
        boxed = [t for t in tasks if _boxes(preds[t["id"]])]
        if len(boxed) < 3:
            raise StepError(f"3 retrieve predictions: only {len(boxed)} tasks with a predicted box")

        # 4. annotate every task in Label Studio: three of them keep, relabel or delete the predicted boxes
        accept, correct, delete = boxed[:3]
        other = {}
        results: dict[int, list[dict]] = {}
        for t in tasks:
            main = str(t["data"]["image"]).rsplit("-", 1)[-1].split("_")[0]
            results[t["id"]] = [_choice(main)]
        first = _boxes(preds[accept["id"]])[0]
        results[accept["id"]].append(_region(first, first["value"]["rectanglelabels"][0]))
        first = _boxes(preds[correct["id"]])[0]
        other[correct["id"]] = next(s for s in shapes if s != first["value"]["rectanglelabels"][0])
        results[correct["id"]].append(_region(first, other[correct["id"]]))
        ann = {t["id"]: ls.api("POST", f"/api/tasks/{t['id']}/annotations", "4 annotate",
                               json={"result": results[t["id"]], "project": project})["id"] for t in tasks}

        # 5. forged events, sent as anyone could (no credentials): a made-up annotation, and a real one claimed for
        # another task with another label. Training on demand needs the credentials.
        def forged(aid: int, task: dict, label: str) -> dict:
            return {"action": "ANNOTATION_UPDATED", "project": {"id": project}, "task": task,
                    "annotation": {"id": aid, "task": task["id"], "result": [_choice(label)]}}

        victim = tasks[5]
        wrong = next(s for s in shapes if s != results[victim["id"]][0]["value"]["choices"][0])
        for event in (forged(987654, tasks[0], "Star"), forged(ann[victim["id"]], tasks[6], wrong)):
            resp = requests.post(f"{url}/webhook", json=event, timeout=5)
            if resp.status_code != 200 or resp.json()["status"] != "queued":
                raise StepError(f"5 forged event: {resp.status_code} {resp.text}")
        train = requests.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": project}},
                              timeout=5)
        if train.status_code != 401:
            raise StepError(f"5 unauthenticated START_TRAINING: {train.status_code} {train.text}")

        # 6. every annotation arrived (N of N) and the forged events were processed and refused
        store = open_store(None, tmp_path / "backend")
        deadline = time.monotonic() + 120
        recorded: set[int] = set()
        refused = 0
        while time.monotonic() < deadline:
            recorded = {e.annotation_id for e in store.list_feedback(str(project))}
            refused = (tmp_path / "serve.log").read_text().count("not confirmed by Label Studio")
            if recorded == set(ann.values()) and refused == 2 and not store.pending_events(1):
                break
            time.sleep(0.5)
        examples = store.list_feedback(str(project))
        store.close()
        metrics = requests.get(f"{url}/metrics", auth=AUTH, timeout=5).json()
        if recorded != set(ann.values()) or refused != 2:
            raise StepError(f"6 webhooks: {len(recorded)} of {len(ann)} annotations recorded, {refused} of 2 forged "
                            f"events refused; metrics {metrics}")
        by_ann: dict[int, list] = {}
        for e in examples:
            by_ann.setdefault(e.annotation_id, []).append(e)
        victim_labels = {e.label for e in by_ann[ann[victim["id"]]] if e.from_name == "label"}
        if victim_labels != {results[victim["id"]][0]["value"]["choices"][0]}:
            raise StepError(f"6 forged update: the victim's annotation now teaches {victim_labels}")

        # 7. boxes: kept → confirm, relabelled → correct, deleted (and every other predicted box) → background
        def box_kinds(task: dict) -> Counter:
            return Counter((e.kind, e.label) for e in by_ann[ann[task["id"]]] if e.from_name == "bbox")

        def unmatched(task: dict) -> int:
            """Predicted boxes that overlap the kept one by less than IoU 0.5: those the annotator dropped (a second
            predicted box on the kept object is neither kept nor rejected)."""
            kept, *rest = _boxes(preds[task["id"]])
            return sum(_iou(kept, box) < 0.5 for box in rest)

        want = {
            accept["id"]: Counter({("confirm", _boxes(preds[accept["id"]])[0]["value"]["rectanglelabels"][0]): 1,
                                   ("reject", None): unmatched(accept)}),
            correct["id"]: Counter({("correct", other[correct["id"]]): 1, ("reject", None): unmatched(correct)}),
            delete["id"]: Counter({("reject", None): len(_boxes(preds[delete["id"]]))}),
        }
        for t in (accept, correct, delete):
            got = box_kinds(t)
            if +got != +want[t["id"]]:
                raise StepError(f"7 box feedback of task {t['id']}: {dict(got)}, expected {dict(+want[t['id']])}")

        # 8. training from Label Studio (sent with the credentials) makes r1, and Label Studio stores its predictions
        ls.api("POST", f"/api/ml/{ml['id']}/train", "8 train", json={})
        r1 = r0.replace("-r0", "-r1")
        _wait_version(url, project, r1, "8 train", auth=AUTH)
        _retrieve(ls, project, len(tasks), r1, "8 retrieve after training")
        print(f"\nbasic auth: {len(recorded)}/{len(ann)} annotation events recorded "
              f"(webhook metrics {metrics.get('webhook_annotation_created')}), 2/2 forged refused, "
              f"box feedback {[dict(+want[t['id']]) for t in (accept, correct, delete)]}, trained {r1}")
    finally:
        try:
            stop_all(procs, tmp_path)
        finally:
            ls.stop()
