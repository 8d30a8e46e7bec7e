"""Large label sets: while their prompt vectors encode, /predict answers 503 model_warming with Retry-After (never an
empty prediction under our version), /health shows the progress, and the first real prediction follows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from cliplabel import container
from cliplabel.api.app import create_app
from cliplabel.core.settings import Settings
from cliplabel.model.encoder import ClipEncoder
from cliplabel.store import Store
from tests import synthetic
from tests.support import LS_TOKEN, ImageHost, start_server

CLASSES = 200  # × 16 templates = 3,200 prompts, 13 warm-up steps
STEP_DELAY_S = 0.2  # each text batch takes this much longer: what a large model costs, on the tiny one
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="class {i}"/>' for i in range(CLASSES)) + "</Choices></View>")


class SlowTexts:
    """The real tiny encoder, with text batches as slow as a large model's (everything else passes through)."""

    def __init__(self, encoder: ClipEncoder) -> None:
        self._encoder = encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        time.sleep(STEP_DELAY_S)
        return self._encoder.encode_texts(texts)


def test_large_label_set_warms_without_blocking(encoder: ClipEncoder, make_store: Any, image_host: ImageHost,
                                                http: requests.Session, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "WARM_WAIT_S", 0.3)
    store: Store = make_store("embedded")
    settings = Settings(model="local-dir:tiny", data_dir=tmp_path / "data", batch_size=16, fetch_workers=2,
                        microbatch=False)
    live = start_server(create_app(settings, encoder=SlowTexts(encoder), store=store))  # type: ignore[arg-type]
    try:
        png = synthetic.encode_png(synthetic.random_object_image(np.random.default_rng(1), 64)[0])
        tasks = [{"id": 1, "data": {"image": image_host.add("/data/upload/1/a.png", png)}}]
        resp = http.post(f"{live.url}/setup", json={"project": "1.1", "schema": CONFIG, "hostname": image_host.url,
                                                    "access_token": LS_TOKEN}, timeout=10)
        assert resp.status_code == 200, resp.text
        started = time.monotonic()
        resp = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}, timeout=60)
        assert time.monotonic() - started < 5.0  # the deadline, not the warm-up, bounds the wait
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] == "model_warming" and "prompts encoded" in resp.json()["detail"]
        assert 1 <= int(resp.headers["Retry-After"]) <= 30
        health = http.get(f"{live.url}/health", timeout=5).json()
        (warming,) = health["warming"]
        assert warming["prompts_total"] == CLASSES * 16 and 0 <= warming["prompts_done"] < warming["prompts_total"]
        # Label Studio retries: the first real prediction arrives once the vectors are ready.
        deadline = time.monotonic() + 60
        while resp.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
            resp = http.post(f"{live.url}/predict", json={"tasks": tasks, "project": "1.1"}, timeout=60)
        assert resp.status_code == 200, resp.text
        (result,) = resp.json()["results"]
        assert result["result"] and result["result"][0]["value"]["choices"][0].startswith("class ")
        assert http.get(f"{live.url}/health", timeout=5).json()["warming"] == []
    finally:
        live.stop()
