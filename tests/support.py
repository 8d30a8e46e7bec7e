"""Real HTTP peers for tests and benchmarks: an image host that behaves like Label Studio, and the app on a socket."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn

LS_TOKEN = "test-legacy-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a real HTTP host that serves images the way Label Studio does ------------------------------------------------------
@dataclass
class ImageHost:
    """Serves `files` (path → bytes); `/data/` paths need `Authorization: Token LS_TOKEN` like Label Studio."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests_seen: list[tuple[str, str]] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    url: str = ""
    pat_access: str = "short-lived-access"
    delay_s: float = 0.0  # a slow host: every /data/ response waits this long
    refresh_token: str | None = None
    # Label Studio's API for confirming webhooks: `GET /api/annotations/{id}` and the data manager's task list.
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # (project, task id) → task
    api_status: int | None = None  # a Label Studio outage: every /api/ GET answers this status

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return path

    def annotate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Stores a webhook payload's annotation and task as Label Studio would have saved them (so the worker can
        confirm the event); returns the payload."""
        project = payload["project"]["id"] if isinstance(payload["project"], dict) else payload["project"]
        task = payload["task"]
        self.tasks[(int(project), task["id"])] = {"id": task["id"], "project": project, "data": task["data"]}
        self.annotations[payload["annotation"]["id"]] = {**payload["annotation"], "task": task["id"],
                                                         "project": project}
        return payload

    def api_answer(self, path: str) -> Any:
        """What this host's Label Studio API answers to a GET of `path` (None: 404)."""
        url = urllib.parse.urlsplit(path)
        if url.path.startswith("/api/annotations/"):
            aid = url.path.rsplit("/", 1)[-1]
            return self.annotations.get(int(aid)) if aid.isdigit() else None
        if url.path == "/api/tasks":
            params = urllib.parse.parse_qs(url.query)
            included = json.loads(params["query"][0])["selectedItems"]["included"]
            project = int(params["project"][0])
            return {"tasks": [self.tasks[(project, t)] for t in included if (project, t) in self.tasks]}
        return None


def start_image_host() -> tuple[ImageHost, ThreadingHTTPServer]:
    """Starts an `ImageHost` on a free loopback port; call `.shutdown()` on the server to stop it."""
    host = ImageHost()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _auth_ok(self) -> bool:
            got = self.headers.get("Authorization", "")
            return got in (f"Token {LS_TOKEN}", f"Bearer {host.pat_access}")

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            host.requests_seen.append(("POST", self.path))
            if self.path == "/api/token/refresh/" and host.refresh_token and json.loads(body) == {
                    "refresh": host.refresh_token}:
                payload = json.dumps({"access": host.pat_access}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            host.requests_seen.append(("GET", self.path))
            if self.path in host.redirects:
                self.send_response(302)
                self.send_header("Location", host.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path.startswith("/api/") and self.path not in host.files:
                answer = host.api_answer(self.path) if self._auth_ok() else None
                payload = json.dumps(answer).encode()
                self.send_response(host.api_status or (401 if not self._auth_ok() else 404 if answer is None else 200))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if self.path.startswith("/data/") and not self._auth_ok():
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if host.delay_s and self.path.startswith("/data/"):
                time.sleep(host.delay_s)
            data = host.files.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return host, server


# -- the real app on a real socket ------------------------------------------------------------------------------------
@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        # A server thread still alive here would run on into interpreter shutdown: make that a visible failure.
        if self.thread.is_alive():
            raise RuntimeError(f"the app at {self.url} did not stop within 30 s")


def start_server(app: Any) -> LiveServer:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.started:
            return LiveServer(url, server, thread)
        time.sleep(0.02)
    raise RuntimeError("the app did not start within 30 s")


