"""Queries of the outbox (:mod:`schedulers.delivery`): claiming due messages under a lease (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL), renewing and taking back leases, settling an attempt,
delivery attempts, providers' status reports, the opt-out guard's facts, and messages whose fate
is unknown. SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, exists, func, insert, or_, select, true, update

from storage.tables import CUSTOMER, DELIVERY_ATTEMPT, IDENTITY, MESSAGE, OUTREACH_EVENT
from storage.types import DeliveryStatus, Direction

# The columns of a claimed row (what a send needs).
CLAIMED = (
    MESSAGE.c.id,
    MESSAGE.c.customer_id,
    MESSAGE.c.marketing,
    MESSAGE.c.channel,
    MESSAGE.c.address,
    MESSAGE.c.text,
    MESSAGE.c.intent,
    MESSAGE.c.question_key,
    MESSAGE.c.attempts,
    MESSAGE.c.reconcile_since,
    MESSAGE.c.provider_message_id,
)

# -- claims and leases -----------------------------------------------------------------------------


def claim_due(
    conn: Connection,
    *,
    limit: int,
    now: datetime,
    worker_id: str,
    lease: timedelta,
    order_hold: timedelta,
    skip_locked: bool,
    channel: str | None = None,
    message_id: int | None = None,
) -> list[Any]:
    """Mark up to ``limit`` due outbound rows (of ``channel``, or the one ``message_id``) as
    sending, oldest first, under ``worker_id``'s lease (until ``now + lease``); the rows'
    :data:`CLAIMED` columns. A conversational reply is due only when no earlier reply to the
    same chat or number is still queued or sending, or once it is ``order_hold`` old.
    ``skip_locked`` (PostgreSQL): rows other workers are claiming are passed over."""
    earlier = MESSAGE.alias("earlier")
    waiting_before = exists().where(
        earlier.c.customer_id == MESSAGE.c.customer_id,  # (customer_id, id) is indexed
        earlier.c.channel == MESSAGE.c.channel,
        earlier.c.address == MESSAGE.c.address,
        earlier.c.direction == Direction.OUT,
        earlier.c.marketing.is_(False),
        earlier.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
        earlier.c.id < MESSAGE.c.id,
    )
    which = [MESSAGE.c.channel == channel] if channel is not None else []
    if message_id is not None:
        which.append(MESSAGE.c.id == message_id)
    due = (
        select(MESSAGE.c.id)
        .where(
            *which,
            MESSAGE.c.direction == Direction.OUT,
            MESSAGE.c.status == DeliveryStatus.QUEUED,
            or_(MESSAGE.c.next_attempt_at.is_(None), MESSAGE.c.next_attempt_at <= now),
            or_(MESSAGE.c.marketing.is_(True), ~waiting_before, MESSAGE.c.created_at <= now - order_hold),
        )
        .order_by(MESSAGE.c.id)
        .limit(limit)
    )
    if skip_locked:
        due = due.with_for_update(skip_locked=True)
    picked = due.cte("due")
    return list(
        conn.execute(
            update(MESSAGE)
            .where(MESSAGE.c.id.in_(select(picked.c.id)))
            .values(
                status=DeliveryStatus.SENDING,
                attempts=MESSAGE.c.attempts + 1,
                claimed_at=now,
                claimed_by=worker_id,
                lease_expires_at=now + lease,
            )
            .returning(*CLAIMED)
        ).all()
    )


def renew_leases(conn: Connection, *, message_ids: Sequence[int], worker_id: str, until: datetime) -> int:
    """Extend to ``until`` the leases ``worker_id`` holds on these rows (still sending); how many."""
    renewed = conn.execute(
        update(MESSAGE)
        .where(
            MESSAGE.c.id.in_(list(message_ids)),
            MESSAGE.c.claimed_by == worker_id,
            MESSAGE.c.status == DeliveryStatus.SENDING,
        )
        .values(lease_expires_at=until)
    )
    return int(renewed.rowcount or 0)


def release_expired(conn: Connection, *, now: datetime, keep: Collection[int] = ()) -> list[Any]:
    """Queue again the sending rows whose lease ran out before ``now`` (or that have none), but
    ``keep``, to be reconciled before any resend; their id, attempts and claimed_at."""
    return list(
        conn.execute(
            update(MESSAGE)
            .where(
                MESSAGE.c.status == DeliveryStatus.SENDING,
                MESSAGE.c.direction == Direction.OUT,
                or_(MESSAGE.c.lease_expires_at.is_(None), MESSAGE.c.lease_expires_at < now),
                MESSAGE.c.id.not_in(list(keep)) if keep else true(),
            )
            .values(
                status=DeliveryStatus.QUEUED,
                next_attempt_at=None,
                reconcile_since=func.coalesce(MESSAGE.c.reconcile_since, MESSAGE.c.claimed_at, now),
                claimed_by=None,
                lease_expires_at=None,
            )
            .returning(MESSAGE.c.id, MESSAGE.c.attempts, MESSAGE.c.claimed_at)
        ).all()
    )


def taken_provider_ids(conn: Connection, *, candidates: Iterable[str], other_than: int) -> set[str]:
    """Those of the provider's ids ``candidates`` recorded on a message other than ``other_than``."""
    query = select(MESSAGE.c.provider_message_id).where(
        MESSAGE.c.provider_message_id.in_(list(candidates)), MESSAGE.c.id != other_than
    )
    return set(conn.execute(query).scalars())


# -- settling an attempt ---------------------------------------------------------------------------


def settle_claim(
    conn: Connection,
    *,
    message_id: int,
    attempt: int,
    worker_id: str,
    values: Mapping[str, Any],
    reconcile_from_claim: bool = False,
) -> Any:
    """Write ``values`` on the message if it is still sending under this claim (``attempt`` by
    ``worker_id``); ``reconcile_from_claim``: it is to be looked up from when it was first cut
    off (else when this attempt was claimed) before any resend. Its claimed_at row, or None when
    the claim was lost."""
    if reconcile_from_claim:
        values = {**values, "reconcile_since": func.coalesce(MESSAGE.c.reconcile_since, MESSAGE.c.claimed_at)}
    return conn.execute(
        update(MESSAGE)
        .where(
            MESSAGE.c.id == message_id,
            MESSAGE.c.status == DeliveryStatus.SENDING,
            MESSAGE.c.attempts == attempt,  # this claim, not a later one
            MESSAGE.c.claimed_by == worker_id,
        )
        .values(**values)
        .returning(MESSAGE.c.claimed_at)
    ).first()


def settle_accepted_late(
    conn: Connection,
    *,
    message_id: int,
    attempt: int,
    provider_id: str,
    final: Collection[DeliveryStatus],
    now: datetime,
) -> Any:
    """Record ``provider_id`` on a message a status callback settled (one of ``final``) before
    attempt ``attempt`` was recorded; its claimed_at row, or None (no such message, or the
    attempt is recorded already)."""
    return conn.execute(
        update(MESSAGE)
        .where(
            MESSAGE.c.id == message_id,
            MESSAGE.c.status.in_(tuple(final)),
            MESSAGE.c.attempts == attempt,
            ~exists().where(
                DELIVERY_ATTEMPT.c.message_id == message_id, DELIVERY_ATTEMPT.c.attempt == attempt
            ),
        )
        .values(
            provider_message_id=provider_id,
            sent_at=func.coalesce(MESSAGE.c.sent_at, now),
            next_attempt_at=None,
        )
        .returning(MESSAGE.c.claimed_at)
    ).first()


def leave_provider_id(conn: Connection, *, message_id: int, provider_id: str) -> None:
    """Record ``provider_id`` on the message unless it has one already."""
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id == message_id, MESSAGE.c.provider_message_id.is_(None))
        .values(provider_message_id=provider_id)
    )


def fail_message(conn: Connection, *, message_id: int, error: str) -> None:
    """The message fails with ``error`` (its lease ends)."""
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id == message_id)
        .values(status=DeliveryStatus.FAILED, error=error, lease_expires_at=None)
    )


def refuse(conn: Connection, *, message_ids: Sequence[int], reason: str, now: datetime) -> None:
    """These claimed messages fail with ``reason`` and never go; their attempts are recorded."""
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id.in_(list(message_ids)))
        .values(status=DeliveryStatus.FAILED, error=reason, next_attempt_at=None)
    )
    claimed = conn.execute(
        select(MESSAGE.c.id, MESSAGE.c.attempts, MESSAGE.c.claimed_at).where(
            MESSAGE.c.id.in_(list(message_ids))
        )
    ).all()
    record_attempts(conn, rows=claimed, outcome="failed", error=reason, now=now)


def mark_unknown(
    conn: Connection, *, message_ids: Sequence[int], reason: str, now: datetime, attempt: int | None = None
) -> None:
    """These messages still sending (under claim ``attempt``, when given) may or may not have
    gone: ``unknown``, their attempts recorded and an outreach event for each customer's."""
    this_claim = MESSAGE.c.attempts == attempt if attempt is not None else true()
    rows = conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id.in_(list(message_ids)), MESSAGE.c.status == DeliveryStatus.SENDING, this_claim)
        .values(status=DeliveryStatus.UNKNOWN, error=reason, next_attempt_at=None, lease_expires_at=None)
        .returning(MESSAGE.c.id, MESSAGE.c.customer_id, MESSAGE.c.attempts, MESSAGE.c.claimed_at)
    ).all()
    record_attempts(conn, rows=rows, outcome="unknown", error=reason, now=now)
    if any(r.customer_id is not None for r in rows):
        conn.execute(
            insert(OUTREACH_EVENT),
            [
                {
                    "customer_id": r.customer_id,
                    "kind": "unknown",
                    "reason": reason[:64],
                    "message_id": r.id,
                    "at": now,
                }
                for r in rows
                if r.customer_id is not None
            ],
        )


# -- delivery attempts -----------------------------------------------------------------------------


def add_attempt(
    conn: Connection,
    *,
    message_id: int,
    attempt: int,
    outcome: str,
    error: str | None,
    provider_message_id: str | None,
    claimed_at: datetime | None,
    at: datetime,
) -> None:
    """Record how attempt ``attempt`` of the message went (or a decision about it)."""
    conn.execute(
        insert(DELIVERY_ATTEMPT).values(
            message_id=message_id,
            attempt=attempt,
            outcome=outcome,
            error=error,
            provider_message_id=provider_message_id,
            claimed_at=claimed_at,
            at=at,
        )
    )


def record_attempts(
    conn: Connection, *, rows: Sequence[Any], outcome: str, error: str, now: datetime
) -> None:
    """Attempts that ended without an answer from the channel (rows: id, attempts, claimed_at)."""
    if rows:
        conn.execute(
            insert(DELIVERY_ATTEMPT),
            [
                {
                    "message_id": r.id,
                    "attempt": r.attempts,
                    "outcome": outcome,
                    "error": error[:500],
                    "provider_message_id": None,
                    "claimed_at": r.claimed_at,
                    "at": now,
                }
                for r in rows
            ],
        )


# -- providers' reports ----------------------------------------------------------------------------


def outbound_by_provider_id(conn: Connection, *, channel: str, provider_id: str) -> int | None:
    """The id of our outbound message the provider took on ``channel`` as ``provider_id``."""
    query = select(MESSAGE.c.id).where(
        MESSAGE.c.channel == channel,
        MESSAGE.c.direction == Direction.OUT,
        MESSAGE.c.provider_message_id == provider_id,
    )
    found: int | None = conn.execute(query).scalar()
    return found


def set_error(conn: Connection, *, message_id: int, error: str) -> None:
    """Keep the provider's explanation on the message."""
    conn.execute(update(MESSAGE).where(MESSAGE.c.id == message_id).values(error=error))


def set_final_status(
    conn: Connection,
    *,
    message_id: int,
    status: DeliveryStatus,
    before: Collection[DeliveryStatus],
    now: datetime,
) -> None:
    """The message reached final ``status`` (delivered: at ``now``) if it is still in one of
    ``before``; sent_at is ``now`` unless it is known."""
    values: dict[str, Any] = {"status": status, "sent_at": func.coalesce(MESSAGE.c.sent_at, now)}
    if status == DeliveryStatus.DELIVERED:
        values["delivered_at"] = now
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id == message_id, MESSAGE.c.status.in_(tuple(before)))
        .values(**values)
    )


def mark_opted_out(conn: Connection, *, message_id: int, now: datetime) -> None:
    """The recipient of ``message_id`` unsubscribed: record it on the customer (an earlier
    opt-out time is kept)."""
    customer = select(MESSAGE.c.customer_id).where(MESSAGE.c.id == message_id).scalar_subquery()
    conn.execute(
        update(CUSTOMER)
        .where(CUSTOMER.c.id == customer, CUSTOMER.c.opted_out_at.is_(None))
        .values(opted_out_at=now)
    )


# -- the opt-out guard -----------------------------------------------------------------------------


def opted_out_among(
    conn: Connection, *, customer_ids: Collection[int], addresses: Collection[str]
) -> list[tuple[int, str | None]]:
    """(id, phone) of the opted-out customers among ``customer_ids``, with one of ``addresses``
    as their phone, or owning one of them on a channel."""
    owners = select(IDENTITY.c.customer_id).where(IDENTITY.c.address.in_(list(addresses)))
    query = select(CUSTOMER.c.id, CUSTOMER.c.phone).where(
        CUSTOMER.c.opted_out_at.is_not(None),
        or_(
            CUSTOMER.c.id.in_(list(customer_ids)),
            CUSTOMER.c.phone.in_(list(addresses)),
            CUSTOMER.c.id.in_(owners),
        ),
    )
    return [(cid, phone) for cid, phone in conn.execute(query)]


def owned_addresses(
    conn: Connection, *, customer_ids: Collection[int], addresses: Collection[str]
) -> set[tuple[str, str]]:
    """(channel, address) of those of ``addresses`` the customers ``customer_ids`` own on a channel."""
    query = select(IDENTITY.c.channel, IDENTITY.c.address).where(
        IDENTITY.c.customer_id.in_(list(customer_ids)), IDENTITY.c.address.in_(list(addresses))
    )
    return {(channel, address) for channel, address in conn.execute(query)}


def queue_outbound(
    conn: Connection,
    *,
    customer_id: int,
    channel: str,
    address: str,
    text: str,
    intent: str,
    now: datetime,
    marketing: bool = False,
    question_key: str | None = None,
    next_attempt_at: datetime | None = None,
) -> int:
    """Put one message to a customer in the outbox (to go at ``next_attempt_at``, None: now); its id.
    The one place a single outbound row is queued (broadcasts insert theirs in batches)."""
    return int(
        conn.execute(
            insert(MESSAGE)
            .values(
                customer_id=customer_id,
                channel=channel,
                direction=Direction.OUT,
                address=address,
                text=text,
                intent=intent,
                question_key=question_key,
                needs_review=False,
                status=DeliveryStatus.QUEUED,
                attempts=0,
                marketing=marketing,
                next_attempt_at=next_attempt_at,
                created_at=now,
            )
            .returning(MESSAGE.c.id)
        ).scalar_one()
    )
