"""A small Telegram Bot API stand-in on 127.0.0.1 for end-to-end tests, and a test user.

It runs an aiohttp server in its own thread and answers ``/bot<token>/<method>`` like the Bot
API does, without long polling (``getUpdates`` answers at once). Tests queue updates with
:meth:`BotApiStandin.push_update`, read what the bot sent with :meth:`sent_messages`, and make
calls fail with :meth:`fail_next` (a 429 for one chat) or :attr:`failing_methods`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-token_for-the-standin"
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Rapport", "username": "rapport_test_bot"}


@dataclass
class Sent:
    """A message the bot sent (or an edit it made)."""

    chat_id: int
    text: str
    message_id: int
    reply_markup: dict[str, Any] | None
    at: float  # time.monotonic() when the stand-in got it

    @property
    def buttons(self) -> list[tuple[str, str]]:
        """(label, callback data) of the inline buttons."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [(b["text"], b.get("callback_data", "")) for row in rows for b in row]


@dataclass
class _Queued:
    update: dict[str, Any]
    handed_out: bool = False


@dataclass
class BotApiStandin:
    """The stand-in server. Use as a context manager; :attr:`root` is the ``base_url`` root."""

    token: str = TOKEN
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failing_methods: set[str] = field(default_factory=set)
    webhook: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._sent: list[Sent] = []
        self._edits: list[Sent] = []
        self._failures: dict[tuple[str, int], list[int]] = {}
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server ----------------------------------------------------------------------------

    def __enter__(self) -> BotApiStandin:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/bot{token}/{method}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="bot-api-standin")
        self._thread.start()
        assert started.wait(10), "the Bot API stand-in did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def root(self) -> str:
        """The server root, as TELEGRAM_API_BASE_URL takes it."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        params = await _params(request)
        with self._lock:
            self.calls.append((method, params))
            if method in self.failing_methods:
                return _error(500, "Internal Server Error: failing on purpose")
            chat_id = int(params.get("chat_id", 0) or 0)
            waits = self._failures.get((method, chat_id))
            if waits:
                retry_after = waits.pop(0)
                return web.json_response(
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {retry_after}",
                        "parameters": {"retry_after": retry_after},
                    },
                    status=429,
                )
            handler: Callable[[dict[str, Any]], Any] | None = getattr(self, f"_api_{method}", None)
            if handler is None:
                return _error(404, f"Not Found: method {method} is not in the stand-in")
            result = handler(params)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    # -- the Bot API methods -----------------------------------------------------------------

    def _api_getMe(self, params: dict[str, Any]) -> Any:
        return {**BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False}

    def _api_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        # Updates handed out before and confirmed by the offset are gone; new ones always come.
        self._queue = [q for q in self._queue if not (q.handed_out and q.update["update_id"] < offset)]
        for q in self._queue:
            q.handed_out = True
        return [q.update for q in self._queue]

    def _api_sendMessage(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        message_id = next(self._message_ids)
        markup = params.get("reply_markup")
        self._sent.append(Sent(chat_id, params["text"], message_id, markup, time.monotonic()))
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {k: BOT_USER[k] for k in ("id", "is_bot", "first_name", "username")},
            "text": params["text"],
            **({"reply_markup": markup} if markup else {}),
        }

    def _api_editMessageText(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        self._edits.append(
            Sent(
                chat_id,
                params["text"],
                int(params["message_id"]),
                params.get("reply_markup"),
                time.monotonic(),
            )
        )
        return {
            "message_id": int(params["message_id"]),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "text": params["text"],
        }

    def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> Any:
        return True

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        return True

    def _api_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = {"url": params["url"], "secret_token": params.get("secret_token")}
        return True

    def _api_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = {}
        return True

    def _api_setMyCommands(self, params: dict[str, Any]) -> Any:
        return True

    def _api_setChatMenuButton(self, params: dict[str, Any]) -> Any:
        return True

    # -- the test user's side ----------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (an ``update_id`` is given if it has none)."""
        update = dict(update)
        update.setdefault("update_id", next(self._update_ids))
        with self._lock:
            self._queue.append(_Queued(update))
        return update

    def new_update_id(self) -> int:
        """A fresh update id (for updates posted to a webhook)."""
        return next(self._update_ids)

    def sent_messages(self, chat_id: int | None = None) -> list[Sent]:
        """What the bot sent (to ``chat_id``), in order."""
        with self._lock:
            return [s for s in self._sent if chat_id is None or s.chat_id == chat_id]

    def edits(self, chat_id: int) -> list[Sent]:
        """The bot's editMessageText calls for ``chat_id``."""
        with self._lock:
            return [s for s in self._edits if s.chat_id == chat_id]

    def called(self, method: str) -> list[dict[str, Any]]:
        """The parameters of every call to ``method``."""
        with self._lock:
            return [p for m, p in self.calls if m == method]

    def fail_next(self, method: str, chat_id: int, retry_after: int) -> None:
        """Answer the next ``method`` call for ``chat_id`` with a 429 asking to wait ``retry_after`` s."""
        with self._lock:
            self._failures.setdefault((method, chat_id), []).append(retry_after)


def _error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)


async def _params(request: web.Request) -> dict[str, Any]:
    """The call's parameters: JSON body, form fields (values JSON-encoded by the library) or query."""
    raw: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        raw.update(await request.json())
        return raw
    if request.can_read_body:
        raw.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    params: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            params[key] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            params[key] = value
    # Strings that happened to be JSON numbers stay what the method expects.
    if "text" in raw:
        params["text"] = raw["text"]
    if "secret_token" in raw:
        params["secret_token"] = raw["secret_token"]
    if "url" in raw:
        params["url"] = raw["url"]
    return params


# -- updates as Telegram sends them --------------------------------------------------------------

_message_ids = itertools.count(1)


def user(user_id: int, first_name: str = "Ada") -> dict[str, Any]:
    """A Telegram user."""
    return {"id": user_id, "is_bot": False, "first_name": first_name}


def message_update(
    chat_id: int,
    text: str | None = None,
    *,
    from_id: int | None = None,
    chat_type: str = "private",
    message_id: int | None = None,
    update_id: int | None = None,
    kind: str = "message",
    **extra: Any,
) -> dict[str, Any]:
    """An update with a message (``kind="edited_message"`` for an edit); ``extra`` adds fields
    such as ``sticker`` or ``contact``."""
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = "Ada"
    else:
        chat["title"] = "A group"
    message: dict[str, Any] = {
        "message_id": message_id if message_id is not None else next(_message_ids),
        "date": int(time.time()),
        "chat": chat,
        "from": user(from_id if from_id is not None else abs(chat_id)),
        **extra,
    }
    if text is not None:
        message["text"] = text
        if text.startswith("/"):
            command = text.split(" ", 1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    if kind == "edited_message":
        message["edit_date"] = int(time.time())
    update: dict[str, Any] = {kind: message}
    if update_id is not None:
        update["update_id"] = update_id
    return update


def button_update(chat_id: int, pressed: Sent, data: str, *, query_id: str | None = None) -> dict[str, Any]:
    """A callback query: the user pressed the button with ``data`` under the bot's message ``pressed``."""
    return {
        "callback_query": {
            "id": query_id or f"q{next(_message_ids)}",
            "from": user(chat_id),
            "chat_instance": f"ci{chat_id}",
            "data": data,
            "message": {
                "message_id": pressed.message_id,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private", "first_name": "Ada"},
                "from": {k: BOT_USER[k] for k in ("id", "is_bot", "first_name", "username")},
                "text": pressed.text,
                **({"reply_markup": pressed.reply_markup} if pressed.reply_markup else {}),
            },
        }
    }
