"""Messages of one customer that arrive at once are processed one after another, on both databases."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine, func
from sqlmodel import col, select

from dialogs.engine import DialogEngine, Inbound, TurnResult
from storage.db import transaction
from storage.models import Customer, Message

T = TypeVar("T")
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _all_at_once(workers: int, job: Callable[[int], T]) -> list[T]:
    barrier = threading.Barrier(workers)
    results: list[T | None] = [None] * workers
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = job(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return [r for r in results if r is not None]


def _inbound(text: str, provider_id: str, address: str = "+14155550150", minute: int = 0) -> Inbound:
    return Inbound(
        channel="sms",
        address=address,
        text=text,
        provider_id=provider_id,
        received_at=NOW + timedelta(minutes=minute),
    )


def test_concurrent_messages_of_one_customer_never_interleave(db: Engine, dialog: DialogEngine) -> None:
    dialog.handle(_inbound("hi", "first"))
    workers, per_worker = 6, 4

    def job(i: int) -> list[TurnResult]:
        return [dialog.handle(_inbound(f"msg {i}-{k}", f"w{i}-{k}", minute=1 + k)) for k in range(per_worker)]

    results = [r for batch in _all_at_once(workers, job) for r in batch]
    assert len(results) == workers * per_worker
    with transaction(db) as s:
        versions = s.exec(
            select(Message.state_version)
            .where(Message.direction == "in")
            .order_by(col(Message.state_version))
        ).all()
    # Each turn saw the state the previous one left: versions 0..N with no repeats.
    assert versions == list(range(workers * per_worker + 1))
    assert all(r.replies for r in results)


def test_first_messages_from_a_new_number_at_once_make_one_customer(db: Engine, dialog: DialogEngine) -> None:
    results = _all_at_once(
        6, lambda i: dialog.handle(_inbound(f"hello {i}", f"new-{i}", address="+14155550151"))
    )
    assert len({r.customer_id for r in results}) == 1
    with transaction(db) as s:
        assert s.exec(select(func.count()).select_from(Customer)).one() == 1
        greetings = s.exec(
            select(func.count()).select_from(Message).where(Message.intent == "greeting")
        ).one()
    assert greetings == 1  # only the turn that came first greets


def test_the_same_message_delivered_at_once_is_processed_once(db: Engine, dialog: DialogEngine) -> None:
    dialog.handle(_inbound("hi", "a"))
    results = _all_at_once(6, lambda i: dialog.handle(_inbound("sms", "dup", minute=1)))
    assert len({r.inbound_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.replies for r in results}) == 1
    with transaction(db) as s:
        count = s.exec(
            select(func.count()).select_from(Message).where(Message.provider_message_id == "dup")
        ).one()
    assert count == 1
