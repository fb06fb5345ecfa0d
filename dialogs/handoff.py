"""Handing a customer to a person: when the team is in (``HANDOFF_HOURS``), what the bot tells the
customer, and the few phrases that ask for a person (until the understanding layer's classifier
recognises the wish in any wording and calls the same engine method)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(
    r"^\s*(?P<first>[a-z]{3})(?:\s*-\s*(?P<last>[a-z]{3}))?\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)
_ASKS = re.compile(
    r"\b(agent|human|real person|(?:talk|speak) (?:to|with) (?:someone|somebody|a person|a human))\b"
)
_BACK_TO_BOT = re.compile(r"^\s*(bot|continue|carry on|keep going|go on)\W*$")


@dataclass(frozen=True, slots=True)
class Hours:
    """When a person answers: on ``days`` (0 = Monday) from ``start`` to ``end`` in ``zone``."""

    days: frozenset[int]
    start: time
    end: time
    zone: str = "UTC"
    text: str = "Mon-Fri 09:00-17:00"

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"handoff hours must start before they end: {self.text!r}")
        if not self.days:
            raise ValueError("handoff hours need at least one day")
        ZoneInfo(self.zone)  # a typo fails at start-up

    @classmethod
    def parse(cls, text: str, zone: str = "UTC") -> Hours:
        """From "Mon-Fri 09:00-17:00" (or one day, "Sat 10:00-14:00"), in time zone ``zone``."""
        found = _HOURS.match(text.lower())
        if found is None or found["first"] not in DAYS or (found["last"] or found["first"]) not in DAYS:
            raise ValueError(f"expected hours like 'Mon-Fri 09:00-17:00', got {text!r}")
        first, last = DAYS.index(found["first"]), DAYS.index(found["last"] or found["first"])
        days = frozenset((first + i) % 7 for i in range((last - first) % 7 + 1))
        start = time.fromisoformat(found["start"].zfill(5))
        end = time.fromisoformat(found["end"].zfill(5))
        return cls(days, start, end, zone, text.strip())

    def is_open(self, moment: datetime) -> bool:
        """A person is there at ``moment`` (aware)."""
        local = moment.astimezone(ZoneInfo(self.zone))
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def next_open(self, moment: datetime) -> datetime:
        """The next moment the team is in (``moment`` itself when it is), in the team's zone."""
        zone = ZoneInfo(self.zone)
        local = moment.astimezone(zone)
        if self.is_open(moment):
            return local
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            opens = datetime.combine(day, self.start, tzinfo=zone)
            if day.weekday() in self.days and opens > local:
                return opens
        raise AssertionError("unreachable: some day of the week is open")


@dataclass(frozen=True, slots=True)
class HandoffConfig:
    """Settings ``HANDOFF_HOURS`` (+ ``HANDOFF_TIMEZONE``), ``HANDOFF_TIMEOUT_MINUTES`` and
    ``HANDOFF_ON_INTENTS`` (intents that hand the conversation to a person by rule)."""

    hours: Hours = field(default_factory=lambda: Hours.parse("Mon-Fri 09:00-17:00"))
    timeout: timedelta = timedelta(minutes=15)
    on_intents: frozenset[str] = frozenset()


def asks_for_person(text: str) -> bool:
    """The message asks for a person ("agent", "can I talk to someone", "a real person")."""
    return _ASKS.search(text.lower()) is not None


def back_to_bot(text: str) -> bool:
    """The customer, told nobody is free, chooses to carry on with the bot ("BOT", "continue")."""
    return _BACK_TO_BOT.match(text.lower()) is not None


def waiting_text(hours: Hours, now: datetime) -> str:
    """What the customer is told at once when handed to a person."""
    if hours.is_open(now):
        return "OK, I'm getting a person for you: someone from our team will reply here shortly."
    opens = hours.next_open(now)
    local_now = now.astimezone(opens.tzinfo or UTC)
    when = (
        f"today at {opens:%H:%M}"
        if opens.date() == local_now.date()
        else f"tomorrow at {opens:%H:%M}"
        if opens.date() == local_now.date() + timedelta(days=1)
        else f"on {opens:%A} at {opens:%H:%M}"
    )
    return (
        f"OK, I've asked for a person. Our team is in {hours.text} ({hours.zone}), so someone will "
        f"reply here {when}."
    )


OFFER = "Sorry, I'm not getting this. Would you like me to get a person? Reply YES, or NO to carry on."
TIMED_OUT = (
    "Sorry, nobody from our team is free yet. We'll still reply here as soon as someone is; "
    "or reply BOT to carry on with me meanwhile."
)
BACK_WITH_BOT = "OK, let's carry on without a person for now."
