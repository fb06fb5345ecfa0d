"""A local stand-in for Twilio's Messages REST API, and Rapport served next to it, for SMS tests.

``POST /2010-04-01/Accounts/{sid}/Messages.json`` answers like Twilio (basic auth checked, a JSON
message resource with status ``queued``), records what was sent, can be told to fail the next
requests (or to take a message and cut the connection before answering, :meth:`drop_next`), and
``GET`` on the same path lists the messages sent (``To``, ``From``, ``DateSent>`` filters, as
twilio's ``messages.list`` asks). It posts signed status callbacks (queued -> sent -> delivered,
or a chosen failure) to the message's ``StatusCallback``, one message after another, from a
background thread.

:func:`serve_sms_app` runs Rapport's web app with the SMS channel under uvicorn on 127.0.0.1,
its Twilio client pointed at the stand-in, and yields helpers to text it as Twilio would.
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from bot.channels.sms import SmsService, build_sms_service
from bot.channels.whatsapp import build_whatsapp_service
from bot.runtime import Runtime, build_runtime
from bot.settings import Settings
from bot.web import create_app
from schedulers.delivery import Outbox, RetryPolicy
from storage.tables import CUSTOMER, IDENTITY, MESSAGE

ACCOUNT = "AC" + "0" * 32
TOKEN = "test-auth-token-1234"
FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"  # Twilio's WhatsApp sandbox number
CUSTOMER_PHONE = "+14155550123"


@dataclass(frozen=True, slots=True)
class Failure:
    """How to answer the next request instead of accepting it."""

    status: int
    code: int
    message: str
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the stand-in accepted."""

    sid: str
    to: str
    body: str
    sender: str
    status_callback: str | None
    at: float = 0.0  # time.time() when it was accepted
    content_sid: str | None = None  # WhatsApp: a template or quick reply instead of a Body
    content_variables: dict[str, str] | None = None
    buttons: tuple[tuple[str, str], ...] = ()  # (title, id) of a quick reply's buttons


@dataclass
class TwilioStandin:
    """The stand-in server; use as a context manager. ``url`` is the base to give the client."""

    account_sid: str
    auth_token: str
    sent: list[Sent] = field(default_factory=list)
    requests: int = 0
    callbacks: list[tuple[str, str, int]] = field(default_factory=list)  # (sid, status, HTTP answer)
    # to-number -> (final status, error code) instead of "delivered"
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    post_callbacks: bool = True  # False: accept messages, post no status callbacks
    delay: float = 0.0  # seconds to wait before answering a send (a slow provider)
    on_accept: Any = None  # called with each Sent right after it was accepted (fault injection)
    # WhatsApp: "whatsapp:+E164" -> time.time() the customer last wrote (the session window), the
    # Content API's quick replies by SID, and how a free-form message outside the window fails:
    # "api" (the send is answered 400, error 63016) or "callback" (accepted, then failed 63016).
    sessions: dict[str, float] = field(default_factory=dict)
    contents: dict[str, dict[str, Any]] = field(default_factory=dict)
    window_error: str = "api"
    _drops: list[bool] = field(default_factory=list)  # next sends: cut off, after accepting or not
    _failures: list[Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _callback_queue: queue.Queue[tuple[Sent, list[tuple[str, str]]] | None] = field(
        default_factory=queue.Queue
    )

    def __post_init__(self) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._post_callbacks, daemon=True),
        ]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> TwilioStandin:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._callback_queue.put(None)
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- test controls ----------------------------------------------------------------------------

    def fail_next(self, failure: Failure, times: int = 1) -> None:
        """Answer the next ``times`` send requests with ``failure``."""
        with self._lock:
            self._failures.extend([failure] * times)

    def drop_next(self, *, accept: bool, times: int = 1) -> None:
        """Close the connection of the next ``times`` sends without answering, after taking the
        message (``accept``: it goes out, the sender never hears) or before."""
        with self._lock:
            self._drops.extend([accept] * times)

    def open_session(self, number: str, at: float | None = None) -> None:
        """The customer at ``number`` wrote on WhatsApp (at ``at``, default now)."""
        with self._lock:
            self.sessions[_whatsapp(number)] = time.time() if at is None else at

    def whatsapp(self, number: str) -> list[Sent]:
        """The WhatsApp messages sent to ``number`` so far."""
        with self._lock:
            return [s for s in self.sent if s.to == _whatsapp(number)]

    def wait_for_whatsapp(self, number: str, count: int, timeout: float = 10.0) -> list[Sent]:
        """The WhatsApp messages sent to ``number`` once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.whatsapp(number)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count} WhatsApp messages to {number} expected, got {self.whatsapp(number)}")

    def _content(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The Content API: a quick reply (body and at most 3 buttons), for use in the window."""
        reply = (payload.get("types") or {}).get("twilio/quick-reply")
        if not isinstance(reply, dict) or not reply.get("body"):
            return 400, _error(400, 20001, "types.twilio/quick-reply with a body is required"), {}
        actions = reply.get("actions") or []
        if not 1 <= len(actions) <= 3 or any(len(a.get("title") or "") > 20 for a in actions):
            return 400, _error(400, 20001, "a quick reply has 1 to 3 buttons of at most 20 characters"), {}
        sid = f"HX{uuid.uuid4().hex}"
        with self._lock:
            self.contents[sid] = reply
        return 201, {"sid": sid, "friendly_name": payload.get("friendly_name"), "types": payload["types"]}, {}

    def to(self, number: str) -> list[str]:
        """The bodies sent to ``number`` so far."""
        with self._lock:
            return [s.body for s in self.sent if s.to == number]

    def wait_for(self, number: str, count: int, timeout: float = 10.0) -> list[str]:
        """The bodies sent to ``number`` once there are at least ``count`` (AssertionError after
        ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = self.to(number)
            if len(bodies) >= count:
                return bodies
            time.sleep(0.02)
        raise AssertionError(f"{count} messages to {number} expected, got {self.to(number)}")

    def wait_callbacks(self, count: int, timeout: float = 10.0) -> list[tuple[str, str, int]]:
        """The status callbacks posted once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.callbacks) >= count:
                    return list(self.callbacks)
            time.sleep(0.02)
        raise AssertionError(f"{count} status callbacks expected, got {self.callbacks}")

    # -- the API ----------------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == f"Basic {expected}"

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """The answer to a send; None: close the connection without one."""
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.requests += 1
            failure = self._failures.pop(0) if self._failures else None
            drop = self._drops.pop(0) if self._drops else None
        if drop is False:
            return None
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return failure.status, _error(failure.status, failure.code, failure.message), headers
        to, body = form.get("To"), form.get("Body")
        sender = form.get("From") or form.get("MessagingServiceSid")
        content_sid = form.get("ContentSid")
        variables: dict[str, str] | None = None
        buttons: tuple[tuple[str, str], ...] = ()
        session_only = True
        if content_sid is not None:
            with self._lock:
                reply = self.contents.get(content_sid)
            if reply is not None:  # a quick reply: free-form, in the window only
                variables = json.loads(form.get("ContentVariables") or "{}")
                body = reply["body"]
                for key, value in (variables or {}).items():
                    body = body.replace("{{" + key + "}}", value)
                buttons = tuple((a["title"], a["id"]) for a in reply["actions"])
            elif not content_sid.startswith("HX"):
                return 400, _error(400, 21656, "The ContentSid is invalid"), {}
            else:  # an approved template: goes outside the window too
                session_only = False
                variables = json.loads(form.get("ContentVariables") or "{}")
                body = f"[template {content_sid}] " + json.dumps(variables, sort_keys=True)
        whatsapp = (to or "").startswith("whatsapp:")
        if whatsapp and form.get("From") and not (sender or "").startswith("whatsapp:"):
            return (
                400,
                _error(400, 63007, "Twilio could not find a Channel with the specified From address"),
                {},
            )
        with self._lock:
            opened = self.sessions.get(to or "")
        outside = whatsapp and session_only and (opened is None or time.time() - opened >= 24 * 3600)
        if outside and self.window_error == "api":
            return (
                400,
                _error(
                    400, 63016, "Failed to send freeform message because you are outside the allowed window."
                ),
                {},
            )
        if not to or body is None or not sender:
            return (
                400,
                _error(400, 21604, "'To', 'Body' and 'From' or 'MessagingServiceSid' are required"),
                {},
            )
        if len(body) > 1600:
            return (
                400,
                _error(400, 21617, "The message body exceeds the 1600 character limit"),
                {},
            )
        sent = Sent(
            f"SM{uuid.uuid4().hex}",
            to,
            body,
            sender,
            form.get("StatusCallback"),
            time.time(),
            content_sid,
            variables,
            buttons,
        )
        with self._lock:
            self.sent.append(sent)
        final = ("failed", "63016") if outside else self.outcomes.get(to, ("delivered", ""))
        if self.post_callbacks:
            self._callback_queue.put((sent, [("queued", ""), ("sent", ""), final]))
        if self.on_accept is not None:
            self.on_accept(sent)
        if drop is True:
            return None
        return 201, self._resource(sent), {}

    def _list(self, query: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        to, sender, after = query.get("To"), query.get("From"), query.get("DateSent>")
        since = (
            datetime.strptime(after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() if after else None
        )
        with self._lock:
            found = [
                m
                for m in self.sent
                if (to is None or m.to == to)
                and (sender is None or m.sender == sender)
                and (since is None or m.at >= since)
            ]
        page = [self._resource(m) for m in reversed(found)]  # Twilio lists the newest first
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        meta = {"first_page_uri": path, "next_page_uri": None, "previous_page_uri": None, "uri": path}
        return 200, {"messages": page, "page": 0, "page_size": len(page), "start": 0, **meta}, {}

    def _resource(self, sent: Sent) -> dict[str, Any]:
        now = formatdate(sent.at, usegmt=True)
        return {
            "sid": sent.sid,
            "account_sid": self.account_sid,
            "to": sent.to,
            "from": sent.sender if not sent.sender.startswith("MG") else None,
            "messaging_service_sid": sent.sender if sent.sender.startswith("MG") else None,
            "body": sent.body,
            "status": "queued",
            "num_segments": "1",
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "date_sent": now,  # the stand-in "sends" at once
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sent.sid}.json",
            "subresource_uris": {},
        }

    def _post_callbacks(self) -> None:
        validator = RequestValidator(self.auth_token)
        with httpx.Client(timeout=10) as client:
            while (item := self._callback_queue.get()) is not None:
                sent, states = item
                for state, error in states:
                    if not sent.status_callback:
                        break
                    form = {
                        "AccountSid": self.account_sid,
                        "MessageSid": sent.sid,
                        "SmsSid": sent.sid,
                        "MessageStatus": state,
                        "SmsStatus": state,
                        "To": sent.to,
                        "From": sent.sender,
                        "ApiVersion": "2010-04-01",
                        "ErrorCode": error,
                    }
                    if not error:
                        del form["ErrorCode"]
                    signature = validator.compute_signature(sent.status_callback, form)
                    try:
                        answer = client.post(
                            sent.status_callback, data=form, headers={"X-Twilio-Signature": signature}
                        ).status_code
                    except httpx.HTTPError:
                        answer = 0
                    with self._lock:
                        self.callbacks.append((sent.sid, state, answer))


class _QuietServer(ThreadingHTTPServer):
    """A client that went away mid-answer (a killed worker) is no error worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _whatsapp(number: str) -> str:
    return number if number.startswith("whatsapp:") else f"whatsapp:{number}"


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _handler(standin: TwilioStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_POST(self) -> None:
            path = f"/2010-04-01/Accounts/{standin.account_sid}/Messages.json"
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            if len(data) < length:  # the client died mid-request: a real server takes nothing
                self.close_connection = True
                return
            if self.path == "/v1/Content":
                if not standin._authorized(self.headers.get("Authorization")):
                    self._answer(401, _error(401, 20003, "Authenticate"), {})
                else:
                    self._answer(*standin._content(json.loads(data or b"{}")))
                return
            form = dict(parse_qsl(data.decode(), keep_blank_values=True))
            if not standin._authorized(self.headers.get("Authorization")):
                self._answer(401, _error(401, 20003, "Authenticate"), {})
            elif self.path != path:
                self._answer(404, _error(404, 20404, f"The requested resource {self.path} was not found"), {})
            else:
                answer = standin._create(form)
                if answer is None:  # cut off: the client never hears back
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._answer(*answer)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if not standin._authorized(self.headers.get("Authorization")):
                self._answer(401, _error(401, 20003, "Authenticate"), {})
            elif path != f"/2010-04-01/Accounts/{standin.account_sid}/Messages.json":
                self._answer(404, _error(404, 20404, f"The requested resource {path} was not found"), {})
            else:
                self._answer(*standin._list(dict(parse_qsl(query))))

        def _answer(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


@dataclass
class SmsApp:
    """The running app (``url``), the stand-in, and helpers to text it as Twilio would."""

    url: str
    runtime: Runtime
    service: SmsService
    outbox: Outbox
    standin: TwilioStandin
    http: httpx.Client
    whatsapp_service: SmsService | None = None

    def post(
        self,
        path: str,
        form: Mapping[str, str],
        *,
        signed_url: str | None = None,
        signature: str | None = None,
        token: str = TOKEN,
    ) -> httpx.Response:
        """Post ``form`` to ``path``, signed as Twilio signs it (for ``signed_url``, default the real one)."""
        if signature is None:
            signature = self.post_signature(path, form, signed_url=signed_url, token=token)
        return self.http.post(self.url + path, data=dict(form), headers={"X-Twilio-Signature": signature})

    def post_signature(
        self, path: str, form: Mapping[str, str], *, signed_url: str | None = None, token: str = TOKEN
    ) -> str:
        """The X-Twilio-Signature Twilio would send for ``form`` posted to ``path``."""
        return str(RequestValidator(token).compute_signature(signed_url or self.url + path, dict(form)))

    def sms(
        self, text: str, *, sid: str, sender: str = CUSTOMER_PHONE, media: int = 0, **extra: str
    ) -> httpx.Response:
        """The customer at ``sender`` texts ``text``; asserts Twilio gets an empty TwiML answer."""
        form = {
            "ToCountry": "US",
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": ACCOUNT,
            "From": sender,
            "To": FROM,
            "Body": text,
            "NumMedia": str(media),
            "NumSegments": "1",
            "FromCity": "",
            "ApiVersion": "2010-04-01",
            **extra,
        }
        response = self.post("/sms/inbound", form)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/xml")
        assert response.text.endswith("<Response/>")
        return response

    def whatsapp(
        self,
        text: str,
        *,
        sid: str,
        sender: str = CUSTOMER_PHONE,
        path: str = "/whatsapp/inbound",
        **extra: str,
    ) -> httpx.Response:
        """The customer at ``sender`` writes ``text`` on WhatsApp (their window opens at the
        stand-in too); asserts Twilio gets an empty TwiML answer."""
        form = {
            "SmsMessageSid": sid,
            "NumMedia": "0",
            "ProfileName": "Alex",
            "SmsSid": sid,
            "WaId": sender.lstrip("+"),
            "SmsStatus": "received",
            "Body": text,
            "To": f"whatsapp:{WHATSAPP_FROM}",
            "NumSegments": "1",
            "MessageType": "text",
            "MessageSid": sid,
            "AccountSid": ACCOUNT,
            "From": f"whatsapp:{sender}",
            "ApiVersion": "2010-04-01",
            **extra,
        }
        self.standin.open_session(sender)
        response = self.post(path, form)
        assert response.status_code == 200, response.text
        assert response.text.endswith("<Response/>")
        return response

    def rows(self, *where: Any) -> list[Any]:
        """Message rows matching ``where``, oldest first."""
        with self.runtime.db.connect() as conn:
            return list(conn.execute(select(MESSAGE).where(*where).order_by(MESSAGE.c.id)).all())

    def customer(self, phone: str = CUSTOMER_PHONE) -> Any:
        with self.runtime.db.connect() as conn:
            return conn.execute(
                select(CUSTOMER)
                .join(IDENTITY, IDENTITY.c.customer_id == CUSTOMER.c.id)
                .where(IDENTITY.c.channel == "sms", IDENTITY.c.address == phone)
            ).one()

    def wait_until(self, check: Any, timeout: float = 10.0) -> None:
        """Poll ``check()`` until it is true (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{check} stayed false for {timeout} s")
            time.sleep(0.02)


@contextmanager
def serve_sms_app(db_url: str, *, whatsapp: bool = False, **settings: Any) -> Iterator[SmsApp]:
    """Start the stand-in and the app (uvicorn, its own thread and port); stop both afterwards.
    ``whatsapp``: the WhatsApp channel runs too (from the sandbox number)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with TwilioStandin(ACCOUNT, TOKEN) as standin:
        values: dict[str, Any] = {
            "database_url": db_url,
            "twilio_account_sid": ACCOUNT,
            "twilio_auth_token": TOKEN,
            "twilio_from_number": FROM,
            "twilio_api_base_url": standin.url,
            "public_base_url": url,
            "sms_rate_per_second": 200.0,
            "spool_path": Path(tempfile.mkdtemp(prefix="rapport-spool-")) / "spool.db",
            **(
                {"twilio_whatsapp_from": WHATSAPP_FROM, "whatsapp_rate_per_second": 200.0} if whatsapp else {}
            ),
            **settings,
        }
        runtime = build_runtime(Settings(_env_file=None, **values))
        service = build_sms_service(runtime)
        assert service is not None
        service.status_grace = 0.3
        services: list[SmsService] = [service]
        wa_service = build_whatsapp_service(runtime) if whatsapp else None
        if wa_service is not None:
            wa_service.status_grace = 0.3
            services.append(wa_service)
        # Short backoff so retries happen within the test (the outbox loop polls every second).
        outbox = Outbox(
            runtime.db,
            {s.name: s.sender for s in services},
            runtime.dialog.reply_options,
            policy=RetryPolicy(base=0.05, cap=0.2),
        )
        app = create_app(runtime, list(services), outbox=outbox)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.01)
            with httpx.Client(timeout=10) as http:
                yield SmsApp(url, runtime, service, outbox, standin, http, wa_service)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
            runtime.db.dispose()
