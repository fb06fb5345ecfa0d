"""The console's pages under ``/console``: login, conversations, transcripts, customers, the review
queue, exports, (staff) broadcasts and (admins) users and the audit log. Every route checks the role
on the server; every POST checks the session's CSRF token.

Each area is a module of plain route functions (``*_routes.py``) over the shared dependencies of
:mod:`bot.console.deps`; the data comes from :mod:`storage.console_queries` (no SQL here).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from bot.console import (
    admin_routes,
    conversation_routes,
    customer_routes,
    dashboard_routes,
    login_routes,
    review_routes,
)
from bot.console.auth import ConsoleConfig
from bot.console.broadcast_routes import broadcast_router
from bot.console.deps import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    PREFIX,
    TEMPLATES,
    Console,
    client_ip,
    render,
    require,
    require_post,
)
from bot.console.errors import check_form, check_ids
from bot.console.inbox_routes import inbox_router
from bot.console.teach_routes import teach_router
from bot.runtime import Runtime
from storage.console_models import Role

__all__ = ["COOKIE", "LOGIN_CSRF_COOKIE", "PREFIX", "TEMPLATES", "console_router"]


def console_router(runtime: Runtime, config: ConsoleConfig | None = None) -> APIRouter:
    """The console's routes, served under ``/console`` (see :func:`bot.console.mount_console`)."""
    console = Console.from_runtime(runtime, config)
    router = APIRouter(
        prefix=PREFIX,
        include_in_schema=False,
        dependencies=[Depends(console.attach), Depends(check_ids), Depends(check_form)],
    )
    # "/console" itself: an included router cannot have a route with an empty path.
    router.add_api_route("", conversation_routes.home, methods=["GET"])
    for area in (
        login_routes,
        conversation_routes,
        customer_routes,
        review_routes,
        admin_routes,
        dashboard_routes,
    ):
        router.include_router(area.router)
    router.include_router(
        inbox_router(
            runtime,
            prefix=PREFIX,
            clock=console.config.clock,
            render=render,
            bank=console.bank,
            operator=require(Role.OPERATOR),
            operator_post=require_post(Role.OPERATOR),
        )
    )
    router.include_router(
        teach_router(
            runtime,
            prefix=PREFIX,
            clock=console.config.clock,
            render=render,
            operator=require(Role.OPERATOR),
            operator_post=require_post(Role.OPERATOR),
            client_ip=client_ip,
        )
    )
    router.include_router(
        broadcast_router(
            runtime,
            prefix=PREFIX,
            clock=console.config.clock,
            render=render,
            staff=require(Role.STAFF),
            staff_post=require_post(Role.STAFF),
        )
    )
    return router
