"""The WhatsApp channel through Twilio: SMS's code where Twilio's API is the same, WhatsApp's rules
where they differ.

In: Twilio's message webhook as for SMS (``POST /whatsapp/inbound``, or ``/sms/inbound``: a
``whatsapp:+E164`` sender is a WhatsApp message either way), signed and checked the same; the
sender joins the customer with that phone number; the message (re)opens the customer's 24-hour
session window (:mod:`storage.whatsapp`). A quick-reply button press arrives as ``ButtonPayload``
(the option's value), a shared location as media.

Out (:class:`WhatsAppSender`): ``whatsapp:`` addresses on the Messages API. Inside the session
window a message goes free-form, its choices as quick-reply buttons (at most 3, a Content API
``twilio/quick-reply`` made once per set of buttons and kept in the database across restarts, the
text as its variable) or, with more, as numbered text. Outside the window a business-initiated
(marketing) message goes only as the approved template configured for its intent (``ContentSid`` and
``ContentVariables``, :mod:`bot.whatsapp_templates`); without one (or without an opt-in) it is
queued again where the contact policy moves it (SMS, say), the reason kept, or failed with the
reason when no channel may take it. Twilio's error 63016 (free-form outside the window), whether it
refuses the send or reports it in a status callback, closes the customer's window and is decided the
same way (:meth:`WhatsAppSender.refusal`): marketing goes again as its template (never free-form) or
where the policy moves it, at most once; anything else fails with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.rest.content.v1.content import ContentList

from bot.channels.sms import (
    WHATSAPP_PREFIX,
    SmsService,
    TwilioSender,
    render,
)
from bot.intake import StatusReport
from bot.runtime import Runtime
from bot.whatsapp_templates import Template, Templates
from dialogs.engine import ReplyOption
from schedulers.audience import contact_of
from schedulers.delivery import Outgoing, SendError
from schedulers.policy import PolicyConfig
from schedulers.ratelimit import SharedLimiter
from storage import whatsapp as store
from storage.models import utcnow

log = logging.getLogger(__name__)

CHANNEL = "whatsapp"
MAX_BUTTONS = 3  # WhatsApp quick replies
MAX_BUTTON_TITLE = 20
MAX_BUTTON_BODY = 1024
MAX_BODY = 1600
OUTSIDE_WINDOW = "63016"  # Twilio: free-form message outside the 24-hour window


def whatsapp_address(number: str) -> str:
    """``whatsapp:+E164`` for an E.164 number."""
    return number if number.startswith(WHATSAPP_PREFIX) else WHATSAPP_PREFIX + number


class WhatsAppSender(TwilioSender):
    """Sends outbox messages on WhatsApp through Twilio (free-form, buttons or a template)."""

    channel = CHANNEL

    def __init__(
        self,
        client: Client,
        db: Engine,
        templates: Templates,
        *,
        policy: PolicyConfig,
        company: str,
        from_number: str | None,
        messaging_service_sid: str | None,
        status_callback: str | None,
        limiter: SharedLimiter,
        rate_per_second: float,
    ) -> None:
        if not from_number and not messaging_service_sid:
            raise ValueError(
                "set TWILIO_WHATSAPP_FROM or TWILIO_WHATSAPP_MESSAGING_SERVICE_SID to send on WhatsApp"
            )
        super().__init__(
            client,
            from_number=whatsapp_address(from_number) if from_number else None,
            messaging_service_sid=messaging_service_sid,
            status_callback=status_callback,
            limiter=limiter,
            rate_per_second=rate_per_second,
            max_segments=10,
        )
        self.db = db
        self.templates = templates
        self.policy = policy
        self.company = company
        self._buttons: dict[str, str] = {}  # buttons digest -> Content SID of its quick reply
        self._buttons_lock = threading.Lock()

    async def send(self, message: Outgoing) -> str:
        """Send ``message`` as WhatsApp allows now; Twilio's message SID. Raises :class:`SendError`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._paced_whatsapp, message)

    def _paced_whatsapp(self, message: Outgoing) -> str:
        params = self._params(message)
        try:
            self.limiter.wait(self.rate)
        except SQLAlchemyError as exc:
            raise SendError(f"send pacing unavailable ({exc.__class__.__name__})", retryable=True) from exc
        return self._create_params(message, params)

    def _params(self, message: Outgoing) -> dict[str, str]:
        """What to send: a template outside the window (marketing), else free-form with buttons or
        numbered choices. Raises :class:`SendError` when WhatsApp's rules forbid sending it (with
        where the contact policy moves it instead, if anywhere)."""
        if message.marketing:
            with self.db.connect() as conn:
                session = store.session_of(conn, address=message.address)
            if session is None or session.opt_in_at is None:
                raise self.refusal(
                    message,
                    "no WhatsApp opt-in recorded for this customer: business-initiated messages "
                    "need one (whatsapp_no_opt_in)",
                    template_ok=False,
                )
            if not session.open_at(utcnow()):
                template = self.templates.get(message.intent)
                if template is None:
                    raise self.refusal(
                        message,
                        f"outside the customer's 24-hour WhatsApp session window and no template for "
                        f"intent {message.intent!r} in WHATSAPP_TEMPLATES: not sent as free-form "
                        "(whatsapp_window_closed_no_template)",
                        template_ok=False,
                    )
                return self._template(template, message, session.name)
        options = message.options
        if 1 <= len(options) <= MAX_BUTTONS:
            sid = self._quick_reply(options)
            if sid is not None:
                variables = {"1": message.text[:MAX_BUTTON_BODY]}
                return {"content_sid": sid, "content_variables": json.dumps(variables)}
        return {"body": render(message.text, options)[:MAX_BODY]}

    def refusal(self, message: Outgoing, why: str, *, template_ok: bool) -> SendError:
        """What becomes of ``message`` when WhatsApp will not take it free-form (``why``): before
        sending, when Twilio refuses the send with 63016, and when a status callback reports 63016,
        all decide here. Marketing goes again as its intent's template (``template_ok``: it did
        not go as one), else where the contact policy moves it (SMS, say), each at most once per
        message; otherwise it fails with the reason."""
        if not message.marketing:
            return SendError(
                f"{why}; a free-form message cannot go outside the window (only a template), not retried",
                retryable=False,
            )
        with self.db.connect() as conn:
            if store.rerouted_before(conn, message_id=message.message_id):
                return SendError(f"{why}; already sent another way once: not again", retryable=False)
            template = self.templates.get(message.intent) if template_ok else None
            if template is not None:
                return SendError(
                    f"{why}; sent again as the {message.intent!r} template, never free-form",
                    retryable=False,
                    reroute=(CHANNEL, message.address),
                )
            contact = (
                contact_of(conn, message.customer_id, self.policy, intent=message.intent, now=utcnow())
                if message.customer_id is not None
                else None
            )
        if (
            contact is not None
            and contact.channel not in (None, CHANNEL)
            and contact.channel in self.policy.channels
            and contact.address
            and not contact.suppressed
        ):
            return SendError(
                f"{why}; rerouted by the contact policy to {contact.channel} ({contact.rerouted})",
                retryable=False,
                reroute=(contact.channel, contact.address),
            )
        return SendError(f"{why}; no other channel may take it (contact policy)", retryable=False)

    def _template(self, template: Template, message: Outgoing, name: str | None) -> dict[str, str]:
        variables = template.render(name=name, text=message.text, company=self.company)
        return {"content_sid": template.content_sid, "content_variables": json.dumps(variables)}

    def _quick_reply(self, options: tuple[ReplyOption, ...]) -> str | None:
        """The Content SID of a quick reply with these buttons and the text as variable 1 (made
        once per set of buttons and kept); None when the Content API fails (the choices then go
        as numbered text)."""
        actions = [
            {"type": "QUICK_REPLY", "title": o.label[:MAX_BUTTON_TITLE], "id": o.value} for o in options
        ]
        key = hashlib.sha256(json.dumps(actions).encode()).hexdigest()[:32]
        with self._buttons_lock:
            known = self._buttons.get(key)
        if known is None:
            known = self._stored_content(key)
        if known is not None:
            with self._buttons_lock:
                self._buttons[key] = known
            return known
        request = ContentList.ContentCreateRequest(
            {
                "friendly_name": f"rapport_qr_{key}",
                "language": "en",
                "variables": {"1": "Your answer?"},  # a sample, as the Content API asks
                "types": {"twilio/quick-reply": {"body": "{{1}}", "actions": actions}},
            }
        )
        try:
            created = self.client.content.v1.contents.create(request)
        except (TwilioRestException, OSError) as exc:
            log.warning("WhatsApp buttons could not be made (%s): sent as numbered text", exc)
            return None
        sid = self._keep_content(key, str(created.sid))
        with self._buttons_lock:
            self._buttons[key] = sid
        return sid

    def _stored_content(self, key: str) -> str | None:
        """The Content SID kept in the database for ``key`` (made before a restart, or by
        another worker); None when there is none or the database cannot say."""
        try:
            with self.db.connect() as conn:
                return store.content_sid(conn, key=key)
        except SQLAlchemyError as exc:
            log.warning("could not read the kept WhatsApp buttons: %s", exc)
            return None

    def _keep_content(self, key: str, sid: str) -> str:
        """Keep ``sid`` for ``key`` in the database; the one to use (another worker's, if it
        kept one first)."""
        try:
            with self.db.begin() as conn:
                store.save_content_sid(conn, key=key, sid=sid, now=utcnow())
        except IntegrityError:
            return self._stored_content(key) or sid
        except SQLAlchemyError as exc:
            log.warning("could not keep the WhatsApp buttons %s: %s", sid, exc)
        return sid

    def _create_params(self, message: Outgoing, content: dict[str, str]) -> str:
        params: dict[str, Any] = {**self._addressing(whatsapp_address(message.address)), **content}
        try:
            created = self.client.messages.create(**params)
        except TwilioRestException as exc:
            if str(exc.code or "") == OUTSIDE_WINDOW:
                self._window_closed(message)
                raise self.refusal(
                    message,
                    f"Twilio error 63016: outside the customer's 24-hour WhatsApp session window ({exc.msg})",
                    template_ok=content.get("content_sid") not in self.templates.sids(),
                ) from None
            raise self._error(exc) from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        return str(created.sid)

    def _window_closed(self, message: Outgoing) -> None:
        if message.customer_id is None:
            return
        try:
            with self.db.begin() as conn:
                store.close_session_of(conn, customer_id=message.customer_id)
        except SQLAlchemyError as exc:
            log.warning(
                "could not record the closed WhatsApp window of message %d: %s", message.message_id, exc
            )

    async def look_up(self, message: Outgoing, since: datetime) -> list[str]:
        """Twilio's SIDs of messages to this WhatsApp address since ``since`` that may be this
        one (same body; any, for a template or buttons, whose body Twilio renders)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._look_up_whatsapp, message, since)

    def _look_up_whatsapp(self, message: Outgoing, since: datetime) -> list[str]:
        try:
            content = self._params(message)
        except SendError:
            return []  # it could not have gone
        params: dict[str, Any] = {
            "to": whatsapp_address(message.address),
            "date_sent_after": since,
            "page_size": 100,
            "limit": 200,
        }
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
        body = content.get("body")
        matches = [m for m in found if body is None or m.body == body]
        return [str(m.sid) for m in sorted(matches, key=lambda m: m.date_created or since)]


class WhatsAppService(SmsService):
    """The WhatsApp channel: Twilio webhooks under ``/whatsapp`` and the WhatsApp sender."""

    name = CHANNEL
    prefix = "/whatsapp"
    label = "WhatsApp"

    def _make_sender(self, limiter: SharedLimiter) -> TwilioSender:
        settings = self.runtime.settings
        self._whatsapp = WhatsAppSender(
            self.client,
            self.runtime.db,
            settings.whatsapp_templates_config(),
            policy=self.runtime.policy,
            company=settings.company_name,
            from_number=settings.twilio_whatsapp_from,
            messaging_service_sid=settings.twilio_whatsapp_messaging_service_sid,
            status_callback=self.public_base_url + self.prefix + "/status",
            limiter=limiter,
            rate_per_second=settings.whatsapp_rate_per_second,
        )
        return self._whatsapp

    async def start(self, *, receive: bool = True) -> None:
        if receive:
            log.info(
                "WhatsApp: Twilio webhooks expected at %s/whatsapp/inbound and /whatsapp/status",
                self.public_base_url,
            )

    async def _reported(self, report: StatusReport, form: Mapping[str, str]) -> None:
        """Twilio's 63016 in a status callback: the customer's window is closed, and the failed
        message is decided as when Twilio refuses the send itself (:meth:`WhatsAppSender.refusal`):
        marketing goes again as its template or where the contact policy moves it, once; else it
        stays failed with the reason."""
        if form.get("ErrorCode") != OUTSIDE_WINDOW:
            return
        try:
            await asyncio.to_thread(self._outside_window, report.provider_id)
        except SQLAlchemyError as exc:
            log.warning("could not handle WhatsApp's 63016 for %s: %s", report.provider_id, exc)

    def _outside_window(self, provider_id: str) -> None:
        db = self.runtime.db
        with db.begin() as conn:
            store.close_session(conn, provider_id=provider_id)
            refused = store.reported(conn, provider_id=provider_id)
        if refused is None:
            return
        message = Outgoing(
            refused.message_id,
            CHANNEL,
            refused.address,
            refused.text,
            (),
            refused.attempts,
            marketing=refused.marketing,
            intent=refused.intent,
            customer_id=refused.customer_id,
        )
        error = self._whatsapp.refusal(
            message,
            "Twilio error 63016 (status callback): outside the customer's 24-hour WhatsApp session window",
            template_ok=True,  # an approved template is never refused for the window
        )
        with db.begin() as conn:
            if error.reroute is None:
                store.explain_failure(conn, message_id=refused.message_id, reason=error.reason)
                return
            channel, address = error.reroute
            queued = store.requeue_reported(
                conn,
                message_id=refused.message_id,
                provider_id=provider_id,
                channel=channel,
                address=address,
                reason=error.reason,
                now=utcnow(),
            )
        if queued:
            log.info("WhatsApp message %d refused with 63016: %s", refused.message_id, error.reason)


def build_whatsapp_service(runtime: Runtime) -> WhatsAppService | None:
    """The WhatsApp channel if Twilio and a WhatsApp sender are configured, else None."""
    s = runtime.settings
    sender = bool(s.twilio_whatsapp_from or s.twilio_whatsapp_messaging_service_sid)
    if not sender:
        return None
    wanted = {
        "TWILIO_ACCOUNT_SID": bool(s.twilio_account_sid),
        "TWILIO_AUTH_TOKEN": s.twilio_auth_token is not None,
    }
    missing = [name for name, ok in wanted.items() if not ok]
    if missing:
        log.warning("WhatsApp stays off: set %s", ", ".join(missing))
        return None
    return WhatsAppService(runtime)
