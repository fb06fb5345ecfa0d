"""Teaching the bot what customers mean (issue 13.8): intents and answers, refused when the phrase
already means something else, only for messages waiting for review, listed and undone, in the
console and the CLI. On both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from dialogs import taught
from dialogs.engine import DialogEngine, EngineConfig, Inbound
from dialogs.taught import TaughtBankCache
from storage.tables import MESSAGE
from tests.bot.test_cli import rapport
from tests.bot.test_console import Console, console, login, say  # noqa: F401 (console is a fixture)

PHRASE = "gimme the head honcho"


def _handoff_engine(c: Console) -> DialogEngine:
    cache = TaughtBankCache(c.runtime.bank, max_age=0)
    return DialogEngine(
        c.db, c.runtime.bank, EngineConfig(), bank_provider=cache.get, intents_provider=cache.intents
    )


def test_teaching_an_intent_in_the_console_is_understood_then_undone(console: Console) -> None:  # noqa: F811
    ids = say(console.runtime, "+14155550181", "hi", PHRASE)
    with console.db.connect() as conn:
        row = conn.execute(select(MESSAGE).where(MESSAGE.c.id == ids[1])).mappings().one()
    assert row["needs_review"] and row["intent"] != "handoff"
    login(console.client, "op@example.com")
    assert 'name="intent"' in console.client.get("/console/review").text
    response = console.client.post(
        f"/console/review/{ids[1]}/teach-intent", data={"csrf_token": console.csrf(), "intent": "handoff"}
    )
    assert response.status_code == 200 and "Taught" in response.text
    engine = _handoff_engine(console)
    engine.handle(Inbound(channel="sms", address="+14155550182", text="hi"))
    result = engine.handle(Inbound(channel="sms", address="+14155550182", text="Gimme the head honcho!"))
    assert [r.intent for r in result.replies] == ["handoff"]

    page = console.client.get("/console/taught").text
    assert PHRASE in page and "intent handoff" in page
    with console.db.connect() as conn:
        taught_id = taught.list_taught(conn)[0].id
    response = console.client.post(f"/console/taught/{taught_id}/undo", data={"csrf_token": console.csrf()})
    assert response.status_code == 200 and "Undone" in response.text
    with console.db.connect() as conn:
        assert taught.list_taught(conn) == []


def test_teaching_refuses_a_phrase_taught_as_something_else_and_unreviewable_messages(
    console: Console,  # noqa: F811
) -> None:
    ids = say(console.runtime, "+14155550183", "hi", PHRASE, "hi", "evenings")
    say(console.runtime, "+14155550184", "hi", PHRASE)
    login(console.client, "op@example.com")
    ok = console.client.post(
        f"/console/review/{ids[1]}/teach-intent", data={"csrf_token": console.csrf(), "intent": "handoff"}
    )
    assert ok.status_code == 200
    # The same phrase, from another customer's message, as another intent: refused.
    with console.db.connect() as conn:
        other = conn.execute(
            select(MESSAGE.c.id).where(MESSAGE.c.text == PHRASE, MESSAGE.c.id != ids[1])
        ).scalar_one()
    refused = console.client.post(
        f"/console/review/{other}/teach-intent", data={"csrf_token": console.csrf(), "intent": "complaint"}
    )
    assert refused.status_code == 422 and "already taught as intent handoff" in refused.text
    # "evenings" was understood: it is not waiting for review, so nothing is taught from it.
    understood = console.client.post(
        f"/console/review/{ids[3]}/teach-intent", data={"csrf_token": console.csrf(), "intent": "smalltalk"}
    )
    assert understood.status_code == 422 and "not waiting for review" in understood.text
    # A phrase shipped as another intent's example is refused too.
    shipped = say(console.runtime, "+14155550185", "hi", "talk to a person")[1]
    with console.db.begin() as conn:
        conn.execute(MESSAGE.update().where(MESSAGE.c.id == shipped).values(needs_review=True))
        with pytest.raises(taught.TeachError, match="already an example of the intent handoff"):
            taught.teach(conn, message_id=shipped, by="op", bank=console.runtime.bank, intent="complaint")


def test_teach_from_the_command_line(db_url: str, tmp_path: Path) -> None:
    chat = rapport("chat", "--phone", "+14155550186", db_url=db_url, cwd=tmp_path, stdin=f"hi\n{PHRASE}\n")
    assert chat.returncode == 0, chat.stderr
    queue = rapport("teach", "queue", db_url=db_url, cwd=tmp_path)
    assert queue.returncode == 0, queue.stderr
    line = next(x for x in queue.stdout.splitlines() if PHRASE in x)
    message_id = line.split()[1] if line.split()[0] in "│┃|" else line.split()[0]
    message_id = "".join(ch for ch in message_id if ch.isdigit())
    added = rapport(
        "teach", "add", message_id, "--intent", "handoff", "--by", "cli", db_url=db_url, cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    assert "means intent handoff" in added.stdout
    again = rapport("teach", "add", message_id, "--intent", "complaint", db_url=db_url, cwd=tmp_path)
    assert again.returncode == 2 and "already reviewed" in again.stderr
    listed = rapport("teach", "list", db_url=db_url, cwd=tmp_path)
    assert PHRASE in listed.stdout and "intent handoff" in listed.stdout
    taught_id = "".join(ch for ch in listed.stdout.splitlines()[3].split()[1] if ch.isdigit())
    undone = rapport("teach", "undo", taught_id, db_url=db_url, cwd=tmp_path)
    assert undone.returncode == 0 and "Forgot" in undone.stdout
    assert PHRASE not in rapport("teach", "list", db_url=db_url, cwd=tmp_path).stdout
