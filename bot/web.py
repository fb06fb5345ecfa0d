"""Rapport's web app: health (``/healthz``), the channels' webhooks, and the console.

The app's lifespan starts the configured channels and the outbox loop that sends queued
messages (retries included), and stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from bot.channels.base import ChannelService
from bot.console import ConsoleConfig, mount_console
from bot.intake import Intake
from bot.runtime import Runtime
from schedulers.delivery import Outbox
from schedulers.health import Part
from schedulers.jobs import JobContext, Scheduler, run_scheduler
from schedulers.leader import delivery_lock
from storage.db import database_status

log = logging.getLogger(__name__)


def make_outbox(
    runtime: Runtime, services: Sequence[ChannelService], *, intake: Intake | None = None
) -> Outbox:
    """The outbox that sends through the given channels (its loop: one process at a time on
    SQLite, any number on PostgreSQL); the channels are bound to it and to ``intake`` (a new
    one if not given)."""
    senders = {s.name: s.sender for s in services}
    outbox = Outbox(
        runtime.db,
        senders,
        runtime.dialog.reply_options,
        lock=delivery_lock(runtime.db),
        lease=timedelta(seconds=runtime.settings.claim_lease_seconds),
    )
    intake = intake or Intake(runtime)
    for service in services:
        service.bind(outbox, intake)
    return outbox


def make_scheduler(runtime: Runtime) -> Scheduler:
    """The scheduled jobs (suggestion scan, nudges, broadcasts, billing, recovery) for this
    process, under the runtime's contact policy (the configured channels)."""
    s = runtime.settings
    context = JobContext(
        db=runtime.db,
        advisor=runtime.dialog.advisor,
        bank=runtime.bank,
        policy=runtime.policy,
        nudges=s.nudge_config(),
        billing=s.billing_config(),
        handoff_timeout=s.handoff_config().timeout,
        conversation_idle=timedelta(hours=s.resume_after_hours),
    )
    return Scheduler(context, s.schedule_config())


def create_app(
    runtime: Runtime,
    services: Sequence[ChannelService] = (),
    *,
    outbox: Outbox | None = None,
    console: ConsoleConfig | None = None,
    scheduler: Scheduler | None = None,
) -> FastAPI:
    """The ASGI app served by ``rapport run``: health, channel webhooks and the console
    (``console`` overrides the console's settings, e.g. a test clock)."""
    intake = Intake(runtime)
    if outbox is None:
        outbox = make_outbox(runtime, services, intake=intake)
    else:
        for service in services:
            service.bind(outbox, intake)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started: list[ChannelService] = []
        stop = asyncio.Event()
        sending: asyncio.Task[None] | None = None
        scheduling: asyncio.Task[None] | None = None
        replaying: asyncio.Task[None] | None = None
        try:
            for service in services:
                await service.start()
                started.append(service)
            if services:
                sending = asyncio.create_task(outbox.run(stop=stop))
                replaying = asyncio.create_task(intake.run(stop=stop))
            if scheduler is not None:
                scheduling = asyncio.create_task(run_scheduler(scheduler, stop))
            yield
        finally:
            stop.set()
            if sending is not None:
                await sending
            if scheduling is not None:
                await scheduling
            if replaying is not None:
                await replaying
                intake.spool.close()
            for service in reversed(started):
                try:
                    await service.stop()
                except Exception:
                    log.exception("stopping the %s channel failed", service.name)

    app = FastAPI(title="Rapport", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.outbox = outbox
    app.state.intake = intake
    for service in services:
        router = service.router()
        if router is not None:
            app.include_router(router)

    mount_console(app, runtime, console)

    parts = [Part("web", state="running")]
    if services:
        parts.append(outbox.health)
    if scheduler is not None:
        parts.append(scheduler.health)
    app.state.parts = parts

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Which parts run (web, delivery loop, scheduler leader or follower), since when and
        their last error, and the database: 200 when all are well, else 503."""
        db = database_status(runtime.db)
        ok = db["ok"] and all(part.ok for part in parts)
        body = {
            "status": "ok" if ok else "degraded",
            "database": db,
            "parts": {part.name: part.snapshot() for part in parts},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
