"""The audience service: who may get a proactive (marketing) message, on which channel, and when.

The daily scan (:mod:`schedulers.proactive`), nudges (:mod:`schedulers.nudges`), broadcasts
(preview, dry run, send: :mod:`schedulers.broadcasts`), the console and the CLI all ask it, with
the one :class:`~schedulers.policy.PolicyConfig` built from the settings (the channels actually
configured), so what a preview or a dry run promises is what sending does:

- :func:`contacts` / :func:`contact_of`: the contact facts of customers (channel and address,
  consent, opt-out, erasure, suppression, recent marketing), read a batch at a time;
- :func:`schedulers.policy.decide` then says now, later (deferred) or never (excluded, by the
  name of a rule);
- :func:`last_moment_refusals`: the delivery's guard, the same standing rules asked again when a
  waiting message is about to go.

Adding an exclusion (say, customers whose conversation is with a person): a fact on
:class:`~schedulers.policy.Contact`, filled in by :func:`contacts` here, and a named
:class:`~schedulers.policy.Rule` in :data:`schedulers.policy.EXCLUSION_RULES` (also in
:data:`~schedulers.policy.STANDING_RULES` when it can change while a message waits). Every user
of the audience, the dry run's "excluded by rule" included, then honours it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from schedulers.policy import STANDING_RULES, WHATSAPP, Contact, PolicyConfig, refusal, whatsapp_refusal
from storage import audience_queries, outreach_queries
from storage.handoff import with_person
from storage.holdout import in_holdout
from storage.models import DeliveryStatus, utcnow
from storage.queries import address_hash

NO_CHANNEL_CONFIGURED = (
    "no channel is configured (Telegram: TELEGRAM_BOT_TOKEN; SMS: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN "
    "and TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID; WhatsApp: the same with TWILIO_WHATSAPP_FROM): "
    "nobody can be contacted"
)

# Proactive messages that count against the frequency cap: all but those that never left.
CAPPED_STATUSES = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.SENDING,
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.UNKNOWN,
)


class NoChannelError(ValueError):
    """Nothing proactive can be sent: no channel is configured."""


def require_channel(config: PolicyConfig) -> None:
    """NoChannelError when ``config`` has no channel to send on."""
    if not config.channels:
        raise NoChannelError(NO_CHANNEL_CONFIGURED)


def contacts(
    conn: Connection,
    customers: Sequence[Any],
    prefs: Mapping[int, Mapping[str, Any]],
    config: PolicyConfig,
    *,
    declined: Mapping[int, bool] | None = None,
    intent: str | None = None,
    now: datetime | None = None,
    offer: bool = False,
) -> dict[int, Contact]:
    """The policy's view of each customer (rows with the columns of
    :data:`storage.audience_queries.CUSTOMER_COLUMNS`, in id order), read for the whole batch at
    once; ``prefs`` their stored preferences, ``declined`` whether the plan they would be offered
    was declined lately (the advisor's rule, decided by the caller, which knows the offer);
    ``offer``: the message is a proactive offer (the scan, nudges), which the measurement holdout
    never gets (broadcasts are staff announcements).

    A customer reached on WhatsApp whom the message (``intent``, at ``now``) may not go to there
    (:func:`~schedulers.policy.whatsapp_refusal`: no opt-in; the window closed and no template)
    gets it by SMS at their phone when SMS is configured (``rerouted`` says why), else the
    refusal excludes them."""
    if not customers:
        return {}
    lo, hi = customers[0].id, customers[-1].id
    channels = _channels(conn, customers, prefs, config, lo, hi)
    recent = _recent(conn, lo, hi)
    suppressed = _suppressed(conn, channels.values())
    handed = with_person(conn, customer_ids=[c.id for c in customers])
    declined = declined or {}
    result = {}
    moment = now or utcnow()
    for c in customers:
        channel, address = channels[c.id]
        refused = rerouted = None
        if channel == WHATSAPP:
            refused = whatsapp_refusal(
                opted_in=c.whatsapp_opt_in_at is not None,
                session_at=c.whatsapp_session_at,
                intent=intent,
                now=moment,
                config=config,
            )
            if refused is not None and "sms" in config.channels and c.phone:
                channel, address, rerouted, refused = "sms", c.phone, refused, None
        result[c.id] = Contact(
            marketing_consent=bool(c.marketing_consent),
            opted_out=c.opted_out_at is not None,
            erased=c.erased_at is not None,
            suppressed=(channel, address) in suppressed,
            declined=declined.get(c.id, False),
            timezone=c.timezone,
            phone=c.phone,
            channel=channel,
            address=address,
            contact_time=prefs.get(c.id, {}).get("contact_time"),
            recent=recent.get(c.id, ()),
            with_person=c.id in handed,
            whatsapp_refusal=refused,
            rerouted=rerouted,
            holdout=offer and in_holdout(c.id, config.holdout_percent),
        )
    return result


def contact_of(
    conn: Connection,
    customer_id: int,
    config: PolicyConfig,
    *,
    prefs: Mapping[str, Any] | None = None,
    declined: bool = False,
    intent: str | None = None,
    now: datetime | None = None,
    offer: bool = False,
) -> Contact:
    """One customer's contact facts (the scan and nudges, under the customer's lock);
    ``prefs``: their preferences when the caller has them already; ``intent`` and ``now``: the
    message and when it would go (WhatsApp's rules depend on them)."""
    row = audience_queries.contact_customer(conn, customer_id=customer_id)
    if prefs is None:
        prefs = outreach_queries.preference_values(conn, customer_id=customer_id)
    return contacts(
        conn,
        [row],
        {customer_id: prefs},
        config,
        declined={customer_id: declined},
        intent=intent,
        now=now,
        offer=offer,
    )[customer_id]


def last_moment_refusals(conn: Connection, customer_ids: Iterable[int | None]) -> dict[int | None, str]:
    """Why queued marketing may no longer go to these customers (absent: it may go): the
    policy's standing rules (:data:`~schedulers.policy.STANDING_RULES`) asked again as the
    message is about to leave, in words ("opted out", "no consent", "erased", "with person",
    "no customer")."""
    wanted = set(customer_ids)
    found = audience_queries.standing_facts(conn, customer_ids=[c for c in wanted if c is not None])
    handed = with_person(conn, customer_ids=list(found))
    refusals: dict[int | None, str] = {}
    for customer_id in wanted:
        if customer_id is None:
            refusals[customer_id] = "no customer"
            continue
        row = found.get(customer_id)
        contact = Contact(
            marketing_consent=bool(row.marketing_consent) if row is not None else False,
            opted_out=row is not None and row.opted_out_at is not None,
            erased=row is None or row.erased_at is not None,  # a deleted customer counts as erased
            with_person=customer_id in handed,
        )
        reason = refusal(contact, _STANDING_ONLY, STANDING_RULES)
        if reason is not None:
            refusals[customer_id] = reason.replace("_", " ")
    return refusals


_STANDING_ONLY = PolicyConfig()  # the standing rules never read the config


def pick_channel(
    preferred: Any,
    on_preferred: str | None,
    last_in: tuple[str, str] | None,
    *,
    email: str | None,
    phone: str | None,
) -> tuple[str | None, str | None]:
    """Where proactive messages go: the preferred channel (at the customer's latest address on
    it, ``on_preferred``; email at their email; SMS and WhatsApp fall back to their phone), else
    the channel they last wrote on (of those proactive messages use), else SMS to their phone."""
    if isinstance(preferred, str):
        if preferred == "email":
            return preferred, email
        by_phone = preferred in ("sms", WHATSAPP)
        return preferred, on_preferred if on_preferred or not by_phone else phone
    if last_in is not None:
        return last_in
    return ("sms", phone) if phone else (None, None)


def _channels(
    conn: Connection,
    customers: Sequence[Any],
    prefs: Mapping[int, Mapping[str, Any]],
    config: PolicyConfig,
    lo: int,
    hi: int,
) -> dict[int, tuple[str | None, str | None]]:
    """Each customer's channel and address (:func:`pick_channel`), read for the batch at once."""
    identities: dict[tuple[int, str], str] = {}
    if any(isinstance(p.get("contact_channel"), str) for p in prefs.values()):
        for cid, channel, address in audience_queries.identities_between(conn, lo=lo, hi=hi):
            identities[(cid, channel)] = address  # oldest first: the latest address on a channel wins
    last_in = audience_queries.last_inbound_between(conn, lo=lo, hi=hi, channels=config.channels)
    result: dict[int, tuple[str | None, str | None]] = {}
    for c in customers:
        preferred = prefs.get(c.id, {}).get("contact_channel")
        on_preferred = identities.get((c.id, preferred)) if isinstance(preferred, str) else None
        result[c.id] = pick_channel(preferred, on_preferred, last_in.get(c.id), email=c.email, phone=c.phone)
    return result


def _recent(conn: Connection, lo: int, hi: int) -> dict[int, list[datetime]]:
    """When each proactive message of the customers went (or is due to go)."""
    rows = audience_queries.marketing_times_between(conn, lo=lo, hi=hi, statuses=CAPPED_STATUSES)
    recent: dict[int, list[datetime]] = defaultdict(list)
    for cid, sent, due, created in rows:
        recent[cid].append(sent or due or created)
    return recent


def _suppressed(conn: Connection, pairs: Iterable[tuple[str | None, str | None]]) -> set[tuple[str, str]]:
    """The (channel, address) pairs that belong to erased customers (never messaged unprompted)."""
    if not audience_queries.any_suppression(conn):
        return set()  # nobody erased yet: no addresses to hash
    by_hash = {address_hash(ch, ad): (ch, ad) for ch, ad in pairs if ch and ad}
    if not by_hash:
        return set()
    rows = audience_queries.suppressed_hashes(conn, hashes=by_hash)
    return {by_hash[h] for ch, h in rows if by_hash[h][0] == ch}
