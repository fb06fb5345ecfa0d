"""The Telegram channel: long polling or a webhook, inline buttons, deep-link linking, rate limits.

Inbound: every update becomes at most one :class:`~dialogs.engine.Inbound` (a message by its
``chat:message_id``, a button press by its callback-query id, so a redelivered update is a
duplicate to the engine). Outbound: replies are outbox rows; this channel delivers a turn's
replies at once, one chat after another in order but chats in parallel, and the outbox loop
retries the rest. :class:`ChatRateLimiter` keeps to Telegram's limits (overall and per chat)
and slows down only the chat that got a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import SQLAlchemyError
from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    MenuButtonCommands,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    Update,
)
from telegram.constants import ChatType
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from bot.channels.base import read_body
from bot.intake import Intake, is_outage
from bot.runtime import Runtime
from bot.settings import Settings
from dialogs.engine import Inbound, Media, ReplyOption, storable_text
from schedulers.delivery import Outbox, Outgoing, SendError
from schedulers.ratelimit import Limit, SharedLimiter
from storage.db import transaction
from storage.links import (
    LinkOutcome,
    customer_by_phone,
    customer_of,
    link_address,
    link_code_for_phone,
    redeem_link_code,
    set_phone_if_missing,
)
from storage.phones import to_e164

log = logging.getLogger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4096  # Telegram's limit for one message, in UTF-16 code units
MAX_CALLBACK_DATA = 64  # bytes
MAX_BODY_BYTES = 1024 * 1024  # a webhook call larger than this is not an update Telegram sends
MAX_ID = 2**63 - 1  # Telegram's ids fit in 64 bits
INLINE_RETRY_MAX = 5.0  # a 429 asking to wait at most this long is waited out within the send
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
COMMANDS = (
    ("start", "Start or pick up where we left off"),
    ("help", "What I can do"),
    ("profile", "What I know about you"),
    ("link", "Link this chat to your account by phone number"),
    ("stop", "Stop all messages"),
)

EDITED = "I only see new messages, not edits: please send your answer again as a new message."
GROUPS = "I only talk in private chats: open a chat with me to get started."
LINK_PROMPT = "To link this chat to your account, tap the button below to share your phone number."
LINKED = "Thanks! This chat is now linked to your account."
NOT_OWN_CONTACT = "I can only link your own phone number: please use the button from /link."
BAD_CODE = "That link has expired or was already used. Ask us for a new one; meanwhile, let's carry on."
NO_MATCH = "Thanks, I've noted your number."

Mode = Literal["polling", "webhook"]


# -- outbound: splitting, buttons, rate limits ---------------------------------------------------


def _u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 units, cut at a paragraph, line or word
    boundary where one is in the second half of the part, else mid-word."""
    parts: list[str] = []
    rest = text
    while _u16(rest) > limit:
        # The longest prefix that fits (code points outside the BMP count twice).
        end = min(len(rest), limit)
        while _u16(rest[:end]) > limit:
            end -= 1
        head = rest[:end]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            at = head.rfind(sep)
            if at >= end // 2:
                cut = at
                break
        if cut == -1:
            parts.append(head)
            rest = rest[end:]
        else:
            parts.append(head[:cut].rstrip())
            rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return [p for p in parts if p] or [""]


def keyboard(options: Sequence[ReplyOption]) -> InlineKeyboardMarkup | None:
    """Inline buttons for the options (one per row), or None when there are none or a value is
    too long to be a button's callback data (the text still lists the question)."""
    if not options:
        return None
    if any(len(o.value.encode()) > MAX_CALLBACK_DATA for o in options):
        log.warning("an option value is longer than %d bytes: sending without buttons", MAX_CALLBACK_DATA)
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(o.label, callback_data=o.value)] for o in options])


class ChatRateLimiter:
    """Telegram's limits, ``per_second`` overall and ``per_chat`` per chat, shared by every
    worker process (:class:`~schedulers.ratelimit.SharedLimiter`); one send per chat at a time
    in this process so a chat's messages keep their order; a chat Telegram asked to wait (429
    ``retry_after``) is held back without slowing the others."""

    def __init__(self, shared: SharedLimiter, per_second: float, per_chat: float) -> None:
        self.shared = shared
        self.overall = Limit(f"{CHANNEL}:all", per_second)
        self.per_chat = per_chat
        # A chat's lock lives while a send holds or awaits it: no pruning to get wrong.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def chat_key(self, chat: str) -> str:
        """The shared bucket of one chat."""
        return f"{CHANNEL}:chat:{chat}"

    @contextlib.asynccontextmanager
    async def slot(self, chat: str) -> AsyncIterator[None]:
        """Wait for this chat's turn and an overall slot, then send."""
        lock = self._locks.setdefault(chat, asyncio.Lock())
        async with lock:
            try:
                await self.shared.acquire(Limit(self.chat_key(chat), self.per_chat), self.overall)
            except SQLAlchemyError as exc:  # nothing went out: try again later
                raise SendError(f"send pacing unavailable ({type(exc).__name__})", retryable=True) from exc
            yield

    async def hold(self, chat: str, seconds: float) -> None:
        """Send nothing to ``chat`` for ``seconds`` (best effort: the next 429 says it again)."""
        try:
            await asyncio.to_thread(self.shared.hold, self.chat_key(chat), seconds)
        except SQLAlchemyError:
            log.warning("could not record a %.0f s hold for chat %s", seconds, chat, exc_info=True)

    async def held_for(self, chat: str) -> float:
        """Seconds until ``chat`` may get a message again."""
        try:
            return await asyncio.to_thread(self.shared.held_for, self.chat_key(chat))
        except SQLAlchemyError as exc:  # nothing went out: try again later
            raise SendError(f"send pacing unavailable ({type(exc).__name__})", retryable=True) from exc


def _seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramSender:
    """Sends outbox messages to Telegram chats (the ``address`` is the chat id)."""

    channel = CHANNEL

    def __init__(self, bot: Bot, limiter: ChatRateLimiter) -> None:
        self.bot = bot
        self.limiter = limiter
        self.max_in_flight = min(32, max(1, math.ceil(limiter.overall.per_second)))

    async def send(self, message: Outgoing) -> str | None:
        """Send ``message`` (split if long, buttons on the last part); the last part's id."""
        try:
            chat_id = int(message.address)
        except ValueError:
            raise SendError(f"{message.address!r} is not a Telegram chat id", retryable=False) from None
        held = await self.limiter.held_for(message.address)
        if held > INLINE_RETRY_MAX:
            # Waiting here would stall the outbox loop for every chat: try again later instead.
            raise SendError(f"chat on hold for {held:.0f} s (rate limited)", retryable=True, retry_after=held)
        parts = split_text(message.text)
        markup = keyboard(message.options)
        sent: Message | None = None
        for i, part in enumerate(parts):
            sent = await self._send_one(chat_id, part, markup if i == len(parts) - 1 else None)
        return str(sent.message_id) if sent is not None else None

    async def notice(
        self, chat_id: int, text: str, markup: ReplyKeyboardMarkup | ReplyKeyboardRemove | None = None
    ) -> None:
        """A short service note outside the dialogue (best effort: failures are logged)."""
        try:
            await self._send_one(chat_id, text, markup)
        except SendError as exc:
            log.warning("a notice to chat %d was not sent: %s", chat_id, exc.reason)

    async def _send_one(
        self,
        chat_id: int,
        text: str,
        markup: InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | None,
    ) -> Message:
        chat = str(chat_id)
        wait = 0.0
        for _ in range(3):
            async with self.limiter.slot(chat):
                try:
                    return await self.bot.send_message(chat_id, text, reply_markup=markup)
                except RetryAfter as exc:
                    wait = _seconds(exc)
                    await self.limiter.hold(chat, wait)
                    log.warning("Telegram asked to wait %.1f s before writing to chat %s", wait, chat)
                    if wait > INLINE_RETRY_MAX:
                        raise SendError(
                            f"rate limited: retry after {wait:.0f} s", retryable=True, retry_after=wait
                        ) from None
                except Forbidden as exc:  # the user blocked the bot, or left
                    raise SendError(f"forbidden: {exc.message}", retryable=False) from None
                except (BadRequest, ChatMigrated, InvalidToken) as exc:
                    raise SendError(f"{type(exc).__name__}: {exc.message}", retryable=False) from None
                except TelegramError as exc:  # NetworkError, TimedOut, 5xx: it may have gone
                    reason = f"{type(exc).__name__}: {exc.message}"
                    raise SendError(reason, retryable=True, ambiguous=True) from None
        raise SendError("rate limited repeatedly", retryable=True, retry_after=wait)


# -- the service ---------------------------------------------------------------------------------


def resolve_mode(settings: Settings) -> Mode:
    """``TELEGRAM_MODE``, with ``auto`` meaning webhook when a public URL is set."""
    if settings.telegram_mode != "auto":
        return settings.telegram_mode
    return "webhook" if settings.public_base_url else "polling"


def make_bot(settings: Settings) -> Bot:
    """A :class:`telegram.Bot` for ``TELEGRAM_API_BASE_URL`` (a server root, as
    ``https://api.telegram.org``: requests go to ``<root>/bot<token>/<method>``)."""
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    root = settings.telegram_api_base_url.rstrip("/")
    return Bot(
        settings.telegram_bot_token.get_secret_value(),
        base_url=root + "/bot{token}",
        base_file_url=root + "/file/bot{token}",
        request=HTTPXRequest(connection_pool_size=32, pool_timeout=10.0, read_timeout=15.0),
        get_updates_request=HTTPXRequest(read_timeout=10.0),
    )


class TelegramService:
    """The Telegram channel as ``rapport run`` runs it (see :class:`bot.channels.base.ChannelService`)."""

    name = CHANNEL

    def __init__(
        self,
        runtime: Runtime,
        bot: Bot,
        *,
        mode: Mode,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        delete_webhook_on_stop: bool = False,
        poll_timeout: float = 25.0,
        idle_delay: float = 1.0,
        drain_timeout: float = 10.0,
    ) -> None:
        if mode == "webhook" and not (webhook_url and webhook_secret):
            raise ValueError("webhook mode needs PUBLIC_BASE_URL and TELEGRAM_WEBHOOK_SECRET")
        self.runtime = runtime
        self.bot = bot
        self.mode: Mode = mode
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.delete_webhook_on_stop = delete_webhook_on_stop
        self.poll_timeout = poll_timeout
        self.idle_delay = idle_delay
        self.drain_timeout = drain_timeout
        settings = runtime.settings
        self.limiter = ChatRateLimiter(
            SharedLimiter(runtime.db, headroom=settings.rate_headroom),
            settings.telegram_rate_per_second,
            settings.telegram_rate_per_chat,
        )
        self._sender = TelegramSender(bot, self.limiter)
        self._outbox: Outbox | None = None
        self._intake: Intake | None = None
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._chat_locks: dict[str, asyncio.Lock] = {}
        self._chat_users: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # update ids of notes sent (no DB row)
        self._offset: int | None = None

    @property
    def sender(self) -> TelegramSender:
        return self._sender

    def bind(self, outbox: Outbox, intake: Intake) -> None:
        """Hand what comes in to ``intake``; send a turn's replies through ``outbox`` at once."""
        self._outbox, self._intake = outbox, intake

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("the Telegram channel is not bound to an intake (make_outbox binds it)")
        return self._intake

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, *, receive: bool = True) -> None:
        """Connect, set the command menu, then register the webhook or start polling
        (``receive=False``: connect only, to send)."""
        try:
            await self.bot.initialize()
        except InvalidToken as exc:
            raise ValueError(f"Telegram rejected TELEGRAM_BOT_TOKEN: {exc.message}") from exc
        except TelegramError as exc:
            log.warning("Telegram is not reachable yet (%s); carrying on", exc)
        if not receive:
            return
        await self._optional(
            "setMyCommands", self.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
        )
        await self._optional(
            "setChatMenuButton", self.bot.set_chat_menu_button(menu_button=MenuButtonCommands())
        )
        if self.mode == "webhook":
            assert self.webhook_url is not None
            # Without its webhook the bot hears nothing: a failure here must be loud.
            await self.bot.set_webhook(
                url=self.webhook_url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES
            )
            log.info("Telegram webhook registered at %s", self.webhook_url)
        else:
            # getUpdates fails while a webhook is set.
            await self._optional("deleteWebhook", self.bot.delete_webhook())
            self._poller = asyncio.create_task(self._poll(), name="telegram-polling")
            log.info("Telegram long polling started")

    async def stop(self) -> None:
        """Stop polling, let pending sends finish (or leave them queued), remove the webhook if
        asked to, and close the HTTP connections."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
            if self._offset is not None:  # tell Telegram what was handled, or it comes again
                await self._optional("getUpdates", self.bot.get_updates(offset=self._offset, timeout=0))
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d Telegram deliveries did not finish in time", len(late))
        if self.mode == "webhook" and self.delete_webhook_on_stop:
            await self._optional("deleteWebhook", self.bot.delete_webhook())
        with contextlib.suppress(TelegramError):
            await self.bot.shutdown()

    async def _optional(self, what: str, call: Awaitable[object]) -> None:
        try:
            await call
        except TelegramError as exc:
            log.warning("Telegram %s failed (%s); carrying on without it", what, exc)

    # -- polling -------------------------------------------------------------------------

    async def _poll(self) -> None:
        backoff = 1.0
        while True:
            asked = time.monotonic()
            try:
                updates = await self.bot.get_updates(
                    offset=self._offset,
                    timeout=timedelta(seconds=self.poll_timeout),
                    allowed_updates=ALLOWED_UPDATES,
                )
            except InvalidToken:
                log.error("Telegram rejected the bot token: polling stops")
                return
            except (NetworkError, Conflict) as exc:  # Conflict: another poller, or a webhook
                log.warning("getUpdates failed (%s); retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            except TelegramError as exc:
                log.warning("getUpdates failed (%s); retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            if not updates and time.monotonic() - asked < min(self.poll_timeout / 2, 1.0):
                # The server answered at once (no long polling): do not spin.
                await asyncio.sleep(self.idle_delay)
            for update in updates:
                if not await self.process_update(update):
                    break  # not confirmed: Telegram gives it (and what followed) again
                self._offset = max(self._offset or 0, update.update_id + 1)
            else:
                backoff = 1.0
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    # -- webhook -------------------------------------------------------------------------

    def router(self) -> APIRouter | None:
        """``POST /telegram/webhook`` (webhook mode only)."""
        if self.mode != "webhook":
            return None
        router = APIRouter()

        @router.post(WEBHOOK_PATH, include_in_schema=False)
        async def telegram_webhook(request: Request) -> Response:
            return await self.handle_webhook(request)

        return router

    async def handle_webhook(self, request: Request) -> Response:
        """403 without the right secret, 400 for what is not an update, 503 to have Telegram
        deliver it again when it could not be handled, else 200."""
        client = request.client.host if request.client else "?"
        secret = request.headers.get(SECRET_HEADER, "")
        assert self.webhook_secret is not None
        if not hmac.compare_digest(secret.encode(), self.webhook_secret.encode()):
            log.warning("Telegram webhook call from %s refused: wrong or missing secret token", client)
            return Response(status_code=403)
        body = await read_body(request, MAX_BODY_BYTES)
        if body is None:
            log.warning(
                "Telegram webhook call from %s refused with 413: over %d bytes", client, MAX_BODY_BYTES
            )
            return Response(status_code=413)
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("not a Telegram update")
        except ValueError as exc:
            log.warning("Telegram webhook call from %s refused: malformed update (%s)", client, exc)
            return Response(status_code=400)
        try:
            update = Update.de_json(data, self.bot)
        except Exception as exc:  # an update Telegram would deliver again and again: confirm it
            log.warning(
                "Telegram update %s ignored: malformed (%s: %s)", data["update_id"], type(exc).__name__, exc
            )
            return Response(status_code=200)
        ok = await self.process_update(update)
        return Response(status_code=200 if ok else 503)

    # -- updates -------------------------------------------------------------------------

    async def process_update(self, update: Update) -> bool:
        """Handle one update; False when the database is down and it should come again (a turn
        is spooled instead; linking a chat needs the database). Any other failure is logged and
        the update confirmed: Telegram would redeliver it forever."""
        try:
            await self._dispatch(update)
        except Exception as exc:
            if is_outage(exc):
                self.intake.outage.started(exc)
                return False
            log.exception("Telegram update %d could not be handled; dropped", update.update_id)
        return True

    async def _dispatch(self, update: Update) -> None:
        problem = _malformed(update)
        if problem is not None:
            log.warning("Telegram update %s ignored: %s", update.update_id, problem)
            return
        if update.callback_query is not None:
            await self._on_button(update)
            return
        message = update.message
        if message is None:
            edited = update.edited_message
            if edited is not None and edited.chat.type == ChatType.PRIVATE:
                self._note_once(f"u{update.update_id}", edited.chat.id, EDITED)
            return  # anything else (channel posts, membership changes) needs no answer
        chat = message.chat
        if chat.type != ChatType.PRIVATE:
            if (message.text or "").startswith("/"):
                self._note_once(f"u{update.update_id}", chat.id, GROUPS)
            return
        if message.contact is not None:
            await self._on_contact(update, message)
            return
        text = message.text if message.text is not None else (message.caption or "")
        command, _, argument = text.partition(" ")
        command = command.split("@", 1)[0].lower() if command.startswith("/") else ""
        if command == "/link":
            markup = ReplyKeyboardMarkup(
                [[KeyboardButton("Share my phone number", request_contact=True)]],
                one_time_keyboard=True,
                resize_keyboard=True,
            )
            self._note_once(f"u{update.update_id}", chat.id, LINK_PROMPT, markup)
            return
        if command == "/start" and argument.strip():
            await self._on_deep_link(message, argument.strip())
            return
        if command:
            text = command + (" " + argument if argument else "")  # "/help@RapportBot" -> "/help"
        # Stickers, photos, voice...: media, which the engine answers by asking again.
        await self._turn(self._inbound(message, text))

    def _inbound(
        self, message: Message, text: str, *, choice: str | None = None, phone: str | None = None
    ) -> Inbound:
        user = message.from_user
        name = _name(user.full_name) if user is not None else None
        return Inbound(
            channel=CHANNEL,
            address=str(message.chat.id),
            text=text,
            provider_id=f"{message.chat.id}:{message.message_id}",
            choice=choice,
            phone=phone,
            name=name,
            received_at=message.date.astimezone(UTC) if message.date else None,
            media=_media(message),
        )

    async def _turn(self, inbound: Inbound) -> None:
        """Run the engine (or spool the message) and deliver its replies in the background."""
        result = await self.intake.turn(inbound)
        if result is not None:
            self._deliver(inbound.address, [r.message_id for r in result.replies])

    async def _on_button(self, update: Update) -> None:
        query = update.callback_query
        assert query is not None
        message = query.message
        data = query.data
        if not isinstance(message, Message) or message.chat.type != ChatType.PRIVATE or data is None:
            await self._optional("answerCallbackQuery", query.answer())
            return
        label = _button_label(message, data) or data
        inbound = Inbound(
            channel=CHANNEL,
            address=str(message.chat.id),
            text=label,
            provider_id=f"cb:{query.id}",
            choice=data,
            name=_name(query.from_user.full_name),
            received_at=datetime.now(UTC),
        )
        result = await self.intake.turn(inbound)
        await self._optional("answerCallbackQuery", query.answer())
        if result is None:  # spooled: answered when the database is back
            return
        if not result.duplicate and message.text:
            await self._optional(
                "editMessageText",
                self.bot.edit_message_text(
                    f"{message.text}\n\n» {label}", chat_id=message.chat.id, message_id=message.message_id
                ),
            )
        self._deliver(inbound.address, [r.message_id for r in result.replies])

    async def _on_deep_link(self, message: Message, code: str) -> None:
        """``/start CODE``: join the customer the code was made for, then greet as ``/start``."""
        address = str(message.chat.id)

        def link() -> LinkOutcome | None:
            with transaction(self.runtime.db) as session:
                customer = redeem_link_code(session, code=code, used_by=f"{CHANNEL}:{address}")
                if customer is None:
                    return None
                return link_address(session, channel=CHANNEL, address=address, customer_id=customer)

        outcome = await asyncio.to_thread(link)
        log.info("deep link in chat %s: %s", address, outcome or "invalid code")
        if outcome is None:
            self._note_once(f"{address}:{message.message_id}", message.chat.id, BAD_CODE)
        await self._turn(self._inbound(message, "/start"))

    async def _on_contact(self, update: Update, message: Message) -> None:
        """A shared contact links by phone number, but only the sender's own contact."""
        contact = message.contact
        user = message.from_user
        assert contact is not None
        if user is None or contact.user_id != user.id:
            self._note_once(f"u{update.update_id}", message.chat.id, NOT_OWN_CONTACT, ReplyKeyboardRemove())
            return
        phone = _e164(contact.phone_number)
        if phone is None:
            self._note_once(f"u{update.update_id}", message.chat.id, NOT_OWN_CONTACT, ReplyKeyboardRemove())
            return
        address = str(message.chat.id)

        def link() -> LinkOutcome | None:
            with transaction(self.runtime.db) as session:
                target = customer_by_phone(session, phone=phone)
                if target is None:
                    own = customer_of(session, channel=CHANNEL, address=address)
                    if own is not None:
                        set_phone_if_missing(session, customer_id=own, phone=phone)
                    return None
                return link_address(session, channel=CHANNEL, address=address, customer_id=target)

        outcome = await asyncio.to_thread(link)
        note = NO_MATCH if outcome is None else LINKED
        self._note_once(f"u{update.update_id}", message.chat.id, note, ReplyKeyboardRemove())
        await self._turn(self._inbound(message, "/start", phone=phone))

    # -- delivery ------------------------------------------------------------------------

    def _background(self, chat: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` after the chat's earlier jobs (chats run in parallel)."""
        lock = self._chat_locks.setdefault(chat, asyncio.Lock())
        self._chat_users[chat] = self._chat_users.get(chat, 0) + 1

        async def run() -> None:
            try:
                async with lock:
                    await job()
            except Exception as exc:
                if is_outage(exc):  # what was not sent stays queued for the outbox loop
                    self.intake.outage.started(exc)
                else:
                    log.exception("a Telegram delivery to chat %s failed", chat)
            finally:
                self._chat_users[chat] -= 1
                if not self._chat_users[chat]:
                    del self._chat_users[chat], self._chat_locks[chat]

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _deliver(self, chat: str, message_ids: Sequence[int]) -> None:
        if not message_ids:
            return

        outbox = self._outbox
        if outbox is None:
            return

        async def job() -> None:
            assert outbox is not None
            for message_id in sorted(message_ids):
                if await self.limiter.held_for(chat) > INLINE_RETRY_MAX:
                    return  # a long 429 for this chat: the outbox loop sends the rest, in order
                await outbox.deliver([message_id])

        self._background(chat, job)

    def _note_once(
        self,
        key: str,
        chat_id: int,
        text: str,
        markup: ReplyKeyboardMarkup | ReplyKeyboardRemove | None = None,
    ) -> None:
        """A service note outside the dialogue (no outbox row), sent once per ``key`` in this
        process, so a redelivered update does not repeat it."""
        if key in self._seen:
            return
        self._seen[key] = None
        while len(self._seen) > 4096:
            self._seen.popitem(last=False)

        async def job() -> None:
            await self._sender.notice(chat_id, text, markup)

        self._background(str(chat_id), job)


_MEDIA_KINDS = (
    ("photo", "image"),
    ("sticker", "sticker"),
    ("animation", "video"),
    ("video", "video"),
    ("video_note", "video"),
    ("voice", "audio"),
    ("audio", "audio"),
    ("document", "file"),
    ("location", "location"),
    ("venue", "location"),
    ("poll", "poll"),
    ("dice", "game"),
    ("game", "game"),
)


def _media(message: Message) -> tuple[Media, ...]:
    """What a message holds besides text, in the engine's words."""
    found = []
    for attribute, kind in _MEDIA_KINDS:
        value = getattr(message, attribute, None)
        if value:
            content_type = getattr(value, "mime_type", None)
            found.append(Media(kind, content_type if isinstance(content_type, str) else None))
    return tuple(found)


def _malformed(update: Update) -> str | None:
    """What makes an update unusable (fields of the wrong type or size), or None."""
    query = update.callback_query
    if query is not None:
        if not isinstance(query.id, str) or not 0 < len(query.id) <= 64:
            return "a callback query id that is not a short string"
        if query.data is not None and not isinstance(query.data, str):
            return "callback data that is not a string"
    for message in (update.message, update.edited_message, query.message if query is not None else None):
        if message is None:
            continue
        if not isinstance(message, Message):
            return "a message that is not an object"
        chat = getattr(message, "chat", None)
        if chat is None or not isinstance(chat.id, int) or not -MAX_ID <= chat.id <= MAX_ID:
            return "a message without a chat id"
        if not isinstance(message.message_id, int) or not 0 <= message.message_id <= MAX_ID:
            return "a message id out of range"
        for field in ("text", "caption"):
            if not isinstance(getattr(message, field, None), str | None):
                return f"a {field} that is not a string"
    return None


def _name(full_name: object) -> str | None:
    """A sender's name as it can be stored (Telegram allows 64 characters per part)."""
    return storable_text(full_name)[:200] if isinstance(full_name, str) else None


def _button_label(message: Message, data: str) -> str | None:
    markup = message.reply_markup
    if markup is None:
        return None
    for row in markup.inline_keyboard:
        for button in row:
            if button.callback_data == data:
                return button.text
    return None


def _e164(raw: str) -> str | None:
    """A contact's phone number (Telegram sends digits, sometimes without '+') as E.164."""
    digits = raw.strip()
    try:
        return to_e164(digits if digits.startswith("+") else "+" + digits, None)
    except ValueError:
        return None


def build_telegram_service(
    runtime: Runtime, *, mode: Mode | None = None, **options: float
) -> TelegramService | None:
    """The Telegram channel as configured, or None without ``TELEGRAM_BOT_TOKEN``.

    ``mode`` overrides ``TELEGRAM_MODE``; ``options`` are :class:`TelegramService` timings.
    """
    settings = runtime.settings
    if settings.telegram_bot_token is None:
        return None
    mode = mode or resolve_mode(settings)
    webhook_url = None
    if mode == "webhook":
        if not settings.public_base_url:
            raise ValueError("TELEGRAM_MODE=webhook needs PUBLIC_BASE_URL (the bot's public https URL)")
        if settings.telegram_webhook_secret is None:
            raise ValueError("TELEGRAM_MODE=webhook needs TELEGRAM_WEBHOOK_SECRET")
        webhook_url = settings.public_base_url.rstrip("/") + WEBHOOK_PATH
    secret = settings.telegram_webhook_secret
    return TelegramService(
        runtime,
        make_bot(settings),
        mode=mode,
        webhook_url=webhook_url,
        webhook_secret=secret.get_secret_value() if secret is not None else None,
        delete_webhook_on_stop=settings.telegram_delete_webhook_on_stop,
        **options,
    )


async def run_telegram(runtime: Runtime, *, stop: asyncio.Event | None = None) -> None:
    """``rapport telegram``: long polling and the outbox loop until ``stop`` (or Ctrl-C)."""
    from bot.web import make_outbox  # the web module needs nothing from here: no cycle

    if runtime.settings.public_base_url:
        log.warning("PUBLIC_BASE_URL is set, but `rapport telegram` polls: this removes the webhook")
    service = build_telegram_service(runtime, mode="polling")
    if service is None:
        raise ValueError("set TELEGRAM_BOT_TOKEN (from @BotFather) to run the Telegram bot")
    intake = Intake(runtime)
    outbox = make_outbox(runtime, [service], intake=intake)  # binds the service to both
    stop = stop or asyncio.Event()
    await service.start()
    sending = asyncio.create_task(outbox.run(stop=stop))
    replaying = asyncio.create_task(intake.run(stop=stop))
    try:
        await stop.wait()
    finally:
        stop.set()
        await sending
        await replaying
        await service.stop()
        intake.spool.close()


def new_link_code(runtime: Runtime, phone: str) -> str:
    """A deep-link code for the customer with ``phone`` (LookupError if none)."""

    e164 = to_e164(phone, runtime.settings.default_region)
    with transaction(runtime.db) as session:
        return link_code_for_phone(session, phone=e164)


async def deep_link(runtime: Runtime, code: str) -> str:
    """``https://t.me/<bot>?start=<code>``, or ``/start <code>`` when Telegram is unreachable."""
    try:
        async with make_bot(runtime.settings) as bot:
            return f"https://t.me/{bot.username}?start={code}"
    except TelegramError as exc:
        log.warning("could not ask Telegram for the bot's name (%s)", exc)
        return f"/start {code}"
