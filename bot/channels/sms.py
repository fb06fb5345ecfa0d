"""The SMS channel through Twilio: signed webhooks in, the REST API out, delivery status back.

``POST /sms/inbound`` takes Twilio's message webhook: the signature is checked against the public
URL Twilio called (``PUBLIC_BASE_URL`` + path + query), the message goes through the dialog
engine (idempotent on ``MessageSid``), and the replies are queued in the outbox and sent through
the REST API after an empty TwiML answer. ``POST /sms/status`` hands the delivery state Twilio
reports to the outbox (:func:`schedulers.delivery.record_status`). The sender paces sends per
sending number and maps Twilio's errors to retry or fail; the outbox decides what may be sent
(opted-out numbers get nothing but the opt-out and opt-in confirmations and HELP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import requests
import urllib3
from fastapi import APIRouter, BackgroundTasks, Request, Response
from sqlalchemy.exc import DataError, SQLAlchemyError
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from bot.channels.base import read_body
from bot.intake import Intake, StatusReport, is_outage
from bot.runtime import Runtime
from dialogs.engine import Inbound, Media, ReplyOption
from dialogs.sms_segments import count, fit
from schedulers.delivery import Outbox, Outgoing, SendError
from schedulers.ratelimit import Limit, SharedLimiter
from storage.models import utcnow
from storage.phones import to_e164

log = logging.getLogger(__name__)

CHANNEL = "sms"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
TWILIO_API = "https://api.twilio.com"
TWILIO_HOSTS = (TWILIO_API, "https://content.twilio.com")  # Messages; Content API (WhatsApp buttons)
WHATSAPP_PREFIX = "whatsapp:"
UNSUBSCRIBED = "21610"  # Twilio: the recipient replied STOP to this sender at the carrier
MAX_FORM_BYTES = 64 * 1024


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
        raise BadRequest(
            f"content type {(content_type or '')[:80]!r} is not application/x-www-form-urlencoded"
        )
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
        host = next((h for h in TWILIO_HOSTS if url.startswith(h + "/")), None)
        if self.base_url and host is not None:
            url = self.base_url + url[len(host) :]
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
        *,
        from_number: str | None,
        messaging_service_sid: str | None,
        status_callback: str | None,
        limiter: SharedLimiter,
        rate_per_second: float,
        max_segments: int,
    ) -> None:
        if not from_number and not messaging_service_sid:
            raise ValueError("set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID to send SMS")
        self.client = client
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        self.limiter = limiter
        self.rate = Limit(f"{self.channel}:{self.sending_as}", rate_per_second)
        self.max_in_flight = min(32, max(1, math.ceil(rate_per_second)))
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix=f"{self.channel}-send")
        _ = client.messages  # Twilio loads its API modules on first use: not in the first paced send
        self.max_segments = max_segments

    @property
    def sending_as(self) -> str:
        """The sender the rate limit applies to."""
        return self.messaging_service_sid or self.from_number or ""

    async def send(self, message: Outgoing) -> str:
        """Send ``message``; Twilio's message SID. Raises :class:`SendError`."""
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
        return await loop.run_in_executor(self._pool, self._paced_create, message, body)

    def _paced_create(self, message: Outgoing, body: str) -> str:
        # Wait for the slot in the thread that then sends: nothing queues between the two.
        try:
            self.limiter.wait(self.rate)
        except SQLAlchemyError as exc:  # nothing went out: try again later
            raise SendError(f"send pacing unavailable ({exc.__class__.__name__})", retryable=True) from exc
        return self._create(message, body)

    def close(self) -> None:
        """Let sends in progress finish; free the sending threads."""
        self._pool.shutdown(wait=True)

    def _addressing(self, to: str) -> dict[str, str]:
        """Who a message goes to and from, and where its status reports go (SMS and WhatsApp)."""
        params = {"to": to}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number or ""
        if self.status_callback:
            params["status_callback"] = self.status_callback
        return params

    def _create(self, message: Outgoing, body: str) -> str:
        params = {**self._addressing(message.address), "body": body}
        try:
            created = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise self._error(exc) from None
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            raise self._unreachable(exc) from None
        return str(created.sid)

    @staticmethod
    def _unreachable(exc: OSError) -> SendError:
        # Only a connection never made is sure not to have reached Twilio; a timeout waiting
        # for the answer or a reset connection may come after Twilio took the message.
        return SendError(
            f"could not reach Twilio ({type(exc).__name__}: {exc})",
            retryable=True,
            ambiguous=not _never_connected(exc),
        )

    async def look_up(self, message: Outgoing, since: datetime) -> list[str]:
        """Twilio's SIDs of messages with this body sent to this number from our sender since
        ``since``, oldest first (how a send cut off before Twilio answered is reconciled)."""
        body = fit(render(message.text, message.options))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._look_up, message.address, body, since)

    def _look_up(self, to: str, body: str, since: datetime) -> list[str]:
        params: dict[str, Any] = {"to": to, "date_sent_after": since, "page_size": 100, "limit": 200}
        if self.from_number and not self.messaging_service_sid:
            params["from_"] = self.from_number
        try:
            found = self.client.messages.list(**params)
        except TwilioRestException as exc:
            raise SendError(f"Twilio look-up failed: HTTP {exc.status} {exc.msg}", retryable=True) from None
        except OSError as exc:
            raise SendError(
                f"could not reach Twilio to look up ({type(exc).__name__})", retryable=True
            ) from None
        matches = [m for m in found if m.body == body]
        return [str(m.sid) for m in sorted(matches, key=lambda m: m.date_created or since)]

    def _error(self, exc: TwilioRestException) -> SendError:
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
            return SendError(f"recipient opted out at the carrier; {what}", retryable=False, opted_out=True)
        return SendError(what, retryable=False)


def _never_connected(exc: OSError) -> bool:
    """Whether the request surely never reached Twilio (no connection was made)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    inner = exc.args[0] if exc.args else None  # requests wraps urllib3's MaxRetryError(reason)
    reason = getattr(inner, "reason", inner)
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError))


# -- the service ----------------------------------------------------------------------------------


class SmsService:
    """The SMS channel: Twilio webhooks and the REST sender (a ``ChannelService``).

    A message whose sender is ``whatsapp:+E164`` is a WhatsApp message (the same webhook serves
    both, as at Twilio): it goes to the engine on the ``whatsapp`` channel, joined to the customer
    by the number. :class:`bot.channels.whatsapp.WhatsAppService` is this with WhatsApp's sender
    and its webhooks under ``/whatsapp``.
    """

    name = CHANNEL
    prefix = "/sms"
    label = "SMS"  # in log lines: "SMS webhook ..."

    def __init__(
        self,
        runtime: Runtime,
        *,
        client: Client | None = None,
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
        self._outbox: Outbox | None = None
        self._intake: Intake | None = None
        self.status_grace = status_grace
        self.clock = clock
        self.client = client or Client(
            settings.twilio_account_sid,
            self._auth_token,
            http_client=BaseUrlHttpClient(settings.twilio_api_base_url),
        )
        self._sender = self._make_sender(SharedLimiter(runtime.db, headroom=settings.rate_headroom))

    def _make_sender(self, limiter: SharedLimiter) -> TwilioSender:
        settings = self.runtime.settings
        return TwilioSender(
            self.client,
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            status_callback=self.public_base_url + self.prefix + "/status",
            limiter=limiter,
            rate_per_second=settings.sms_rate_per_second,
            max_segments=settings.sms_max_segments,
        )

    @property
    def sender(self) -> TwilioSender:
        return self._sender

    def bind(self, outbox: Outbox, intake: Intake) -> None:
        """Hand what comes in to ``intake``; send a turn's replies through ``outbox`` at once."""
        self._outbox, self._intake = outbox, intake

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("the SMS channel is not bound to an intake (create_app binds it)")
        return self._intake

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

        @router.post(self.prefix + "/inbound")
        async def inbound(request: Request, background: BackgroundTasks) -> Response:
            form = await self._verified(request)
            if isinstance(form, Response):
                return form
            try:
                message = self.inbound(form)
            except BadRequest as exc:
                return _bad_request(request, exc, self._label(form))
            try:
                result = await self.intake.turn(message)
            except DataError as exc:  # checked above; this is a last line of defence
                return _bad_request(
                    request,
                    BadRequest(f"a value the database cannot store ({type(exc.orig).__name__})"),
                    self._label(form),
                )
            if result is None:  # the database is down: kept in the spool, answered when it is back
                return Response(TWIML_EMPTY, media_type="text/xml")
            if result.duplicate:
                log.info("%s %s was already handled (a Twilio retry)", self._label(form), message.provider_id)
            ids = [r.message_id for r in result.replies]
            if ids:
                background.add_task(self._deliver, ids)
            return Response(TWIML_EMPTY, media_type="text/xml")

        @router.post(self.prefix + "/status")
        async def status(request: Request) -> Response:
            form = await self._verified(request)
            if isinstance(form, Response):
                return form
            try:
                report = status_report(form, channel=self.name)
            except BadRequest as exc:
                return _bad_request(request, exc, self._label(form))
            # 204 even for an unknown message (kept and tried again a while): Twilio does not
            # retry a 404 anyway; it would only raise debugger alerts.
            await self.intake.status(report, grace=self.status_grace)
            await self._reported(report, form)
            return Response(status_code=204)

        return router

    async def _reported(self, report: StatusReport, form: Mapping[str, str]) -> None:
        """What a channel does besides recording a status (WhatsApp: note a closed window)."""

    async def _deliver(self, ids: list[int]) -> None:
        """Send a turn's replies now; what fails here stays queued for the outbox loop."""
        if self._outbox is None:
            return
        try:
            await self._outbox.deliver(ids)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.intake.outage.started(exc)

    def inbound(self, form: Mapping[str, str]) -> Inbound:
        """Twilio's message webhook as an :class:`Inbound`. Raises :class:`BadRequest`."""
        _no_nul(form, but="Body")
        sid = _sid(form.get("MessageSid") or form.get("SmsMessageSid") or "")
        sender = form.get("From", "")
        whatsapp = sender.startswith(WHATSAPP_PREFIX)
        address = e164(sender.removeprefix(WHATSAPP_PREFIX), self.runtime.settings.default_region)
        if not whatsapp:
            return Inbound(
                CHANNEL,
                address,
                form.get("Body", ""),
                provider_id=sid,
                phone=address,
                received_at=self.clock(),
                media=_media(form),
            )
        # WhatsApp: a quick-reply button's id is the option's value; a shared location is media.
        choice = (form.get("ButtonPayload") or "").strip()[:64] or None
        media = _media(form)
        if form.get("Latitude") and form.get("Longitude"):
            media = (*media, Media("location"))
        return Inbound(
            "whatsapp",
            address,
            form.get("Body", "") if choice is None else (form.get("ButtonText") or form.get("Body", "")),
            provider_id=sid,
            choice=choice,
            phone=address,
            name=(form.get("ProfileName") or "").strip()[:200] or None,
            received_at=self.clock(),
            media=media,
        )

    def _label(self, form: Mapping[str, str] | None = None) -> str:
        """What log lines call a webhook: "WhatsApp" on this channel's or a ``whatsapp:`` party's."""
        parties = (form.get("From") or "", form.get("To") or "") if form is not None else ()
        whatsapp = any(p.startswith(WHATSAPP_PREFIX) for p in parties)
        return "WhatsApp" if whatsapp else self.label

    async def _verified(self, request: Request) -> dict[str, str] | Response:
        """The form of a request Twilio signed; a 400/403 response otherwise."""
        body = await read_body(request, MAX_FORM_BYTES)
        if body is None:
            log.warning(
                "%s webhook %s rejected with 413: larger than %d bytes",
                self.label,
                request.url.path,
                MAX_FORM_BYTES,
            )
            return Response("request too large\n", status_code=413, media_type="text/plain")
        try:
            form = parse_form(body, request.headers.get("content-type"))
        except BadRequest as exc:
            return _bad_request(request, exc, self.label)
        url = public_url(self.public_base_url, request.url.path, request.url.query)
        signature = request.headers.get("x-twilio-signature")
        if not verify_signature(self._auth_token, url, form, signature):
            reason = "no X-Twilio-Signature header" if not signature else "the signature does not match"
            log.warning(
                "%s webhook %s rejected with 403: %s for %s (check TWILIO_AUTH_TOKEN and that "
                "PUBLIC_BASE_URL is the address configured at Twilio)",
                self._label(form),
                request.url.path,
                reason,
                url,
            )
            return Response("forbidden\n", status_code=403, media_type="text/plain")
        return form


def status_report(form: Mapping[str, str], *, channel: str = CHANNEL) -> StatusReport:
    """Twilio's status callback for a message sent on ``channel``, checked (a ``whatsapp:``
    recipient makes it WhatsApp's). Raises :class:`BadRequest`."""
    _no_nul(form)
    sid = _sid(form.get("MessageSid", ""))
    state = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not _STATE.fullmatch(state):
        raise BadRequest("MessageStatus is missing or not a status word")
    code = form.get("ErrorCode") or None
    if code is not None and not _ERROR_CODE.fullmatch(code):
        raise BadRequest("ErrorCode is not a Twilio error number")
    error = f"Twilio error {code} (https://www.twilio.com/docs/api/errors/{code})" if code else None
    if (form.get("To") or "").startswith(WHATSAPP_PREFIX):
        channel = "whatsapp"
    return StatusReport(channel, sid, state, error, opted_out=code == UNSUBSCRIBED)


_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_STATE = re.compile(r"[a-z_]{1,32}")
_ERROR_CODE = re.compile(r"[0-9]{1,10}")
MAX_MEDIA = 10  # Twilio's limit per message


def _sid(raw: str) -> str:
    if not raw:
        raise BadRequest("MessageSid is missing")
    if not _SID.fullmatch(raw):
        raise BadRequest("MessageSid is not a Twilio SID (letters and digits, at most 64)")
    return raw


def _no_nul(form: Mapping[str, str], *, but: str | None = None) -> None:
    """NUL never reaches the database: only the text may hold one (stored as a visible symbol)."""
    for key, value in form.items():
        if "\x00" in key or ("\x00" in value and key != but):
            raise BadRequest(f"field {key[:40]!r} holds a NUL byte")


def _media(form: Mapping[str, str]) -> tuple[Media, ...]:
    """The pictures, audio, contact cards... of an MMS."""
    try:
        count = int(form.get("NumMedia") or "0")
    except ValueError:
        raise BadRequest("NumMedia is not a number") from None
    if not 0 <= count <= MAX_MEDIA:
        raise BadRequest(f"NumMedia {count} is not between 0 and {MAX_MEDIA}")
    found = []
    for i in range(count):
        content_type = form.get(f"MediaContentType{i}") or None
        top = (content_type or "").split("/", 1)[0]
        kind = top if top in ("image", "video", "audio") else "file"
        found.append(Media(kind, content_type, form.get(f"MediaUrl{i}") or None))
    return tuple(found)


def _bad_request(request: Request, exc: BadRequest, label: str = "SMS") -> Response:
    log.warning("%s webhook %s rejected with 400: %s", label, request.url.path, exc)
    return Response(f"bad request: {exc}\n", status_code=400, media_type="text/plain")


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
