"""What every console route shares: the :class:`Console` (runtime, settings, templates), page
rendering, and the dependencies that say who is asking (login, role, CSRF).

The console's router (:func:`bot.console.routes.console_router`) puts its ``Console`` on each
request before anything else runs (router dependencies run first); routes reach it through
:data:`ConsoleDep`, and pages are drawn with :func:`render`.
"""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine

from bot.console import auth, teach
from bot.console.auth import ConsoleConfig, Principal
from bot.runtime import Runtime
from dialogs.bank import Question, QuestionBank
from dialogs.parsing import format_value
from storage.console_models import Role

COOKIE = "rapport_console"
LOGIN_CSRF_COOKIE = "rapport_login_csrf"
PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"


def environment() -> Environment:
    """The console's Jinja environment: autoescaped, with its filters."""
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


@dataclass
class Console:
    """One console: the runtime it serves, its settings, templates and taught-bank cache."""

    runtime: Runtime
    config: ConsoleConfig
    env: Environment = field(default_factory=environment)
    bank_cache: teach.TaughtBankCache = field(init=False)

    def __post_init__(self) -> None:
        self.bank_cache = teach.TaughtBankCache(self.runtime.bank)

    @classmethod
    def from_runtime(cls, runtime: Runtime, config: ConsoleConfig | None = None) -> "Console":
        return cls(runtime, config or ConsoleConfig.from_settings(runtime.settings))

    @property
    def db(self) -> Engine:
        return self.runtime.db

    def now(self) -> datetime:
        return self.config.clock()

    def bank(self) -> QuestionBank:
        """The question bank with the synonyms operators taught."""
        with self.db.connect() as conn:
            return self.bank_cache.get(conn)

    def attach(self, request: Request) -> None:
        """The router-level dependency that makes this console the request's."""
        request.state.console = self


def console(request: Request) -> Console:
    found: Console | None = getattr(request.state, "console", None)
    if found is None:
        raise RuntimeError("console route outside the console's router (see console_router)")
    return found


ConsoleDep = Annotated[Console, Depends(console)]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A console page (never cached), with the signed-in user as ``me``."""
    me: Principal | None = getattr(request.state, "console_principal", None)
    body = console(request).env.get_template(name).render(request=request, me=me, prefix=PREFIX, **context)
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def safe_next(target: str | None) -> str:
    """Where to go after login: only paths inside the console, never "//evil.example" or a URL."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/conversations"


def describe(bank: QuestionBank, key: str | None, value: Any) -> str:
    """A stored answer as the operator reads it."""
    question: Question | None = bank.get(key)
    if value is None:
        return ""
    if question is None:
        return json.dumps(value, ensure_ascii=False)
    return format_value(question, value)


# -- who is asking --------------------------------------------------------------------------------


def return_to(request: Request) -> str:
    """Where to come back after logging in: this page for a GET; for a form posted after the
    session ended, the page the form was on (login returns with a GET, so never to a POST-only
    address and a 405), or the conversations."""
    if request.method in ("GET", "HEAD"):
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc and referer.netloc != request.url.netloc:
        return PREFIX + "/conversations"
    page = referer.path + (f"?{referer.query}" if referer.query else "")
    return safe_next(page)


def is_poll(request: Request) -> bool:
    """A page's background poll (``*.json``, ``live``): it does not keep the session alive."""
    path = request.url.path
    return request.method == "GET" and (path.endswith(".json") or path.endswith("/live"))


def principal(request: Request, ctx: ConsoleDep) -> Principal:
    """The signed-in user; to the login page (303) when there is none."""
    token = request.cookies.get(COOKIE)
    found = None
    if token:
        with ctx.db.begin() as conn:
            found = auth.resume_session(conn, token=token, config=ctx.config, touch=not is_poll(request))
    if found is None:
        target = return_to(request)
        location = f"{PREFIX}/login?" + urlencode({"next": target})
        raise HTTPException(303, "log in first", headers={"Location": location})
    request.state.console_principal = found
    return found


WHO = {Role.OPERATOR: "operators, staff and admins", Role.STAFF: "staff and admins", Role.ADMIN: "admins"}


def require(role: Role) -> Callable[[Principal], Principal]:
    """A dependency: the signed-in user, who must have ``role`` (403 otherwise)."""

    def check(me: Annotated[Principal, Depends(principal)]) -> Principal:
        if not me.can(role):
            raise HTTPException(403, f"Only {WHO[role]} may open this page.")
        return me

    return check


def csrf_ok(
    me: Annotated[Principal, Depends(principal)], csrf_token: Annotated[str, Form(max_length=100)] = ""
) -> Principal:
    """The signed-in user of a form post whose CSRF token matches the session's (403 otherwise)."""
    if not hmac.compare_digest(csrf_token.encode(), me.csrf_token.encode()):
        raise HTTPException(403, "invalid or missing CSRF token: reload the page and try again")
    return me


def require_post(role: Role) -> Callable[[Principal], Principal]:
    """A dependency for form posts: CSRF checked, and the user must have ``role``."""

    def check(me: Annotated[Principal, Depends(csrf_ok)]) -> Principal:
        if not me.can(role):
            raise HTTPException(403, f"Only {WHO[role]} may do this.")
        return me

    return check


Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
OperatorPost = Annotated[Principal, Depends(require_post(Role.OPERATOR))]
AdminPost = Annotated[Principal, Depends(require_post(Role.ADMIN))]
SignedIn = Annotated[Principal, Depends(csrf_ok)]
