"""ASGI middleware, so it covers every path: the body-size cap and HTTP basic auth."""

from __future__ import annotations

import base64
import binascii
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cliplabel.api.errors import error_response


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413, whether or not the client declared a Content-Length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        # Read the whole body (bounded) before the app sees it: a chunked upload cannot declare its size, and an
        # error raised mid-parse would surface as a 400 from the framework instead of a 413.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                      receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, "body_too_large", f"request bodies are limited to {self.max_bytes} bytes")(
            scope, receive, send)


def _replay(messages: list[Message], then: Receive) -> Receive:
    """Hands out the buffered messages, then the connection's own (a later disconnect is real)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return await then()

    return receive


# Label Studio 1.23 creates the project's `<backend>/webhook` itself when the backend is connected, and sends its
# annotation events there without the backend's basic-auth header. So `POST /webhook` is let through without it,
# marked unauthenticated (`request.state.authenticated`): the route then takes only annotation events, and the worker
# confirms each against Label Studio's API before it teaches anything (`services/feedback/confirm.py`).
OPEN_PATHS = (("POST", "/webhook"),)


class BasicAuthMiddleware:
    """HTTP basic auth on every path when `BASIC_AUTH_USER`/`BASIC_AUTH_PASS` are set, except `OPEN_PATHS`, which
    pass either way with `scope["state"]["authenticated"]` saying whether the credentials were right."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self._expected = (user.encode(), password.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorized = self._authorized(dict(scope["headers"]).get(b"authorization", b""))
        if not authorized and (scope.get("method"), scope.get("path")) not in OPEN_PATHS:
            await error_response(401, "unauthorized", "this backend requires HTTP basic auth",
                                  {"WWW-Authenticate": 'Basic realm="cliplabel"'})(scope, receive, send)
            return
        scope.setdefault("state", {})["authenticated"] = authorized
        await self.app(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Compare both halves every time so timing does not reveal which one was wrong.
        ok_user = secrets.compare_digest(user, self._expected[0])
        ok_pass = secrets.compare_digest(password, self._expected[1])
        return bool(sep) and ok_user and ok_pass
