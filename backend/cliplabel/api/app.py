"""The HTTP edge: Label Studio 1.23's ML backend protocol on FastAPI.

`create_app` builds the expensive objects once, in the lifespan; `routes` holds the thin handlers, `schemas` their
request bodies, `errors` the one exception-to-HTTP mapping (a client never sees a traceback), and `middleware` the
body-size cap and basic auth, as ASGI middleware so they cover every path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cliplabel import __version__
from cliplabel.api.errors import install_error_handlers
from cliplabel.api.middleware import BasicAuthMiddleware, BodyLimitMiddleware
from cliplabel.api.routes import router
from cliplabel.container import build_services
from cliplabel.core.domain import Encoder
from cliplabel.core.settings import Settings
from cliplabel.store import Store


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
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.basic_auth_user is not None and settings.basic_auth_pass is not None:
        app.add_middleware(BasicAuthMiddleware, user=settings.basic_auth_user,
                           password=settings.basic_auth_pass.get_secret_value())
    return app
