"""docker/docker-compose.yml brought up by a container engine, driven through Label Studio's API on its published port.

Label Studio, Redis, the cliplabel API and its worker run as the compose file defines them; docker/ci/compose.ci.yml
only mounts the tiny test CLIP (read-only) in place of downloaded weights and turns on Label Studio's prediction
validation. The backend is connected by the URL the README gives. Each step raises `StepError` naming itself.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests import synthetic
from tests.docker import engine
from tests.docker.conftest import timing
from tests.e2e import labelstudio
from tests.e2e.cliplabel_procs import _label_of, _retrieve, _upload
from tests.e2e.labelstudio import LabelStudio, StepError
from tests.support import free_port

# The first test also waits for the stand-ins and the image to build (about 7-11 minutes on a fresh machine).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]
# What the README tells users to connect, on the compose network (a host name with a dot: see the compose file).
BACKEND_URL = "http://cliplabel.internal:9090"
SHAPES = ("Circle", "Square", "Triangle", "Star")
N_TASKS = 16
N_ANNOTATED = 10  # CLIPLABEL_RETRAIN_EVERY's default: the tenth annotation event starts a retrain in the worker


@dataclass
class Stack:
    command: list[str]
    env: dict[str, str]
    project: str
    ls_url: str
    backend_url: str  # cliplabel's published port, for reading its versions and report

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise StepError(f"compose {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
        return proc

    def containers(self) -> list[str]:
        return self.compose("ps", "-q").stdout.split()

    def container(self, service: str) -> str:
        (cid,) = self.compose("ps", "-q", service).stdout.split()
        return cid

    def backend(self, path: str, **params: Any) -> Any:
        resp = requests.get(f"{self.backend_url}{path}", params=params, timeout=30)
        resp.raise_for_status()
        return resp.json()


def _until(step: str, timeout_s: float, check: Any, what: str) -> Any:
    """Polls `check()` until it returns something truthy; StepError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, StepError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    raise StepError(f"{step}: {what} within {timeout_s:.0f} s; last: {str(last)[:500]}")


def _up(stack: Stack) -> None:
    """`up -d`, running the healthchecks that compose waits for (podman schedules none without systemd)."""
    proc = subprocess.Popen([*stack.command, "up", "-d", "--no-build"], env=stack.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise StepError(f"0 compose up: still waiting after 600 s: {proc.communicate()[0][-3000:]}")
        if engine.ENGINE == "podman":
            for cid in stack.containers():
                engine.healthcheck(cid)
        time.sleep(1)
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise StepError(f"0 compose up exited {proc.returncode}: {out[-3000:]}")


@pytest.fixture
def stack(image: str, mountable_model: Path, tmp_path: Path) -> Iterator[Stack]:
    ls_port, backend_port = free_port(), free_port()
    env_file = tmp_path / "compose.env"
    env_file.write_text(f"LABEL_STUDIO_USERNAME={labelstudio.USER}\nLABEL_STUDIO_PASSWORD={labelstudio.PASSWORD}\n"
                        f"LABEL_STUDIO_USER_TOKEN={labelstudio.TOKEN}\nLABEL_STUDIO_PORT={ls_port}\n"
                        f"CLIPLABEL_PORT={backend_port}\nCLIPLABEL_TINY_MODEL={mountable_model}\n")
    project = f"cliplabel-ci-{uuid.uuid4().hex[:8]}"
    command, env = engine.compose_command(project, env_file, engine.ROOT / "docker" / "docker-compose.yml",
                                          engine.ROOT / "docker" / "ci" / "compose.ci.yml")
    st = Stack(command, env, project, f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{backend_port}")
    try:
        started = time.monotonic()
        _up(st)
        timing(f"compose up -d (redis and cliplabel healthy, worker started): {time.monotonic() - started:.0f} s")
        yield st
    finally:
        log = tmp_path / "compose.log"
        log.write_text(st.compose("logs", "--no-color", check=False, timeout=120).stdout)
        st.compose("down", "-v", "--timeout", "10", check=False, timeout=300)
        print(f"compose logs ({log}), tail:\n{log.read_text()[-6000:]}")


def _images(rng: np.random.Generator, start: int, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + n):
        shape = SHAPES[i % 4]
        img = synthetic.object_image(rng, str(rng.choice(list(synthetic.COLOURS))), shape.lower(), 96)
        out.append((f"{shape}_{i}.png", synthetic.encode_png(img)))
    return out


def _annotate(ls: LabelStudio, project: int, task: dict, step: str) -> int:
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [_label_of(task)]}}]
    return int(ls.api("POST", f"/api/tasks/{task['id']}/annotations", step,
                      json={"result": result, "project": project})["id"])


def _annotations_received(stack: Stack, project: int) -> int:
    """Annotated labels the backend has recorded from Label Studio's webhook events (its quality report)."""
    report = stack.backend("/report", project=project)
    return sum(c["annotated"] for c in report["classes"] if c["control"] == "label")


def test_compose_stack_learns_from_label_studio(stack: Stack, tmp_path: Path) -> None:
    t0 = time.monotonic()
    # 0. Label Studio answers on its published port (its first start migrates the database)
    http = requests.Session()
    http.trust_env = False
    _until("0 Label Studio up", 600, lambda: http.get(f"{stack.ls_url}/health", timeout=5).status_code == 200,
           "no /health on the published port")
    timing(f"compose: Label Studio answering {time.monotonic() - t0:.0f} s after up")
    _until("0 Label Studio healthy", 60, lambda: engine.healthcheck(stack.container("label-studio")),
           "Label Studio's healthcheck (the compose file's) passing")
    with (tmp_path / "label-studio.log").open("wb") as log:
        log_proc = subprocess.Popen([*stack.command, "logs", "-f", "--no-color", "label-studio"], env=stack.env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ls = LabelStudio(url=stack.ls_url, process=log_proc, log_path=tmp_path / "label-studio.log")
    ls.http.trust_env = False
    ls.http.headers["Authorization"] = f"Token {labelstudio.TOKEN}"
    try:
        _flow(stack, ls)
    finally:
        ls.stop()


def _flow(stack: Stack, ls: LabelStudio) -> None:
    t = time.monotonic()
    rng = np.random.default_rng(7)
    # 1. a project from label_config.xml with synthetic images; the backend connected by the README's URL
    readme = (engine.ROOT / "README.md").read_text()
    if f"`{BACKEND_URL}`" not in readme:
        raise StepError(f"1 connect: the README does not tell users to connect {BACKEND_URL}")
    config = (engine.ROOT / "label_config.xml").read_text()
    project = ls.api("POST", "/api/projects", "1 create project", json={"title": "compose", "label_config": config})["id"]
    tasks = _upload(ls, project, _images(rng, 0, N_TASKS), "1 upload images")
    ml = ls.api("POST", "/api/ml", "1 connect backend", json={"url": BACKEND_URL, "project": project,
                                                              "title": "cliplabel", "is_interactive": True})
    if not ml.get("id"):
        raise StepError(f"1 connect backend: {ml}")

    # 2. Label Studio made the project's webhook to the backend (without it no annotation ever arrives)
    hooks = ls.api("GET", f"/api/webhooks?project={project}", "2 webhook")
    urls = [h["url"] for h in hooks if h.get("project") == project]
    if f"{BACKEND_URL}/webhook" not in urls:
        raise StepError(f"2 webhook: Label Studio made none to {BACKEND_URL}/webhook; webhooks: {hooks}")

    # 3. retrieve predictions: every task predicted (images read from Label Studio over the compose network)
    version = stack.backend("/versions", project=project)["versions"][-1]
    preds = _retrieve(ls, project, N_TASKS, version, "3 retrieve predictions")
    correct = sum(any(r["type"] == "choices" and r["value"]["choices"] == [_label_of(task)]
                      for r in preds[task["id"]]["result"]) for task in tasks)
    timing(f"compose: project, {N_TASKS} tasks, backend connected, predictions retrieved in "
           f"{time.monotonic() - t:.0f} s; {correct}/{N_TASKS} choices correct, version {version}")
    if correct < N_TASKS - 3:
        raise StepError(f"3 retrieve predictions: only {correct}/{N_TASKS} choices correct")

    # 4. annotate: the events reach the backend through the webhook, and the worker retrains by itself (no
    # "Start training"); the new version is stamped on the unlabelled tasks' predictions in Label Studio
    t = time.monotonic()
    for task in tasks[:N_ANNOTATED]:
        _annotate(ls, project, task, "4 annotate")
    _until("4 events", 120, lambda: _annotations_received(stack, project) == N_ANNOTATED,
           f"{N_ANNOTATED} annotations recorded by the backend")
    r1 = version.replace("-r0", "-r1")
    _until("4 retrain", 300, lambda: r1 in stack.backend("/versions", project=project)["versions"],
           f"the worker's retrained version {r1}")
    unlabelled = {task["id"] for task in tasks[N_ANNOTATED:]}

    def rescored() -> bool:
        preds = ls.api("GET", f"/api/predictions?project={project}", "4 rescore")
        return {p["task"] for p in preds if p["model_version"] == r1} == unlabelled

    _until("4 rescore", 300, rescored, f"predictions stamped {r1} on exactly the {len(unlabelled)} unlabelled tasks")
    timing(f"compose: {N_ANNOTATED} annotations -> events recorded, retrained to {r1}, unlabelled tasks re-scored "
           f"in {time.monotonic() - t:.0f} s")

    _no_traceback(stack, "4 logs", ours_only=False)

    # 5. restart Redis: nothing is lost (append-only file); events and predictions go on
    t = time.monotonic()
    stack.compose("restart", "redis")
    redis_ctr = stack.container("redis")
    _until("5 restart redis", 120, lambda: engine.healthcheck(redis_ctr), "Redis healthy again")
    versions = stack.backend("/versions", project=project)["versions"]
    if versions[-1] != r1 or version not in versions:
        raise StepError(f"5 restart redis: versions {versions}, expected {version} and {r1}")
    if _annotations_received(stack, project) != N_ANNOTATED:
        raise StepError(f"5 restart redis: {_annotations_received(stack, project)} annotations left of {N_ANNOTATED}")
    _annotate(ls, project, tasks[N_ANNOTATED], "5 annotate after the restart")
    _until("5 events after restart", 120, lambda: _annotations_received(stack, project) == N_ANNOTATED + 1,
           "the annotation made after the restart recorded")
    _upload(ls, project, _images(rng, N_TASKS, 1), "5 upload", expected_total=N_TASKS + 1)
    _retrieve(ls, project, N_TASKS + 1, r1, "5 retrieve after the restart")
    worker = stack.container("worker")
    if engine.run("inspect", "--format", "{{.State.Running}}", worker).stdout.strip() != "true":
        raise StepError("5 restart redis: the worker is not running")
    timing(f"compose: redis restarted, state kept, events and predictions go on: {time.monotonic() - t:.0f} s")
    # While Redis restarts, rq's scheduler process in the worker exits with a ConnectionError traceback (the worker
    # reconnects, and starts a new scheduler at its next maintenance run); a traceback through our code still fails.
    _no_traceback(stack, "5 logs", ours_only=True)


def _no_traceback(stack: Stack, step: str, ours_only: bool) -> None:
    for service in ("cliplabel", "worker"):
        logs = stack.compose("logs", "--no-color", service).stdout
        bad = re.search(r'File "[^"]*/cliplabel/', logs) if ours_only else "Traceback" in logs
        if bad:
            raise StepError(f"{step}: {service}'s log holds a traceback: {logs[-3000:]}")
