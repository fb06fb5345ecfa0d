"""What ``rapport run`` starts, and why a part stays off."""

from __future__ import annotations

from dataclasses import dataclass

from bot.settings import Settings


@dataclass(frozen=True, slots=True)
class Component:
    """A part of Rapport and whether this process runs it."""

    name: str
    on: bool
    detail: str


def components(settings: Settings, *, host: str, port: int) -> list[Component]:
    """Every part of Rapport with its state under ``settings``."""
    telegram = (
        "token set, but this build has no Telegram channel yet"
        if settings.telegram_bot_token
        else "set TELEGRAM_BOT_TOKEN to turn it on"
    )
    sms = (
        "credentials set, but this build has no SMS channel yet"
        if settings.twilio_account_sid and settings.twilio_auth_token
        else "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER to turn it on"
    )
    return [
        Component("web app", True, f"http://{host}:{port}/healthz"),
        Component("terminal chat", True, "rapport chat --phone +14155550100"),
        Component("telegram", False, telegram),
        Component("sms (twilio)", False, sms),
        Component("scheduler", False, "this build has no scheduled jobs yet"),
    ]
