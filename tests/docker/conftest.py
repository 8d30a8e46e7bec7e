"""Fixtures of the docker tests: the stand-in images, the image built from docker/Dockerfile, a mountable test model.

These tests need a container engine, so they run only when asked for by name: an `-m` expression that names the
`docker` marker (`python -m pytest -m docker tests/docker`, .ci/run's docker stage). Any other run, `-m "not e2e"`
included, deselects them, so the ordinary test command never depends on podman.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker import engine

TIMINGS: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "docker" in (config.option.markexpr or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("docker")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("docker")]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if TIMINGS:
        terminalreporter.section("docker timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)


def timing(line: str) -> None:
    """A measured duration, printed in the run's summary."""
    TIMINGS.append(line)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """IMAGE, built from docker/Dockerfile (on the stand-ins with CLIPLABEL_STANDINS=1)."""
    logs = tmp_path_factory.mktemp("build")
    if engine.STANDINS:
        started = time.monotonic()
        proc = subprocess.run(["bash", str(engine.ROOT / "docker" / "ci" / "standins.sh")], capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, f"docker/ci/standins.sh failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        timing(f"stand-in images: {time.monotonic() - started:.0f} s ({'; '.join(proc.stdout.split(chr(10))[:-1])})")
    seconds = engine.build_image(logs / "build.log")
    size = engine.run("image", "inspect", "--format", "{{.Size}}", engine.IMAGE).stdout.strip()
    timing(f"image build: {seconds:.0f} s; image size {int(size) / 1e9:.2f} GB ({engine.IMAGE})")
    return engine.IMAGE


@pytest.fixture(scope="session")
def mountable_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP, copied where the image's non-root user (uid 10001) may read it through a bind mount."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    shutil.copytree(tiny_model_dir, out)
    out.chmod(0o755)
    for f in out.iterdir():
        f.chmod(0o644)
    return out


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of containers a test started; removed afterwards, their logs kept in the failure report."""
    names: list[str] = []
    yield names
    for name in names:
        engine.run("rm", "-f", "-v", name, check=False)
