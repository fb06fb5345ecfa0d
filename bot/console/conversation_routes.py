"""The conversation list: every message, searchable and filterable, newest first; and its export."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

from datetime import date
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response

from bot.console.deps import PREFIX, ConsoleDep, Operator, render
from bot.console.exports import export
from storage import console_queries as q
from storage.types import Channel, DeliveryStatus

CHANNELS = tuple(Channel)
DELIVERY = tuple(DeliveryStatus)

router = APIRouter()


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise HTTPException(422, f"{value!r} is not a date (YYYY-MM-DD)") from None


def search_filter(
    q_: Annotated[str, Query(alias="q", max_length=200)] = "",
    who: Annotated[str, Query(max_length=200)] = "",
    channel: Annotated[str, Query(max_length=16)] = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    review: Annotated[str, Query(max_length=1)] = "",
    delivery: Annotated[str, Query(max_length=16)] = "",
) -> q.SearchFilter:
    """The search form's query string as a filter (unknown channels and states are ignored, and so
    are NUL and other control characters, which no message or name holds)."""
    return q.SearchFilter(
        text=_printable(q_),
        who=_printable(who),
        channel=channel if channel in CHANNELS else "",
        since=_date(since),
        until=_date(until),
        needs_review=review == "1",
        delivery=delivery if delivery in DELIVERY else "",
    )


def _printable(value: str) -> str:
    return "".join(c if c.isprintable() else " " for c in value).strip()


Filter = Annotated[q.SearchFilter, Depends(search_filter)]


@router.get("/")  # and "/console" itself: see console_router
def home(me: Operator) -> Response:
    return RedirectResponse(f"{PREFIX}/conversations", status_code=303)


@router.get("/conversations")
def conversations(
    request: Request,
    ctx: ConsoleDep,
    me: Operator,
    f: Filter,
    before: int | None = None,
    view: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    """Conversations with a matching message (customer, last message, how many), newest first;
    ``view=messages``: every matching message."""
    flat = view == "messages"
    with ctx.db.connect() as conn:
        rows = (
            q.search_messages(conn, f, before=before)
            if flat
            else q.search_conversations(conn, f, before=before)
        )
    params = {**f.as_params(), **({"view": "messages"} if flat else {})}
    next_page = None
    if len(rows) == q.PAGE_SIZE:
        next_page = "?" + urlencode({**params, "before": rows[-1]["id"]})
    return render(
        request,
        "conversations.html",
        rows=rows,
        f=f,
        channels=CHANNELS,
        deliveries=DELIVERY,
        next_page=next_page,
        export_query=urlencode(f.as_params()),
        page_query=urlencode(params),
        flat=flat,
        view_query=urlencode({**f.as_params(), **({} if flat else {"view": "messages"})}),
        paged=before is not None,
    )


@router.get("/conversations/export")
def export_search(
    request: Request, ctx: ConsoleDep, me: Operator, f: Filter, format: str = "csv"
) -> Response:
    return export(request, ctx, me, format, f, None)
