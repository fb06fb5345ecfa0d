"""Demo data: a small book of customers, some of whom already told us a thing or two."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from storage.db import transaction
from storage.models import Source, utcnow
from storage.queries import set_preference, upsert_customer

DEMO_PHONE = "+14155550100"
_FIRST = [
    "Alex",
    "Sam",
    "Jordan",
    "Taylor",
    "Morgan",
    "Casey",
    "Riley",
    "Jamie",
    "Avery",
    "Quinn",
    "Maria",
    "Wei",
    "Aisha",
    "Luca",
    "Noor",
    "Kenji",
    "Sofia",
    "Omar",
    "Ines",
    "Tomasz",
]
_LAST = ["Lee", "Garcia", "Okafor", "Novak", "Silva", "Chen", "Haddad", "Rossi", "Kim", "Patel"]
_ZONES = ["America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York"]


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What ``load_demo`` did."""

    customers_created: int
    customers_updated: int
    preferences: int


def load_demo(db: Engine, *, customers: int = 40, seed: int = 7) -> DemoSummary:
    """Load demo customers (idempotent: a second run updates the same rows).

    Customer 1 (+14155550100) starts with a blank profile, to try the whole dialogue; a few
    others have answers on file, one of them old enough to be re-confirmed.
    """
    rng = random.Random(seed)
    now = utcnow()
    created = updated = prefs = 0
    with transaction(db) as session:
        for i in range(customers):
            name = "Alex" if i == 0 else f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
            customer, new = upsert_customer(
                session,
                external_id=f"DEMO-{i + 1:04d}",
                name=name.split()[0] if i == 0 else name,
                phone=f"+1415555{100 + i:04d}",
                timezone=rng.choice(_ZONES),
                marketing_consent=rng.random() < 0.8,
            )
            created += new
            updated += not new
            assert customer.id is not None
            if i == 0:
                continue
            if i % 3 == 0:
                set_preference(
                    session,
                    customer_id=customer.id,
                    key="contact_channel",
                    value="sms",
                    source=Source.IMPORT,
                    at=now - timedelta(days=30),
                )
                prefs += 1
            if i % 5 == 0:
                set_preference(
                    session,
                    customer_id=customer.id,
                    key="monthly_budget",
                    value=f"{rng.choice([25, 30, 40, 60])}.00",
                    source=Source.IMPORT,
                    at=now - timedelta(days=400),
                )
                prefs += 1
    return DemoSummary(created, updated, prefs)
