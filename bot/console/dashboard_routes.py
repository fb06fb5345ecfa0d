"""The dashboard: what the bot learns and earns, over a date range, read from the daily roll-up
(:mod:`storage.dashboard`). Operators see the conversation figures (Learning, Understanding);
staff and admins see everything. Each figure downloads as CSV."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

from datetime import date, timedelta

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from bot.console import dashboard_view as view
from bot.console.auth import Principal
from bot.console.deps import PREFIX, ConsoleDep, Operator, render
from storage import dashboard as store
from storage.console_models import Role

router = APIRouter()
MAX_DAYS = 366
RANGES = (7, 30, 90, 365)


def _range(ctx: ConsoleDep, start: date | None, end: date | None, days: int | None) -> tuple[date, date]:
    today = ctx.now().date()
    if days is not None and (start is not None or end is not None):
        raise HTTPException(422, "give either days or a start and end date, not both")
    if days is not None:
        if not 1 <= days <= MAX_DAYS:
            raise HTTPException(422, f"days must be between 1 and {MAX_DAYS}")
        return view.default_range(today, days)
    end = end or today
    start = start or end - timedelta(days=29)
    if start > end:
        raise HTTPException(422, "the range starts after it ends")
    if (end - start).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"a range is at most {MAX_DAYS} days")
    return start, end


def _figures(ctx: ConsoleDep, me: Principal, start: date, end: date) -> list[view.Figure]:
    with ctx.db.connect() as conn:
        f = store.read(conn, start, end)
        names = (
            store.broadcast_names(conn, (int(b) for b, _ in f.rows("bc.status")))
            if me.can(Role.STAFF)
            else {}
        )
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    figures = view.learning(f) + view.understanding(f, f"{PREFIX}/review", days)
    if me.can(Role.STAFF):
        price = ctx.runtime.settings.sms_price_per_segment
        figures += view.suggestions(f) + view.broadcasts(f, names, price) + view.value(f)
    return figures


@router.get("/dashboard")
def dashboard(
    request: Request,
    ctx: ConsoleDep,
    me: Operator,
    start: date | None = None,
    end: date | None = None,
    days: int | None = None,
) -> Response:
    start, end = _range(ctx, start, end, days)
    figures = _figures(ctx, me, start, end)
    sections = [
        (name, view.SECTION_TITLES[name], [f for f in figures if f.section == name])
        for name in view.SECTIONS
        if any(f.section == name for f in figures)
    ]
    with ctx.db.connect() as conn:
        first, last = store.rolled_days(conn)
    return render(
        request,
        "dashboard.html",
        sections=sections,
        start=start,
        end=end,
        ranges=RANGES,
        rolled=(first, last),
        cells=view.iter_cells,
        holdout_percent=ctx.runtime.settings.holdout_percent,
    )


@router.get("/dashboard/{figure}.csv")
def export(
    ctx: ConsoleDep,
    me: Operator,
    figure: str,
    start: date | None = None,
    end: date | None = None,
    days: int | None = None,
) -> Response:
    start, end = _range(ctx, start, end, days)
    staff_only = {"funnel", "money", "holdout", "broadcasts", "value", "labels", "moved"}
    if figure in staff_only and not me.can(Role.STAFF):
        raise HTTPException(403, "this figure is for staff")
    found = [f for f in _figures(ctx, me, start, end) if f.id == figure]
    if not found:
        raise HTTPException(404, "no such figure")
    name = f"{figure}-{start.isoformat()}-{end.isoformat()}.csv"
    return Response(
        view.to_csv(found[0]),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )
