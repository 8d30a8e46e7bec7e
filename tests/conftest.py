"""Shared fixtures: the real tiny CLIP, real Redis, a real image host, and the real app on a real socket."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from cliplabel.api.app import create_app
from cliplabel.core.settings import Settings
from cliplabel.store import Store, open_store
from tests import tinyclip
from tests.support import ImageHost, LiveServer, start_image_host, start_server

REDIS_URL = os.environ.get("CLIPLABEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The repository's own tiny CLIP (trained once per content hash, then cached outside the clone)."""
    return tinyclip.ensure_model()


@pytest.fixture(scope="session")
def encoder(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from cliplabel.model.encoder import load_encoder

    return load_encoder(f"local-dir:{tiny_model_dir}", None, "cpu")


@pytest.fixture(scope="session")
def plain_model_dir() -> Path:
    """The second test model: another tower width and temperature, and never trained on framing captions."""
    return tinyclip.ensure_model(variant="plain")


@pytest.fixture(scope="session", params=list(tinyclip.VARIANTS))
def any_model_dir(request: pytest.FixtureRequest) -> Path:
    """Each test model in turn, for claims that must hold on both (see tests/tinyclip.py)."""
    return tinyclip.ensure_model(variant=str(request.param))


@pytest.fixture(scope="session")
def any_encoder(any_model_dir: Path):  # type: ignore[no-untyped-def]
    from cliplabel.model.encoder import load_encoder

    return load_encoder(f"local-dir:{any_model_dir}", None, "cpu")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # pragma: no cover - .ci/run starts Redis
        raise RuntimeError(f"the tests need Redis at {REDIS_URL} (.ci/run starts one): {exc}") from exc
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"cliplabel-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["embedded", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Store]]:
    """Opens a store of the given kind; calling it twice opens the same data (a 'restart')."""
    opened: list[Store] = []
    prefix: list[str] = []

    def make(kind: str) -> Store:
        if kind == "redis":
            if not prefix:
                prefix.append(request.getfixturevalue("redis_prefix"))
            store = open_store(request.getfixturevalue("redis_url"), tmp_path, prefix[0])
        else:
            store = open_store(None, tmp_path / "data")
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    host, server = start_image_host()
    yield host
    server.shutdown()
    server.server_close()


@pytest.fixture
def serve(encoder, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:  # type: ignore[no-untyped-def]
    """Starts the real app with the tiny CLIP on a real port: `serve(store, **settings)`."""
    servers: list[LiveServer] = []

    def start(store: Store, **overrides: Any) -> LiveServer:
        values: dict[str, Any] = {"model": "local-dir:tiny", "data_dir": tmp_path / "data", "batch_size": 16,
                                  "fetch_workers": 4}
        values.update(overrides)
        live = start_server(create_app(Settings(**values), encoder=encoder, store=store))
        servers.append(live)
        return live

    yield start
    for live in servers:
        live.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session
