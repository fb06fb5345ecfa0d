"""The terminal channel: each line typed (or piped) is one inbound message from a phone number."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.text import Text

from bot.runtime import Runtime
from dialogs.engine import Inbound, Reply
from storage.db import transaction
from storage.queries import mark_sent

CHANNEL = "terminal"


def render(reply: Reply) -> str:
    """A reply as text, with its options numbered (as on SMS: a bare number answers)."""
    if not reply.options:
        return reply.text
    numbered = "  ".join(f"{i}) {o.label}" for i, o in enumerate(reply.options, start=1))
    return f"{reply.text}\n  {numbered}"


class TerminalChat:
    """Talks to the dialog engine as the customer with ``phone``."""

    def __init__(self, runtime: Runtime, phone: str, console: Console | None = None) -> None:
        self.runtime = runtime
        self.phone = phone
        self.console = console or Console(highlight=False)

    def send(self, line: str) -> list[Reply]:
        """One inbound message; prints and returns the replies."""
        result = self.runtime.dialog.handle(
            Inbound(channel=CHANNEL, address=self.phone, phone=self.phone, text=line)
        )
        for reply in result.replies:
            self.console.print(Text(f"{self.runtime.settings.bot_name}: ", style="bold cyan"), end="")
            self.console.print(Text(render(reply)))
        if not result.replies:
            self.console.print(Text("(no reply: you are opted out; send START to opt back in)", style="dim"))
        with transaction(self.runtime.db) as session:
            mark_sent(session, message_ids=[r.message_id for r in result.replies])
        return list(result.replies)

    def run(self, lines: Iterable[str]) -> int:
        """Send every line; returns how many were sent."""
        count = 0
        for line in lines:
            self.send(line.rstrip("\r\n"))
            count += 1
        return count
