"""The audience service: who may be contacted with a proactive (marketing) message, on which
channel, and when. The daily scan, nudges, broadcasts (preview, dry run, send) and the console all
ask it, with the one :class:`~schedulers.policy.PolicyConfig` built from the settings.
"""

from __future__ import annotations

from schedulers.policy import PolicyConfig

NO_CHANNEL_CONFIGURED = (
    "no channel is configured (Telegram: TELEGRAM_BOT_TOKEN; SMS: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN "
    "and TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID): nobody can be contacted"
)


class NoChannelError(ValueError):
    """Nothing proactive can be sent: no channel is configured."""


def require_channel(config: PolicyConfig) -> None:
    """NoChannelError when ``config`` has no channel to send on."""
    if not config.channels:
        raise NoChannelError(NO_CHANNEL_CONFIGURED)
