"""``rapport worker``: deliver queued messages without serving webhooks.

Run one next to ``rapport run`` or several on their own: on PostgreSQL they claim rows side by
side (``FOR UPDATE SKIP LOCKED``) and share each channel's pace through the database; on SQLite
one process delivers at a time and the others stand by to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from bot.channels.base import ChannelService
from bot.runtime import Runtime
from bot.web import make_outbox

log = logging.getLogger(__name__)


async def run_worker(
    runtime: Runtime, services: Sequence[ChannelService], stop: asyncio.Event | None = None
) -> None:
    """Send through ``services`` until ``stop`` is set, or SIGINT/SIGTERM; in-flight sends finish."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or Windows
            loop.add_signal_handler(sig, stop.set)
    started: list[ChannelService] = []
    try:
        for service in services:
            await service.start(receive=False)
            started.append(service)
        log.info("delivering on %s", ", ".join(s.name for s in services))
        await make_outbox(runtime, services).run(stop=stop)
    finally:
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping the %s channel failed", service.name)
