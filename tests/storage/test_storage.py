"""Storage on both backends: migrations, SQLite pragmas, UTC timestamps, constraints."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session, select

from storage.db import current_revision, ensure_schema, head_revision, make_engine, normalize_url, transaction
from storage.models import ChannelIdentity, Customer, Preference
from storage.queries import save_customer, set_preference, upsert_customer


def create_customer(s: Session, *, channel: str, address: str, name: str | None = None) -> Customer:
    customer = Customer(name=name)
    s.add(customer)
    s.flush()
    assert customer.id is not None
    s.add(ChannelIdentity(channel=channel, address=address, customer_id=customer.id))
    s.flush()
    return customer


def test_schema_is_at_head_with_every_table(db: Engine) -> None:
    assert current_revision(db) == head_revision()
    tables = set(inspect(db).get_table_names())
    assert {"customer", "channel_identity", "message", "preference", "dialog_state", "suppression"} <= tables
    assert ensure_schema(db) is False  # nothing left to do


def test_timestamps_come_back_as_aware_utc(db: Engine) -> None:
    at = datetime(2026, 7, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    with transaction(db) as s:
        c = create_customer(s, channel="sms", address="+14155550160")
        assert c.id is not None
        set_preference(s, customer_id=c.id, key="k", value={"a": [1, 2]}, source="asked", at=at)
    with transaction(db) as s:
        pref = s.exec(select(Preference)).one()
    assert pref.stated_at == at and pref.stated_at.tzinfo == UTC
    assert pref.value == {"a": [1, 2]}


def test_naive_datetimes_are_refused(db: Engine) -> None:
    with transaction(db) as s:
        s.add(Customer(created_at=datetime(2026, 1, 1)))
        with pytest.raises(StatementError, match="naive datetime"):
            s.flush()
        s.rollback()


def test_one_address_belongs_to_one_customer(db: Engine) -> None:
    with transaction(db) as s:
        create_customer(s, channel="sms", address="+14155550161")
    with pytest.raises(IntegrityError), transaction(db) as s:
        create_customer(s, channel="sms", address="+14155550161")
    with transaction(db) as s:
        assert len(s.exec(select(ChannelIdentity)).all()) == 1


def test_deleting_a_customer_cascades(db: Engine) -> None:
    with transaction(db) as s:
        c = create_customer(s, channel="sms", address="+14155550162")
        assert c.id is not None
        set_preference(s, customer_id=c.id, key="k", value=1, source="asked", at=datetime.now(UTC))
    with transaction(db) as s:
        s.delete(s.exec(select(Customer)).one())
    with transaction(db) as s:
        assert s.exec(select(Preference)).all() == []
        assert s.exec(select(ChannelIdentity)).all() == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/sub/dir/r.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    assert (tmp_path / "sub" / "dir" / "r.db").exists()


def test_first_use_migrates_once_even_when_processes_race(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    errors: list[BaseException] = []

    def start() -> None:
        try:
            ensure_schema(make_engine(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert current_revision(make_engine(url)) == head_revision()


def test_postgres_urls_use_psycopg() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_sql_looking_values_are_data(db: Engine) -> None:
    evil = "x'); DROP TABLE customer; --"
    with transaction(db) as s:
        create_customer(s, channel="sms", address=evil[:64], name=evil)
    with transaction(db) as s:
        assert s.exec(select(Customer.name)).one() == evil
        assert s.execute(text("SELECT count(*) FROM customer")).scalar() == 1


def test_migrations_match_the_models(db: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    from storage.console_models import include_in_autogenerate

    with db.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_in_autogenerate}
        )
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_one_customer_upsert_creates_updates_adopts_and_refuses_a_taken_phone(db: Engine) -> None:
    with transaction(db) as s:
        texted_first = create_customer(s, channel="sms", address="+14155550170")
        texted_first.phone = "+14155550170"
        s.add(texted_first)
        s.flush()
        conn = s.connection()
        made = save_customer(conn, values={"external_id": "C-1", "phone": "+14155550171", "name": "Ana"})
        again = save_customer(conn, values={"external_id": "C-1", "name": "Ana B"})
        adopted = save_customer(conn, values={"external_id": "C-2", "phone": "+14155550170"})
        taken = save_customer(conn, values={"external_id": "C-3", "phone": "+14155550171"})
    assert made.created and made.id is not None
    assert (again.id, again.created) == (made.id, False)
    assert (adopted.id, adopted.created) == (texted_first.id, False)
    assert taken.id is None and taken.conflict is not None and "C-1" in taken.conflict
    with transaction(db) as s:
        ana, created = upsert_customer(s, external_id="C-1", timezone="Europe/Lisbon")
        assert not created and (ana.id, ana.name, ana.phone) == (made.id, "Ana B", "+14155550171")
        with pytest.raises(ValueError, match="already belongs"):
            upsert_customer(s, external_id="C-4", phone="+14155550171")
