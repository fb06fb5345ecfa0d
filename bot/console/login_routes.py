"""Logging in and out of the console (a CSRF cookie guards the login form itself)."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from bot.console import auth
from bot.console.auth import LoginOutcome
from bot.console.deps import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    PREFIX,
    ConsoleDep,
    SignedIn,
    client_ip,
    render,
    safe_next,
)
from storage import console_queries as q

router = APIRouter()


def login_page(request: Request, *, error: str = "", status_code: int = 200, next_: str = "") -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request, "login.html", status_code, error=error, csrf_token=token, next=safe_next(next_)
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


LOGIN_REFUSED = (
    "Wrong e-mail or password, or the account is locked or disabled. "
    "After several failed attempts an account is locked for a while; an admin can unlock it."
)


@router.get("/login")
def login_form(request: Request, next: str = "") -> Response:
    return login_page(request, next_=next)


@router.post("/login")
def login(
    request: Request,
    ctx: ConsoleDep,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1000)],
    csrf_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
        raise HTTPException(403, "invalid or missing CSRF token: reload the login page")
    with ctx.db.connect() as conn:
        throttled = auth.login_throttled(conn, ip=client_ip(request), config=ctx.config)
    if throttled:  # before any password is checked: a flood costs no argon2 work
        return login_page(
            request,
            error="Too many failed logins from your address: wait a minute, then try again.",
            status_code=429,
            next_=next,
        )
    with ctx.db.begin() as conn:
        result = auth.authenticate(conn, email=email, password=password, config=ctx.config)
        q.audit(
            conn, action=result.outcome.value, actor=result.email[:320], ip=client_ip(request), now=ctx.now()
        )
        token = None
        if result.outcome is LoginOutcome.OK:
            assert result.user_id is not None
            token = auth.start_session(conn, user_id=result.user_id, now=ctx.now())
    if token is None:
        # One answer for an unknown, locked, disabled account or a wrong password: no enumeration.
        return login_page(request, error=LOGIN_REFUSED, status_code=401, next_=next)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="lax", secure=request.url.scheme == "https", path=PREFIX
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
def logout(request: Request, ctx: ConsoleDep, me: SignedIn) -> Response:
    with ctx.db.begin() as conn:
        auth.end_session(conn, token_hash=me.token_hash)
        q.audit(conn, action="logout", actor=me.email, ip=client_ip(request), now=ctx.now())
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
