"""WhatsApp's rules as facts on the customer: the session window and the opt-in.

WhatsApp lets a business answer free-form only within 24 hours of the customer's last message
(the *session window*); outside it a business-initiated message must be an approved template.
``customer.whatsapp_session_at`` is the time of the last message the customer sent on WhatsApp
(written in the turn that records it); ``customer.whatsapp_opt_in_at`` when they agreed to hear
from the business there (stating WhatsApp as their contact channel is that agreement: the
preference keeps its message and time as the record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, exists, func, insert, or_, select, update

from storage.outreach_models import DELIVERY_ATTEMPT, WHATSAPP_CONTENT
from storage.tables import CUSTOMER, IDENTITY, MESSAGE
from storage.types import Channel, DeliveryStatus, Direction

CHANNEL = Channel.WHATSAPP.value
SESSION = timedelta(hours=24)
OPT_IN_KEY = "contact_channel"  # the preference whose value "whatsapp" is the opt-in
# A delivery attempt's outcome when its message was queued again to go another way (as a
# template, or on another channel): it happens at most once per message.
REROUTED = "rerouted"


@dataclass(frozen=True, slots=True)
class Session:
    """The WhatsApp facts of the customer at an address."""

    customer_id: int
    name: str | None
    session_at: datetime | None
    opt_in_at: datetime | None

    def open_at(self, moment: datetime) -> bool:
        """Whether a free-form message may go at ``moment`` (within 24 hours of their last one)."""
        return session_open(self.session_at, moment)


def session_open(session_at: datetime | None, moment: datetime) -> bool:
    """Whether ``moment`` lies within the session window opened at ``session_at``."""
    return session_at is not None and session_at <= moment < session_at + SESSION


def touch_session(conn: Connection, *, customer_id: int, at: datetime) -> None:
    """The customer wrote on WhatsApp at ``at``: their session window runs from then (a message
    that arrives late never shortens it)."""
    conn.execute(
        update(CUSTOMER)
        .where(
            CUSTOMER.c.id == customer_id,
            or_(CUSTOMER.c.whatsapp_session_at.is_(None), CUSTOMER.c.whatsapp_session_at < at),
        )
        .values(whatsapp_session_at=at)
    )


def record_opt_in(conn: Connection, *, customer_id: int, at: datetime) -> None:
    """The customer agreed to messages on WhatsApp at ``at`` (the first agreement is kept)."""
    conn.execute(
        update(CUSTOMER)
        .where(CUSTOMER.c.id == customer_id, CUSTOMER.c.whatsapp_opt_in_at.is_(None))
        .values(whatsapp_opt_in_at=at)
    )


def withdraw_opt_in(conn: Connection, *, customer_id: int) -> None:
    """The customer no longer agrees to business-initiated messages on WhatsApp."""
    conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == customer_id).values(whatsapp_opt_in_at=None))


def session_of(conn: Connection, *, address: str) -> Session | None:
    """The WhatsApp facts of the customer whose WhatsApp address (E.164) is ``address``; else of
    the customer with that phone number; None when nobody has it."""
    columns = (CUSTOMER.c.id, CUSTOMER.c.name, CUSTOMER.c.whatsapp_session_at, CUSTOMER.c.whatsapp_opt_in_at)
    row = conn.execute(
        select(*columns)
        .join(IDENTITY, IDENTITY.c.customer_id == CUSTOMER.c.id)
        .where(IDENTITY.c.channel == CHANNEL, IDENTITY.c.address == address)
    ).first()
    if row is None:
        row = conn.execute(select(*columns).where(CUSTOMER.c.phone == address)).first()
    return Session(row[0], row[1], row[2], row[3]) if row is not None else None


def close_session(conn: Connection, *, provider_id: str) -> int | None:
    """WhatsApp refused a free-form message (Twilio 63016: outside the window): the window of
    its customer is closed until they write again. The customer's id, if known."""
    customer_id = conn.execute(
        select(MESSAGE.c.customer_id).where(
            MESSAGE.c.channel == CHANNEL,
            MESSAGE.c.direction == Direction.OUT,
            MESSAGE.c.provider_message_id == provider_id,
        )
    ).scalar()
    if customer_id is not None:
        close_session_of(conn, customer_id=customer_id)
    return customer_id


def close_session_of(conn: Connection, *, customer_id: int) -> None:
    """Mark the customer's session window closed (until their next WhatsApp message)."""
    conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == customer_id).values(whatsapp_session_at=None))


def last_inbound_at(conn: Connection, *, customer_id: int) -> datetime | None:
    """When the customer last wrote on WhatsApp, from the messages (a check of the tracked time)."""
    return conn.execute(
        select(func.max(MESSAGE.c.created_at)).where(
            MESSAGE.c.customer_id == customer_id,
            MESSAGE.c.channel == CHANNEL,
            MESSAGE.c.direction == Direction.IN,
        )
    ).scalar()


@dataclass(frozen=True, slots=True)
class Refused:
    """An outbound WhatsApp message Twilio reported failed (what deciding its fate needs)."""

    message_id: int
    customer_id: int | None
    address: str
    text: str
    intent: str | None
    marketing: bool
    attempts: int


def reported(conn: Connection, *, provider_id: str) -> Refused | None:
    """The failed outbound WhatsApp message Twilio took as ``provider_id``, if any."""
    row = conn.execute(
        select(
            MESSAGE.c.id,
            MESSAGE.c.customer_id,
            MESSAGE.c.address,
            MESSAGE.c.text,
            MESSAGE.c.intent,
            MESSAGE.c.marketing,
            MESSAGE.c.attempts,
        ).where(
            MESSAGE.c.channel == CHANNEL,
            MESSAGE.c.direction == Direction.OUT,
            MESSAGE.c.provider_message_id == provider_id,
            MESSAGE.c.status == DeliveryStatus.FAILED,
        )
    ).first()
    if row is None:
        return None
    return Refused(row[0], row[1], row[2], row[3], row[4], bool(row[5]), int(row[6]))


def rerouted_before(conn: Connection, *, message_id: int) -> bool:
    """Whether the message was already queued again another way (never twice)."""
    return bool(
        conn.execute(
            select(
                exists().where(
                    DELIVERY_ATTEMPT.c.message_id == message_id, DELIVERY_ATTEMPT.c.outcome == REROUTED
                )
            )
        ).scalar()
    )


def requeue_reported(
    conn: Connection,
    *,
    message_id: int,
    provider_id: str,
    channel: str,
    address: str,
    reason: str,
    now: datetime,
) -> bool:
    """Queue a message Twilio reported failed again, on ``channel`` at ``address`` (WhatsApp
    again: as its template), with the reason; its attempt is recorded ``rerouted``. False when
    it is no longer that failed message (a duplicate callback, or done already)."""
    row = conn.execute(
        update(MESSAGE)
        .where(
            MESSAGE.c.id == message_id,
            MESSAGE.c.provider_message_id == provider_id,
            MESSAGE.c.status == DeliveryStatus.FAILED,
        )
        .values(
            status=DeliveryStatus.QUEUED,
            channel=channel,
            address=address,
            provider_message_id=None,  # the refused send's id stays on its attempt
            error=reason[:500],
            next_attempt_at=None,
            reconcile_since=None,
            lease_expires_at=None,
        )
        .returning(MESSAGE.c.attempts, MESSAGE.c.claimed_at)
    ).first()
    if row is None:
        return False
    conn.execute(
        insert(DELIVERY_ATTEMPT).values(
            message_id=message_id,
            attempt=row.attempts,
            outcome=REROUTED,
            error=reason[:500],
            provider_message_id=provider_id,
            claimed_at=row.claimed_at,
            at=now,
        )
    )
    return True


def explain_failure(conn: Connection, *, message_id: int, reason: str) -> None:
    """Record why a failed message stays failed."""
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id == message_id, MESSAGE.c.status == DeliveryStatus.FAILED)
        .values(error=reason[:500])
    )


def content_sid(conn: Connection, *, key: str) -> str | None:
    """The Content SID of the Content API item made for ``key`` (a digest of what it holds)."""
    return conn.execute(select(WHATSAPP_CONTENT.c.content_sid).where(WHATSAPP_CONTENT.c.key == key)).scalar()


def save_content_sid(conn: Connection, *, key: str, sid: str, now: datetime) -> None:
    """Keep the Content SID made for ``key``. IntegrityError when another worker kept one first
    (read it with :func:`content_sid`)."""
    conn.execute(insert(WHATSAPP_CONTENT).values(key=key, content_sid=sid, created_at=now))
