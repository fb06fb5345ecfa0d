"""Admin pages: console accounts (add, disable) and the audit log with the erasures."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from bot.console import auth
from bot.console.deps import PREFIX, Admin, AdminPost, ConsoleDep, client_ip, render
from storage import console_queries as q
from storage.console_models import Role

ROLES = [r.value for r in Role]
_NOTICES = (
    "Unlocked {email}: it can log in again.",
    "Disabled {email}; its sessions were ended.",
    "Enabled {email}.",
)

router = APIRouter()


@router.get("/admin/users")
def users(request: Request, ctx: ConsoleDep, me: Admin, notice: str = "") -> Response:
    with ctx.db.connect() as conn:
        rows = q.users(conn)
    known = {template.format(email=u["email"]) for template in _NOTICES for u in rows}
    return render(
        request, "users.html", users=rows, roles=ROLES, error="", notice=notice if notice in known else ""
    )


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


ACTIONS = {
    "unlock": auth.AccountAction.UNLOCK,
    "reset": auth.AccountAction.RESET,
    "role": auth.AccountAction.ROLE,
    "disable": auth.AccountAction.DISABLE,
    "enable": auth.AccountAction.ENABLE,
}
_DONE = {
    auth.AccountAction.UNLOCK: _NOTICES[0],
    auth.AccountAction.RESET: "New password for {email} (shown once; its sessions were ended):",
    auth.AccountAction.ROLE: "{email} is now {to}; its sessions were ended.",
    auth.AccountAction.DISABLE: _NOTICES[1],
    auth.AccountAction.ENABLE: _NOTICES[2],
}


@router.post("/admin/users/{user_id}/{action}")
def manage_user(
    request: Request,
    ctx: ConsoleDep,
    me: AdminPost,
    user_id: int,
    action: str,
    role: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Unlock, reset the password of, change the role of, disable or enable an account; audited."""
    what = ACTIONS.get(action)
    if what is None:
        raise HTTPException(404, "no such action")
    with ctx.db.connect() as conn:
        email = next((u["email"] for u in q.users(conn) if u["id"] == user_id), None)
    if email is None:
        raise HTTPException(404, "no such user")
    try:
        with ctx.db.begin() as conn:
            done = auth.manage(
                conn,
                email=email,
                action=what,
                actor=me.email,
                now=ctx.now(),
                role=role,
                ip=client_ip(request),
            )
    except ValueError as exc:
        with ctx.db.connect() as conn:
            rows = q.users(conn)
        return render(request, "users.html", 422, users=rows, roles=ROLES, error=str(exc))
    if done.password is None and what is not auth.AccountAction.ROLE:
        notice = _DONE[what].format(email=done.email)
        return RedirectResponse(f"{PREFIX}/admin/users?" + urlencode({"notice": notice}), status_code=303)
    with ctx.db.connect() as conn:
        rows = q.users(conn)
    notice = _DONE[what].format(email=done.email, **done.detail)
    # A new password is shown once, in this response only (never in a URL or a log).
    return render(
        request, "users.html", users=rows, roles=ROLES, error="", notice=notice, reset=done.password
    )


@router.get("/admin/audit")
def audit_log(request: Request, ctx: ConsoleDep, me: Admin, before: int | None = None) -> Response:
    with ctx.db.connect() as conn:
        events = q.audit_events(conn, before=before)
        erased = q.erasures(conn)
    next_page = f"?before={events[-1]['id']}" if len(events) == q.PAGE_SIZE else None
    return render(request, "audit.html", events=events, erasures=erased, next_page=next_page)
