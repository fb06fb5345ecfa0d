"""Monthly usage imports through a staging table: rows are staged in batches (COPY on PostgreSQL),
then settled in SQL (unknown customers, partly rejected periods and duplicates rejected) and the
accepted (customer, period)s replace what was stored. Used by :func:`plans.imports.import_usage`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)

from storage.tables import CUSTOMER, USAGE

UNKNOWN_CUSTOMER = "unknown customer: no customer has this external_id (import customers first)"


_KEPT = "period kept as it was: line "
STAGING_COLUMNS = ("line", "external_id", "period", "metric", "quantity_milli", "reason")


def _staging_table() -> Table:
    # A temporary table: private to the import's connection, gone with it even after a crash.
    return Table(
        f"usage_import_{secrets.token_hex(6)}",
        MetaData(),
        Column("line", BigInteger, primary_key=True, autoincrement=False),
        Column("external_id", String(64)),
        Column("period", Integer),
        Column("metric", String(32)),
        Column("quantity_milli", BigInteger),
        Column("reason", Text),  # set when the row is rejected
        prefixes=["TEMPORARY"],
    )


def _stage(conn: Connection, staging: Table, batch: Sequence[tuple[Any, ...]]) -> None:
    """Append rows (in ``STAGING_COLUMNS`` order) to the staging table and commit."""
    if conn.dialect.name == "postgresql":
        if not conn.in_transaction():
            conn.begin()
        # COPY is several times faster than executemany; the table name is our own.
        statement = f"COPY {staging.name} ({', '.join(STAGING_COLUMNS)}) FROM STDIN"
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in batch:
                copy.write_row(row)
    else:
        conn.execute(insert(staging), [dict(zip(STAGING_COLUMNS, row, strict=True)) for row in batch])
    conn.commit()


def _settle_usage(conn: Connection, staging: Table) -> None:
    """Reject unknown customers, partly bad periods and duplicates, then replace the
    (customer, period)s staged."""
    s = staging.c
    accepted = s.reason.is_(None)
    conn.execute(
        update(staging)
        .where(accepted, ~exists().where(CUSTOMER.c.external_id == s.external_id))
        .values(reason=UNKNOWN_CUSTOMER)
    )
    # A (customer, period) with a rejected row keeps what it had: replacing it with the rest
    # would silently drop the rejected metric (counted as 0 by the plan fit).
    bad = staging.alias("bad")
    bad_line = (
        select(func.min(bad.c.line))
        .where(
            bad.c.external_id == s.external_id,
            bad.c.period == s.period,
            bad.c.reason.is_not(None),
            # Only rows rejected on their own: SQLite sees this statement's own updates.
            ~bad.c.reason.startswith(_KEPT),
        )
        .scalar_subquery()
    )
    conn.execute(
        update(staging)
        .where(accepted, bad_line.is_not(None))
        .values(
            reason=literal("period kept as it was: line ") + cast(bad_line, String) + literal(" was rejected")
        )
    )
    first = staging.alias("first")
    first_line = (
        select(func.min(first.c.line))
        .where(
            first.c.external_id == s.external_id,
            first.c.period == s.period,
            first.c.metric == s.metric,
            first.c.reason.is_(None),
        )
        .scalar_subquery()
    )
    conn.execute(
        update(staging)
        .where(accepted, s.line > first_line)
        .values(reason=literal("duplicate of line ") + cast(first_line, String))
    )
    known = staging.join(CUSTOMER, CUSTOMER.c.external_id == s.external_id)
    pairs = select(CUSTOMER.c.id, s.period).select_from(known).where(accepted)
    good = select(CUSTOMER.c.id, s.period, s.metric, s.quantity_milli).select_from(known).where(accepted)
    conn.execute(delete(USAGE).where(tuple_(USAGE.c.customer_id, USAGE.c.period).in_(pairs)))
    conn.execute(insert(USAGE).from_select(["customer_id", "period", "metric", "quantity_milli"], good))


class UsageStaging:
    """A staging table for one usage import, on the import's connection.

    A temporary table: private to the connection, gone with it even after a crash. Rows are
    tuples in :data:`STAGING_COLUMNS` order; a rejected row has its ``reason`` set (its other
    fields where they could be read, for grouping).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.table = _staging_table()
        self.table.create(conn)
        conn.commit()

    def add(self, batch: Sequence[tuple[Any, ...]]) -> None:
        """Stage a batch of rows and commit."""
        _stage(self.conn, self.table, batch)

    def settle(self) -> None:
        """Reject what cannot be imported, replace the accepted (customer, period)s; commit."""
        s = self.table.c
        Index(f"{self.table.name}_key", s.external_id, s.period, s.metric, s.line).create(self.conn)
        _settle_usage(self.conn, self.table)
        self.conn.commit()

    @contextmanager
    def rejected(self, *, chunk: int) -> Iterator[Iterator[tuple[int, str]]]:
        """(line, reason) of every rejected row, in line order, fetched ``chunk`` at a time."""
        s = self.table.c
        query = select(s.line, s.reason).where(s.reason.is_not(None)).order_by(s.line)
        with self.conn.execute(query.execution_options(yield_per=chunk)) as result:
            yield ((line, reason) for line, reason in result)
        self.conn.commit()

    def drop(self) -> None:
        """Roll back what is pending and drop the table."""
        self.conn.rollback()
        self.table.drop(self.conn, checkfirst=True)
        self.conn.commit()
