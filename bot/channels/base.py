"""What a channel brings to ``rapport run``: a sender for the outbox, web routes, a lifecycle."""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter, Request

from bot.intake import Intake
from schedulers.delivery import Outbox, Sender


class ChannelService(Protocol):
    """A configured channel (Telegram, SMS...).

    ``router`` holds its webhooks (None if it has none); ``start`` and ``stop`` run in the web
    app's lifespan (connect, register webhooks, start polling; finish or leave queued sends).
    ``start(receive=False)`` only readies the sender (``rapport worker``: no webhooks, no polling).
    ``bind`` gives it the process's one intake (engine, or the spool while the database is down)
    and one outbox, through which it sends a turn's replies at once.
    """

    name: str

    @property
    def sender(self) -> Sender: ...

    def bind(self, outbox: Outbox, intake: Intake) -> None: ...

    def router(self) -> APIRouter | None: ...

    async def start(self, *, receive: bool = True) -> None: ...

    async def stop(self) -> None: ...


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
