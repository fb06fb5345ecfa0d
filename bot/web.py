"""Rapport's web app: health today; the channels' webhooks and the console mount here."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from bot.runtime import Runtime
from storage.db import database_status


def create_app(runtime: Runtime) -> FastAPI:
    """The ASGI app served by ``rapport run``."""
    app = FastAPI(title="Rapport", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the database answers and its schema is current, else 503."""
        db = database_status(runtime.db)
        return JSONResponse(
            {"status": "ok" if db["ok"] else "degraded", "database": db}, status_code=200 if db["ok"] else 503
        )

    return app
