"""Label Studio API calls against a real HTTP server that fails on purpose: idempotent GETs are retried with backoff
on a 5xx, a 429 or no answer; a 4xx, and any POST, are not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cliplabel.core.domain import TaskPrediction
from cliplabel.core.errors import LabelStudioError
from cliplabel.labelstudio.client import LabelStudioClient


class Flaky:
    """Answers `failures` with `status` first, then 200 with a project."""

    def __init__(self) -> None:
        self.failures: list[int] = []
        self.seen: list[tuple[str, str]] = []


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    state = Flaky()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state.seen.append((self.command, self.path.split("?")[0]))
            status = state.failures.pop(0) if state.failures else 200
            body = json.dumps({"id": 1, "label_config": "<View/>"} if status == 200 else {"detail": "no"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def client(url: str) -> LabelStudioClient:
    c = LabelStudioClient(url, "0123456789abcdef0123456789abcdef01234567", timeout_s=5)
    c.retry_delays_s = (0.01, 0.02, 0.04)
    return c


@pytest.mark.parametrize("failures", [[502], [503, 500, 429]])
def test_a_get_is_retried_past_transient_answers(flaky, failures: list[int]) -> None:  # type: ignore[no-untyped-def]
    state, url = flaky
    state.failures = list(failures)
    assert client(url).label_config(1) == "<View/>"
    assert state.seen == [("GET", "/api/projects/1")] * (len(failures) + 1)


def test_a_get_gives_up_after_its_retries(flaky) -> None:  # type: ignore[no-untyped-def]
    state, url = flaky
    state.failures = [502] * 5
    with pytest.raises(LabelStudioError) as err:
        client(url).label_config(1)
    assert err.value.upstream_status == 502 and len(state.seen) == 4  # one try and three retries


def test_a_4xx_is_not_retried(flaky) -> None:  # type: ignore[no-untyped-def]
    state, url = flaky
    state.failures = [404]
    with pytest.raises(LabelStudioError) as err:
        client(url).label_config(1)
    assert err.value.upstream_status == 404 and len(state.seen) == 1


def test_a_post_is_not_retried(flaky) -> None:  # type: ignore[no-untyped-def]
    state, url = flaky
    state.failures = [502]
    with pytest.raises(LabelStudioError):
        client(url).import_predictions(1, [(1, TaskPrediction(1, "m-r0"))])
    assert state.seen == [("POST", "/api/projects/1/import/predictions")]


def test_no_answer_is_retried(flaky) -> None:  # type: ignore[no-untyped-def]
    state, url = flaky
    c = client(url)
    c.timeout_s = 0.2
    slow = c.session.request
    calls = []

    def first_times_out(method: str, url: str, **kw: object):  # type: ignore[no-untyped-def]
        calls.append(url)
        if len(calls) == 1:
            import requests

            raise requests.ConnectionError("connection refused")
        return slow(method, url, **kw)

    c.session.request = first_times_out  # type: ignore[method-assign]
    assert c.label_config(1) == "<View/>" and len(calls) == 2
