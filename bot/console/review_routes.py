"""The review queue: customer messages the bot did not understand, marked reviewed or used to
teach a question a new synonym."""

# No `from __future__ import annotations` here: FastAPI must see the Annotated aliases.

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Connection

from bot.console import teach
from bot.console.deps import PREFIX, ConsoleDep, Operator, OperatorPost, client_ip, describe, render
from dialogs import taught
from dialogs.understanding import INTENTS
from storage import console_queries as q
from storage.types import Direction

router = APIRouter()


@router.get("/review")
def review(
    request: Request, ctx: ConsoleDep, me: Operator, before: int | None = None, done: str = ""
) -> Response:
    bank = ctx.bank()
    with ctx.db.connect() as conn:
        rows = q.review_queue(conn, before=before)
    items = []
    for row in rows:
        question = bank.get(row["question_key"])
        items.append((row, question if teach.teachable(question) else None))
    teachable = [question for question in bank if teach.teachable(question)]
    next_page = f"?before={rows[-1]['id']}" if len(rows) == q.PAGE_SIZE else None
    return render(
        request,
        "review.html",
        items=items,
        teachable=teachable,
        intents=INTENTS,
        next_page=next_page,
        done=done,
        describe=lambda key, value: describe(bank, key, value),
    )


def reviewed_message(conn: Connection, message_id: int) -> Mapping[Any, Any]:
    """The customer message under review; 404 for anything else."""
    found = q.message(conn, message_id)
    if found is None or found["direction"] != Direction.IN:
        raise HTTPException(404, "no such customer message")
    return found


@router.post("/review/{message_id}/reviewed")
def mark_reviewed(request: Request, ctx: ConsoleDep, me: OperatorPost, message_id: int) -> Response:
    with ctx.db.begin() as conn:
        reviewed_message(conn, message_id)
        q.mark_reviewed(conn, message_id=message_id, by=me.email, action="reviewed", now=ctx.now())
    return RedirectResponse(f"{PREFIX}/review?done=reviewed", status_code=303)


@router.post("/review/{message_id}/teach")
def teach_synonym(
    request: Request,
    ctx: ConsoleDep,
    me: OperatorPost,
    message_id: int,
    answer: Annotated[str, Form(max_length=200)],
) -> Response:
    # `answer` is "question_key:option_index", from the form's select.
    key, _, index = answer.partition(":")
    question = ctx.bank_cache.base.get(key)
    if question is None or not teach.teachable(question) or not index.isdigit():
        raise HTTPException(422, "choose a question and one of its options")
    if int(index) >= len(question.options):
        raise HTTPException(422, "no such option")
    option = question.options[int(index)]
    try:
        with ctx.db.begin() as conn:
            reviewed_message(conn, message_id)
            # The one place that teaches: only messages in the review queue, never a phrase that
            # already means something else.
            done = taught.teach(
                conn,
                message_id=message_id,
                by=me.email,
                bank=ctx.bank_cache.base,
                question_key=key,
                option_value=option.value,
            )
            q.audit(
                conn,
                action="teach",
                actor=me.email,
                target=f"message:{message_id}",
                detail={"question": key, "option": option.value, "phrase": done.phrase},
                ip=client_ip(request),
                now=ctx.now(),
            )
    except taught.TeachError as exc:
        raise HTTPException(422, str(exc)) from None
    return RedirectResponse(f"{PREFIX}/review?done=taught", status_code=303)
