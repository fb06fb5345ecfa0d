"""The console's inbox under ``/console/inbox``, for operators and above: conversations by state
(with the bot, waiting for a person, with a person, resolved) updating live, and a conversation's
page to claim it, reply to the customer through the outbox, write internal notes, record a fact
the customer told the operator, and resolve it (hand it back to the bot). Every action is audited.
A thin layer over :mod:`storage.handoff`."""

# No `from __future__ import annotations` here: FastAPI must see the local Annotated aliases.

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Connection, RowMapping

from bot.console.auth import Principal
from bot.runtime import Runtime
from dialogs import sms_segments as segments
from dialogs.advisor import Advice, money
from dialogs.bank import QuestionBank
from dialogs.parsing import format_value, parse_answer
from storage import console_queries as q
from storage import handoff as conversations
from storage.handoff import Conv, TransitionError
from storage.handoff_models import ConversationState

POLL_MS = 3000  # how often the inbox and a conversation's page ask for news
MAX_REPLY = 1_600  # ten SMS segments
MAX_NOTE = 5_000
FIGURE_DAYS = 14
RESOLVED_FOR = timedelta(days=1)  # how long resolved conversations stay listed
STATES = (
    (ConversationState.WAITING, "Waiting for a person"),
    (ConversationState.HUMAN, "With a person"),
    (ConversationState.BOT, "With the bot"),
    (ConversationState.RESOLVED, "Resolved"),
)
_NOTICES = {
    "claimed": "You have this conversation now: the bot is quiet until you resolve it.",
    "sent": "Reply queued: it goes out through the outbox (its delivery state shows below).",
    "noted": "Note saved. Notes are never sent to the customer.",
    "fact": "Fact recorded (source: operator). The bot will not ask for it again.",
    "resolved": "Resolved: the bot resumes where the dialogue stood on the customer's next message.",
}

Render = Callable[..., HTMLResponse]


def waited(since: datetime | None, now: datetime) -> str:
    """A waiting time as "4 min", "2 h 05 min", "3 d 2 h"."""
    if since is None:
        return ""
    minutes = max(int((now - since).total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def fit_summary(advice: Advice | None) -> str:
    """The plan fit in an operator's terms: plan names, monthly money with its currency."""
    if advice is None:
        return "No plan catalog yet, so no plan fit."
    fit, current, best = advice.fit, advice.current, advice.best
    parts = []
    if current is not None:
        cost = (
            f", {money(fit.current_cost, current.currency)}/month on actual usage" if fit.current_cost else ""
        )
        parts.append(f"On {current.name} ({money(current.monthly_price, current.currency)}/month{cost}).")
    else:
        parts.append("Current plan not on file.")
    if fit.suggest and best is not None and fit.best_cost is not None and fit.saving is not None:
        parts.append(
            f"Best fit: {best.name} at {money(fit.best_cost, best.currency)}/month, saving "
            f"{money(fit.saving, best.currency)}/month ({money(fit.saving * 12, best.currency)}/year)"
            f" over {fit.months} month(s) of usage."
        )
        if not advice.offer:
            parts.append("Not offered: the customer declined it lately.")
    else:
        parts.append(f"No better plan ({fit.reason.value}).")
    return " ".join(parts)


def describe(bank: QuestionBank, key: str | None, value: Any) -> str:
    """A stored value as the question's answer reads ("evenings", "$40.00")."""
    question = bank.get(key)
    if value is None:
        return ""
    return format_value(question, value) if question is not None else str(value)


def inbox_router(
    runtime: Runtime,
    *,
    prefix: str,
    clock: Callable[[], datetime],
    render: Render,
    bank: Callable[[], QuestionBank],
    operator: Callable[..., Principal],
    operator_post: Callable[..., Principal],
) -> APIRouter:
    """The inbox routes, to include in the console's router (``prefix`` is its path).

    ``operator`` and ``operator_post`` are the console's dependencies that let operators and
    above in (``operator_post`` also checks the CSRF token).
    """
    db = runtime.db
    base = f"{prefix}/inbox"
    router = APIRouter(prefix="/inbox", include_in_schema=False)
    Operator = Annotated[Principal, Depends(operator)]
    OperatorPost = Annotated[Principal, Depends(operator_post)]

    def audit(
        conn: Connection, request: Request, me: Principal, action: str, customer_id: int, **detail: Any
    ) -> None:
        q.audit(
            conn,
            action=action,
            actor=me.email,
            target=f"customer:{customer_id}",
            detail=detail,
            ip=request.client.host if request.client else None,
            now=clock(),
        )

    def customer_row(conn: Connection, customer_id: int) -> RowMapping:
        row = conversations.customer(conn, customer_id=customer_id)
        if row is None:
            raise HTTPException(404, "no such customer")
        return row

    def counts(conn: Connection) -> dict[str, int]:
        return conversations.counts(conn, resolved_since=clock() - RESOLVED_FOR)

    def lists_html(request: Request) -> tuple[dict[str, int], str]:
        now = clock()
        with db.connect() as conn:
            found = {
                state: conversations.inbox(conn, state=state, resolved_since=now - RESOLVED_FOR)
                for state, _ in STATES
            }
            n = counts(conn)
        body = render(
            request, "_inbox_lists.html", states=STATES, found=found, counts=n, now=now, waited=waited
        )
        return n, bytes(body.body).decode()

    @router.get("")
    def inbox(request: Request, me: Operator) -> Response:
        n, lists = lists_html(request)
        now = clock()
        with db.connect() as conn:
            days = conversations.daily_figures(conn, since=now - timedelta(days=FIGURE_DAYS), until=now)
        return render(request, "inbox.html", lists=lists, counts=n, days=days, poll_ms=POLL_MS)

    @router.get("/live")
    def inbox_live(request: Request, me: Operator) -> Response:
        n, lists = lists_html(request)
        return JSONResponse({"counts": n, "html": lists}, headers={"Cache-Control": "no-store"})

    @router.get("/counts.json")
    def inbox_counts(me: Operator) -> Response:
        with db.connect() as conn:
            return JSONResponse(counts(conn), headers={"Cache-Control": "no-store"})

    @router.get("/segments.json")
    def sms_segments(me: Operator, text: Annotated[str, Query(max_length=MAX_REPLY)] = "") -> Response:
        counted = segments.count(text)
        return JSONResponse(
            {"encoding": str(counted.encoding), "units": counted.units, "segments": counted.segments}
        )

    # -- one conversation ---------------------------------------------------------------------------

    def transcript_html(request: Request, customer_id: int) -> tuple[Conv | None, str]:
        the_bank = bank()
        with db.connect() as conn:
            conv = conversations.latest(conn, customer_id=customer_id)
            messages = q.transcript(conn, customer_id)[-300:]
            notes = conversations.notes(conn, customer_id=customer_id)
        items: list[tuple[datetime, int, str, RowMapping]] = [
            (m["created_at"], m["id"], "message", m) for m in messages
        ]
        items += [(n["created_at"], n["id"], "note", n) for n in notes]
        items.sort(key=lambda item: (item[0], item[2] == "note", item[1]))

        body = render(
            request,
            "_inbox_transcript.html",
            items=items,
            describe=lambda key, value: describe(the_bank, key, value),
        )
        return conv, bytes(body.body).decode()

    def conv_json(conv: Conv | None, now: datetime) -> dict[str, Any]:
        if conv is None:
            return {"state": None}
        return {
            "id": conv.id,
            "state": conv.state,
            "operator": conv.operator if conv.state == ConversationState.HUMAN else None,
            "waiting": waited(conv.waiting_since, now) if conv.state == ConversationState.WAITING else "",
        }

    @router.get("/{customer_id}")
    def conversation(
        request: Request, me: Operator, customer_id: int, done: str = "", error: str = ""
    ) -> Response:
        the_bank = bank()
        now = clock()
        with db.connect() as conn:
            customer = customer_row(conn, customer_id)
            prefs = conversations.profile(conn, customer_id=customer_id)
            plan = conversations.plan(conn, plan_id=customer["current_plan_id"])
            advice = None
            advisor = runtime.dialog.advisor
            if advisor.catalog(conn).plans:
                advice = advisor.advise(
                    conn,
                    customer_id=customer_id,
                    current_plan=customer["current_plan_id"],
                    preferences={p["key"]: p["value"] for p in prefs},
                    now=now,
                )
            where = conversations.reply_address(conn, customer_id=customer_id)
        conv, transcript = transcript_html(request, customer_id)
        known = {p["key"] for p in prefs}
        return render(
            request,
            "inbox_conversation.html",
            customer=customer,
            conv=conv,
            conv_state=conv_json(conv, now),
            transcript=transcript,
            prefs=[(p, the_bank.get(p["key"])) for p in prefs],
            describe=lambda key, value: describe(the_bank, key, value),
            questions=[question for question in the_bank if question.key not in known]
            + [question for question in the_bank if question.key in known],
            plan=plan,
            fit=fit_summary(advice),
            where=where,
            notice=_NOTICES.get(done, ""),
            error=error[:300],
            poll_ms=POLL_MS,
            max_reply=MAX_REPLY,
            mine=conv is not None and conv.state == ConversationState.HUMAN and conv.operator == me.email,
        )

    @router.get("/{customer_id}/live")
    def conversation_live(request: Request, me: Operator, customer_id: int) -> Response:
        with db.connect() as conn:
            customer_row(conn, customer_id)
        conv, transcript = transcript_html(request, customer_id)
        return JSONResponse(
            {"conversation": conv_json(conv, clock()), "html": transcript},
            headers={"Cache-Control": "no-store"},
        )

    def back(customer_id: int, done: str) -> RedirectResponse:
        return RedirectResponse(f"{base}/{customer_id}?done={done}#reply", status_code=303)

    def refused(customer_id: int, why: str) -> Response:
        # A lost race (someone else claimed, the customer opted out) shows on the page, not as a 500.
        return RedirectResponse(f"{base}/{customer_id}?" + urlencode({"error": why}), status_code=303)

    def claim_in(conn: Connection, me: Principal, customer_id: int) -> Conv:
        """The customer's conversation, claimed by ``me`` if it is not already."""
        conv = conversations.open_conversation(conn, customer_id=customer_id)
        if conv is not None and conv.state == ConversationState.HUMAN and conv.operator == me.email:
            return conv
        return conversations.take_over(conn, customer_id=customer_id, operator=me.email, now=clock())

    @router.post("/{customer_id}/claim")
    def claim(request: Request, me: OperatorPost, customer_id: int) -> Response:
        try:
            with db.begin() as conn:
                customer_row(conn, customer_id)
                conv = claim_in(conn, me, customer_id)
                audit(conn, request, me, "handoff_claim", customer_id, conversation=conv.id)
        except TransitionError as exc:
            return refused(customer_id, str(exc))
        return back(customer_id, "claimed")

    @router.post("/{customer_id}/reply")
    def reply(
        request: Request,
        me: OperatorPost,
        customer_id: int,
        text: Annotated[str, Form(max_length=MAX_REPLY)],
    ) -> Response:
        text = text.strip()
        if not text:
            raise HTTPException(422, "write a reply first")
        try:
            with db.begin() as conn:
                customer = customer_row(conn, customer_id)
                if customer["opted_out_at"] is not None or customer["erased_at"] is not None:
                    return refused(customer_id, "the customer opted out: nothing can be sent")
                where = conversations.reply_address(conn, customer_id=customer_id)
                if where is None:
                    return refused(customer_id, "the customer never wrote to us: no channel to reply on")
                conv = claim_in(conn, me, customer_id)
                now = clock()
                message_id = conversations.queue_reply(
                    conn, customer_id=customer_id, channel=where[0], address=where[1], text=text, now=now
                )
                conversations.mark_human_reply(conn, conversation_id=conv.id, now=now)
                audit(
                    conn,
                    request,
                    me,
                    "handoff_reply",
                    customer_id,
                    conversation=conv.id,
                    message=message_id,
                    channel=where[0],
                )
        except TransitionError as exc:
            return refused(customer_id, str(exc))
        return back(customer_id, "sent")

    @router.post("/{customer_id}/note")
    def note(
        request: Request,
        me: OperatorPost,
        customer_id: int,
        text: Annotated[str, Form(max_length=MAX_NOTE)],
    ) -> Response:
        text = text.strip()
        if not text:
            raise HTTPException(422, "write the note first")
        with db.begin() as conn:
            customer_row(conn, customer_id)
            conv = conversations.open_conversation(conn, customer_id=customer_id) or conversations.latest(
                conn, customer_id=customer_id
            )
            if conv is None:
                conv = conversations.start(conn, customer_id=customer_id, now=clock())
            note_id = conversations.add_note(
                conn, conversation_id=conv.id, author=me.email, text=text, now=clock()
            )
            audit(conn, request, me, "handoff_note", customer_id, conversation=conv.id, note=note_id)
        return back(customer_id, "noted")

    @router.post("/{customer_id}/fact")
    def fact(
        request: Request,
        me: OperatorPost,
        customer_id: int,
        key: Annotated[str, Form(max_length=64)],
        value: Annotated[str, Form(max_length=500)],
    ) -> Response:
        question = bank().get(key)
        if question is None:
            raise HTTPException(422, "choose a question")
        parsed = parse_answer(question, value)
        if parsed is None or parsed.confidence < runtime.dialog.config.confidence_threshold:
            return refused(
                customer_id,
                f"could not read {value[:100]!r} as {question.key}: write it as the customer would",
            )
        with db.begin() as conn:
            customer_row(conn, customer_id)
            where = conversations.reply_address(conn, customer_id=customer_id)
            conversations.record_fact(
                conn,
                customer_id=customer_id,
                key=question.key,
                value=parsed.value,
                channel=where[0] if where else None,
                now=clock(),
            )
            audit(conn, request, me, "handoff_fact", customer_id, key=question.key, value=parsed.value)
        return back(customer_id, "fact")

    @router.post("/{customer_id}/resolve")
    def resolve(request: Request, me: OperatorPost, customer_id: int) -> Response:
        try:
            with db.begin() as conn:
                customer_row(conn, customer_id)
                conv = conversations.open_conversation(conn, customer_id=customer_id)
                if conv is None:
                    return refused(customer_id, "nothing to resolve: the conversation is closed")
                conversations.resolve(conn, conversation_id=conv.id, operator=me.email, now=clock())
                audit(conn, request, me, "handoff_resolve", customer_id, conversation=conv.id)
        except TransitionError as exc:
            return refused(customer_id, str(exc))
        return back(customer_id, "resolved")

    return router
