"""The one mapping from exceptions to HTTP answers: `{"error": code, "detail": safe message}`, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cliplabel.core.errors import CliplabelError, ModelWarmingError

logger = logging.getLogger(__name__)


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CliplabelError)
    async def _domain(_: Request, exc: CliplabelError) -> JSONResponse:
        if isinstance(exc, ModelWarmingError):  # expected while a large label set's prompts encode: no error log
            return error_response(exc.status, exc.code, exc.detail, {"Retry-After": str(exc.retry_after_s)})
        if exc.status >= 500:
            logger.error("%s: %s", exc.code, exc.detail)
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "the request body is not valid JSON")
        # Only locations and messages: pydantic's `input` would echo the body (and any token in it).
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                           for e in errors[:5])
        return error_response(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                              str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the server log has the details")
