"""The dashboard's roll-up: a day's figures from the raw tables into ``dashboard_day``
(:mod:`storage.dashboard`), run hourly by the scheduler for the last days (delivery receipts and
replies still change them) and by ``rapport dashboard rollup`` to backfill any range."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine

from dialogs.bank import QuestionBank
from dialogs.sms_segments import count as sms_segments
from dialogs.sms_segments import to_gsm
from storage import dashboard as store

RECENT_DAYS = 8  # re-rolled at every run: a week of broadcast reactions, and today


@dataclass(frozen=True, slots=True)
class RollupReport:
    """What a roll-up wrote."""

    days: int
    rows: int
    cohort_rows: int


def stale_after(bank: QuestionBank) -> dict[str, int]:
    """Question key -> days after which its answer is stale (questions that go stale)."""
    return {q.key: q.stale_after_days for q in bank if q.stale_after_days}


def _cost_rows(texts: list[tuple[int, str, int]]) -> list[store.Row]:
    segments: dict[int, int] = {}
    for broadcast_id, text, n in texts:
        segments[broadcast_id] = segments.get(broadcast_id, 0) + sms_segments(to_gsm(text)).segments * n
    return [("bc.segments", str(b), "", n, Decimal(0)) for b, n in sorted(segments.items())]


def rollup(
    db: Engine, bank: QuestionBank, now: datetime, *, start: date | None = None, end: date | None = None
) -> RollupReport:
    """Roll up ``start``..``end`` (both included; default: the last :data:`RECENT_DAYS` days up
    to today), one transaction per day; the snapshot of the book is taken on ``end`` (the last
    day) only, as of ``now``; then the holdout cohorts are recomputed."""
    end = end or now.date()
    start = start or end - timedelta(days=RECENT_DAYS - 1)
    if start > end:
        raise ValueError(f"the roll-up starts ({start}) after it ends ({end})")
    stale = stale_after(bank)
    rows = 0
    day = start
    while day <= end:
        with db.begin() as conn:
            extra = _cost_rows(store.broadcast_sms_texts(conn, day))
            rows += store.rollup_day(conn, day, now=now, stale_after=stale, extra=extra, snapshot=day == end)
        day += timedelta(days=1)
    with db.begin() as conn:
        cohort_rows = store.rollup_cohorts(conn)
    return RollupReport((end - start).days + 1, rows, cohort_rows)
