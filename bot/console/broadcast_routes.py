"""The console's broadcast pages under ``/console/broadcasts``, for staff and admins: the list, a
create form, and a broadcast's page with a preview for real recipients, a dry run, scheduling,
live progress (``status.json``), cancelling and results. A thin layer over
:mod:`schedulers.broadcasts`, called the way ``rapport broadcast`` calls it."""

# No `from __future__ import annotations` here: FastAPI must see the local Annotated aliases.

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from bot.console.auth import Principal
from bot.runtime import Runtime
from dialogs.sms_segments import MAX_CHARS, Estimate, estimate
from plans.fit import Catalog
from schedulers import broadcasts as bc
from schedulers.segment_filter import FIELDS, FUNCTIONS, check_metrics, parse
from storage import console_queries as q
from storage.broadcast_models import BroadcastStatus
from storage.models import DeliveryStatus

PREVIEW_COUNT = 3
POLL_MS = 3000  # how often a broadcast page in progress asks for its status
MAX_NAME = 200  # the column's length
MAX_SEGMENT = 2_000
MAX_TEMPLATE = 5_000
DELIVERY = tuple(s.value for s in DeliveryStatus)  # progress columns, in the life order of a message
LIVE = frozenset(
    {BroadcastStatus.WAITING, BroadcastStatus.PREPARING, BroadcastStatus.SCHEDULED, BroadcastStatus.SENDING}
)
CANCELLABLE = LIVE | {BroadcastStatus.DRAFT}
_NOTICES = {
    "created": "Created as a draft. Check the preview and the dry run, then schedule it.",
    "scheduled": "Scheduled: the messages are in the outbox and go out as they fall due.",
    "waiting": "Scheduled: at that time the scheduler prepares it (segment, contact policy and texts "
    "as of then) and the messages go out.",
    "cancelled": "Cancelled: queued messages will not be sent.",
}

Render = Callable[..., HTMLResponse]


@dataclass(frozen=True, slots=True)
class SentPreview:
    """A preview as it will be sent: the text after the channel's own fitting (SMS: cut at
    1,600 characters), its cost, and whether it was cut or is over the segment budget."""

    customer_id: int
    name: str | None
    channel: str | None
    text: str
    estimate: Estimate
    cut: bool
    over_budget: bool


def sent_preview(p: bc.Preview, price: Decimal, max_segments: int) -> SentPreview:
    """``p`` as the channel will send it."""
    text = bc.sent_text(p.text, p.channel)
    cost = estimate(text, price)
    cut = p.channel == "sms" and len(text) < len(p.text) and text.endswith("...")
    over = p.channel == "sms" and cost.segments > max_segments
    return SentPreview(p.customer_id, p.name, p.channel, text, cost, cut, over)


def status_json(s: bc.Status) -> dict[str, Any]:
    """What ``status.json`` answers: the state, message counts by delivery status, results."""
    return {
        "id": s.broadcast_id,
        "status": s.status,
        "recipients": s.recipients,
        "total": s.total,
        "finished": s.finished,
        "messages": {name: s.messages.get(name, 0) for name in DELIVERY},
        "excluded": dict(s.excluded),
        "accepted": s.accepted,
        "declined": s.declined,
    }


def check_draft(name: str, segment: str, template: str, catalog: Catalog) -> dict[str, str]:
    """The problems of a new broadcast by form field (empty when it can be created): the checks
    of :func:`schedulers.broadcasts.create`, each field's apart so all show at once."""
    errors: dict[str, str] = {}
    if not name.strip():
        errors["name"] = "Give the broadcast a name."
    try:
        check_metrics(parse(segment), catalog.metrics)
    except ValueError as exc:
        errors["segment"] = str(exc)
    try:
        bc.compile_template(template, catalog)
    except bc.BroadcastError as exc:
        errors["template"] = str(exc).removeprefix("template: ")
    return errors


def _start(at: str, now: datetime) -> datetime:
    """The UTC moment of the schedule form's date-time (``YYYY-MM-DDTHH:MM``)."""
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise ValueError(f"expected a date and time like 2026-12-01T09:00, got {at!r}") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment < now.replace(second=0, microsecond=0):
        raise ValueError(f"{moment:%Y-%m-%d %H:%M} UTC has passed: choose a later time, or now")
    return moment


def broadcast_router(
    runtime: Runtime,
    *,
    prefix: str,
    clock: Callable[[], datetime],
    render: Render,
    staff: Callable[..., Principal],
    staff_post: Callable[..., Principal],
) -> APIRouter:
    """The broadcast routes, to include in the console's router (``prefix`` is its path).

    ``staff`` and ``staff_post`` are the console's dependencies that let staff and admins in
    (``staff_post`` also checks the CSRF token); everyone else gets 403 on every route here.
    """
    db = runtime.db
    advisor = runtime.dialog.advisor
    base = f"{prefix}/broadcasts"
    router = APIRouter(prefix="/broadcasts", include_in_schema=False)
    Staff = Annotated[Principal, Depends(staff)]
    StaffPost = Annotated[Principal, Depends(staff_post)]

    def broadcast_row(broadcast_id: int) -> Mapping[str, Any]:
        with db.connect() as conn:
            try:
                row = bc.get(conn, broadcast_id)
                return {**row, "status": bc.state_of(conn, row)}  # as its messages say
            except bc.BroadcastError:
                raise HTTPException(404, "no such broadcast") from None

    def audit(request: Request, me: Principal, action: str, broadcast_id: int, **detail: Any) -> None:
        with db.begin() as conn:
            q.audit(
                conn,
                action=action,
                actor=me.email,
                target=f"broadcast:{broadcast_id}",
                detail=detail,
                ip=request.client.host if request.client else None,
                now=clock(),
            )

    def new_form(
        request: Request,
        status_code: int = 200,
        form: Mapping[str, str] | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        return render(
            request,
            "broadcast_new.html",
            status_code,
            form=form or {"name": "", "segment": "", "template": ""},
            errors=errors or {},
            fields=sorted(FIELDS),
            functions=sorted(FUNCTIONS),
            template_fields=bc.TEMPLATE_FIELDS,
            limits={"name": MAX_NAME, "segment": MAX_SEGMENT, "template": MAX_TEMPLATE},
        )

    def page(
        request: Request,
        broadcast_id: int,
        *,
        dry: bool = False,
        status_code: int = 200,
        error: str = "",
        schedule: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        row = broadcast_row(broadcast_id)
        now = clock()
        policy = runtime.policy
        price = runtime.settings.sms_price_per_segment
        max_segments = runtime.settings.sms_max_segments
        previews: list[SentPreview] = []
        preview_error = ""
        report = None
        progress = None
        state = row["status"]
        if state == BroadcastStatus.DRAFT:
            try:
                previews = [
                    sent_preview(p, price, max_segments)
                    for p in bc.preview(
                        db, advisor, policy, broadcast_id, now, price_per_segment=price, limit=PREVIEW_COUNT
                    )
                ]
            except bc.BroadcastError as exc:  # a customer's facts the template cannot render
                preview_error = str(exc)
        else:
            progress = bc.status(db, broadcast_id)
            state = progress.status  # as its messages say: scheduled -> sending -> done
        if dry:
            report = bc.dry_run(db, advisor, policy, broadcast_id, now)
        done = request.query_params.get("done", "")
        return render(
            request,
            "broadcast.html",
            status_code,
            b=row,
            state=state,
            now=now,
            previews=previews,
            preview_error=preview_error,
            dry=report,
            progress=progress,
            delivery=DELIVERY,
            live=state in LIVE,
            cancellable=state in CANCELLABLE,
            poll_ms=POLL_MS,
            max_segments=max_segments,
            max_chars=MAX_CHARS,
            notice=_NOTICES.get(done, ""),
            error=error,
            schedule=schedule or {"when": "now", "at": "", "local_time": ""},
        )

    @router.get("")
    def broadcasts(request: Request, me: Staff) -> Response:
        # A draft has no messages; the others' progress comes from status() (a read).
        rows = [
            (b, None if b["status"] == BroadcastStatus.DRAFT else bc.status(db, b["id"]))
            for b in bc.list_broadcasts(db)
        ]
        return render(request, "broadcasts.html", rows=rows)

    @router.get("/new")
    def new(request: Request, me: Staff) -> Response:
        return new_form(request)

    @router.post("")
    def create(
        request: Request,
        me: StaffPost,
        name: Annotated[str, Form(max_length=MAX_NAME)] = "",
        segment: Annotated[str, Form(max_length=MAX_SEGMENT)] = "",
        template: Annotated[str, Form(max_length=MAX_TEMPLATE)] = "",
    ) -> Response:
        form = {"name": name, "segment": segment, "template": template}
        with db.connect() as conn:
            catalog = advisor.catalog(conn)
        errors = check_draft(name, segment, template, catalog)
        if not errors:
            try:
                broadcast_id = bc.create(
                    db,
                    advisor,
                    name=name.strip(),
                    segment=segment,
                    template=template,
                    created_by=me.email[:100],
                    now=clock(),
                )
            except bc.BroadcastError as exc:  # checked above: only a catalog changed meanwhile
                field, _, message = str(exc).partition(": ")
                errors[field if field in form else "segment"] = message
        if errors:
            return new_form(request, 422, form=form, errors=errors)
        audit(request, me, "broadcast_created", broadcast_id, name=name.strip(), segment=segment)
        return RedirectResponse(f"{base}/{broadcast_id}?done=created", status_code=303)

    @router.get("/{broadcast_id}")
    def broadcast(request: Request, me: Staff, broadcast_id: int) -> Response:
        return page(request, broadcast_id)

    @router.get("/{broadcast_id}/dry-run")
    def dry_run(request: Request, me: Staff, broadcast_id: int) -> Response:
        return page(request, broadcast_id, dry=True)

    @router.get("/{broadcast_id}/status.json")
    def status(me: Staff, broadcast_id: int) -> Response:
        try:
            found = bc.status(db, broadcast_id)
        except bc.BroadcastError:
            raise HTTPException(404, "no such broadcast") from None
        return JSONResponse(status_json(found), headers={"Cache-Control": "no-store"})

    def when_of(
        row: Mapping[str, Any], when: str, at: str, local_time: str
    ) -> tuple[datetime | None, str | None]:
        """The schedule form as (start, local time); ValueError when it cannot be scheduled."""
        now = clock()
        if row["status"] != BroadcastStatus.DRAFT:  # say a second click on Schedule
            raise ValueError(f"this broadcast is {row['status']}: it is scheduled once")
        if not runtime.policy.channels:
            raise ValueError(f"it cannot be sent: {bc.DryRun(no_channel=True).no_channel_reason}")
        if when == "at":
            return _start(at, now), None
        if when == "local":
            return None, f"{bc.parse_local_time(local_time):%H:%M}"
        if when != "now":
            raise ValueError("choose now, a date and time, or a local time")
        return None, None

    def confirm_page(request: Request, broadcast_id: int, when: str, at: str, local_time: str) -> Response:
        """The confirmation step: who, on which channels, how many segments and what it costs."""
        row = broadcast_row(broadcast_id)
        form = {"when": when, "at": at, "local_time": local_time}
        try:
            start, local = when_of(row, when, at, local_time)
            summary = bc.confirmation(
                db,
                advisor,
                runtime.policy,
                broadcast_id,
                clock(),
                price_per_segment=runtime.settings.sms_price_per_segment,
                max_segments=runtime.settings.sms_max_segments,
            )
        except ValueError as exc:  # BroadcastError too
            return page(request, broadcast_id, status_code=422, error=str(exc), schedule=form)
        return render(
            request,
            "broadcast_confirm.html",
            b=row,
            c=summary,
            schedule=form,
            start=start,
            local=local,
            max_segments=runtime.settings.sms_max_segments,
            price=runtime.settings.sms_price_per_segment,
        )

    @router.post("/{broadcast_id}/confirm")
    def confirm(
        request: Request,
        me: StaffPost,
        broadcast_id: int,
        when: Annotated[str, Form(max_length=8)] = "now",
        at: Annotated[str, Form(max_length=40)] = "",
        local_time: Annotated[str, Form(max_length=8)] = "",
    ) -> Response:
        return confirm_page(request, broadcast_id, when, at, local_time)

    @router.post("/{broadcast_id}/schedule")
    def schedule(
        request: Request,
        me: StaffPost,
        broadcast_id: int,
        when: Annotated[str, Form(max_length=8)] = "now",
        at: Annotated[str, Form(max_length=40)] = "",
        local_time: Annotated[str, Form(max_length=8)] = "",
        confirmed: Annotated[str, Form(max_length=8)] = "",
    ) -> Response:
        if confirmed != "yes":  # nothing is queued before staff saw what it will cost
            return confirm_page(request, broadcast_id, when, at, local_time)
        row = broadcast_row(broadcast_id)
        now = clock()
        try:
            start, local = when_of(row, when, at, local_time)
            report = bc.send(db, advisor, runtime.policy, broadcast_id, now, at=start, local_time=local)
        except ValueError as exc:  # BroadcastError too: a cancelled or finished broadcast
            form = {"when": when, "at": at, "local_time": local_time}
            return page(request, broadcast_id, status_code=422, error=str(exc), schedule=form)
        audit(
            request,
            me,
            "broadcast_scheduled",
            broadcast_id,
            at=(start or now).isoformat(),
            local_time=local,
            queued=report.queued,
            deferred=sum(report.deferred.values()),
            excluded=dict(report.excluded),
        )
        done = "waiting" if report.waiting_until is not None else "scheduled"
        return RedirectResponse(f"{base}/{broadcast_id}?done={done}", status_code=303)

    @router.post("/{broadcast_id}/cancel")
    def cancel(request: Request, me: StaffPost, broadcast_id: int) -> Response:
        broadcast_row(broadcast_id)
        try:
            cancelled = bc.cancel(db, broadcast_id, clock())
        except bc.BroadcastError as exc:  # done: nothing left to cancel
            return page(request, broadcast_id, status_code=422, error=str(exc))
        audit(request, me, "broadcast_cancelled", broadcast_id, cancelled_messages=cancelled)
        return RedirectResponse(f"{base}/{broadcast_id}?done=cancelled", status_code=303)

    return router
