"""One customer: the profile page (preferences, plan, usage charts, plan fit, switches) and the
transcript of every message, with its export."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import Connection

from bot.console import charts
from bot.console.deps import ConsoleDep, Operator, describe, render
from bot.console.exports import export
from bot.console.fit_text import fit_text
from storage import console_queries as q
from storage.types import Direction

router = APIRouter()


def customer_row(conn: Connection, customer_id: int) -> dict[str, Any]:
    """The customer's row; 404 when there is none."""
    row = q.customer(conn, customer_id=customer_id)
    if row is None:
        raise HTTPException(404, "no such customer")
    return dict(row)


@router.get("/customers/{customer_id}/transcript")
def transcript(request: Request, ctx: ConsoleDep, me: Operator, customer_id: int) -> Response:
    with ctx.db.connect() as conn:
        customer = customer_row(conn, customer_id)
        messages = q.transcript(conn, customer_id)
        answers: dict[int, list[str]] = {}
        for s in reversed(q.switch_requests(conn, customer_id=customer_id)):
            if s["message_id"] is not None:
                answers.setdefault(s["message_id"], []).append(f"switch requested to {s['to_plan_id']}")
        for d in reversed(q.plan_declines(conn, customer_id=customer_id)):
            if d["message_id"] is not None:
                answers.setdefault(d["message_id"], []).append(f"declined {d['plan_id']}")
        reviews = q.reviews_for(conn, [m["id"] for m in messages if m["needs_review"]])
        attempts = q.attempts_for(conn, [m["id"] for m in messages if m["direction"] == Direction.OUT])
    bank = ctx.bank()
    replies: dict[int, list[Mapping[Any, Any]]] = {}
    for m in messages:
        if m["reply_to_id"] is not None:
            replies.setdefault(m["reply_to_id"], []).append(m)
    return render(
        request,
        "transcript.html",
        customer=customer,
        messages=[m for m in messages if m["direction"] == Direction.IN or m["reply_to_id"] is None],
        replies=replies,
        answers=answers,
        reviews=reviews,
        attempts=attempts,
        describe=lambda key, value: describe(bank, key, value),
    )


@router.get("/customers/{customer_id}/export")
def export_transcript(
    request: Request, ctx: ConsoleDep, me: Operator, customer_id: int, format: str = "csv"
) -> Response:
    with ctx.db.connect() as conn:
        customer_row(conn, customer_id)
    return export(request, ctx, me, format, q.SearchFilter(customer_id=customer_id), customer_id)


@router.get("/customers/{customer_id}")
def customer(request: Request, ctx: ConsoleDep, me: Operator, customer_id: int) -> Response:
    bank = ctx.bank()
    advisor = ctx.runtime.dialog.advisor
    with ctx.db.connect() as conn:
        row = customer_row(conn, customer_id)
        prefs = q.customer_preferences(conn, customer_id=customer_id)
        plan = q.plan(conn, plan_id=row["current_plan_id"]) if row["current_plan_id"] else None
        usage = q.customer_usage(conn, customer_id=customer_id)
        series = charts.usage_series(usage, plan["allowance"] if plan else {})
        advice = None
        # plans.fit fails on an empty catalog (IndexError), so only ask with plans on file.
        if advisor.catalog(conn).plans:
            advice = advisor.advise(
                conn,
                customer_id=customer_id,
                current_plan=row["current_plan_id"],
                preferences={p["key"]: p["value"] for p in prefs},
                now=ctx.now(),
            )
        switches = q.switch_requests(conn, customer_id=customer_id)
        declines = q.plan_declines(conn, customer_id=customer_id)
        suggestions = q.suggestions(conn, customer_id=customer_id)
    return render(
        request,
        "customer.html",
        customer=row,
        prefs=[(p, bank.get(p["key"]), describe(bank, p["key"], p["value"])) for p in prefs],
        plan=plan,
        charts=[(s, charts.usage_svg(s)) for s in series],
        advice=advice,
        fit=fit_text(advice),
        switches=switches,
        declines=declines,
        suggestions=suggestions,
    )
