"""Take the README's screenshot: Label Studio's labelling page showing cliplabel's pre-labels.

    python docs/screenshot.py [OUT.png]     # needs Debian's chromium and the e2e Label Studio (tests/e2e)

Starts the end-to-end Label Studio and `cliplabel serve` with the tiny CLIP, uploads synthetic scenes, retrieves
predictions, logs in and drives headless Chromium over the DevTools protocol.
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
from pathlib import Path

import numpy as np
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import synthetic, tinyclip  # noqa: E402
from tests.e2e import labelstudio  # noqa: E402
from tests.e2e.cliplabel_procs import _retrieve, _upload, _versions, start_backend, stop_all  # noqa: E402
from tests.support import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cdp(ws: websocket.WebSocket, method: str, params: dict | None = None, _ids: list[int] = [0]) -> dict:  # noqa: B006
    _ids[0] += 1
    ws.send(json.dumps({"id": _ids[0], "method": method, "params": params or {}}))
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == _ids[0]:
            return msg.get("result", {})


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "labelstudio.png"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ls = labelstudio.start(tmp)
        backend_url, procs = start_backend(tmp, tinyclip.ensure_model(), None)
        chrome = None
        try:
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
            _cdp(ws, "Page.navigate", {"url": f"{ls.url}/projects/{project}/data?task={tasks[0]['id']}"})
            time.sleep(15)  # the labelling app loads and draws the prediction
            shot = _cdp(ws, "Page.captureScreenshot", {"format": "png"})
            out.write_bytes(base64.b64decode(shot["data"]))
            print(out)
        finally:
            if chrome is not None:
                os.killpg(chrome.pid, signal.SIGTERM)
            try:
                stop_all(procs, tmp)
            finally:
                ls.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
