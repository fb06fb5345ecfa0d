"""Test helpers: a scripted customer that talks to the engine with a controllable clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from dialogs.engine import DialogEngine, Inbound, Reply, TurnResult
from storage.db import transaction
from storage.models import Customer, Message, Preference
from storage.queries import find_identity, preferences, transcript

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
_ids = itertools.count(1)


class Texter:
    """A customer texting the bot: ``say`` returns the replies; time moves a minute a message."""

    def __init__(
        self,
        dialog: DialogEngine,
        address: str = "+14155550123",
        *,
        channel: str = "terminal",
        phone: str | None = None,
        now: datetime = START,
    ) -> None:
        self.dialog = dialog
        self.address = address
        self.channel = channel
        self.phone = phone
        self.now = now
        self.last: TurnResult | None = None

    def send(
        self,
        text: str,
        *,
        after: timedelta = timedelta(minutes=1),
        provider_id: str | None = None,
        choice: str | None = None,
    ) -> TurnResult:
        self.now += after
        self.last = self.dialog.handle(
            Inbound(
                channel=self.channel,
                address=self.address,
                text=text,
                provider_id=provider_id or f"m{next(_ids)}",
                choice=choice,
                phone=self.phone,
                received_at=self.now,
            )
        )
        return self.last

    def say(self, text: str, **kwargs: object) -> list[Reply]:
        return list(self.send(text, **kwargs).replies)  # type: ignore[arg-type]

    def said(self, text: str, **kwargs: object) -> str:
        """The replies to ``text`` joined into one string."""
        return "\n".join(r.text for r in self.say(text, **kwargs))

    @property
    def customer_id(self) -> int:
        with transaction(self.dialog.db) as s:
            identity = find_identity(s, channel=self.channel, address=self.address)
            assert identity is not None
            return identity.customer_id

    def prefs(self) -> dict[str, Preference]:
        with transaction(self.dialog.db) as s:
            return preferences(s, customer_id=self.customer_id)

    def customer(self) -> Customer:
        with transaction(self.dialog.db) as s:
            c = s.get(Customer, self.customer_id)
            assert c is not None
            return c

    def messages(self) -> list[Message]:
        with transaction(self.dialog.db) as s:
            return list(transcript(s, customer_id=self.customer_id))


def question_of(replies: list[Reply]) -> str | None:
    """The key of the one question asked in ``replies`` (None if none)."""
    keys = [r.question_key for r in replies if r.intent in ("ask", "reask", "reconfirm")]
    assert len(keys) <= 1, f"more than one question in one turn: {keys}"
    return keys[0] if keys else None
