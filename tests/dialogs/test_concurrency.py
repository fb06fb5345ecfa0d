"""Messages of one customer that arrive at once are processed one after another, on both databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine, func, text
from sqlmodel import col, select

from dialogs.engine import DialogEngine, Inbound, TurnResult
from storage import handoff as conversations
from storage import turns as store
from storage.db import is_postgres, transaction
from storage.handoff_models import ConversationState
from storage.models import Customer, Message, Source
from storage.turns import Fact, TurnState

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


def test_a_turn_that_waited_for_the_lock_sees_what_the_turn_before_it_stored(
    db: Engine, dialog: DialogEngine
) -> None:
    # Turn A holds the customer's lock and stores a preference and a conversation move; turn B,
    # waiting for the lock meanwhile, must then see both (on PostgreSQL a locking read would see
    # the other tables as they were when it started waiting).
    dialog.handle(_inbound("hi", "first"))
    address = "+14155550150"
    seen: list[TurnState] = []

    def turn_b() -> None:
        with db.begin() as conn:
            state = store.lock_turn(conn, channel="sms", address=address)
            assert state is not None
            seen.append(state)

    with db.connect() as a:
        a.begin()
        state = store.lock_turn(a, channel="sms", address=address)
        assert state is not None and "contact_channel" not in state.facts
        conv = conversations.current(a, turn=state, now=NOW, idle=timedelta(hours=24))
        fact = Fact("contact_channel", "sms", Source.ASKED, NOW, NOW)
        store.save_facts(a, customer_id=state.customer_id, facts=[fact], existing=set())
        conversations.move(a, conversation_id=conv.id, to=ConversationState.WAITING, now=NOW)
        b = threading.Thread(target=turn_b)
        b.start()
        if is_postgres(db):  # wait until B is blocked on A's lock
            with db.connect() as watch:
                for _ in range(600):
                    waiting = watch.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        )
                    ).scalar_one()
                    watch.rollback()  # the activity view is a snapshot per transaction
                    if waiting:
                        break
                    time.sleep(0.05)
                assert waiting, "turn B never waited for the lock"
        else:
            time.sleep(0.2)  # SQLite: B waits in BEGIN IMMEDIATE whether or not it got there yet
        a.commit()
    b.join(timeout=60)
    assert len(seen) == 1
    assert seen[0].facts["contact_channel"].value == "sms"
    assert seen[0].conversation is not None
    assert seen[0].conversation[2] == ConversationState.WAITING
