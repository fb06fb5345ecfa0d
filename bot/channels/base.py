"""What a channel brings to ``rapport run``: a sender for the outbox, web routes, a lifecycle."""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter

from schedulers.delivery import Sender


class ChannelService(Protocol):
    """A configured channel (Telegram, SMS...).

    ``router`` holds its webhooks (None if it has none); ``start`` and ``stop`` run in the web
    app's lifespan (connect, register webhooks, start polling; finish or leave queued sends).
    ``start(receive=False)`` only readies the sender (``rapport worker``: no webhooks, no polling).
    """

    name: str

    @property
    def sender(self) -> Sender: ...

    def router(self) -> APIRouter | None: ...

    async def start(self, *, receive: bool = True) -> None: ...

    async def stop(self) -> None: ...
