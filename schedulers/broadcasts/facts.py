"""Per-customer facts of a broadcast: the plan facts the segment and template read (fit, months
over the allowance, preferences, a recent decline of the offer) and the contact facts of the
audience service (:mod:`schedulers.audience`), read a batch of customer ids at a time; and
:func:`judge`, the one question preview, dry run and send ask of each customer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
from sqlalchemy import Connection

from dialogs.advisor import Advisor, decline_holds
from plans.fit import Catalog, Fit, fit_batch, needs_from, read_usage, usage_batch, usage_query
from schedulers.audience import contacts as audience_contacts
from schedulers.policy import Contact, Decision, PolicyConfig, decide
from schedulers.segment_filter import Node, Term, evaluate
from storage import broadcast_queries

SEGMENT = "segment"  # the exclusion reason of customers outside the segment


@dataclass(frozen=True, slots=True)
class Facts:
    """What the segment, the policy and the template know of one customer: the plan facts here,
    the contact facts from the audience service (:func:`schedulers.audience.contacts`)."""

    customer_id: int
    name: str | None
    prefs: Mapping[str, Any]
    fit: Fit
    over: Mapping[str, int]  # metric -> months over the current plan's allowance
    contact: Contact

    @property
    def channel(self) -> str | None:
        return self.contact.channel

    @property
    def address(self) -> str | None:
        return self.contact.address

    def value(self, term: Term) -> Any:
        """The customer's value of a segment term."""
        fit, saving = self.fit, self.fit.saving if self.fit.suggest else None
        match term.name:
            case "plan":
                return fit.current_plan
            case "suggested":
                return fit.best_plan if fit.suggest else None
            case "suggest":
                return fit.suggest
            case "saving":
                return saving if saving is not None else Decimal(0)
            case "yearly_saving":
                return saving * 12 if saving is not None else Decimal(0)
            case "current_cost":
                return fit.current_cost
            case "months":
                return Decimal(fit.months)
            case "consent":
                return self.contact.marketing_consent
            case "channel":
                return self.contact.channel
            case "avg":
                return fit.usage.get(str(term.arg))
            case "over":
                return Decimal(self.over.get(str(term.arg), 0))
            case "pref":
                return self.prefs.get(str(term.arg))
        raise AssertionError(term)


def iter_facts(
    conn: Connection, advisor: Advisor, now: datetime, config: PolicyConfig, *, batch_size: int = 5_000
) -> Iterator[list[Facts]]:
    """The facts of every customer not erased, a batch of ids at a time, in id order."""
    last = 0
    while batch := facts_batch(conn, advisor, now, config, after=last, batch_size=batch_size):
        yield batch
        last = batch[-1].customer_id


def facts_batch(
    conn: Connection, advisor: Advisor, now: datetime, config: PolicyConfig, *, after: int, batch_size: int
) -> list[Facts]:
    """The facts of the next ``batch_size`` customers (not erased) with ids above ``after``."""
    catalog = advisor.catalog(conn)
    usage_of = usage_query(catalog.metrics)
    lookback = advisor.config.fit.lookback
    customers = broadcast_queries.customers_after(conn, after=after, limit=batch_size)
    if not customers:
        return []
    lo, hi = customers[0].id, customers[-1].id
    ids = [c.id for c in customers]
    prefs: dict[int, dict[str, Any]] = defaultdict(dict)
    for cid, key, value in broadcast_queries.preferences_between(conn, lo=lo, hi=hi):
        prefs[cid][key] = value
    batch = usage_batch(ids, read_usage(conn, usage_of, lo, hi), catalog.metrics, lookback)
    current = [c.current_plan_id for c in customers]
    needs = [needs_from(prefs.get(cid, {}), advisor.roles) for cid in ids]
    fits = fit_batch(catalog, batch, current, needs, advisor.config.fit, with_usage=True)
    over = _months_over(catalog, batch.quantity, batch.months, current)
    declines = _declines(conn, lo, hi, now - advisor.config.decline_for)
    limit = advisor.config.decline_usage_change
    declined = {
        c.id: bool(
            fit.suggest
            and fit.best_plan
            and _declined(declines.get(c.id, ()), fit.best_plan, fit.usage, limit)
        )
        for c, fit in zip(customers, fits, strict=True)
    }
    contacts = audience_contacts(
        conn, customers, prefs, config, declined=declined, intent="broadcast", now=now
    )
    return [
        Facts(
            customer_id=c.id,
            name=c.name,
            prefs=prefs.get(c.id, {}),
            fit=fits[b],
            over=dict(zip(catalog.metrics, (int(x) for x in over[b]), strict=True)),
            contact=contacts[c.id],
        )
        for b, c in enumerate(customers)
    ]


def _months_over(catalog: Catalog, quantity: Any, months: Any, current: Sequence[str | None]) -> Any:
    """(B, K): months each customer went over their current plan's allowance, per metric."""
    size, k = len(current), len(catalog.metrics)
    if not catalog.plans or not size:
        return np.zeros((size, k), dtype=np.int64)
    cur = np.array([catalog.index.get(c, -1) if c else -1 for c in current], dtype=np.int64)
    allowance = catalog.allowance[np.maximum(cur, 0)]  # (B, K)
    lookback = quantity.shape[1]
    counted = np.arange(lookback)[None, :] < months[:, None]  # (B, L)
    over = (quantity > allowance[:, None, :]) & counted[:, :, None]
    return np.where((cur >= 0)[:, None], over.sum(axis=1), 0)


def _declines(conn: Connection, lo: int, hi: int, since: datetime) -> dict[int, list[tuple[str, Any]]]:
    rows = broadcast_queries.declines_between(conn, lo=lo, hi=hi, since=since)
    found: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    for cid, plan_id, usage in rows:
        found[cid].append((plan_id, usage))
    return found


def _declined(
    declines: Sequence[tuple[str, Any]], plan_id: str, usage: Mapping[str, Decimal], limit: Decimal
) -> bool:
    """The advisor's rule: the latest recent decline of ``plan_id`` holds unless usage moved."""
    latest = next((then for declined_plan, then in declines if declined_plan == plan_id), None)
    return latest is not None and decline_holds(latest, usage, limit)


def judge(node: Node, facts: Facts, moment: datetime, config: PolicyConfig) -> Decision | None:
    """Whether the broadcast goes to this customer at ``moment``: None when they are outside the
    segment, else the audience's decision (now, deferred, or excluded by a named rule). Preview,
    dry run and send all ask this, so they cannot disagree."""
    if not evaluate(node, facts.value):
        return None
    return decide(facts.contact, moment, config)
