"""The HTTP edge: Label Studio 1.23's ML backend protocol on FastAPI.

Handlers are thin (validate → call a service → serialise). Errors become `{"error", "detail"}` JSON in one place;
a client never sees a traceback. Basic auth and the body-size cap are ASGI middleware, so they cover every path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cliplabel import __version__
from cliplabel.labelstudio import format as ls_format
from cliplabel.core.settings import Settings
from cliplabel.core.domain import Encoder
from cliplabel.core.errors import CliplabelError, InvalidRequestError
from cliplabel.container import Services, build_services
from cliplabel.store import Store

logger = logging.getLogger(__name__)


# -- request bodies: loose on input (Label Studio adds fields between versions) ----------------------------------------
class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: str | int
    label_config: str = Field(alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[Any]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | int
    kind: Literal["prelabel", "rescore"] = "prelabel"
    chunk_size: int = Field(default=64, ge=1, le=1000)


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# -- middleware ----------------------------------------------------------------------------------------------------------
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
            await _error(413, "body_too_large", f"request bodies are limited to {self.max_bytes} bytes")(
                scope, receive, send)
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
                await _error(413, "body_too_large", f"request bodies are limited to {self.max_bytes} bytes")(
                    scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                      receive), send)


def _replay(messages: list[Message], then: Receive) -> Receive:
    """Hands out the buffered messages, then the connection's own (a later disconnect is real)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return await then()

    return receive


class BasicAuthMiddleware:
    """HTTP basic auth on every path when `BASIC_AUTH_USER`/`BASIC_AUTH_PASS` are set."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self._expected = (user.encode(), password.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(dict(scope["headers"]).get(b"authorization", b"")):
            await _error(401, "unauthorized", "this backend requires HTTP basic auth",
                         {"WWW-Authenticate": 'Basic realm="cliplabel"'})(scope, receive, send)
            return
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


# -- the app ---------------------------------------------------------------------------------------------------------------
def create_app(settings: Settings, encoder: Encoder | None = None, store: Store | None = None) -> FastAPI:
    """Builds the ASGI app; the model and store are created once in the lifespan unless passed in (tests share them)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, encoder=encoder, store=store)
        app.state.services = services
        try:
            yield
        finally:
            services.close(close_store=store is None)

    app = FastAPI(title="cliplabel", version=__version__, lifespan=lifespan)
    _install_error_handlers(app)
    _install_routes(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.basic_auth_user is not None and settings.basic_auth_pass is not None:
        app.add_middleware(BasicAuthMiddleware, user=settings.basic_auth_user,
                           password=settings.basic_auth_pass.get_secret_value())
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CliplabelError)
    async def _domain(_: Request, exc: CliplabelError) -> JSONResponse:
        if exc.status >= 500:
            logger.error("%s: %s", exc.code, exc.detail)
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "invalid_json", "the request body is not valid JSON")
        # Only locations and messages: pydantic's `input` would echo the body (and any token in it).
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                           for e in errors[:5])
        return _error(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error; the server log has the details")


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _install_routes(app: FastAPI) -> None:
    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        return _services(request).health()

    @app.post("/setup")
    def setup(body: SetupRequest, request: Request) -> dict[str, str]:
        version = _services(request).setup(body.project, body.label_config, body.hostname, body.access_token)
        return {"model_version": version}

    @app.post("/predict")
    def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        if body.project is None and body.label_config is None:
            raise InvalidRequestError("the request needs a project (after /setup) or a label_config")
        results = _services(request).predict(body.tasks, body.project, body.label_config, body.params or {})
        return {"results": results}

    @app.post("/webhook")
    def webhook(body: WebhookRequest, request: Request) -> dict[str, Any]:
        return _services(request).webhook(body.action, body.model_dump())

    @app.post("/jobs", status_code=202)
    def start_job(body: JobRequest, request: Request) -> dict[str, Any]:
        """Starts pre-labelling a whole project (or re-scoring its unlabelled tasks); poll GET /jobs/{id}."""
        return _services(request).start_job(body.project, body.kind, body.chunk_size).as_json()

    @app.get("/jobs/{job_id}")
    def job_status(request: Request, job_id: str = PathParam(pattern=r"^[0-9a-f]{16}$")
                   ) -> dict[str, Any]:
        return _services(request).bulk.status(job_id).as_json()

    @app.delete("/jobs/{job_id}")
    def cancel_job(request: Request, job_id: str = PathParam(pattern=r"^[0-9a-f]{16}$")) -> dict[str, Any]:
        return _services(request).bulk.cancel(job_id).as_json()

    @app.get("/jobs")
    def list_jobs(project: str, request: Request) -> dict[str, Any]:
        return {"jobs": [j.as_json() for j in _services(request).bulk.list(ls_format.project_id(project))]}

    @app.get("/report")
    def quality_report(project: str, request: Request) -> dict[str, Any]:
        """Per-class counts, scores, acceptance and the learning curve (`cliplabel report` draws it)."""
        return dataclasses.asdict(_services(request).report(project))

    @app.get("/versions")
    def versions(request: Request, project: str | None = None) -> dict[str, Any]:
        return {"versions": _services(request).versions(project)}

    @app.get("/metrics")
    def metrics(request: Request) -> dict[str, Any]:
        return _services(request).metrics.snapshot()
