"""What the learned head learns, through the real HTTP app on each test model: annotations arrive as `/webhook`
events (and *Start training*), the worker retrains, and `/predict` is scored on held-out tasks never annotated.

- Two looks per class: Alpha = red circles or blue squares, Beta = red squares or blue circles. One prototype per
  class sits between its looks (near chance); the head's memory of labelled examples separates them.
- Ordinary classes named as they look, with 10 % of the labels wrong: the served head never falls below zero-shot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cliplabel.api.app import create_app
from cliplabel.core.settings import Settings
from cliplabel.services.feedback.trainer import TRAIN_NS
from cliplabel.store import Store
from tests import synthetic
from tests.support import LS_TOKEN, LiveServer, start_server

TWO_MODE = {"Alpha": (("red", "circle"), ("blue", "square")), "Beta": (("red", "square"), ("blue", "circle"))}
ORDINARY = {"red circle": ("red", "circle"), "blue square": ("blue", "square"),
            "green triangle": ("green", "triangle"), "yellow star": ("yellow", "star")}


def _config(classes: list[str]) -> str:
    return ('<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
            + "".join(f'<Choice value="{k}"/>' for k in classes) + "</Choices></View>")


@pytest.fixture
def serve_any(any_encoder, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:  # type: ignore[no-untyped-def]
    """The real app on a real port with each test model in turn: `serve_any(store, **settings)`."""
    servers: list[LiveServer] = []

    def start(store: Store, **overrides: Any) -> LiveServer:
        values: dict[str, Any] = {"model": "local-dir:tiny", "data_dir": tmp_path / "data", "batch_size": 16,
                                  "fetch_workers": 4, **overrides}
        live = start_server(create_app(Settings(**values), encoder=any_encoder, store=store))
        servers.append(live)
        return live

    yield start
    for live in servers:
        live.stop()


class _Project:
    """One Label Studio project as the app sees it: tasks on the image host, annotations as webhook events."""

    def __init__(self, http, live: LiveServer, image_host, pid: int, classes: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.http, self.url, self.host, self.pid = http, live.url, image_host, pid
        resp = http.post(f"{self.url}/setup", json={"project": f"{pid}.1", "schema": _config(classes),
                                                    "hostname": image_host.url, "access_token": LS_TOKEN})
        assert resp.status_code == 200, resp.text
        self.r0 = str(resp.json()["model_version"])
        self.next_id = 1

    def tasks(self, looks: list[tuple[str, tuple[str, str]]], seed: int) -> list[tuple[dict, str]]:
        """One task per (label, (colour, shape)), each a fresh image of that look."""
        rng = np.random.default_rng(seed)
        out = []
        for label, (colour, shape) in looks:
            tid = self.next_id
            self.next_id += 1
            png = synthetic.encode_png(synthetic.object_image(rng, colour, shape, 64).resize((96, 96)))
            out.append(({"id": tid, "data": {"image": self.host.add(f"/data/upload/{self.pid}/{tid}.png", png)}},
                        label))
        return out

    def annotation(self, aid: int, task: dict, label: str) -> dict:
        project = {"id": self.pid, "title": "learning"}
        return {"action": "ANNOTATION_CREATED", "project": project, "task": task,
                "annotation": {"id": aid, "task": task["id"], "project": self.pid, "was_cancelled": False,
                               "ground_truth": False,
                               "result": [{"id": f"r{aid}", "from_name": "kind", "to_name": "image",
                                           "type": "choices", "value": {"choices": [label]}}]}}

    def annotate(self, labelled: list[tuple[dict, str]]) -> None:
        for aid, (task, label) in enumerate(labelled, start=1):
            resp = self.http.post(f"{self.url}/webhook", json=self.host.annotate(self.annotation(aid, task, label)))
            assert resp.status_code == 200 and resp.json()["status"] == "queued", resp.text

    def start_training(self, labelled: list[tuple[dict, str]]) -> None:
        """Label Studio's *Start training* button: the backend fetches the project's export and retrains."""
        exported = [{**task, "annotations": [self.annotation(aid, task, label)["annotation"]]}
                    for aid, (task, label) in enumerate(labelled, start=1)]
        self.host.add(f"/api/projects/{self.pid}/export?exportType=JSON", json.dumps(exported).encode())
        resp = self.http.post(f"{self.url}/webhook", json={"action": "START_TRAINING",
                                                           "project": {"id": self.pid, "title": "learning"}})
        assert resp.json()["status"] == "queued", resp.text

    def accuracy(self, held_out: list[tuple[dict, str]]) -> tuple[float, str]:
        res = self.http.post(f"{self.url}/predict", json={"tasks": [t for t, _ in held_out],
                                                          "project": f"{self.pid}.1"}).json()["results"]
        hits = [bool(r["result"]) and r["result"][0]["value"]["choices"] == [label]
                for r, (_, label) in zip(res, held_out)]
        return float(np.mean(hits)), str(res[0]["model_version"])

    def wait_for_retrain(self, store: Store, timeout_s: float = 120) -> None:
        """Until a retrain has run (accepted or not: it leaves its note either way)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if store.get_blob(TRAIN_NS, str(self.pid)):
                return
            time.sleep(0.2)
        raise AssertionError(f"no retrain of project {self.pid} within {timeout_s} s")


def _looks(classes: Mapping[str, tuple[tuple[str, str], ...]], per_look: int) -> list[tuple[str, tuple[str, str]]]:
    """Each (label, look) `per_look` times, interleaved so that any prefix is balanced."""
    return [(label, look) for _ in range(per_look) for label, looks in classes.items() for look in looks]


@pytest.mark.parametrize("trigger", ["webhooks", "start_training"])
def test_two_looks_per_class_are_learned_from_12_labels(serve_any, make_store, image_host, http,  # type: ignore[no-untyped-def]
                                                        trigger: str) -> None:
    store = make_store("embedded")
    # 24 annotations make a retrain due on their own; Start training asks for it with the webhooks not yet due.
    live = serve_any(store, retrain_every=24 if trigger == "webhooks" else 1000)
    project = _Project(http, live, image_host, 5, list(TWO_MODE))
    held_out = project.tasks(_looks(TWO_MODE, 15), seed=2)  # 30 per class, never annotated
    labelled = project.tasks(_looks(TWO_MODE, 6), seed=1)  # 12 per class, 6 per look
    before, version = project.accuracy(held_out)
    assert version == project.r0
    project.annotate(labelled)
    if trigger == "start_training":
        project.start_training(labelled)
    project.wait_for_retrain(store)
    after, version = project.accuracy(held_out)
    note = json.loads(store.get_blob(TRAIN_NS, "5") or "{}")
    assert version == project.r0.replace("-r0", "-r1"), note
    assert after >= 0.9, (before, after, note)


def test_wrong_labels_never_take_ordinary_classes_below_zero_shot(serve_any, make_store, image_host, http) -> None:  # type: ignore[no-untyped-def]
    store = make_store("embedded")
    live = serve_any(store, retrain_every=32)
    project = _Project(http, live, image_host, 6, list(ORDINARY))
    one_look = {label: (look,) for label, look in ORDINARY.items()}
    held_out = project.tasks(_looks(one_look, 25), seed=4)
    labelled = project.tasks(_looks(one_look, 8), seed=3)  # 8 per class
    rng = np.random.default_rng(5)
    wrong = rng.choice(len(labelled), size=round(0.1 * len(labelled)), replace=False)
    names = list(ORDINARY)
    noisy = [(task, names[(names.index(label) + int(rng.integers(1, len(names)))) % len(names)] if i in wrong
              else label) for i, (task, label) in enumerate(labelled)]  # the wrong button: any other class
    zero_shot, _ = project.accuracy(held_out)
    project.annotate(noisy)
    project.wait_for_retrain(store)
    served, version = project.accuracy(held_out)
    note = json.loads(store.get_blob(TRAIN_NS, "6") or "{}")
    assert served >= zero_shot - 0.01, (zero_shot, served, version, note)
