"""Take the README's screenshots of Label Studio with cliplabel connected.

    python docs/screenshot.py [OUT.png]            # the labelling page showing box pre-labels (docs/labelstudio.png)
    python docs/screenshot.py --views [OUT.png]    # the Data Manager with the views cliplabel made (docs/views.png)

Both need Debian's chromium (`apt-get install chromium`), `websocket-client` (not in the lock: a docs tool) and the
e2e Label Studio (tests/e2e). They start the end-to-end Label Studio and `cliplabel serve` with the tiny CLIP, log in
and drive headless Chromium over the DevTools protocol.

The labelling page: synthetic scenes uploaded, predictions retrieved, the first task opened.
The views: 96 single-shape images pre-labelled by a bulk job; 48 labelled by "people" (the script, through Label
Studio's API; 2 of them wrong on purpose), then `POST /audit` and `POST /review`, as in tests/e2e/test_accept.py and
test_review.py; the Data Manager opens on the review view (the 48 unlabelled tasks, least certain first), with the
audit view's tab beside it. (No auto-accept here: it would take the unlabelled tasks the review view lists.)
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import synthetic, tinyclip  # noqa: E402
from tests.e2e import labelstudio  # noqa: E402
from tests.e2e.cliplabel_procs import _label_of, _retrieve, _upload, _versions, start_backend, stop_all, wait_final  # noqa: E402
from tests.support import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cdp(ws: websocket.WebSocket, method: str, params: dict | None = None, _ids: list[int] = [0]) -> dict:  # noqa: B006
    _ids[0] += 1
    ws.send(json.dumps({"id": _ids[0], "method": method, "params": params or {}}))
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == _ids[0]:
            return msg.get("result", {})


@contextmanager
def _stack(with_token: bool) -> Iterator[tuple[labelstudio.LabelStudio, str, Path]]:
    """The e2e Label Studio and `cliplabel serve` (told Label Studio's URL and token when `with_token`), stopped after."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ls = labelstudio.start(tmp)
        extra = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": labelstudio.TOKEN} if with_token else {}
        url, procs = start_backend(tmp, tinyclip.ensure_model(), None, **extra)
        try:
            yield ls, url, tmp
        finally:
            try:
                stop_all(procs, tmp)
            finally:
                ls.stop()


def _capture(ls: labelstudio.LabelStudio, tmp: Path, url: str, out: Path, wait_s: float) -> None:
    """Logs in, opens `url` in headless Chromium and writes a PNG of the page to `out`."""
    login = requests.Session()
    login.get(f"{ls.url}/user/login/", timeout=30)
    login.post(f"{ls.url}/user/login/", timeout=30, headers={"Referer": f"{ls.url}/user/login/"},
               data={"email": labelstudio.USER, "password": labelstudio.PASSWORD,
                     "csrfmiddlewaretoken": login.cookies.get("csrftoken", "")})
    port = free_port()
    chrome = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-sync",
                               "--disable-component-update", f"--user-data-dir={tmp / 'chrome'}",
                               f"--remote-debugging-port={port}", "--window-size=1400,900", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(100):
            try:
                pages = requests.get(f"http://127.0.0.1:{port}/json", timeout=1).json()
                break
            except requests.RequestException:
                time.sleep(0.2)
        page = next(p for p in pages if p.get("type") == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        for name, value in login.cookies.items():
            _cdp(ws, "Network.setCookie", {"name": name, "value": value, "domain": "127.0.0.1", "path": "/"})
        _cdp(ws, "Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 900, "deviceScaleFactor": 1,
                                                        "mobile": False})
        _cdp(ws, "Page.navigate", {"url": url})
        time.sleep(wait_s)  # the app loads and draws
        shot = _cdp(ws, "Page.captureScreenshot", {"format": "png"})
        out.write_bytes(base64.b64decode(shot["data"]))
        print(out)
    finally:
        os.killpg(chrome.pid, signal.SIGTERM)


def views(out: Path) -> None:
    shapes = ("Circle", "Square", "Triangle", "Star")
    config = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
              + "".join(f'<Choice value="{s}"/>' for s in shapes) + "</Choices></View>")
    rng = np.random.default_rng(5)
    images = [(f"{shapes[i % 4]}_{i}.png", synthetic.encode_png(synthetic.object_image(
        rng, str(rng.choice(list(synthetic.COLOURS))), shapes[i % 4].lower(), 64))) for i in range(96)]
    with _stack(with_token=True) as (ls, url, tmp):
        project = ls.api("POST", "/api/projects", "create", json={"title": "cliplabel views",
                                                                  "label_config": config})["id"]
        tasks = _upload(ls, project, images, "upload")
        ls.api("POST", "/api/ml", "register", json={"url": url, "project": project, "title": "cliplabel",
                                                    "is_interactive": False})
        job = requests.post(f"{url}/jobs", json={"project": project, "chunk_size": 16}, timeout=10).json()
        wait_final(url, f"/jobs/{job['job_id']}", "bulk job")
        for i, task in enumerate(tasks[:48]):
            label = _label_of(task)
            if i < 2:  # two wrong labels for the audit to find
                label = shapes[(shapes.index(label) + 1) % 4]
            ls.api("POST", f"/api/tasks/{task['id']}/annotations", "annotate", json={"result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]})
        requests.post(f"{url}/audit", json={"project": project}, timeout=300).raise_for_status()
        review = requests.post(f"{url}/review", json={"project": project}, timeout=300)
        review.raise_for_status()
        _capture(ls, tmp, f"{ls.url}/projects/{project}/data?tab={review.json()['view_id']}", out, 20)


def labelling(out: Path) -> None:
    with _stack(with_token=False) as (ls, backend_url, tmp):
        config = (ROOT / "label_config.xml").read_text()
        project = ls.api("POST", "/api/projects", "create", json={"title": "cliplabel pre-labels",
                                                                  "label_config": config})["id"]
        rng = np.random.default_rng(21)
        scenes = []
        for i in range(3):
            img, _ = synthetic.scene(rng, 480, 360, n_objects=3, min_radius_frac=0.12, max_radius_frac=0.22)
            scenes.append((f"scene_{i}.png", synthetic.encode_png(img)))
        tasks = _upload(ls, project, scenes, "upload")
        ls.api("POST", "/api/ml", "register", json={"url": backend_url, "project": project, "title": "cliplabel",
                                                    "is_interactive": True})
        _retrieve(ls, project, len(tasks), _versions(backend_url, project)[-1], "retrieve")
        _capture(ls, tmp, f"{ls.url}/projects/{project}/data?task={tasks[0]['id']}", out, 15)


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--views"]
    if "--views" in sys.argv[1:]:
        views(Path(args[0]) if args else ROOT / "docs" / "views.png")
        return 0
    labelling(Path(args[0]) if args else ROOT / "docs" / "labelstudio.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
