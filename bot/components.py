"""What ``rapport run`` starts, and why a part stays off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.channels.base import ChannelService
from bot.channels.telegram import resolve_mode
from bot.settings import Settings


@dataclass(frozen=True, slots=True)
class Component:
    """A part of Rapport and whether this process runs it."""

    name: str
    on: bool
    detail: str


def components(
    settings: Settings, services: Sequence[ChannelService], *, host: str, port: int
) -> list[Component]:
    """Every part of Rapport with its state in this process."""
    running = {s.name for s in services}
    public = settings.public_base_url or f"http://{host}:{port}"
    if "telegram" in running:
        telegram = Component("telegram", True, f"{resolve_mode(settings)} mode")
    else:
        telegram = Component("telegram", False, "set TELEGRAM_BOT_TOKEN to turn it on")
    if "sms" in running:
        sms = Component("sms (twilio)", True, f"webhook {public}/sms/inbound")
    else:
        sms = Component(
            "sms (twilio)",
            False,
            "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER (or TWILIO_MESSAGING_SERVICE_SID) "
            "and PUBLIC_BASE_URL to turn it on",
        )
    if "whatsapp" in running:
        whatsapp = Component("whatsapp (twilio)", True, f"webhook {public}/whatsapp/inbound")
    else:
        whatsapp = Component(
            "whatsapp (twilio)",
            False,
            "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_WHATSAPP_FROM (or "
            "TWILIO_WHATSAPP_MESSAGING_SERVICE_SID) and PUBLIC_BASE_URL to turn it on",
        )
    return [
        Component("web app", True, f"http://{host}:{port}/healthz"),
        Component("terminal chat", True, "rapport chat --phone +14155550100"),
        telegram,
        sms,
        whatsapp,
        Component(
            "outbox", bool(services), "sends queued replies, retries failures" if services else "no channel"
        ),
        Component(
            "scheduler",
            True,
            f"suggestion scan daily at {settings.proactive_scan_at:%H:%M} UTC, broadcasts, nudges, recovery"
            + (", billing" if settings.billing_webhook_url else "")
            + " (one leader among processes)",
        ),
    ]
