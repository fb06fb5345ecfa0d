"""The dialog engine: one inbound message in, the bot's replies out, in one transaction.

Channel-agnostic: a channel adapter turns what it received into an :class:`Inbound`, calls
:meth:`DialogEngine.handle`, sends the returned replies and records their delivery.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from dialogs import texts
from dialogs.bank import Kind, Question, QuestionBank
from dialogs.commands import Command, CommandKind, detect_command
from dialogs.parsing import Parse, find_question, mentions, normalize, parse_answer, parse_yes_no
from dialogs.policy import Next, next_step
from storage import queries
from storage.db import transaction
from storage.models import (
    Customer,
    DeliveryStatus,
    DialogState,
    Direction,
    Message,
    PendingKind,
    Preference,
    Source,
    utcnow,
)

log = logging.getLogger(__name__)

_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as a channel received it.

    ``address`` identifies the sender on ``channel`` (a phone number, a chat id). ``phone`` is set
    by channels that vouch for the sender's number, so the message joins the customer known by it.
    ``choice`` is a button press: the option value the customer picked.
    """

    channel: str
    address: str
    text: str
    provider_id: str | None = None
    choice: str | None = None
    phone: str | None = None
    name: str | None = None
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReplyOption:
    """An answer a channel may offer as a button or a numbered line."""

    value: str
    label: str


@dataclass(frozen=True, slots=True)
class Reply:
    """One outbound message, already in the outbox as ``message_id``."""

    message_id: int
    text: str
    intent: str
    question_key: str | None = None
    options: tuple[ReplyOption, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What one inbound message led to."""

    customer_id: int
    inbound_id: int
    replies: tuple[Reply, ...]
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Tunables of the dialogue (set from Rapport's settings)."""

    bot_name: str = "Rapport"
    company_name: str = "Rapport Mobile"
    confidence_threshold: float = 0.75
    max_failed_tries: int = 2
    resume_after: timedelta = timedelta(hours=24)
    skip_for: timedelta = timedelta(hours=24)


@dataclass(slots=True)
class _Out:
    text: str
    intent: str
    question_key: str | None = None


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(text: str) -> str:
    """Text as stored and understood: PostgreSQL text cannot hold NUL, so NUL becomes the visible
    symbol for it (U+2400); lone surrogates (not encodable) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", "\u2400"))


class DialogEngine:
    """Runs the conversation for every customer on every channel."""

    def __init__(
        self,
        db: Engine,
        bank: QuestionBank,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.bank = bank
        self.config = config or EngineConfig()
        self.clock = clock

    def handle(self, inbound: Inbound) -> TurnResult:
        """Process one inbound message in one transaction and return the replies to send.

        A message whose ``provider_id`` was seen before returns the replies recorded the first
        time and changes nothing. Messages of one customer are processed one after another.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with transaction(self.db) as session:
                    return _Turn(self, session, inbound).run()
            except (IntegrityError, DBAPIError) as exc:
                # A race with a concurrent turn (the same new customer created twice, the same
                # provider id stored twice, a deadlock): run the turn again on the new state.
                retryable = isinstance(exc, IntegrityError) or _is_transient(exc)
                if not retryable or attempt == _ATTEMPTS:
                    raise
                log.info("retrying a turn after %s (attempt %d)", type(exc.orig).__name__, attempt)
        raise AssertionError("unreachable")

    def reply_options(self, intent: str, question_key: str | None) -> tuple[ReplyOption, ...]:
        """The buttons a reply offers: the question's options, or yes/no for confirmations."""
        if intent in ("reconfirm", "confirm"):
            return (ReplyOption("yes", "Yes"), ReplyOption("no", "No"))
        question = self.bank.get(question_key)
        if question is None or intent not in ("ask", "reask"):
            return ()
        if question.kind is Kind.YES_NO:
            return (ReplyOption("yes", "Yes"), ReplyOption("no", "No"))
        if question.kind in (Kind.CHOICE, Kind.TIME_WINDOW):
            return tuple(ReplyOption(str(o.value), o.label) for o in question.options)
        return ()


def _is_transient(exc: DBAPIError) -> bool:
    # PostgreSQL serialization failure / deadlock; SQLite "database is locked" past the timeout.
    code = getattr(exc.orig, "sqlstate", None)
    return code in ("40001", "40P01") or "database is locked" in str(exc.orig)


@dataclass(slots=True)
class _Turn:
    engine: DialogEngine
    session: Session
    inbound: Inbound
    outs: list[_Out] = field(default_factory=list)
    asked: bool = False

    # Set up in run():
    now: datetime = field(init=False)
    customer: Customer = field(init=False)
    state: DialogState = field(init=False)
    message: Message = field(init=False)
    prefs: dict[str, Preference] = field(init=False)
    text: str = field(init=False)

    @property
    def bank(self) -> QuestionBank:
        return self.engine.bank

    @property
    def cfg(self) -> EngineConfig:
        return self.engine.config

    # -- the turn ---------------------------------------------------------------------------

    def run(self) -> TurnResult:
        inbound = self.inbound
        self.now = inbound.received_at or self.engine.clock()
        self.text = storable_text(inbound.text)
        if inbound.provider_id is not None:
            done = self._duplicate()
            if done is not None:
                return done
        self.customer, created = self._find_or_create_customer()
        assert self.customer.id is not None
        self.state = queries.lock_state(self.session, customer_id=self.customer.id)
        if inbound.provider_id is not None:
            # Re-check under the lock: the same message may have been processed while we waited.
            done = self._duplicate()
            if done is not None:
                return done
        first_contact = created or self.state.version == 0
        idle = self.state.last_activity is not None and self.now - self.state.last_activity
        self.message = Message(
            customer_id=self.customer.id,
            channel=inbound.channel,
            direction=Direction.IN,
            address=inbound.address,
            provider_message_id=inbound.provider_id,
            text=self.text,
            state_version=self.state.version,
            created_at=self.now,
        )
        self.session.add(self.message)
        self.session.flush()
        self.prefs = queries.preferences(self.session, customer_id=self.customer.id)

        self._dispatch(first_contact=first_contact, idle=idle or None)

        replies = self._write_replies()
        self.state.version += 1
        self.state.last_activity = self.now
        self.session.add(self.state)
        self.session.add(self.message)
        assert self.message.id is not None
        return TurnResult(self.customer.id, self.message.id, replies)

    def _duplicate(self) -> TurnResult | None:
        assert self.inbound.provider_id is not None
        seen = queries.find_inbound(
            self.session, channel=self.inbound.channel, provider_id=self.inbound.provider_id
        )
        if seen is None:
            return None
        assert seen.id is not None and seen.customer_id is not None
        replies = tuple(self._reply(m) for m in queries.replies_to(self.session, message_id=seen.id))
        return TurnResult(seen.customer_id, seen.id, replies, duplicate=True)

    def _find_or_create_customer(self) -> tuple[Customer, bool]:
        inbound, session = self.inbound, self.session
        identity = queries.find_identity(session, channel=inbound.channel, address=inbound.address)
        if identity is not None:
            customer = session.get(Customer, identity.customer_id)
            assert customer is not None
            return customer, False
        if inbound.phone:
            known = queries.find_customer_by_phone(session, phone=inbound.phone)
            if known is not None and known.id is not None:
                queries.link_identity(
                    session,
                    customer_id=known.id,
                    channel=inbound.channel,
                    address=inbound.address,
                    verified=True,
                )
                return known, False
        customer = queries.create_customer(
            session,
            channel=inbound.channel,
            address=inbound.address,
            phone=inbound.phone,
            name=inbound.name,
            verified=inbound.phone is not None,
        )
        return customer, True

    def _dispatch(self, *, first_contact: bool, idle: timedelta | None) -> None:
        text = normalize(self.text)
        command = detect_command(self.text) if text else None

        if self.customer.opted_out_at is not None:
            self._while_opted_out(command)
            return
        if first_contact:
            self.say(texts.greeting(self.cfg, self.customer.name), "greeting")
        elif idle is not None and idle >= self.cfg.resume_after:
            pending = self.bank.get(self.state.pending_key)
            self.say(texts.welcome_back(self.customer.name, pending), "welcome_back")

        if self.inbound.choice is not None and self._button(self.inbound.choice):
            return
        if not text:
            self.intent("empty")
            if not first_contact:
                self.say(texts.EMPTY, "fallback")
            self.ask_next()
            return
        confirming = self.state.pending_kind in (PendingKind.CONFIRM_FORGET, PendingKind.CONFIRM_STOP)
        if confirming and self._confirmation(self.text):
            return
        if command is not None:
            self._command(command, first_contact=first_contact)
            return
        if self.state.pending_kind == PendingKind.RECONFIRM and self._reconfirm(self.text):
            return
        self._answer(self.text, first_contact=first_contact)

    # -- replies ----------------------------------------------------------------------------

    def say(self, text: str, intent: str, question_key: str | None = None) -> None:
        self.outs.append(_Out(text, intent, question_key))

    def intent(self, intent: str, *, review: bool = False) -> None:
        self.message.intent = intent
        if review:
            self.message.needs_review = True

    def _write_replies(self) -> tuple[Reply, ...]:
        rows = [
            Message(
                customer_id=self.customer.id,
                channel=self.inbound.channel,
                direction=Direction.OUT,
                address=self.inbound.address,
                text=out.text,
                question_key=out.question_key,
                intent=out.intent,
                reply_to_id=self.message.id,
                status=DeliveryStatus.QUEUED,
                created_at=self.now,
            )
            for out in self.outs
        ]
        self.session.add_all(rows)
        self.session.flush()
        return tuple(self._reply(m) for m in rows)

    def _reply(self, m: Message) -> Reply:
        assert m.id is not None
        intent = m.intent or ""
        return Reply(m.id, m.text, intent, m.question_key, self.engine.reply_options(intent, m.question_key))

    # -- asking -----------------------------------------------------------------------------

    def ask_next(self, *, prefix: str = "") -> None:
        """End the turn with (at most) one question: the pending one, or the next per the policy."""
        if self.asked:
            return
        self.asked = True
        step = next_step(self.bank, self.state, self.prefs, self.now)
        if step.question is None:
            self.state.pending_key = None
            self.state.pending_kind = None
            if self.state.finished_at is None:
                self.state.finished_at = self.now
                self.say(prefix + texts.ALL_DONE, "done")
            elif prefix:
                self.say(prefix.strip(), "ack")
            return
        self._ask(step, prefix=prefix)

    def _ask(self, step: Next, *, prefix: str = "", again: bool = False) -> None:
        question = step.question
        assert question is not None
        if question.key != self.state.pending_key or step.kind != self.state.pending_kind:
            self.state.reask_count = 0
        self.state.pending_key = question.key
        self.state.pending_kind = step.kind
        self.state.finished_at = None
        if step.kind == PendingKind.RECONFIRM:
            pref = self.prefs[question.key]
            self.say(prefix + texts.reconfirm(question, pref.value), "reconfirm", question.key)
        else:
            self.say(prefix + question.text, "reask" if again else "ask", question.key)

    def pending_question(self) -> Question | None:
        return self.bank.get(self.state.pending_key)

    # -- remembering ------------------------------------------------------------------------

    def remember(self, question: Question, parse: Parse, *, intent: str) -> None:
        assert self.customer.id is not None
        pref = self.prefs.get(question.key)
        if pref is None:
            pref = Preference(customer_id=self.customer.id, key=question.key, value=parse.value, source="")
            self.prefs[question.key] = pref
        pref.value = parse.value
        pref.source = Source.ASKED
        pref.message_id = self.message.id
        pref.channel = self.inbound.channel
        pref.stated_at = pref.confirmed_at = self.now
        self.session.add(pref)
        self.state.deferred.pop(question.key, None)
        self.state.deferred = dict(self.state.deferred)  # a new dict, so the JSON column is saved
        self.message.question_key = question.key
        self.message.parsed_value = parse.value
        self.message.confidence = round(parse.confidence, 3)
        self.intent(intent)
        if self.state.pending_key == question.key:
            self.state.pending_key = self.state.pending_kind = None
            self.state.reask_count = 0

    def accept(self, parse: Parse | None) -> bool:
        return parse is not None and parse.confidence >= self.cfg.confidence_threshold

    # -- the kinds of turn ------------------------------------------------------------------

    def _button(self, choice: str) -> bool:
        question = self.pending_question()
        if (
            question is None
            or self.state.pending_kind != PendingKind.ASK
            or question.kind not in (Kind.CHOICE, Kind.TIME_WINDOW)
        ):
            return False
        option = next((o for o in question.options if str(o.value) == choice), None)
        if option is None:
            return False
        value: Any = option.value
        if question.kind is Kind.TIME_WINDOW:
            value = {"window": option.value, "start": option.start, "end": option.end}
        self.remember(question, Parse(value, 1.0, option.label), intent="answer")
        self.ask_next(prefix=texts.ack(question, value))
        return True

    def _while_opted_out(self, command: Command | None) -> None:
        kind = command.kind if command else None
        if kind is CommandKind.START:
            self.customer.opted_out_at = None
            self.customer.opt_out_message_id = None
            self.session.add(self.customer)
            self.intent("keyword:start")
            self.say(texts.OPTED_IN, "opt_in")
            self.ask_next()
        elif kind is CommandKind.HELP:
            self.intent("keyword:help")
            self.say(texts.help_text(self.cfg, opted_out=True), "help")
        else:
            # Opted out: nothing but the opt-in confirmation (and HELP) is ever sent.
            self.intent("opted_out")

    def _opt_out(self) -> None:
        self.customer.opted_out_at = self.now
        self.customer.opt_out_message_id = self.message.id
        self.session.add(self.customer)
        self.say(texts.OPTED_OUT, "opt_out")

    def _confirmation(self, text: str) -> bool:
        """Handle YES/NO to "erase everything?" or "stop all messages?"; False if it is neither."""
        yes_no = parse_yes_no(text)
        kind = self.state.pending_kind
        self.state.pending_kind = PendingKind.ASK if self.state.pending_key else None
        if not self.accept(yes_no):
            return False
        assert yes_no is not None
        if kind == PendingKind.CONFIRM_FORGET:
            if yes_no.value:
                self._erase()
            else:
                self.intent("command:forget_cancelled")
                self.ask_next(prefix=texts.KEPT + " ")
            return True
        if yes_no.value:
            self.intent("command:stop")
            self._opt_out()
        else:
            self.intent("command:stop_cancelled")
            self.ask_next(prefix=texts.CARRY_ON + " ")
        return True

    def _erase(self) -> None:
        assert self.message.id is not None
        self.intent("command:forget")
        self.session.flush()
        queries.erase_customer(
            self.session, customer=self.customer, keep_message_id=self.message.id, now=self.now
        )
        self.prefs.clear()
        self.state.pending_key = self.state.pending_kind = None
        self.state.deferred = {}
        self.state.reask_count = 0
        self.state.finished_at = self.now
        self.asked = True
        self.say(texts.ERASED, "erased")

    def _command(self, command: Command, *, first_contact: bool) -> None:
        kind = command.kind
        self.intent(f"command:{kind.value}" if kind not in _KEYWORDS else f"keyword:{kind.value}")
        pending = self.pending_question()
        if kind is CommandKind.STOP:
            self._opt_out()
        elif kind is CommandKind.STOP_REQUEST:
            self.state.pending_kind = PendingKind.CONFIRM_STOP
            self.say(texts.CONFIRM_STOP, "confirm")
        elif kind is CommandKind.START:
            self.ask_next(prefix=texts.ALREADY_IN + " ")
        elif kind is CommandKind.HELP:
            self.say(texts.help_text(self.cfg, opted_out=False), "help")
            self.ask_next()
        elif kind is CommandKind.FORGET:
            self.state.pending_kind = PendingKind.CONFIRM_FORGET
            self.say(texts.CONFIRM_FORGET, "confirm")
        elif kind is CommandKind.PROFILE:
            self.say(texts.profile(self.bank, self.prefs), "profile")
            self.ask_next()
        elif kind is CommandKind.WHY:
            self.say(pending.why if pending else texts.NOTHING_ASKED, "why")
            if pending:
                self._ask(Next(pending, PendingKind(self.state.pending_kind or PendingKind.ASK)), again=True)
                self.asked = True
        elif kind is CommandKind.SKIP:
            if pending is not None:
                self._defer(pending)
                self.ask_next(prefix=texts.SKIPPED + " ")
            else:
                self.ask_next()
        elif kind is CommandKind.CHANGE:
            self._change(command)
        elif kind is CommandKind.FIT:
            self.say(texts.NO_FIT_YET, "fit")
            self.ask_next()
        elif kind is CommandKind.GREETING:
            if not first_contact:
                self.say(texts.hello_again(self.customer.name), "greeting")
            self.ask_next()

    def _defer(self, question: Question) -> None:
        self.state.deferred = {
            **self.state.deferred,
            question.key: (self.now + self.cfg.skip_for).isoformat(),
        }
        self.state.pending_key = self.state.pending_kind = None
        self.state.reask_count = 0

    def _change(self, command: Command) -> None:
        question = find_question(self.bank, command.topic or "")
        if question is None:
            self.intent("command:change", review=True)
            self.say(texts.unknown_topic(self.bank, command.topic or ""), "fallback")
            self.ask_next()
            return
        parse = parse_answer(question, command.value or "")
        if not self.accept(parse):
            self.intent("command:change", review=True)
            self.message.question_key = question.key
            self.say(texts.not_understood_change(question, command.value or ""), "fallback")
            self._ask(Next(question, PendingKind.ASK), again=True)
            self.asked = True
            return
        assert parse is not None
        self.remember(question, parse, intent="command:change")
        self.ask_next(prefix=texts.changed(question, parse.value) + " ")

    def _reconfirm(self, text: str) -> bool:
        question = self.pending_question()
        if question is None:
            return False
        yes_no = parse_yes_no(text)
        if self.accept(yes_no) and yes_no is not None:
            if yes_no.value:
                pref = self.prefs[question.key]
                pref.confirmed_at = self.now
                self.session.add(pref)
                self.state.pending_key = self.state.pending_kind = None
                self.message.question_key = question.key
                self.message.parsed_value = pref.value
                self.message.confidence = round(yes_no.confidence, 3)
                self.intent("reconfirmed")
                self.ask_next(prefix=texts.THANKS + " ")
            else:
                self.intent("reconfirm_no")
                self._ask(Next(question, PendingKind.ASK), prefix=texts.WHAT_NOW + " ")
                self.asked = True
            return True
        parse = parse_answer(question, text)
        if self.accept(parse) and parse is not None:
            self.remember(question, parse, intent="answer")
            self.ask_next(prefix=texts.ack(question, parse.value))
            return True
        return False

    def _answer(self, text: str, *, first_contact: bool) -> None:
        pending = self.pending_question() if self.state.pending_kind in (PendingKind.ASK, None) else None
        noted: list[tuple[Question, Any]] = []
        # Out-of-turn answers name their topic ("actually my budget is $40").
        for question in self.bank:
            if question is pending or not mentions(question, text):
                continue
            parse = parse_answer(question, text)
            if self.accept(parse) and parse is not None:
                self.remember(question, parse, intent="out_of_turn")
                noted.append((question, parse.value))
        best: Parse | None = None
        # A number in "my budget is 40" belongs to the budget, not to a pending number question.
        numeric = pending is not None and pending.kind in (Kind.NUMBER, Kind.MONEY)
        if pending is not None and not (noted and numeric):
            best = parse_answer(pending, text)
            if self.accept(best) and best is not None:
                self.remember(pending, best, intent="answer")
                prefix = texts.ack(pending, best.value)
                if noted:
                    prefix = texts.noted(noted) + " " + prefix
                self.ask_next(prefix=prefix)
                return
        if noted:
            self.ask_next(prefix=texts.noted(noted) + " ")
            return
        if pending is None:
            self.intent("chat", review=not first_contact)
            if not first_contact:
                self.say(texts.fallback(self.state.finished_at is not None), "fallback")
            self.ask_next()
            return
        # The pending question was not understood.
        self.message.question_key = pending.key
        if best is not None:
            self.message.parsed_value = best.value
            self.message.confidence = round(best.confidence, 3)
        self.intent("unparsed", review=True)
        self.state.reask_count += 1
        if self.state.reask_count >= self.cfg.max_failed_tries:
            self._defer(pending)
            self.ask_next(prefix=texts.MOVE_ON + " ")
            return
        self._ask(Next(pending, PendingKind.ASK), prefix=texts.reask_prefix(pending), again=True)
        self.asked = True


_KEYWORDS = (CommandKind.STOP, CommandKind.START, CommandKind.HELP)
