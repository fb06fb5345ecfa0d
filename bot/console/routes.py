"""The console's pages under ``/console``: login, conversations, transcripts, customers, the review
queue, exports, (staff) broadcasts and (admins) users and the audit log. Every route checks the role
on the server; every POST checks the session's CSRF token."""

# No `from __future__ import annotations` here: FastAPI must see the local Annotated aliases.

import csv
import hmac
import io
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine, select
from sqlmodel import Session

from bot.console import auth, charts, teach
from bot.console.auth import ConsoleConfig, LoginOutcome, Principal
from bot.console.broadcast_routes import broadcast_router
from bot.console.teach_routes import teach_router
from bot.runtime import Runtime
from dialogs.advisor import explain, no_offer_reason
from dialogs.bank import Question, QuestionBank
from dialogs.parsing import format_value
from dialogs.understanding import INTENTS
from storage import console_queries as q
from storage.console_models import Role
from storage.models import DeliveryStatus
from storage.tables import CUSTOMER, PLAN, PLAN_DECLINE, PREFERENCE, SWITCH_REQUEST, USAGE

COOKIE = "rapport_console"
LOGIN_CSRF_COOKIE = "rapport_login_csrf"
PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"

_CHANNELS = ("terminal", "telegram", "sms")
_DELIVERY = tuple(DeliveryStatus)
_EXPORT_FIELDS = (
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


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M") if isinstance(d, datetime) else ""
    env.filters["pct"] = lambda c: f"{c:.0%}" if isinstance(c, float) else ""
    env.filters["js"] = lambda v: "" if v is None else json.dumps(v, ensure_ascii=False)
    return env


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _safe_next(target: str | None) -> str:
    # Only paths inside the console: never "//evil.example" or an absolute URL.
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/conversations"


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise HTTPException(422, f"{value!r} is not a date (YYYY-MM-DD)") from None


def _search_filter(
    q_: Annotated[str, Query(alias="q", max_length=200)] = "",
    who: Annotated[str, Query(max_length=200)] = "",
    channel: Annotated[str, Query(max_length=16)] = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    review: Annotated[str, Query(max_length=1)] = "",
    delivery: Annotated[str, Query(max_length=16)] = "",
) -> q.SearchFilter:
    return q.SearchFilter(
        text=q_.strip(),
        who=who.strip(),
        channel=channel if channel in _CHANNELS else "",
        since=_date(since),
        until=_date(until),
        needs_review=review == "1",
        delivery=delivery if delivery in _DELIVERY else "",
    )


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _export_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {k: row[k] for k in _EXPORT_FIELDS}


def _stream(rows: Iterator[Mapping[Any, Any]], fmt: str) -> Iterator[str]:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_EXPORT_FIELDS)
        writer.writeheader()
        for row in rows:
            record = _export_row(row)
            record["parsed_value"] = json.dumps(record["parsed_value"]) if record["parsed_value"] else ""
            record["created_at"] = record["created_at"].isoformat()
            # A cell starting with = + - @ is a formula in a spreadsheet: customer text must not be.
            if record["text"][:1] in ("=", "+", "-", "@", "\t", "\r"):
                record["text"] = "'" + record["text"]
            writer.writerow(record)
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


def console_router(runtime: Runtime, config: ConsoleConfig | None = None) -> APIRouter:
    """The console's routes, served under ``/console`` (see :func:`bot.console.mount_console`)."""
    cfg = config or ConsoleConfig.from_settings(runtime.settings)
    db: Engine = runtime.db
    env = _environment()
    bank_cache = teach.TaughtBankCache(runtime.bank)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        principal: Principal | None = getattr(request.state, "console_principal", None)
        body = env.get_template(name).render(request=request, me=principal, prefix=PREFIX, **context)
        return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})

    def bank() -> QuestionBank:
        with db.connect() as conn:
            return bank_cache.get(conn)

    # -- who is asking ----------------------------------------------------------------------------

    def principal(request: Request) -> Principal:
        token = request.cookies.get(COOKIE)
        found = None
        if token:
            with db.begin() as conn:
                found = auth.resume_session(conn, token=token, config=cfg)
        if found is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            location = f"{PREFIX}/login?" + urlencode({"next": target})
            raise HTTPException(303, "log in first", headers={"Location": location})
        request.state.console_principal = found
        return found

    def require(role: Role) -> Callable[[Principal], Principal]:
        def check(me: Annotated[Principal, Depends(principal)]) -> Principal:
            if not me.can(role):
                raise HTTPException(403, f"this page is for {role.value}s")
            return me

        return check

    def csrf_ok(
        me: Annotated[Principal, Depends(principal)], csrf_token: Annotated[str, Form(max_length=100)] = ""
    ) -> Principal:
        if not hmac.compare_digest(csrf_token.encode(), me.csrf_token.encode()):
            raise HTTPException(403, "invalid or missing CSRF token: reload the page and try again")
        return me

    def require_post(role: Role) -> Callable[[Principal], Principal]:
        def check(me: Annotated[Principal, Depends(csrf_ok)]) -> Principal:
            if not me.can(role):
                raise HTTPException(403, f"this action is for {role.value}s")
            return me

        return check

    Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
    Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
    OperatorPost = Annotated[Principal, Depends(require_post(Role.OPERATOR))]
    AdminPost = Annotated[Principal, Depends(require_post(Role.ADMIN))]
    Filter = Annotated[q.SearchFilter, Depends(_search_filter)]

    # -- login ------------------------------------------------------------------------------------

    def login_page(request: Request, *, error: str = "", status_code: int = 200, next_: str = "") -> Response:
        token = secrets.token_urlsafe(32)
        response = render(
            request, "login.html", status_code, error=error, csrf_token=token, next=_safe_next(next_)
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=PREFIX,
        )
        return response

    @router.get("/login")
    def login_form(request: Request, next: str = "") -> Response:
        return login_page(request, next_=next)

    @router.post("/login")
    def login(
        request: Request,
        email: Annotated[str, Form(max_length=320)],
        password: Annotated[str, Form(max_length=1000)],
        csrf_token: Annotated[str, Form(max_length=100)] = "",
        next: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
            raise HTTPException(403, "invalid or missing CSRF token: reload the login page")
        with db.begin() as conn:
            result = auth.authenticate(conn, email=email, password=password, config=cfg)
            q.audit(
                conn,
                action=result.outcome.value,
                actor=result.email[:320],
                ip=_client_ip(request),
                now=cfg.clock(),
            )
            token = None
            if result.outcome is LoginOutcome.OK:
                assert result.user_id is not None
                token = auth.start_session(conn, user_id=result.user_id, now=cfg.clock())
        if token is None:
            message = {
                LoginOutcome.LOCKED: "Too many failed attempts: this account is locked for a while.",
            }.get(result.outcome, "Wrong e-mail or password.")
            return login_page(request, error=message, status_code=401, next_=next)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="lax", secure=request.url.scheme == "https", path=PREFIX
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
        return response

    @router.post("/logout")
    def logout(request: Request, me: Annotated[Principal, Depends(csrf_ok)]) -> Response:
        with db.begin() as conn:
            auth.end_session(conn, token_hash=me.token_hash)
            q.audit(conn, action="logout", actor=me.email, ip=_client_ip(request), now=cfg.clock())
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # -- conversations ------------------------------------------------------------------------------

    @router.get("")
    @router.get("/")
    def home(me: Operator) -> Response:
        return RedirectResponse(f"{PREFIX}/conversations", status_code=303)

    @router.get("/conversations")
    def conversations(request: Request, me: Operator, f: Filter, before: int | None = None) -> Response:
        with db.connect() as conn:
            rows = q.search_messages(conn, f, before=before)
        params = f.as_params()
        next_page = None
        if len(rows) == q.PAGE_SIZE:
            next_page = "?" + urlencode({**params, "before": rows[-1]["id"]})
        return render(
            request,
            "conversations.html",
            rows=rows,
            f=f,
            channels=_CHANNELS,
            deliveries=_DELIVERY,
            next_page=next_page,
            export_query=urlencode(params),
            paged=before is not None,
        )

    @router.get("/conversations/export")
    def export_search(request: Request, me: Operator, f: Filter, format: str = "csv") -> Response:
        return export(request, me, format, f, None)

    def export(
        request: Request, me: Principal, fmt: str, f: q.SearchFilter, customer_id: int | None
    ) -> Response:
        if fmt not in ("csv", "json"):
            raise HTTPException(422, "format must be csv or json")
        with db.begin() as conn:
            q.audit(
                conn,
                action="export",
                actor=me.email,
                target=f"customer:{customer_id}" if customer_id is not None else "search",
                detail={"format": fmt, "filter": f.as_params()},
                ip=_client_ip(request),
                now=cfg.clock(),
            )

        def rows() -> Iterator[str]:
            with db.connect() as conn:
                found = (
                    q.iter_transcript(conn, customer_id)
                    if customer_id is not None
                    else q.iter_search(conn, f)
                )
                yield from _stream(found, fmt)

        name = f"customer-{customer_id}" if customer_id is not None else "messages"
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        return StreamingResponse(
            rows(),
            media_type=media,
            headers={
                "Content-Disposition": f'attachment; filename="{name}.{fmt}"',
                "Cache-Control": "no-store",
            },
        )

    # -- one customer -------------------------------------------------------------------------------

    def customer_row(conn: Any, customer_id: int) -> Mapping[Any, Any]:
        row = conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).mappings().first()
        if row is None:
            raise HTTPException(404, "no such customer")
        return dict(row)

    @router.get("/customers/{customer_id}/transcript")
    def transcript(request: Request, me: Operator, customer_id: int) -> Response:
        with db.connect() as conn:
            customer = customer_row(conn, customer_id)
            messages = q.transcript(conn, customer_id)
            switches = conn.execute(
                select(SWITCH_REQUEST).where(SWITCH_REQUEST.c.customer_id == customer_id)
            ).mappings()
            declines = conn.execute(
                select(PLAN_DECLINE).where(PLAN_DECLINE.c.customer_id == customer_id)
            ).mappings()
            answers: dict[int, list[str]] = {}
            for s in switches:
                if s["message_id"] is not None:
                    answers.setdefault(s["message_id"], []).append(f"switch requested to {s['to_plan_id']}")
            for d in declines:
                if d["message_id"] is not None:
                    answers.setdefault(d["message_id"], []).append(f"declined {d['plan_id']}")
            reviews = q.reviews_for(conn, [m["id"] for m in messages if m["needs_review"]])
            attempts = q.attempts_for(conn, [m["id"] for m in messages if m["direction"] == "out"])
        the_bank = bank()
        replies: dict[int, list[Mapping[Any, Any]]] = {}
        for m in messages:
            if m["reply_to_id"] is not None:
                replies.setdefault(m["reply_to_id"], []).append(m)
        return render(
            request,
            "transcript.html",
            customer=customer,
            messages=[m for m in messages if m["direction"] == "in" or m["reply_to_id"] is None],
            replies=replies,
            answers=answers,
            reviews=reviews,
            attempts=attempts,
            describe=lambda key, value: _describe(the_bank, key, value),
        )

    @router.get("/customers/{customer_id}/export")
    def export_transcript(request: Request, me: Operator, customer_id: int, format: str = "csv") -> Response:
        with db.connect() as conn:
            customer_row(conn, customer_id)
        return export(request, me, format, q.SearchFilter(customer_id=customer_id), customer_id)

    @router.get("/customers/{customer_id}")
    def customer(request: Request, me: Operator, customer_id: int) -> Response:
        the_bank = bank()
        with db.connect() as conn:
            row = customer_row(conn, customer_id)
            prefs = list(
                conn.execute(
                    select(PREFERENCE)
                    .where(PREFERENCE.c.customer_id == customer_id)
                    .order_by(PREFERENCE.c.key)
                ).mappings()
            )
            plan = None
            if row["current_plan_id"]:
                plan = (
                    conn.execute(select(PLAN).where(PLAN.c.id == row["current_plan_id"])).mappings().first()
                )
            usage = list(conn.execute(select(USAGE).where(USAGE.c.customer_id == customer_id)).mappings())
            series = charts.usage_series(usage, plan["allowance"] if plan else {})
            advice = None
            # plans.fit fails on an empty catalog (IndexError), so only ask with plans on file.
            if runtime.dialog.advisor.catalog(conn).plans:
                advice = runtime.dialog.advisor.advise(
                    conn,
                    customer_id=customer_id,
                    current_plan=row["current_plan_id"],
                    preferences={p["key"]: p["value"] for p in prefs},
                    now=cfg.clock(),
                )
            switches = list(
                conn.execute(
                    select(SWITCH_REQUEST)
                    .where(SWITCH_REQUEST.c.customer_id == customer_id)
                    .order_by(SWITCH_REQUEST.c.id.desc())
                ).mappings()
            )
            declines = list(
                conn.execute(
                    select(PLAN_DECLINE)
                    .where(PLAN_DECLINE.c.customer_id == customer_id)
                    .order_by(PLAN_DECLINE.c.id.desc())
                ).mappings()
            )
            suggestions = [
                m
                for m in q.search_messages(conn, q.SearchFilter(customer_id=customer_id), limit=500)
                if m["intent"] == "suggestion"
            ]
        if advice is None:
            fit_text = "There is no plan catalog yet (rapport plans import), so no plan fit."
        elif advice.offer and advice.best is not None:
            fit_text = explain(advice)
        else:
            fit_text = no_offer_reason(advice)
        return render(
            request,
            "customer.html",
            customer=row,
            prefs=[(p, the_bank.get(p["key"]), _describe(the_bank, p["key"], p["value"])) for p in prefs],
            plan=plan,
            charts=[(s, charts.usage_svg(s)) for s in series],
            advice=advice,
            fit_text=fit_text,
            switches=switches,
            declines=declines,
            suggestions=suggestions,
        )

    # -- review queue -------------------------------------------------------------------------------

    @router.get("/review")
    def review(request: Request, me: Operator, before: int | None = None, done: str = "") -> Response:
        the_bank = bank()
        with db.connect() as conn:
            rows = q.review_queue(conn, before=before)
        items = []
        for row in rows:
            question = the_bank.get(row["question_key"])
            items.append((row, question if teach.teachable(question) else None))
        teachable = [question for question in the_bank if teach.teachable(question)]
        next_page = f"?before={rows[-1]['id']}" if len(rows) == q.PAGE_SIZE else None
        return render(
            request,
            "review.html",
            items=items,
            teachable=teachable,
            intents=INTENTS,
            next_page=next_page,
            done=done,
            describe=lambda key, value: _describe(the_bank, key, value),
        )

    def reviewed_message(conn: Any, message_id: int) -> Mapping[Any, Any]:
        found = q.message(conn, message_id)
        if found is None or found["direction"] != "in":
            raise HTTPException(404, "no such customer message")
        return found

    @router.post("/review/{message_id}/reviewed")
    def mark_reviewed(request: Request, me: OperatorPost, message_id: int) -> Response:
        with db.begin() as conn:
            reviewed_message(conn, message_id)
            q.mark_reviewed(conn, message_id=message_id, by=me.email, action="reviewed", now=cfg.clock())
        return RedirectResponse(f"{PREFIX}/review?done=reviewed", status_code=303)

    @router.post("/review/{message_id}/teach")
    def teach_synonym(
        request: Request,
        me: OperatorPost,
        message_id: int,
        answer: Annotated[str, Form(max_length=200)],
    ) -> Response:
        # `answer` is "question_key:option_index", from the form's select.
        key, _, index = answer.partition(":")
        question = bank_cache.base.get(key)
        if question is None or not teach.teachable(question) or not index.isdigit():
            raise HTTPException(422, "choose a question and one of its options")
        if int(index) >= len(question.options):
            raise HTTPException(422, "no such option")
        option = question.options[int(index)]
        with db.begin() as conn:
            found = reviewed_message(conn, message_id)
            phrase = teach.phrase_of(found["text"])
            if not phrase:
                raise HTTPException(422, "this message has no text to learn from")
            q.add_taught_synonym(
                conn,
                question_key=key,
                option_value=option.value,
                phrase=phrase,
                message_id=message_id,
                by=me.email,
            )
            q.mark_reviewed(conn, message_id=message_id, by=me.email, action="taught", now=cfg.clock())
            q.audit(
                conn,
                action="teach",
                actor=me.email,
                target=f"message:{message_id}",
                detail={"question": key, "option": option.value, "phrase": phrase},
                ip=_client_ip(request),
                now=cfg.clock(),
            )
        return RedirectResponse(f"{PREFIX}/review?done=taught", status_code=303)

    # -- admin --------------------------------------------------------------------------------------

    @router.get("/admin/users")
    def users(request: Request, me: Admin, created: str = "", password: str = "") -> Response:
        with db.connect() as conn:
            rows = q.users(conn)
        return render(request, "users.html", users=rows, roles=[r.value for r in Role], error="")

    @router.post("/admin/users")
    def add_user(
        request: Request,
        me: AdminPost,
        email: Annotated[str, Form(max_length=320)],
        role: Annotated[str, Form(max_length=16)],
    ) -> Response:
        try:
            with Session(db, expire_on_commit=False) as session, session.begin():
                user, generated = auth.add_user(session, email, role, None)
                q.audit(
                    session.connection(),
                    action="user_added",
                    actor=me.email,
                    target=user.email,
                    detail={"role": user.role},
                    ip=_client_ip(request),
                    now=cfg.clock(),
                )
        except ValueError as exc:
            with db.connect() as conn:
                rows = q.users(conn)
            return render(
                request, "users.html", 422, users=rows, roles=[r.value for r in Role], error=str(exc)
            )
        with db.connect() as conn:
            rows = q.users(conn)
        # The generated password is shown once, in this response only (never in a URL or a log).
        return render(
            request,
            "users.html",
            users=rows,
            roles=[r.value for r in Role],
            error="",
            created=user.email,
            password=generated,
        )

    @router.post("/admin/users/{user_id}/disable")
    def disable_user(request: Request, me: AdminPost, user_id: int) -> Response:
        if user_id == me.user_id:
            raise HTTPException(422, "you cannot disable your own account")
        with db.begin() as conn:
            if not q.disable_user(conn, user_id=user_id, now=cfg.clock()):
                raise HTTPException(404, "no such active user")
            auth.end_user_sessions(conn, user_id=user_id)
            email = next((u["email"] for u in q.users(conn) if u["id"] == user_id), str(user_id))
            q.audit(
                conn,
                action="user_disabled",
                actor=me.email,
                target=email,
                ip=_client_ip(request),
                now=cfg.clock(),
            )
        return RedirectResponse(f"{PREFIX}/admin/users", status_code=303)

    @router.get("/admin/audit")
    def audit_log(request: Request, me: Admin, before: int | None = None) -> Response:
        with db.connect() as conn:
            events = q.audit_events(conn, before=before)
            erased = q.erasures(conn)
        next_page = f"?before={events[-1]['id']}" if len(events) == q.PAGE_SIZE else None
        return render(request, "audit.html", events=events, erasures=erased, next_page=next_page)

    router.include_router(
        teach_router(
            runtime,
            prefix=PREFIX,
            clock=cfg.clock,
            render=render,
            operator=require(Role.OPERATOR),
            operator_post=require_post(Role.OPERATOR),
            client_ip=_client_ip,
        )
    )
    staff, staff_post = require(Role.STAFF), require_post(Role.STAFF)
    router.include_router(
        broadcast_router(
            runtime, prefix=PREFIX, clock=cfg.clock, render=render, staff=staff, staff_post=staff_post
        )
    )
    return router


def _describe(bank: QuestionBank, key: str | None, value: Any) -> str:
    question: Question | None = bank.get(key)
    if value is None:
        return ""
    if question is None:
        return json.dumps(value, ensure_ascii=False)
    return format_value(question, value)
