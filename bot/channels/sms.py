"""The SMS channel through Twilio: signed webhooks in, the REST API out, delivery status back.

``POST /sms/inbound`` takes Twilio's message webhook: the signature is checked against the public
URL Twilio called (``PUBLIC_BASE_URL`` + path + query), the message goes through the dialog
engine (idempotent on ``MessageSid``), and the replies are queued in the outbox and sent through
the REST API after an empty TwiML answer. ``POST /sms/status`` records the delivery state Twilio
reports. The sender paces sends per sending number, maps Twilio's errors to retry or fail, and
never writes to a number that opted out (except the opt-out and opt-in confirmations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import requests
from fastapi import APIRouter, BackgroundTasks, Request, Response
from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from bot.runtime import Runtime
from dialogs import texts
from dialogs.commands import CARRIER_KEYWORDS, detect_command
from dialogs.engine import Inbound, ReplyOption, storable_text
from dialogs.sms_segments import count, fit
from schedulers.delivery import Outbox, Outgoing, SendError
from schedulers.ratelimit import Limit, SharedLimiter
from storage import turns as store
from storage.models import DeliveryStatus, Direction, utcnow
from storage.phones import to_e164
from storage.tables import CUSTOMER, IDENTITY, MESSAGE
from storage.types import ALLOWED_WHILE_OPTED_OUT

log = logging.getLogger(__name__)

CHANNEL = "sms"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
TWILIO_API = "https://api.twilio.com"
UNSUBSCRIBED = "21610"  # Twilio: the recipient replied STOP to this sender at the carrier
MAX_FORM_BYTES = 64 * 1024

# Twilio's message states -> ours. Twilio's "queued"/"accepted"/"sending" mean queued at Twilio,
# which for us is already "sent" (our "queued" means "the outbox still has to send it").
_FINAL = {
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}
_BEFORE_FINAL = (DeliveryStatus.SENDING, DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)


# -- webhooks: verification and parsing ---------------------------------------------------------


class BadRequest(ValueError):
    """A webhook request that is not a well-formed Twilio form post."""


def public_url(base: str, path: str, query: str = "") -> str:
    """The URL Twilio called: the public base (scheme, host, any prefix a proxy strips) + path + query."""
    url = base.rstrip("/") + path
    return f"{url}?{query}" if query else url


def verify_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """True when ``signature`` (``X-Twilio-Signature``) is Twilio's for ``url`` and ``params``.

    ``params`` are all the form fields as posted, empty ones included: Twilio signs them all.
    """
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


def parse_form(body: bytes, content_type: str | None) -> dict[str, str]:
    """The fields of a form post, empty values kept. Raises :class:`BadRequest`."""
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise BadRequest(f"content type {content_type!r} is not application/x-www-form-urlencoded")
    if len(body) > MAX_FORM_BYTES:
        raise BadRequest(f"form of {len(body)} bytes is larger than {MAX_FORM_BYTES}")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=200,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the form cannot be parsed ({exc})") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise BadRequest("the form repeats a field, which Twilio never does")
    return form


def e164(raw: str, region: str) -> str:
    """The sender's number as E.164, or :class:`BadRequest` (the carrier delivered from it, so a
    possible number is enough)."""
    try:
        return to_e164(raw, region, strict=False)
    except ValueError as exc:
        raise BadRequest(f"From: {exc}") from None


def render(text: str, options: tuple[ReplyOption, ...]) -> str:
    """A reply as SMS text: choices as numbered options (a bare number answers them)."""
    if not options:
        return text
    if {o.value for o in options} == {"yes", "no"}:
        return text if "YES" in text else f"{text} Reply YES or NO."
    numbered = ", ".join(f"{i} for {o.label}" for i, o in enumerate(options, start=1))
    return f"{text} Reply {numbered}."


# -- sending --------------------------------------------------------------------------------------


class BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """twilio's HTTP client, pointed at another base URL (a stand-in, a proxy) instead of
    ``https://api.twilio.com``; remembers each thread's last ``Retry-After``."""

    def __init__(self, base_url: str | None, *, timeout: float = 10.0) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/") if base_url else None
        self._local = threading.local()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if self.base_url and url.startswith(TWILIO_API + "/"):
            url = self.base_url + url[len(TWILIO_API) :]
        self._local.retry_after = None
        response = super().request(method, url, *args, **kwargs)
        self._local.retry_after = _seconds(response.headers.get("Retry-After") if response.headers else None)
        return response

    def last_retry_after(self) -> float | None:
        """The ``Retry-After`` of this thread's last response, in seconds."""
        value: float | None = getattr(self._local, "retry_after", None)
        return value


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare from Twilio; the backoff applies


class TwilioSender:
    """Sends outbox messages through Twilio's REST API."""

    channel = CHANNEL

    def __init__(
        self,
        client: Client,
        db: Engine,
        *,
        from_number: str | None,
        messaging_service_sid: str | None,
        status_callback: str | None,
        limiter: SharedLimiter,
        rate_per_second: float,
        max_segments: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not from_number and not messaging_service_sid:
            raise ValueError("set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID to send SMS")
        self.client = client
        self.db = db
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        self.limiter = limiter
        self.rate = Limit(f"sms:{self.sending_as}", rate_per_second)
        self.max_in_flight = min(32, max(1, math.ceil(rate_per_second)))
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="sms-send")
        _ = client.messages  # Twilio loads its API modules on first use: not in the first paced send
        self.max_segments = max_segments
        self.clock = clock

    @property
    def sending_as(self) -> str:
        """The sender the rate limit applies to."""
        return self.messaging_service_sid or self.from_number or ""

    async def send(self, message: Outgoing) -> str:
        """Send ``message``; Twilio's message SID. Raises :class:`SendError`."""
        try:
            customer_id, allowed = await asyncio.to_thread(self._may_send, message)
        except SQLAlchemyError as exc:  # nothing went out: try again later
            raise SendError(
                f"database unavailable before sending ({exc.__class__.__name__})", retryable=True
            ) from exc
        if not allowed:
            raise SendError("recipient opted out", retryable=False)
        body = fit(render(message.text, message.options))
        segments = count(body)
        if segments.segments > self.max_segments:
            log.warning(
                "message %d is %d %s segments (budget %d); consider shorter wording",
                message.message_id,
                segments.segments,
                segments.encoding,
                self.max_segments,
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._paced_create, message, body, customer_id)

    def _paced_create(self, message: Outgoing, body: str, customer_id: int | None) -> str:
        # Wait for the slot in the thread that then sends: nothing queues between the two.
        try:
            self.limiter.wait(self.rate)
        except SQLAlchemyError as exc:  # nothing went out: try again later
            raise SendError(f"send pacing unavailable ({exc.__class__.__name__})", retryable=True) from exc
        return self._create(message, body, customer_id)

    def close(self) -> None:
        """Let sends in progress finish; free the sending threads."""
        self._pool.shutdown(wait=True)

    def _may_send(self, message: Outgoing) -> tuple[int | None, bool]:
        """(customer id, False if the number opted out and this is not a message allowed then)."""
        with self.db.connect() as conn:
            row = conn.execute(
                select(MESSAGE.c.customer_id, MESSAGE.c.intent).where(MESSAGE.c.id == message.message_id)
            ).first()
            customer_id, intent = (row[0], row[1]) if row is not None else (None, None)
            owners = select(IDENTITY.c.customer_id).where(
                IDENTITY.c.channel == CHANNEL, IDENTITY.c.address == message.address
            )
            opted_out = conn.execute(
                select(func.count())
                .select_from(CUSTOMER)
                .where(
                    CUSTOMER.c.opted_out_at.is_not(None),
                    or_(
                        CUSTOMER.c.id == customer_id,
                        CUSTOMER.c.phone == message.address,
                        CUSTOMER.c.id.in_(owners),
                    ),
                )
            ).scalar_one()
        return customer_id, not opted_out or intent in ALLOWED_WHILE_OPTED_OUT

    def _create(self, message: Outgoing, body: str, customer_id: int | None) -> str:
        params: dict[str, str] = {"to": message.address, "body": body}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number or ""
        if self.status_callback:
            params["status_callback"] = self.status_callback
        try:
            created = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise self._error(exc, customer_id) from None
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            # A timeout waiting for the answer may come after Twilio took the message.
            ambiguous = isinstance(exc, requests.exceptions.ReadTimeout)
            raise SendError(
                f"could not reach Twilio ({type(exc).__name__}: {exc})", retryable=True, ambiguous=ambiguous
            ) from None
        sid = str(created.sid)
        # Recorded now, not when the outbox finishes: a status callback may arrive first.
        with self.db.begin() as conn:
            conn.execute(
                update(MESSAGE).where(MESSAGE.c.id == message.message_id).values(provider_message_id=sid)
            )
        return sid

    def _error(self, exc: TwilioRestException, customer_id: int | None) -> SendError:
        status, code = int(exc.status or 0), str(exc.code or "")
        what = f"Twilio error {code or '?'} (HTTP {status}): {exc.msg}"
        if status == 429 or code == "20429" or status >= 500:
            retry_after = getattr(self.client.http_client, "last_retry_after", lambda: None)()
            if status == 429 or code == "20429":  # too fast for this sender: every worker waits
                with contextlib.suppress(SQLAlchemyError):
                    self.limiter.hold(self.rate.key, retry_after or 1.0)
                return SendError(what, retryable=True, retry_after=retry_after)
            # A 5xx may come after Twilio created the message: ambiguous for at-most-once.
            return SendError(what, retryable=True, retry_after=retry_after, ambiguous=True)
        if code == UNSUBSCRIBED:
            if customer_id is not None:
                with self.db.begin() as conn:
                    mark_opted_out(conn, customer_id=customer_id, now=self.clock())
            return SendError(f"recipient opted out at the carrier; {what}", retryable=False)
        return SendError(what, retryable=False)


def mark_opted_out(conn: Any, *, customer_id: int, now: datetime) -> None:
    """Record that the carrier says this customer opted out (keeps an earlier opt-out time)."""
    conn.execute(
        update(CUSTOMER)
        .where(CUSTOMER.c.id == customer_id, CUSTOMER.c.opted_out_at.is_(None))
        .values(opted_out_at=now)
    )


# -- the service ----------------------------------------------------------------------------------


class SmsService:
    """The SMS channel: Twilio webhooks and the REST sender (a ``ChannelService``)."""

    name = CHANNEL

    def __init__(
        self,
        runtime: Runtime,
        *,
        client: Client | None = None,
        outbox: Outbox | None = None,
        status_grace: float = 2.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        settings = runtime.settings
        if not settings.twilio_account_sid or settings.twilio_auth_token is None:
            raise ValueError("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN to use SMS")
        if not settings.public_base_url:
            raise ValueError(
                "set PUBLIC_BASE_URL to the https address Twilio reaches this app at: "
                "webhook signatures are computed on it"
            )
        self.runtime = runtime
        self.public_base_url = settings.public_base_url.rstrip("/")
        self._auth_token = settings.twilio_auth_token.get_secret_value()
        self._outbox = outbox
        self.status_grace = status_grace
        self.clock = clock
        self.client = client or Client(
            settings.twilio_account_sid,
            self._auth_token,
            http_client=BaseUrlHttpClient(settings.twilio_api_base_url),
        )
        self._sender = TwilioSender(
            self.client,
            runtime.db,
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            status_callback=self.public_base_url + "/sms/status",
            limiter=SharedLimiter(runtime.db, headroom=settings.rate_headroom),
            rate_per_second=settings.sms_rate_per_second,
            max_segments=settings.sms_max_segments,
            clock=clock,
        )

    @property
    def sender(self) -> TwilioSender:
        return self._sender

    async def start(self, *, receive: bool = True) -> None:
        if receive:
            log.info("SMS: Twilio webhooks expected at %s/sms/inbound and /sms/status", self.public_base_url)

    async def stop(self) -> None:
        await asyncio.to_thread(self._sender.close)
        session = getattr(self.client.http_client, "session", None)
        if session is not None:
            session.close()

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/sms/inbound")
        async def inbound(request: Request, background: BackgroundTasks) -> Response:
            form = await self._verified(request)
            if isinstance(form, Response):
                return form
            try:
                sid = form.get("MessageSid") or form.get("SmsMessageSid") or ""
                if not sid:
                    raise BadRequest("MessageSid is missing")
                address = e164(form.get("From", ""), self.runtime.settings.default_region)
                media = int(form.get("NumMedia") or "0")
            except (BadRequest, ValueError) as exc:
                log.warning("SMS inbound rejected with 400: %s", exc)
                return Response(f"bad request: {exc}\n", status_code=400, media_type="text/plain")
            ids = await run_in_threadpool(self._handle, sid, address, form.get("Body", ""), media)
            if ids:
                background.add_task(self._outbox_of(request).deliver, ids)
            return Response(TWIML_EMPTY, media_type="text/xml")

        @router.post("/sms/status")
        async def status(request: Request) -> Response:
            form = await self._verified(request)
            if isinstance(form, Response):
                return form
            sid, state = form.get("MessageSid", ""), (form.get("MessageStatus") or form.get("SmsStatus"))
            if not sid or not state:
                log.warning("SMS status callback rejected with 400: MessageSid or MessageStatus missing")
                return Response("bad request: MessageSid and MessageStatus are required\n", status_code=400)
            error = form.get("ErrorCode") or None
            deadline = time.monotonic() + self.status_grace
            while not await run_in_threadpool(self._record_status, sid, state.lower(), error):
                if time.monotonic() >= deadline:
                    # 200, not 404: Twilio does not retry a 404 anyway; it would only raise
                    # debugger alerts for messages sent from elsewhere or erased here.
                    log.info("SMS status %r for unknown message %s ignored", state, sid)
                    break
                await asyncio.sleep(0.05)
            return Response(status_code=204)

        return router

    def _outbox_of(self, request: Request) -> Outbox:
        outbox: Outbox = self._outbox or request.app.state.outbox
        return outbox

    async def _verified(self, request: Request) -> dict[str, str] | Response:
        """The form of a request Twilio signed; a 400/403 response otherwise."""
        try:
            form = parse_form(await request.body(), request.headers.get("content-type"))
        except BadRequest as exc:
            log.warning("SMS webhook %s rejected with 400: %s", request.url.path, exc)
            return Response(f"bad request: {exc}\n", status_code=400, media_type="text/plain")
        url = public_url(self.public_base_url, request.url.path, request.url.query)
        signature = request.headers.get("x-twilio-signature")
        if not verify_signature(self._auth_token, url, form, signature):
            reason = "no X-Twilio-Signature header" if not signature else "the signature does not match"
            log.warning(
                "SMS webhook %s rejected with 403: %s for %s (check TWILIO_AUTH_TOKEN and that "
                "PUBLIC_BASE_URL is the address configured at Twilio)",
                request.url.path,
                reason,
                url,
            )
            return Response("forbidden\n", status_code=403, media_type="text/plain")
        return form

    # -- in a worker thread ------------------------------------------------------------------

    def _handle(self, sid: str, address: str, body: str, media: int) -> list[int]:
        """Run the message through the engine; the ids of the replies to send."""
        command = detect_command(body) if body.strip() else None
        keyword = command is not None and command.kind in CARRIER_KEYWORDS
        if (media > 0 or not body.strip()) and not keyword:
            return self._text_only(sid, address, body, media)
        result = self.runtime.dialog.handle(
            Inbound(CHANNEL, address, body, provider_id=sid, phone=address, received_at=self.clock())
        )
        if result.duplicate:
            log.info("SMS %s was already handled (a Twilio retry)", sid)
        return [r.message_id for r in result.replies]

    def _text_only(self, sid: str, address: str, body: str, media: int) -> list[int]:
        """A picture or an empty text: recorded, answered with "text only, please" (unless opted out)."""
        for attempt in (1, 2):
            try:
                with self.runtime.db.begin() as conn:
                    return self._text_only_turn(conn, sid, address, body, media)
            except IntegrityError:  # the same message handled at once by another worker
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _text_only_turn(self, conn: Any, sid: str, address: str, body: str, media: int) -> list[int]:
        seen = store.find_inbound(conn, channel=CHANNEL, provider_id=sid)
        if seen is not None:
            return [row[0] for row in store.replies_to(conn, message_id=seen[0])]
        now = self.clock()
        state = store.lock_or_create_turn(
            conn, channel=CHANNEL, address=address, phone=address, name=None, now=now
        )
        common = {"customer_id": state.customer_id, "channel": CHANNEL, "address": address, "created_at": now}
        inbound_id = store.insert_message(
            conn,
            {
                **common,
                "direction": Direction.IN,
                "provider_message_id": sid,
                "text": storable_text(body),
                "intent": "media" if media else "empty",
                "state_version": state.version,
                "needs_review": False,
            },
        )
        if state.opted_out_at is not None:
            return []
        return store.insert_messages(
            conn,
            [
                {
                    **common,
                    "direction": Direction.OUT,
                    "text": texts.TEXT_ONLY,
                    "intent": "text_only",
                    "reply_to_id": inbound_id,
                    "status": DeliveryStatus.QUEUED,
                    "needs_review": False,
                }
            ],
        )

    def _record_status(self, sid: str, state: str, error: str | None) -> bool:
        """Record Twilio's delivery state on the message sent as ``sid``; False if unknown."""
        now = self.clock()
        with self.runtime.db.begin() as conn:
            row = conn.execute(
                select(MESSAGE.c.id, MESSAGE.c.customer_id).where(
                    MESSAGE.c.channel == CHANNEL,
                    MESSAGE.c.direction == Direction.OUT,
                    MESSAGE.c.provider_message_id == sid,
                )
            ).first()
            if row is None:
                return False
            message_id, customer_id = row
            if error:
                conn.execute(
                    update(MESSAGE)
                    .where(MESSAGE.c.id == message_id)
                    .values(error=f"Twilio error {error} (https://www.twilio.com/docs/api/errors/{error})")
                )
            final = _FINAL.get(state)
            if final is not None:
                values: dict[str, Any] = {"status": final, "sent_at": func.coalesce(MESSAGE.c.sent_at, now)}
                if final == "delivered":
                    values["delivered_at"] = now
                # Callbacks can arrive out of order: a final state is never overwritten.
                conn.execute(
                    update(MESSAGE)
                    .where(MESSAGE.c.id == message_id, MESSAGE.c.status.in_(_BEFORE_FINAL))
                    .values(**values)
                )
            if error == UNSUBSCRIBED and customer_id is not None:
                mark_opted_out(conn, customer_id=customer_id, now=now)
        return True


def build_sms_service(runtime: Runtime) -> SmsService | None:
    """The SMS channel if Twilio is configured, else None (with a warning if it half is)."""
    s = runtime.settings
    wanted = {
        "TWILIO_ACCOUNT_SID": bool(s.twilio_account_sid),
        "TWILIO_AUTH_TOKEN": s.twilio_auth_token is not None,
        "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID": bool(
            s.twilio_from_number or s.twilio_messaging_service_sid
        ),
    }
    if not any(wanted.values()):
        return None
    missing = [name for name, ok in wanted.items() if not ok]
    if missing:
        log.warning("SMS stays off: set %s", ", ".join(missing))
        return None
    return SmsService(runtime)
