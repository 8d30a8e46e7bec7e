"""The README's serve command, run as the user would, as a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- ci:{name} -->\n```bash\n(.*?)\n```", text, re.S)
    assert match, f"README has no ci:{name} block"
    return match.group(1).strip()


def test_readme_serve_command_starts_the_backend_on_the_embedded_store(tiny_model_dir: Path, tmp_path: Path) -> None:
    command = readme_block("serve")
    port = free_port()
    command = re.sub(r"--port \d+", f"--port {port}", command)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPLABEL_", "LABEL_STUDIO_", "BASIC_AUTH"))}
    env["CLIPLABEL_DATA_DIR"] = str(tmp_path / "data")
    log_path = tmp_path / "serve.log"
    # A file, not a pipe: a pipe nobody reads would fill up and stall the server.
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert body is not None, log_path.read_text()
        assert body["status"] == "UP" and body["store"] == "embedded"
        # the embedded store really lives under CLIPLABEL_DATA_DIR
        assert (tmp_path / "data" / "cliplabel.sqlite3").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    log = log_path.read_text()
    assert "Traceback" not in log and "loaded model=" in log


def test_a_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, CLIPLABEL_DEVICE="tpu", CLIPLABEL_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "cliplabel.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "CLIPLABEL_DEVICE" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, CLIPLABEL_MODEL=f"local-dir:{tmp_path / 'nope'}", CLIPLABEL_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "cliplabel.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "could not load CLIP model" in proc.stderr and "Traceback" not in proc.stderr
