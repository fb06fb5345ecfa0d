"""The console's teaching pages: teach an intent from the review queue, list what was taught,
undo it. A thin layer over :mod:`dialogs.taught`, called the way ``rapport teach`` calls it."""

# No `from __future__ import annotations` here: FastAPI must see the local Annotated aliases.

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bot.console.auth import Principal
from bot.runtime import Runtime
from dialogs import taught
from dialogs.understanding import INTENTS
from storage import console_queries as q

Render = Callable[..., HTMLResponse]
_NOTICES = {"undone": "Undone: the phrase is no longer taught."}


def teach_router(
    runtime: Runtime,
    *,
    prefix: str,
    clock: Callable[[], datetime],
    render: Render,
    operator: Callable[..., Principal],
    operator_post: Callable[..., Principal],
    client_ip: Callable[[Request], str | None],
) -> APIRouter:
    """The teaching routes, to include in the console's router (``prefix`` is its path).

    ``operator_post`` also checks the CSRF token.
    """
    db = runtime.db
    router = APIRouter(include_in_schema=False)
    Operator = Annotated[Principal, Depends(operator)]
    OperatorPost = Annotated[Principal, Depends(operator_post)]

    def audit(request: Request, me: Principal, action: str, target: str, detail: dict[str, Any]) -> None:
        with db.begin() as conn:
            q.audit(
                conn,
                action=action,
                actor=me.email,
                target=target,
                detail=detail,
                ip=client_ip(request),
                now=clock(),
            )

    @router.post("/review/{message_id}/teach-intent")
    def teach_intent(
        request: Request,
        me: OperatorPost,
        message_id: int,
        intent: Annotated[str, Form(max_length=40)],
    ) -> Response:
        if intent not in INTENTS:
            raise HTTPException(422, "choose one of the intents")
        try:
            with db.begin() as conn:
                done = taught.teach(
                    conn, message_id=message_id, by=me.email, bank=runtime.bank, intent=intent
                )
        except taught.TeachError as exc:
            raise HTTPException(422, str(exc)) from None
        audit(request, me, "teach", f"message:{message_id}", {"intent": intent, "phrase": done.phrase})
        return RedirectResponse(f"{prefix}/review?done=taught", status_code=303)

    @router.get("/taught")
    def taught_list(request: Request, me: Operator, done: str = "") -> Response:
        with db.connect() as conn:
            rows = taught.list_taught(conn)
        return render(request, "taught.html", rows=rows, notice=_NOTICES.get(done))

    @router.post("/taught/{taught_id}/undo")
    def undo(request: Request, me: OperatorPost, taught_id: int) -> Response:
        try:
            with db.begin() as conn:
                gone = taught.undo(conn, taught_id)
        except taught.TeachError as exc:
            raise HTTPException(404, str(exc)) from None
        audit(
            request, me, "untaught", f"taught:{taught_id}", {"phrase": gone.phrase, "meaning": gone.meaning}
        )
        return RedirectResponse(f"{prefix}/taught?done=undone", status_code=303)

    return router
