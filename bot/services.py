"""The channels this process runs, from the settings."""

from __future__ import annotations

from bot.channels.base import ChannelService
from bot.channels.sms import build_sms_service
from bot.channels.telegram import build_telegram_service
from bot.channels.whatsapp import build_whatsapp_service
from bot.runtime import Runtime


def build_services(runtime: Runtime) -> list[ChannelService]:
    """Every configured channel; ValueError when one is configured but cannot work."""
    built: list[ChannelService | None] = [
        build_telegram_service(runtime),
        build_sms_service(runtime),
        build_whatsapp_service(runtime),
    ]
    return [s for s in built if s is not None]
