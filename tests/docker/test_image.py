"""The image built from docker/Dockerfile, run by a container engine: only the image proves the image.

Run with `python -m pytest -m docker tests/docker` (.ci/run's docker stage does, on podman).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import synthetic
from tests.docker import engine
from tests.docker.conftest import timing
from tests.support import free_port

# The first test also waits for the stand-ins and the image to build (about 7-11 minutes on a fresh machine).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]
CLASSES = [f"{c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def _start(containers: list[str], *args: str) -> str:
    name = f"cliplabel-test-{uuid.uuid4().hex[:10]}"
    engine.run("run", "-d", "--name", name, *args)
    containers.append(name)
    return name


def _logs(name: str) -> str:
    proc = engine.run("logs", name, check=False)
    return proc.stdout + proc.stderr


def test_image_config_runs_as_non_root_with_its_healthcheck(image: str) -> None:
    (config,) = json.loads(engine.run("image", "inspect", image).stdout)
    cfg = config["Config"]
    assert cfg["User"] == "10001"
    healthcheck = cfg.get("Healthcheck") or config["Healthcheck"]  # docker keeps it in Config, podman beside it
    assert healthcheck["Test"] == ["CMD", "cliplabel", "health", "--port", "9090"]
    assert cfg["Cmd"] == ["cliplabel", "serve", "--host", "0.0.0.0", "--port", "9090"]


def test_installed_package_is_the_source_tree(image: str) -> None:
    """Every module the image imports is byte-identical to backend/cliplabel (a stale build/ once shadowed one)."""
    script = ("import cliplabel, hashlib, json, pathlib; root = pathlib.Path(cliplabel.__file__).parent; "
              "print(json.dumps({'version': cliplabel.__version__, 'files': {str(p.relative_to(root)): "
              "hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*.py'))}}))")
    got = json.loads(engine.run("run", "--rm", image, "python", "-c", script).stdout)
    source = engine.ROOT / "backend" / "cliplabel"
    want = {str(p.relative_to(source)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(source.rglob("*.py"))}
    differing = sorted(k for k in want.keys() | got["files"].keys() if want.get(k) != got["files"].get(k))
    assert not differing, f"installed files differ from the source: {differing}"
    version = re.search(r'^version = "(.+)"$', (engine.ROOT / "pyproject.toml").read_text(), re.M)
    assert version and got["version"] == version.group(1)
    # nothing of the build is left in the image
    leftovers = engine.run("run", "--rm", image, "sh", "-c",
                           "ls -d /opt/cliplabel/build /opt/cliplabel/backend /src /tmp/dist /tmp/requirements "
                           "/root/.cache/pip 2>/dev/null; true").stdout.split()
    assert leftovers == []


def test_models_folder_exists_even_when_no_weights_were_downloaded(image: str) -> None:
    """CI builds with CLIPLABEL_PRETRAINED empty (random weights, nothing downloaded): the build still completes."""
    if not engine.STANDINS:
        pytest.skip("a user's build downloads weights; CI's stand-in build (CLIPLABEL_STANDINS=1) downloads none")
    out = engine.run("run", "--rm", image, "sh", "-c", 'stat -c "%a %U" /opt/cliplabel/models; '
                     'echo "pretrained=[$CLIPLABEL_PRETRAINED]"').stdout.split("\n")
    assert out[0] == "755 root" and out[1] == "pretrained=[]"


def test_serves_setup_and_predict_as_non_root_with_a_read_only_model(image: str, mountable_model: Path,
                                                                      containers: list[str]) -> None:
    port = free_port()
    started = time.monotonic()
    name = _start(containers, "-p", f"127.0.0.1:{port}:9090", "-v", f"{mountable_model}:/models/tiny:ro",
                  "-e", "CLIPLABEL_MODEL=local-dir:/models/tiny", image)
    # the image's own HEALTHCHECK command: failing while the server starts, then passing
    assert not engine.healthcheck(name), "healthy before the server could have started"
    deadline = time.monotonic() + 120
    while not engine.healthcheck(name):
        assert time.monotonic() < deadline, f"never healthy; logs:\n{_logs(name)[-3000:]}"
        time.sleep(1)
    timing(f"container healthy {time.monotonic() - started:.1f} s after `run` (tiny CLIP)")
    # the server (PID 1) and anything exec'd run as the image's user
    assert engine.run("exec", name, "sh", "-c", "stat -c %u /proc/1; id -u").stdout.split() == ["10001", "10001"]
    url = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.trust_env = False
    resp = http.post(f"{url}/setup", json={"project": "1.1795816392", "schema": CONFIG, "hostname": "http://ls.invalid",
                                           "access_token": "unused-token", "extra_params": None}, timeout=30)
    assert resp.status_code == 200, resp.text
    version = resp.json()["model_version"]
    rng = np.random.default_rng(11)
    tasks, truths = [], []
    for i in range(24):
        img, colour, shape = synthetic.random_object_image(rng, 64, background_rate=0.0)
        uri = "data:image/png;base64," + base64.b64encode(synthetic.encode_png(img.resize((128, 128)))).decode()
        tasks.append({"id": i + 1, "data": {"image": uri}})
        truths.append(f"{colour} {shape}")
    resp = http.post(f"{url}/predict", json={"tasks": tasks, "project": "1.1795816392", "label_config": CONFIG,
                                             "params": {"login": None, "password": None, "context": None}}, timeout=120)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["model_version"] for r in results] == [version] * 24
    correct = sum(r["result"][0]["value"]["choices"] == [t] for r, t in zip(results, truths))
    timing(f"image /predict: {correct}/24 correct, version {version}")
    assert correct >= 22, f"{correct}/24 correct"
    # the model is mounted read-only and the embedded store wrote into the data volume
    assert engine.run("exec", name, "sh", "-c", "touch /models/tiny/x", check=False).returncode != 0
    assert engine.run("exec", name, "ls", "/var/lib/cliplabel").stdout.strip() != ""
    assert "Traceback" not in _logs(name)


def test_worker_command_starts(image: str, mountable_model: Path, containers: list[str], redis_url: str,
                               redis_prefix: str) -> None:
    """`cliplabel worker` in the image connects to Redis (the host's, over the host network) and listens."""
    name = _start(containers, "--network", "host", "-v", f"{mountable_model}:/models/tiny:ro",
                  "-e", "CLIPLABEL_MODEL=local-dir:/models/tiny", "-e", f"CLIPLABEL_REDIS_URL={redis_url}",
                  "-e", f"CLIPLABEL_REDIS_PREFIX={redis_prefix}", image, "cliplabel", "worker")
    deadline = time.monotonic() + 120
    while "listening on queues=" not in _logs(name):
        assert time.monotonic() < deadline, f"the worker did not start; logs:\n{_logs(name)[-3000:]}"
        assert engine.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", _logs(name)
        time.sleep(1)
    assert "Traceback" not in _logs(name)
