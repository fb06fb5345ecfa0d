"""The measurement holdout: a stable bucket per customer, the same in Python and SQL, and the
scan never offers a plan to a customer in it (the reason recorded is ``holdout``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import Engine, literal, select

from dialogs.engine import DialogEngine
from schedulers.policy import Contact, PolicyConfig, Skip, decide
from schedulers.proactive import scan
from storage.holdout import bucket, bucket_sql, in_holdout
from tests.schedulers.test_proactive import MORNING_NY, customer, events, suggestions


def test_buckets_are_stable_spread_and_the_same_in_sql(db: Engine) -> None:
    ids = [*range(1, 2001), 2_147_483_647]
    counts = [0] * 100
    for cid in ids[:-1]:
        counts[bucket(cid)] += 1
    assert min(counts) >= 10 and max(counts) <= 30  # about 20 each: no bucket left empty or crowded
    with db.connect() as conn:
        for cid in (1, 2, 77, 65537, 123_456, 2_147_483_647):
            assert conn.execute(select(bucket_sql(literal(cid)))).scalar_one() == bucket(cid)
    assert sum(in_holdout(cid, 10) for cid in ids[:-1]) in range(150, 251)
    assert not any(in_holdout(cid, 0) for cid in ids) and all(in_holdout(cid, 100) for cid in ids)


def test_the_holdout_rule_excludes_offers_only_when_set() -> None:
    noon = datetime(2026, 3, 2, 15, tzinfo=UTC)
    config = PolicyConfig(holdout_percent=10)
    base = Contact(marketing_consent=True, channel="sms", address="+15550001", timezone="UTC")
    assert decide(base, noon, config).allowed
    held = decide(replace(base, holdout=True), noon, config)
    assert held.excluded and held.reason == Skip.HOLDOUT


def test_scan_skips_a_holdout_customer_and_offers_the_rest(db: Engine, dialog: DialogEngine) -> None:
    cid = customer(db)
    assert bucket(cid) < 10  # customer 1 is in a 10 % holdout
    held = PolicyConfig(default_timezone="UTC", holdout_percent=bucket(cid) + 1)
    report = scan(db, dialog.advisor, held, MORNING_NY)
    assert report.queued == 0 and dict(report.skipped_by_reason) == {Skip.HOLDOUT: 1}
    assert suggestions(db) == [] and events(db) == [("skipped", Skip.HOLDOUT)]
    offered = PolicyConfig(default_timezone="UTC", holdout_percent=bucket(cid))
    assert scan(db, dialog.advisor, offered, MORNING_NY).queued == 1
