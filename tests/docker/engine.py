"""The container engine the docker tests drive: podman (CI's) or docker, chosen by `CLIPLABEL_ENGINE`.

`CLIPLABEL_STANDINS=1` (what .ci/run sets) builds on the stand-in images of `docker/ci/standins.sh` with this
machine's local wheels, for machines that reach no image registry and no PyTorch index; without it the image is built
as a user builds it (official base, CPU torch, weights downloaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = os.environ.get("CLIPLABEL_ENGINE", "podman")
STANDINS = os.environ.get("CLIPLABEL_STANDINS", "0") == "1"
# The name docker/docker-compose.yml runs; the tests build it, as `docker compose up --build` would.
IMAGE = "cliplabel:latest"
# podman serves Docker's API for docker-compose on this socket (docker/ci/setup-podman.sh starts it).
PODMAN_SOCKET = "unix:///run/podman/podman.sock"
WHEEL_DIRS = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise AssertionError(f"{name} is not installed: docker/ci/setup-podman.sh installs podman and docker-compose")
    return path


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One engine command (`run("ps")` is `podman ps`); a failure raises with its output."""
    proc = subprocess.run([tool(ENGINE), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} exited {proc.returncode}: {proc.stdout[-2000:]}"
                             f"{proc.stderr[-3000:]}")
    return proc


def build_image(log: Path) -> float:
    """Builds docker/Dockerfile as IMAGE; returns the seconds it took. The build's output goes to `log`."""
    args = ["build", "-f", str(ROOT / "docker" / "Dockerfile"), "-t", IMAGE]
    if ENGINE == "podman":
        args += ["--format", "docker"]  # the OCI format has no HEALTHCHECK: podman would drop it
    if STANDINS:
        args += ["--pull=never", "--build-arg", "TORCH_INDEX_URL=", "--build-arg", "CLIPLABEL_PRETRAINED="]
        for wheels in WHEEL_DIRS:
            if Path(wheels).is_dir():
                args += ["-v", f"{wheels}:{wheels}:ro"]
    started = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.run([tool(ENGINE), *args, str(ROOT)], stdout=fh, stderr=subprocess.STDOUT, timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"{ENGINE} build exited {proc.returncode}; log tail:\n{log.read_text()[-4000:]}")
    return time.monotonic() - started


def healthcheck(container: str) -> bool:
    """Whether the container's own HEALTHCHECK command passes now.

    podman without systemd never schedules healthchecks, so it runs the check; docker runs them itself, on the
    image's interval, so this reads the latest state.
    """
    if ENGINE == "podman":
        return run("healthcheck", "run", container, check=False, timeout=60).returncode == 0
    state = run("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
    return state == "healthy"


def compose_command(project: str, env_file: Path, *files: Path) -> tuple[list[str], dict[str, str]]:
    """The compose command line (`docker-compose` against podman's socket, or `docker compose`) and its environment."""
    env = dict(os.environ)
    if ENGINE == "podman":
        env.setdefault("DOCKER_HOST", PODMAN_SOCKET)
        head = [tool("docker-compose")]
    else:
        head = [tool("docker"), "compose"]
    args = [*head, "-p", project, "--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    return args, env
