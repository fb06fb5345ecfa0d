"""The console's full-text index holds conversations, not outbound marketing, on SQLite and
PostgreSQL: what text search finds, how the index follows inserts, updates and deletes, and
migration 0009 re-indexing an existing database (and its downgrade putting 0005's index back)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, text, update
from sqlalchemy.engine import make_url

from storage.console_queries import SearchFilter, search_messages
from storage.db import MIGRATIONS, make_engine, normalize_url, upgrade
from storage.tables import CUSTOMER, MESSAGE
from tests.conftest import BACKENDS, PG_DEFAULT

AT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def add_message(conn: Connection, customer_id: int, text_: str, *, direction: str, marketing: bool) -> int:
    values = {
        "customer_id": customer_id,
        "channel": "sms",
        "direction": direction,
        "address": "+14155550100",
        "text": text_,
        "intent": "broadcast" if marketing else None,
        "status": "queued" if direction == "out" else None,
        "marketing": marketing,
        "created_at": AT,
    }
    return int(conn.execute(insert(MESSAGE).values(**values).returning(MESSAGE.c.id)).scalar_one())


def seed(db: Engine) -> dict[str, int]:
    """Dana wrote, the bot replied, and she got a broadcast: all three say "kumquat"."""
    with db.begin() as conn:
        dana = int(
            conn.execute(
                insert(CUSTOMER)
                .values(name="Dana Smith", phone="+14155550100", marketing_consent=True, created_at=AT)
                .returning(CUSTOMER.c.id)
            ).scalar_one()
        )
        return {
            "dana": dana,
            "typed": add_message(conn, dana, "kumquat please", direction="in", marketing=False),
            "reply": add_message(conn, dana, "Got it: kumquat.", direction="out", marketing=False),
            "offer": add_message(conn, dana, "Hi Dana, kumquat sale today!", direction="out", marketing=True),
        }


def found(db: Engine, f: SearchFilter) -> set[int]:
    with db.connect() as conn:
        return {row["id"] for row in search_messages(conn, f)}


def fts_rowids(db: Engine, word: str) -> set[int]:
    """What the SQLite FTS5 index itself holds for ``word``, whatever the console's query adds."""
    with db.connect() as conn:
        rows = conn.execute(text("SELECT rowid FROM message_fts WHERE message_fts MATCH :w"), {"w": word})
        return {int(r[0]) for r in rows}


def check_fts(db: Engine) -> None:
    """FTS5's integrity check, comparing the index with its content (raises if they differ)."""
    with db.begin() as conn:
        conn.execute(text("INSERT INTO message_fts(message_fts, rank) VALUES ('integrity-check', 1)"))


def pg_index_def(db: Engine) -> str:
    with db.connect() as conn:
        return str(conn.execute(text("SELECT pg_get_indexdef('ix_message_text_fts'::regclass)")).scalar_one())


def pg_statistics(db: Engine) -> set[str]:
    with db.connect() as conn:
        return set(conn.execute(text("SELECT stxname FROM pg_statistic_ext")).scalars())


# -- what text search finds --------------------------------------------------------------------------


def test_text_search_finds_what_was_said_in_conversation_but_not_marketing(db: Engine) -> None:
    ids = seed(db)
    assert found(db, SearchFilter(text="kumquat")) == {ids["typed"], ids["reply"]}
    assert found(db, SearchFilter(text="sale")) == set()
    # The broadcast is still there for every filter but text.
    everything = {ids["typed"], ids["reply"], ids["offer"]}
    assert found(db, SearchFilter(who="dana smi")) == everything
    assert found(db, SearchFilter(channel="sms", since=AT.date(), until=AT.date())) == everything
    assert found(db, SearchFilter(customer_id=ids["dana"])) == everything


def test_the_index_follows_updates_and_deletes(db: Engine) -> None:
    ids = seed(db)
    with db.begin() as conn:  # a message changing sides moves in or out of the index
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == ids["offer"]).values(marketing=False))
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == ids["reply"]).values(marketing=True))
    assert found(db, SearchFilter(text="kumquat")) == {ids["typed"], ids["offer"]}
    with db.begin() as conn:  # a marketing message's new text is not indexed either
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == ids["reply"]).values(text="persimmon"))
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == ids["typed"]).values(text="quince"))
    assert found(db, SearchFilter(text="persimmon")) == set()
    assert found(db, SearchFilter(text="quince")) == {ids["typed"]}
    assert found(db, SearchFilter(text="kumquat")) == {ids["offer"]}
    with db.begin() as conn:
        conn.execute(delete(MESSAGE).where(MESSAGE.c.id.in_([ids["reply"], ids["offer"]])))
    assert found(db, SearchFilter(text="kumquat")) == set()
    if db.dialect.name == "sqlite":
        assert fts_rowids(db, "kumquat") == set()
        check_fts(db)


def explain_search(db: Engine, f: SearchFilter) -> dict[str, Any]:
    """PostgreSQL's plan for the console's query (as sent, with its parameters)."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    with db.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        search_messages(conn, f)
        event.remove(conn, "before_cursor_execute", capture)
        statement, parameters = sent[-1]
        plan: dict[str, Any] = conn.exec_driver_sql(
            "EXPLAIN (FORMAT JSON) " + statement, parameters
        ).scalar_one()[0]["Plan"]
        return plan


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_postgres_knows_a_rare_word_is_rare_and_reads_it_from_the_partial_index(pg_url: str) -> None:
    db = make_engine(pg_url)
    try:
        _rare_word_plan(db)
    finally:
        db.dispose()


def _rare_word_plan(db: Engine) -> None:
    # 20,000 messages, a third marketing; 500 words in 0.2% of them each, one in 3 messages only.
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO message (channel, direction, address, needs_review, marketing, created_at, "
                "text) SELECT 'sms', 'in', '+1', false, i % 3 = 0, now(), CASE WHEN i IN (1001, 2002, "
                "3003) THEN 'a kumquat please' ELSE 'my plan is w' || (i % 500) END "
                "FROM generate_series(1, 20000) i"
            )
        )
        conn.execute(text("ANALYZE message"))
    scans = [n for n in plan_nodes(explain_search(db, SearchFilter(text="kumquat"))) if "Index Name" in n]
    assert [n["Index Name"] for n in scans] == ["ix_message_text_fts"], scans
    # The planner ignores a partial index's statistics: without statistics on the expression it
    # guesses that a word is in 0.5% of the messages (100 here; at 1,000,000 messages that guess
    # makes it walk the whole table newest first looking for 50).
    assert scans[0]["Plan Rows"] < 50, scans
    assert len(found(db, SearchFilter(text="kumquat"))) == 2  # the third is marketing


# -- migration 0009 on an existing database ------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def blank(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of its own (migrations are run by the test)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'blank.db'}")
        yield engine
        engine.dispose()
        return
    server = normalize_url(os.environ.get("RAPPORT_TEST_POSTGRES_URL", PG_DEFAULT))
    name = f"rapport_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(server).set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_migration_0009_takes_marketing_out_of_the_index_and_back_on_downgrade(blank: Engine) -> None:
    upgrade(blank, "0008")
    ids = seed(blank)
    sqlite = blank.dialect.name == "sqlite"
    everything = {ids["typed"], ids["reply"], ids["offer"]}
    if sqlite:
        assert fts_rowids(blank, "kumquat") == everything  # 0005 indexed every message
    else:
        assert "WHERE" not in pg_index_def(blank)
        assert pg_statistics(blank) == set()

    upgrade(blank)
    assert found(blank, SearchFilter(text="kumquat")) == {ids["typed"], ids["reply"]}
    assert found(blank, SearchFilter(who="dana")) == everything
    if sqlite:
        assert fts_rowids(blank, "kumquat") == {ids["typed"], ids["reply"]}
        check_fts(blank)
    else:
        assert pg_index_def(blank).endswith("WHERE (NOT marketing)")
        assert pg_statistics(blank) == {"message_text_fts_stats"}
    with blank.begin() as conn:  # the new triggers are in place
        later = add_message(conn, ids["dana"], "kumquat again", direction="in", marketing=False)
        add_message(conn, ids["dana"], "kumquat offer", direction="out", marketing=True)
    assert found(blank, SearchFilter(text="kumquat")) == {ids["typed"], ids["reply"], later}
    if sqlite:
        assert fts_rowids(blank, "kumquat") == {ids["typed"], ids["reply"], later}

    downgrade(blank, "0008")
    if sqlite:
        assert len(fts_rowids(blank, "kumquat")) == 5
        check_fts(blank)
        with blank.begin() as conn:  # and 0005's triggers are back
            again = add_message(conn, ids["dana"], "kumquat offer", direction="out", marketing=True)
        assert again in fts_rowids(blank, "kumquat")
    else:
        assert "WHERE" not in pg_index_def(blank)
        assert pg_statistics(blank) == set()
