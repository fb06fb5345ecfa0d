"""CSV imports of the customer book and monthly usage: streamed, with bad rows set aside.

Both imports read UTF-8 (with or without a BOM, LF or CRLF), match header names case-insensitively,
skip blank lines (and rows whose every field is empty), ignore unknown columns (reported in
``ImportSummary.ignored_columns``) and never stop at a bad row: each one goes to
``<stem>.rejects.csv`` next to the input, with columns ``line,reason,row`` (``line`` is the
physical line the record starts on, the header being line 1; ``row`` is the record as read),
sorted by line. A missing required column stops the import before anything is written.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, TypeAlias
from zoneinfo import available_timezones

from sqlalchemy import Engine

from storage.csv_safe import SafeWriter
from storage.phones import to_e164
from storage.plan_queries import plan_ids
from storage.queries import save_customer
from storage.usage_staging import UsageStaging
from storage.whatsapp import record_opt_in, withdraw_opt_in

Progress: TypeAlias = Callable[[int, int], None]
"""Called as ``progress(bytes_read, total_bytes)`` while a file is read."""

CUSTOMER_COLUMNS = ("external_id", "phone", "name", "current_plan")
CUSTOMER_OPTIONAL = ("timezone", "marketing_consent", "email", "telegram_username", "whatsapp_opt_in")
USAGE_COLUMNS = ("external_id", "period", "metric", "quantity")

USAGE_BATCH = 10_000
CUSTOMER_BATCH = 500
MAX_QUANTITY_MILLI = 2**63 - 1
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
PERIOD_RE = re.compile(r"(\d{4})-(\d{2})")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
TELEGRAM_RE = re.compile(r"[A-Za-z0-9_]{5,32}")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0", ""}
_BOM = b"\xef\xbb\xbf"


class CsvImportError(ValueError):
    """A file that cannot be imported at all (unreadable, or a required column missing)."""


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import did. ``rows`` counts data records (not blank lines) = imported + rejected."""

    rows: int
    imported: int
    rejected: int
    rejects_path: Path | None
    ignored_columns: tuple[str, ...] = ()
    created: int = 0  # customers: how many of ``imported`` were new (the others were updated)


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    line: int
    raw: str
    fields: list[str]
    error: str | None = None  # why the record could not be read; fields is then empty


class _CsvReader:
    """Records of a CSV file with the line each starts on and its raw text; counts bytes read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes_read = 0
        try:
            self.total_bytes = path.stat().st_size
        except OSError as exc:
            raise CsvImportError(f"{path}: cannot read the file ({exc.strerror})") from None

    def records(self) -> Generator[_Record, None, None]:
        """Every non-blank record, the header first."""
        pending: list[str] = []

        def lines(file: IO[bytes]) -> Iterator[str]:
            for number, data in enumerate(file):
                self.bytes_read += len(data)
                if number == 0:
                    data = data.removeprefix(_BOM)
                # Undecodable bytes survive as surrogates: such a row is rejected, and written to
                # the rejects file exactly as it was.
                text = data.decode("utf-8", "surrogateescape")
                pending.append(text)
                yield text

        with self.path.open("rb") as file:
            reader = csv.reader(lines(file))
            start = 1
            while True:
                error: str | None = None
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    fields, error = [], f"unreadable CSV: {exc}"
                raw = "".join(pending).removesuffix("\n").removesuffix("\r")
                pending.clear()
                line, start = start, reader.line_num + 1
                if error is None and not _is_utf8(raw):
                    fields, error = [], "not valid UTF-8 (save the file as UTF-8)"
                if error is None and "\x00" in raw:  # PostgreSQL text cannot hold NUL
                    fields, error = [], "contains a NUL character"
                if error is None and not any(f.strip() for f in fields):
                    continue
                yield _Record(line, raw, [f.strip() for f in fields], error)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Header:
    index: dict[str, int]
    width: int
    ignored: tuple[str, ...]

    def row(self, record: _Record) -> dict[str, str] | str:
        """The record's known fields by column name, or why it is rejected."""
        if record.error is not None:
            return record.error
        if len(record.fields) != self.width:
            return f"expected {self.width} fields, found {len(record.fields)}"
        return {name: record.fields[i] for name, i in self.index.items()}


def _read_header(
    path: Path, records: Iterator[_Record], required: tuple[str, ...], optional: tuple[str, ...]
) -> _Header:
    first = next(records, None)
    if first is None:
        raise CsvImportError(f"{path}: the file is empty; expected a header: {','.join(required)}")
    if first.error is not None:
        raise CsvImportError(f"{path}: line {first.line}: cannot read the header: {first.error}")
    names = [f.lower() for f in first.fields]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CsvImportError(f"{path}: duplicate columns in the header: {', '.join(duplicates)}")
    missing = [c for c in required if c not in names]
    if missing:
        raise CsvImportError(
            f"{path}: missing required column(s): {', '.join(missing)}. "
            f"The header must name {', '.join(required)} (optional: {', '.join(optional) or 'none'}); "
            f"it has: {', '.join(names)}"
        )
    known = set(required) | set(optional)
    return _Header(
        index={n: i for i, n in enumerate(names) if n in known},
        width=len(names),
        ignored=tuple(n for n in names if n not in known),
    )


# -- rejects ---------------------------------------------------------------------------------------


class _Rejects:
    """``<stem>.rejects.csv`` next to the input, opened on the first reject; fed in line order."""

    def __init__(self, source: Path) -> None:
        self.path = source.with_name(f"{source.stem}.rejects.csv")
        self.count = 0
        self._file: IO[str] | None = None
        self._writer: Any = None

    def add(self, line: int, reason: str, raw: str) -> None:
        if self._file is None:
            self._file = self.path.open("w", encoding="utf-8", newline="", errors="surrogateescape")
            self._writer = SafeWriter(self._file)
            self._writer.writerow(["line", "reason", "row"])
        self._writer.writerow([line, reason, raw])
        self.count += 1

    def close(self) -> Path | None:
        """The rejects file, or None when nothing was rejected (a stale one is deleted)."""
        if self._file is None:
            self.path.unlink(missing_ok=True)
            return None
        self._file.close()
        return self.path


# -- customers -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _customer_values(
    row: Mapping[str, str], *, region: str, plans: set[str], now: datetime
) -> dict[str, Any] | str:
    """The customer columns a row sets, or why it is rejected."""
    external_id = row["external_id"]
    if not external_id:
        return "external_id is empty"
    if len(external_id) > 64:
        return "external_id is longer than 64 characters"
    try:
        phone = to_e164(row["phone"], region)
    except ValueError:
        return f"invalid phone number {row['phone']!r} (write it as +14155550100)"
    plan = row["current_plan"]
    if plan not in plans:
        return f"unknown plan {plan!r}: not in the plan catalog" if plan else "current_plan is empty"
    if len(row["name"]) > 200:
        return "name is longer than 200 characters"
    values: dict[str, Any] = {
        "external_id": external_id,
        "phone": phone,
        "name": row["name"] or None,
        "current_plan_id": plan,
    }
    if "timezone" in row:
        zone = row["timezone"]
        if zone and zone not in _timezones():
            return f"unknown timezone {zone!r} (use an IANA name like America/New_York)"
        values["timezone"] = zone or None
    if "marketing_consent" in row:
        consent = row["marketing_consent"].lower()
        if consent not in _TRUE | _FALSE:
            return f"marketing_consent {row['marketing_consent']!r} is not one of true/false/yes/no/1/0/y/n"
        values["marketing_consent"] = consent in _TRUE
    if "email" in row:
        email = row["email"]
        if email and (len(email) > 320 or not EMAIL_RE.fullmatch(email)):
            return f"invalid email {email!r}"
        values["email"] = email or None
    if "telegram_username" in row:
        username = row["telegram_username"].removeprefix("@")
        if username and not TELEGRAM_RE.fullmatch(username):
            return f"invalid telegram_username {row['telegram_username']!r} (5-32 letters, digits or _)"
        values["telegram_username"] = username or None
    if "whatsapp_opt_in" in row:
        opt_in = _whatsapp_opt_in(row["whatsapp_opt_in"], now)
        if isinstance(opt_in, str):
            return opt_in
        values[WHATSAPP_OPT_IN] = opt_in
    return values


WHATSAPP_OPT_IN = "whatsapp_opt_in"  # not a column: the opt-in is recorded after the upsert


def _whatsapp_opt_in(text: str, now: datetime) -> datetime | bool | str:
    """When the customer agreed to WhatsApp messages (yes: now; an ISO date or time: then),
    ``False`` (no, or empty: not agreed), or why the cell is rejected."""
    word = text.lower()
    if word in _TRUE:
        return now
    if word in _FALSE:
        return False
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return (
            f"whatsapp_opt_in {text[:40]!r} is not one of true/false/yes/no/1/0/y/n nor an ISO date "
            "or time such as 2026-03-01 or 2026-03-01T09:30:00Z (when the customer agreed)"
        )
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    if at > now:
        return f"whatsapp_opt_in {text[:40]!r} is in the future"
    return at


def import_customers(
    engine: Engine,
    path: str | Path,
    *,
    default_region: str,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> ImportSummary:
    """Import the customer book (CSV), upserting customers by ``external_id``.

    Required columns: external_id, phone, name, current_plan (a plan id in the catalog); optional:
    timezone, marketing_consent, email, telegram_username, whatsapp_opt_in (yes: the customer agreed
    to business messages on WhatsApp, recorded at ``now``; an ISO date or time: agreed then; no or
    empty: not agreed, which withdraws a recorded opt-in; an opt-in already recorded keeps its
    first time). Phones without a country code are read
    in ``default_region`` and stored as E.164. An optional column absent from the file leaves that
    field as stored; an empty cell clears it (marketing_consent: false). When an external_id
    appears on several rows, each row updates the customer in turn, so the last one wins.
    A customer known only by the row's phone (who texted first) is adopted. New customers are
    created at ``now`` (default: the current time).
    """
    path = Path(path)
    reader = _CsvReader(path)
    rejects = _Rejects(path)
    rows = imported = created = 0
    moment = now or datetime.now(UTC)
    with closing(reader.records()) as records:
        header = _read_header(path, records, CUSTOMER_COLUMNS, CUSTOMER_OPTIONAL)
        with engine.connect() as conn:
            plans = plan_ids(conn)
            conn.rollback()
            try:
                for record in records:
                    rows += 1
                    row = header.row(record)
                    values = (
                        row
                        if isinstance(row, str)
                        else _customer_values(row, region=default_region, plans=plans, now=moment)
                    )
                    if isinstance(values, str):
                        reason: str | None = values
                    else:
                        opt_in = values.pop(WHATSAPP_OPT_IN, None)
                        saved = save_customer(conn, values=values, now=now)
                        reason, created = saved.conflict, created + saved.created
                        if saved.id is not None and isinstance(opt_in, datetime):
                            record_opt_in(conn, customer_id=saved.id, at=opt_in)
                        elif saved.id is not None and opt_in is False:
                            withdraw_opt_in(conn, customer_id=saved.id)
                    if reason is None:
                        imported += 1
                    else:
                        rejects.add(record.line, reason, record.raw)
                    if rows % CUSTOMER_BATCH == 0:
                        conn.commit()
                        if progress is not None:
                            progress(reader.bytes_read, reader.total_bytes)
                conn.commit()
            finally:
                rejects_path = rejects.close()
    if progress is not None:
        progress(reader.bytes_read, reader.total_bytes)
    return ImportSummary(rows, imported, rejects.count, rejects_path, header.ignored, created)


# -- usage -----------------------------------------------------------------------------------------


def _period(text: str) -> int:
    """``YYYY-MM`` (year 2000-2100) as the integer yyyymm, or ValueError."""
    match = PERIOD_RE.fullmatch(text)
    if match is None or not 2000 <= int(match[1]) <= 2100 or not 1 <= int(match[2]) <= 12:
        raise ValueError(f"period {text!r} is not YYYY-MM (a year 2000-2100, a month 01-12)")
    return int(match[1]) * 100 + int(match[2])


def _quantity_milli(text: str) -> int:
    """A non-negative quantity in thousandths, rounded half-up; ValueError when it is not one."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"quantity {text!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"quantity {text!r} is not a finite number")
    if number < 0:
        raise ValueError(f"quantity {text!r} is negative")
    if number * 1000 > MAX_QUANTITY_MILLI:
        raise ValueError(f"quantity {text!r} is too large")
    return int((number * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _usage_values(row: Mapping[str, str]) -> tuple[str, int, str, int] | str:
    external_id, metric = row["external_id"], row["metric"]
    if not external_id or len(external_id) > 64:
        return "external_id is empty" if not external_id else "external_id is longer than 64 characters"
    if not METRIC_RE.fullmatch(metric):
        return f"metric {metric!r} must be lower-case letters, digits and _, start with a letter, at most 32"
    try:
        period = _period(row["period"])
        quantity_milli = _quantity_milli(row["quantity"])
    except ValueError as exc:
        return str(exc)
    return external_id, period, metric, quantity_milli


def _usage_group(row: Mapping[str, str] | str) -> tuple[str | None, int | None]:
    """The (external_id, period) a rejected row belongs to, where its fields tell."""
    if isinstance(row, str):
        return None, None
    try:
        period: int | None = _period(row["period"])
    except ValueError:
        period = None
    return (row["external_id"][:64] or None), period


def import_usage(engine: Engine, path: str | Path, *, progress: Progress | None = None) -> ImportSummary:
    """Import monthly usage in long format: external_id, period (YYYY-MM), metric, quantity.

    Each (customer, period) in the file replaces what was stored for it: its old rows, of every
    metric, go and the file's accepted rows come in; other periods stay. Re-importing a file is
    idempotent. Quantities are kept in thousandths, rounded half-up. The file streams through a
    staging table in batches, so memory does not grow with it. Rejected: unknown customers, bad
    fields, a repeated (external_id, period, metric), whose first accepted row wins, and every row
    of a (customer, period) that has a rejected row: that period keeps what it had.
    """
    path = Path(path)
    reader = _CsvReader(path)
    with closing(reader.records()) as records:
        header = _read_header(path, records, USAGE_COLUMNS, ())
        with engine.connect() as conn:
            staging = UsageStaging(conn)
            try:
                rows, rejects_path, rejected = _load_usage(staging, header, reader, records, progress)
            finally:
                staging.drop()
    return ImportSummary(rows, rows - rejected, rejected, rejects_path, header.ignored)


def _load_usage(
    staging: UsageStaging,
    header: _Header,
    reader: _CsvReader,
    records: Iterator[_Record],
    progress: Progress | None,
) -> tuple[int, Path | None, int]:
    rows = 0
    batch: list[tuple[Any, ...]] = []
    for record in records:
        rows += 1
        row = header.row(record)
        values = row if isinstance(row, str) else _usage_values(row)
        if isinstance(values, str):
            batch.append((record.line, *_usage_group(row), None, None, values))
        else:
            batch.append((record.line, *values, None))
        if len(batch) >= USAGE_BATCH:
            staging.add(batch)
            batch.clear()
            if progress is not None:
                progress(reader.bytes_read, reader.total_bytes)
    if batch:
        staging.add(batch)
    staging.settle()
    if progress is not None:
        progress(reader.bytes_read, reader.total_bytes)

    # The rejects, in line order, with their raw text from a second pass over the file.
    rejects = _Rejects(reader.path)
    try:
        with (
            staging.rejected(chunk=USAGE_BATCH) as result,
            closing(_CsvReader(reader.path).records()) as again,
        ):
            for line, reason in result:
                record = next(r for r in again if r.line >= line)
                rejects.add(line, reason, record.raw)
    finally:
        rejects_path = rejects.close()
    return rows, rejects_path, rejects.count
