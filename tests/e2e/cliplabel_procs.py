"""Real cliplabel processes beside a real Label Studio, and the Label Studio calls the end-to-end tests share."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.e2e.labelstudio import LabelStudio, StepError
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def backend_env(tmp: Path, model_dir: Path, redis: tuple[str, str] | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPLABEL_", "LABEL_STUDIO_", "BASIC_AUTH"))}
    env.update({"CLIPLABEL_MODEL": f"local-dir:{model_dir}", "CLIPLABEL_DATA_DIR": str(tmp / "backend"),
                "CLIPLABEL_RETRAIN_EVERY": "1000", **extra})
    if redis:
        env.update({"CLIPLABEL_REDIS_URL": redis[0], "CLIPLABEL_REDIS_PREFIX": redis[1]})
    return env


def start_backend(tmp: Path, model_dir: Path, redis: tuple[str, str] | None, workers: int = 1,
                  **extra: str) -> tuple[str, list[subprocess.Popen]]:  # type: ignore[type-arg]
    """`cliplabel serve` (and with Redis, `workers` × `cliplabel worker`) as real processes; logs under `tmp`."""
    port = free_port()
    env = backend_env(tmp, model_dir, redis, **extra)
    procs = []
    with (tmp / "serve.log").open("wb") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "cliplabel.cli", "serve", "--port", str(port)], cwd=ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    for i in range(workers if redis else 0):
        with (tmp / ("worker.log" if i == 0 else f"worker{i}.log")).open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "cliplabel.cli", "worker"], cwd=ROOT, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    url = f"http://127.0.0.1:{port}"
    auth = (extra["BASIC_AUTH_USER"], extra["BASIC_AUTH_PASS"]) if "BASIC_AUTH_USER" in extra else None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", auth=auth, timeout=1).status_code == 200:
                return url, procs
        except requests.RequestException:
            time.sleep(0.3)
    raise StepError(f"start cliplabel: no /health; log: {(tmp / 'serve.log').read_text()[-2000:]}")


def _upload(ls: LabelStudio, project: int, images: list[tuple[str, bytes]], step: str,
            expected_total: int | None = None) -> list[dict]:
    """Uploads images as new tasks; returns every task of the project, checking their number."""
    files = {f"f{i}": (name, io.BytesIO(data), "image/png") for i, (name, data) in enumerate(images)}
    ls.api("POST", f"/api/projects/{project}/import", step, files=files)
    tasks = ls.api("GET", f"/api/tasks?project={project}&page_size=1000", step)
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    expected = len(images) if expected_total is None else expected_total
    if len(tasks) != expected:
        raise StepError(f"{step}: {expected} tasks expected after the upload, {len(tasks)} found")
    return sorted(tasks, key=lambda t: t["id"])


def _retrieve(ls: LabelStudio, project: int, n_tasks: int, version: str, step: str) -> dict[int, dict]:
    ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", step,
           json={"selectedItems": {"all": True, "excluded": []}})
    preds = ls.api("GET", f"/api/predictions?project={project}", step)
    mine = {p["task"]: p for p in preds if p["model_version"] == version}
    if len(mine) != n_tasks:
        raise StepError(f"{step}: {len(mine)} of {n_tasks} tasks have a stored prediction with version {version}; "
                        f"versions seen: {sorted({p['model_version'] for p in preds})}")
    return mine


def _label_of(task: dict) -> str:
    """The true label, from the uploaded file's name (Label Studio prefixes it with a short id)."""
    return str(task["data"]["image"]).rsplit("-", 1)[-1].split("_")[0]


def _versions(url: str, project: int, auth: tuple[str, str] | None = None) -> list[str]:
    return list(requests.get(f"{url}/versions", params={"project": project}, auth=auth,
                             timeout=5).json()["versions"])


def _wait_version(url: str, project: int, name: str, step: str, timeout_s: float = 120,
                  auth: tuple[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if name in _versions(url, project, auth):
            return
        time.sleep(0.5)
    raise StepError(f"{step}: version {name} did not appear; versions {_versions(url, project, auth)}")


def wait_final(url: str, path: str, step: str, timeout_s: float = 300) -> dict:
    """Polls a job's status (`/jobs/{id}`, `/accept/{id}`) until it ends; anything but `done` is a StepError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(f"{url}{path}", timeout=5).json()
        if status["state"] in ("done", "failed", "cancelled"):
            if status["state"] != "done":
                raise StepError(f"{step}: job ended {status['state']}: {status}")
            return status
        time.sleep(0.2)
    raise StepError(f"{step}: job not done in {timeout_s} s")


def stop_all(procs: list[subprocess.Popen], tmp: Path) -> None:  # type: ignore[type-arg]
    """SIGTERM every process; then a traceback in any log fails the test."""
    import signal

    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
    for log in sorted(tmp.glob("*.log")):
        if log.name != "label-studio.log" and "Traceback" in log.read_text():
            raise StepError(f"{log.name} holds a traceback: {log.read_text()[-3000:]}")
