"""Admin pages: console accounts (add, disable) and the audit log with the erasures."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from bot.console import auth
from bot.console.deps import PREFIX, Admin, AdminPost, ConsoleDep, client_ip, render
from storage import console_queries as q
from storage.console_models import Role

ROLES = [r.value for r in Role]

router = APIRouter()


@router.get("/admin/users")
def users(request: Request, ctx: ConsoleDep, me: Admin, created: str = "", password: str = "") -> Response:
    with ctx.db.connect() as conn:
        rows = q.users(conn)
    return render(request, "users.html", users=rows, roles=ROLES, error="")


@router.post("/admin/users")
def add_user(
    request: Request,
    ctx: ConsoleDep,
    me: AdminPost,
    email: Annotated[str, Form(max_length=320)],
    role: Annotated[str, Form(max_length=16)],
) -> Response:
    try:
        with Session(ctx.db, expire_on_commit=False) as session, session.begin():
            user, generated = auth.add_user(session, email, role, None)
            q.audit(
                session.connection(),
                action="user_added",
                actor=me.email,
                target=user.email,
                detail={"role": user.role},
                ip=client_ip(request),
                now=ctx.now(),
            )
    except ValueError as exc:
        with ctx.db.connect() as conn:
            rows = q.users(conn)
        return render(request, "users.html", 422, users=rows, roles=ROLES, error=str(exc))
    with ctx.db.connect() as conn:
        rows = q.users(conn)
    # The generated password is shown once, in this response only (never in a URL or a log).
    return render(
        request, "users.html", users=rows, roles=ROLES, error="", created=user.email, password=generated
    )


@router.post("/admin/users/{user_id}/disable")
def disable_user(request: Request, ctx: ConsoleDep, me: AdminPost, user_id: int) -> Response:
    if user_id == me.user_id:
        raise HTTPException(422, "you cannot disable your own account")
    with ctx.db.begin() as conn:
        if not q.disable_user(conn, user_id=user_id, now=ctx.now()):
            raise HTTPException(404, "no such active user")
        auth.end_user_sessions(conn, user_id=user_id)
        email = next((u["email"] for u in q.users(conn) if u["id"] == user_id), str(user_id))
        q.audit(
            conn, action="user_disabled", actor=me.email, target=email, ip=client_ip(request), now=ctx.now()
        )
    return RedirectResponse(f"{PREFIX}/admin/users", status_code=303)


@router.get("/admin/audit")
def audit_log(request: Request, ctx: ConsoleDep, me: Admin, before: int | None = None) -> Response:
    with ctx.db.connect() as conn:
        events = q.audit_events(conn, before=before)
        erased = q.erasures(conn)
    next_page = f"?before={events[-1]['id']}" if len(events) == q.PAGE_SIZE else None
    return render(request, "audit.html", events=events, erasures=erased, next_page=next_page)
