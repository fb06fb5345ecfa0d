"""Value types shared by every table module and the packages above: the UTC timestamp column type
and the vocabularies (channels, directions, delivery states, intents...).

They live here, below the model modules, so that no model module imports another one for them.
The vocabularies are ``StrEnum``: a member equals its string, so stored values and comparisons
with plain strings keep working.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import DateTime, Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Rapport stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store UTC wall time, re-attach UTC on the way out.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Channel(StrEnum):
    """Where a message travels."""

    TERMINAL = "terminal"
    TELEGRAM = "telegram"
    SMS = "sms"
    WHATSAPP = "whatsapp"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class Source(StrEnum):
    """Where a preference came from."""

    ASKED = "asked"
    USAGE = "usage"
    OPERATOR = "operator"
    IMPORT = "import"


class DeliveryStatus(StrEnum):
    """The life of an outbound message (the outbox)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


class PendingKind(StrEnum):
    """What the bot is waiting for."""

    ASK = "ask"  # an answer to the pending question
    RECONFIRM = "reconfirm"  # yes/no: is the stale stored answer still right?
    CONFIRM_FORGET = "confirm_forget"  # yes/no: erase everything?
    CONFIRM_STOP = "confirm_stop"  # yes/no: opt out of all messages?
    SUGGESTION = "suggestion"  # yes/no: switch to the suggested plan (pending_key "plan:<id>")?
    OFFER_PERSON = "offer_person"  # yes/no: get a person? (pending_key: the question not understood)


class Intent(StrEnum):
    """``message.intent``: what an inbound message meant, or what an outbound one is for.

    Commands and carrier keywords are ``command:<kind>`` and ``keyword:<kind>``
    (:meth:`of_command`), the kinds being ``dialogs.commands.CommandKind``'s values.
    """

    # -- outbound: what a reply or an unprompted message is for
    GREETING = "greeting"
    WELCOME_BACK = "welcome_back"
    ASK = "ask"
    REASK = "reask"
    RECONFIRM = "reconfirm"
    ACK = "ack"
    DONE = "done"
    FALLBACK = "fallback"
    CONFIRM = "confirm"
    PROFILE = "profile"
    WHY = "why"
    HELP = "help"
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    ERASED = "erased"
    FIT = "fit"
    SUGGESTION = "suggestion"  # a plan suggestion (a reply, or proactive marketing)
    NUDGE = "nudge"
    BROADCAST = "broadcast"
    TEXT_ONLY = "text_only"  # "I can only read text" (SMS)

    # -- inbound: what the customer meant
    ANSWER = "answer"
    OUT_OF_TURN = "out_of_turn"
    RECONFIRMED = "reconfirmed"
    RECONFIRM_NO = "reconfirm_no"
    SUGGESTION_YES = "suggestion_yes"
    SUGGESTION_NO = "suggestion_no"
    SUGGESTION_STALE = "suggestion_stale"
    CHAT = "chat"
    UNPARSED = "unparsed"
    EMPTY = "empty"
    MEDIA = "media"
    OPTED_OUT = "opted_out"  # a message from an opted-out customer that is not a keyword

    KEYWORD_STOP = "keyword:stop"
    KEYWORD_START = "keyword:start"
    KEYWORD_HELP = "keyword:help"
    COMMAND_SKIP = "command:skip"
    COMMAND_WHY = "command:why"
    COMMAND_PROFILE = "command:profile"
    COMMAND_CHANGE = "command:change"
    COMMAND_FORGET = "command:forget"  # the customer had everything erased
    COMMAND_FORGET_CANCELLED = "command:forget_cancelled"
    COMMAND_HELP = "command:help"
    COMMAND_STOP = "command:stop"
    COMMAND_STOP_CANCELLED = "command:stop_cancelled"
    COMMAND_START = "command:start"
    COMMAND_STOP_REQUEST = "command:stop_request"
    COMMAND_GREETING = "command:greeting"
    COMMAND_FIT = "command:fit"

    @classmethod
    def of_command(cls, kind: str, *, keyword: bool = False) -> Intent:
        """The intent of a command (``keyword=True``: a carrier keyword); ValueError if unknown."""
        return cls(f"{'keyword' if keyword else 'command'}:{kind}")


# CTIA: an opted-out number still gets the opt-out confirmation, the opt-in one, and HELP answers.
ALLOWED_WHILE_OPTED_OUT: frozenset[Intent] = frozenset({Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP})
