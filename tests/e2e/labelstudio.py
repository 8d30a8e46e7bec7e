"""A real Label Studio 1.23.2 for end-to-end tests: installed once into a cached venv, started per test.

The venv and a migrated data directory live under `$CLIPLABEL_CACHE_DIR` (default `~/.cache/cliplabel`), outside the
clone, so only a fresh machine pays the install (≈3 minutes) and the first migration (≈60 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.support import free_port
from tests.tinyclip import cache_root

VERSION = "1.23.2"
USER = "admin@example.com"
PASSWORD = "e2e-password-0123"
TOKEN = "e2e0123456789abcdef0123456789abcdef01234"


class StepError(AssertionError):
    """An end-to-end step failed; the message names the step."""


def venv_dir() -> Path:
    return cache_root() / f"lsvenv-{VERSION}"


def ensure_venv(log=print) -> Path:  # type: ignore[no-untyped-def]
    """The Label Studio venv, installed on first use (its own venv: Label Studio pins Django and friends)."""
    venv = venv_dir()
    if (venv / ".complete").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    log(f"installing label-studio=={VERSION} into {venv} (once per machine)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", f"label-studio=={VERSION}"],
                   check=True)
    (venv / ".complete").touch()
    return venv


def _env(data_dir: Path, port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPLABEL_", "LABEL_STUDIO_", "BASIC_AUTH"))}
    return {**keep, "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false", "fflag_feat_utc_210_prediction_validation_15082025": "true",
            "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
            "PYTHONUNBUFFERED": "1", "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}"}


def migrated_template(log=print) -> Path:  # type: ignore[no-untyped-def]
    """A data directory with the database migrated and the admin user and token created, built once."""
    template = cache_root() / f"ls-data-{VERSION}"
    if (template / ".complete").is_file():
        return template
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    venv = ensure_venv(log)
    log("migrating a Label Studio data directory (once per machine)")
    subprocess.run([str(venv / "bin" / "label-studio"), "init", "-q"], env=_env(template, 8080),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=600)
    (template / ".complete").touch()
    return template


@dataclass
class LabelStudio:
    url: str
    process: subprocess.Popen  # type: ignore[type-arg]
    log_path: Path
    http: requests.Session = field(default_factory=requests.Session)

    def api(self, method: str, path: str, step: str, expect: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        """One API call; a failure raises StepError naming the step and Label Studio's answer."""
        try:
            resp = self.http.request(method, f"{self.url}{path}", timeout=kw.pop("timeout", 120), **kw)
        except requests.RequestException as exc:
            raise StepError(f"{step}: {method} {path} failed: {exc}") from exc
        if resp.status_code not in expect:
            raise StepError(f"{step}: {method} {path} answered {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content and "json" in resp.headers.get("Content-Type", "") else resp

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start(work_dir: Path) -> LabelStudio:
    """Copies the migrated data directory and starts Label Studio on a free loopback port."""
    data = work_dir / "ls-data"
    shutil.copytree(migrated_template(), data)
    port = free_port()
    log_path = work_dir / "label-studio.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(venv_dir() / "bin" / "label-studio"), "start", "--no-browser",
                                 "--internal-host", "127.0.0.1", "--port", str(port)],
                                env=_env(data, port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ls = LabelStudio(url=f"http://127.0.0.1:{port}", process=proc, log_path=log_path)
    ls.http.trust_env = False
    ls.http.headers["Authorization"] = f"Token {TOKEN}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StepError(f"start Label Studio: it exited; log tail: {log_path.read_text()[-2000:]}")
        try:
            if ls.http.get(f"{ls.url}/health", timeout=2).status_code == 200:
                return ls
        except requests.RequestException:
            pass
        time.sleep(0.5)
    ls.stop()
    raise StepError(f"start Label Studio: no /health within 180 s; log tail: {log_path.read_text()[-2000:]}")
