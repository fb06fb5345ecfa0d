"""Exports of messages (a search, or one customer's transcript) as CSV or JSON, streamed."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

import io
import json
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from bot.console.auth import Principal
from bot.console.deps import Console, client_ip
from storage import console_queries as q
from storage.csv_safe import SafeDictWriter

EXPORT_FIELDS = (
    "id",
    "customer_id",
    "customer_name",
    "customer_phone",
    "channel",
    "direction",
    "created_at",
    "text",
    "intent",
    "question_key",
    "parsed_value",
    "confidence",
    "needs_review",
    "status",
    "attempts",
    "error",
)


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _export_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {k: row[k] for k in EXPORT_FIELDS}


def stream(rows: Iterator[Mapping[Any, Any]], fmt: str) -> Iterator[str]:
    """Message rows as CSV (formula-safe) or a JSON array, a piece at a time."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = SafeDictWriter(buffer, EXPORT_FIELDS)
        writer.writeheader()
        for row in rows:
            record = _export_row(row)
            record["parsed_value"] = json.dumps(record["parsed_value"]) if record["parsed_value"] else ""
            writer.writerow(record)  # every cell formula-safe: names and errors as well as text
            if buffer.tell() > 64_000:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
        return
    yield "["
    for i, row in enumerate(rows):
        yield (
            ("," if i else "")
            + "\n"
            + json.dumps(_export_row(row), default=_json_default, ensure_ascii=False)
        )
    yield "\n]\n"


def export(
    request: Request, ctx: Console, me: Principal, fmt: str, f: q.SearchFilter, customer_id: int | None
) -> Response:
    """The download of a search (``customer_id`` None) or of a customer's transcript; audited."""
    if fmt not in ("csv", "json"):
        raise HTTPException(422, "format must be csv or json")
    with ctx.db.begin() as conn:
        q.audit(
            conn,
            action="export",
            actor=me.email,
            target=f"customer:{customer_id}" if customer_id is not None else "search",
            detail={"format": fmt, "filter": f.as_params()},
            ip=client_ip(request),
            now=ctx.now(),
        )

    def rows() -> Iterator[str]:
        with ctx.db.connect() as conn:
            found = (
                q.iter_transcript(conn, customer_id) if customer_id is not None else q.iter_search(conn, f)
            )
            yield from stream(found, fmt)

    name = f"customer-{customer_id}" if customer_id is not None else "messages"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return StreamingResponse(
        rows(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"', "Cache-Control": "no-store"},
    )
