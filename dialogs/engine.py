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

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from dialogs import handoff, texts
from dialogs import understanding as u
from dialogs.account import AccountDesk
from dialogs.advisor import AdviceConfig, Advisor, explain, no_offer_reason
from dialogs.bank import Kind, Question, QuestionBank
from dialogs.commands import CARRIER_KEYWORDS, Command, CommandKind, detect_command
from dialogs.handoff import HandoffConfig
from dialogs.parsing import Parse, find_question, normalize, parse_answer, parse_yes_no
from dialogs.policy import Next, next_step, open_questions
from storage import handoff as conversations
from storage import turns as store
from storage.handoff import Conv
from storage.handoff_models import ConversationState
from storage.models import DeliveryStatus, Direction, PendingKind, Source, utcnow
from storage.turns import Fact, TurnState

log = logging.getLogger(__name__)

_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Media:
    """Something other than text that came with a message (a picture, a sticker, a location...).

    ``kind`` is what it is in general words ("image", "sticker", "location", "audio", "file"...);
    ``content_type`` and ``url`` are the provider's, when it gives them.
    """

    kind: str
    content_type: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as a channel received it.

    ``address`` identifies the sender on ``channel`` (a phone number, a chat id). ``phone`` is set
    by channels that vouch for the sender's number, so the message joins the customer known by it.
    ``choice`` is a button press: the option value the customer picked. ``media``: what came
    besides text (the engine answers a message with media and no text the same on every channel).
    """

    channel: str
    address: str
    text: str
    provider_id: str | None = None
    choice: str | None = None
    phone: str | None = None
    name: str | None = None
    received_at: datetime | None = None
    media: tuple[Media, ...] = ()


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
    advice: AdviceConfig = field(default_factory=AdviceConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)


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
        bank_provider: Callable[[Connection], QuestionBank] | None = None,
        intents_provider: Callable[[Connection], tuple[tuple[str, str], ...]] | None = None,
    ) -> None:
        self.db = db
        self.bank = bank
        # The bank for a turn: ``bank`` plus what operators taught, when a provider is given.
        self.bank_provider = bank_provider
        self.config = config or EngineConfig()
        self.clock = clock
        self.advisor = Advisor(bank, self.config.advice)
        self.account = AccountDesk(self.advisor)
        # Intent phrasings operators taught, when a provider is given (added to intents.toml's).
        self.intents_provider = intents_provider
        # The understander last used, by the taught phrasings it was trained with (the provider
        # hands out the same tuple until something is taught): no look-up by value per turn.
        self._understander: tuple[tuple[tuple[str, str], ...], u.Understander] | None = None

    def warm_up(self) -> None:
        """Train the understanding step now (at start-up) rather than on the first message: importing
        scikit-learn and fitting the classifier take about a second, once per process."""
        with self.db.connect() as conn:
            self.understander(conn)

    def handle(self, inbound: Inbound) -> TurnResult:
        """Process one inbound message in one transaction and return the replies to send.

        A message whose ``provider_id`` was seen before returns the replies recorded the first
        time and changes nothing. Messages of one customer are processed one after another.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self.db.begin() as conn:
                    # Redeliveries are rare: the first attempt lets the unique provider-id index
                    # catch them (IntegrityError), the retry looks the stored replies up.
                    return _Turn(self, conn, inbound, check_duplicate=attempt > 1).run()
            except (IntegrityError, DBAPIError) as exc:
                # A race with a concurrent turn (the same new customer created twice, the same
                # provider id stored twice, a deadlock): run the turn again on the new state.
                retryable = isinstance(exc, IntegrityError) or _is_transient(exc)
                if not retryable or attempt == _ATTEMPTS:
                    raise
                log.info("retrying a turn after %s (attempt %d)", type(exc.orig).__name__, attempt)
        raise AssertionError("unreachable")

    def understander(self, conn: Connection) -> u.Understander:
        """The understanding step: trained on intents.toml and what operators taught (cached)."""
        taught = self.intents_provider(conn) if self.intents_provider is not None else ()
        last = self._understander
        if last is not None and last[0] is taught:
            return last[1]
        found = u.understander(taught=taught)
        self._understander = (taught, found)
        return found

    def reply_from_row(
        self, message_id: int, text: str, intent: str | None, question_key: str | None
    ) -> Reply:
        """A stored outbound message as a :class:`Reply` (with its buttons)."""
        intent = intent or ""
        return Reply(message_id, text, intent, question_key, self.reply_options(intent, question_key))

    def reply_options(self, intent: str, question_key: str | None) -> tuple[ReplyOption, ...]:
        """The buttons a reply offers: the question's options, or yes/no for confirmations."""
        if intent in ("reconfirm", "confirm", "offer_person"):
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
class _Understood:
    """What the bot made of the inbound message (stored on its row)."""

    intent: str | None = None
    question_key: str | None = None
    parsed_value: Any = None
    confidence: float | None = None
    needs_review: bool = False


@dataclass(slots=True)
class _Turn:
    """One inbound message: load the locked state, decide in memory, then write every row."""

    engine: DialogEngine
    conn: Connection
    inbound: Inbound
    check_duplicate: bool
    outs: list[_Out] = field(default_factory=list)
    asked: bool = False
    understood: _Understood = field(default_factory=_Understood)
    changed: dict[str, bool] = field(default_factory=dict)  # fact key -> learned from this message
    opt_change: bool = False
    erase: bool = False
    # Writes that need the inbound message's id, run once it is stored.
    after_insert: list[Callable[[int], None]] = field(default_factory=list)

    # Set up in run():
    _bank: QuestionBank = field(init=False)
    now: datetime = field(init=False)
    text: str = field(init=False)
    state: TurnState = field(init=False)
    prefs: dict[str, Fact] = field(init=False)
    conv: Conv = field(init=False)  # the conversation this message belongs to

    @property
    def bank(self) -> QuestionBank:
        return self._bank

    @property
    def cfg(self) -> EngineConfig:
        return self.engine.config

    # -- the turn ---------------------------------------------------------------------------

    def run(self) -> TurnResult:
        inbound = self.inbound
        provider = self.engine.bank_provider
        self._bank = provider(self.conn) if provider is not None else self.engine.bank
        self.now = inbound.received_at or self.engine.clock()
        self.text = storable_text(inbound.text)
        if inbound.provider_id is not None and self.check_duplicate:
            seen = store.find_inbound(self.conn, channel=inbound.channel, provider_id=inbound.provider_id)
            if seen is not None:
                rows = store.replies_to(self.conn, message_id=seen[0])
                replies = tuple(self.engine.reply_from_row(*row) for row in rows)
                return TurnResult(seen[1], seen[0], replies, duplicate=True)
        self.state = store.lock_or_create_turn(
            self.conn,
            channel=inbound.channel,
            address=inbound.address,
            phone=inbound.phone,
            name=inbound.name,
            now=self.now,
        )
        version = self.state.version
        first_contact = self.state.created or version == 0
        idle = self.now - self.state.last_activity if self.state.last_activity is not None else None
        self.prefs = self.state.facts
        existing = set(self.prefs)
        self.conv = conversations.current(
            self.conn, turn=self.state, now=self.now, idle=self.cfg.resume_after
        )

        self._dispatch(first_contact=first_contact, idle=idle)
        self._handoff_rule()

        return self._write(version=version, existing=existing)

    def _write(self, *, version: int, existing: set[str]) -> TurnResult:
        inbound, state, understood = self.inbound, self.state, self.understood
        inbound_id = store.insert_message(
            self.conn,
            {
                "customer_id": state.customer_id,
                "channel": inbound.channel,
                "direction": Direction.IN,
                "address": inbound.address,
                "provider_message_id": inbound.provider_id,
                "text": self.text,
                "state_version": version,
                "created_at": self.now,
                "intent": understood.intent,
                "question_key": understood.question_key,
                "parsed_value": understood.parsed_value,
                "confidence": understood.confidence,
                "needs_review": understood.needs_review,
            },
        )
        for write in self.after_insert:
            write(inbound_id)
        if self.erase:
            store.erase(self.conn, customer_id=state.customer_id, keep_message_id=inbound_id, now=self.now)
        else:
            for key, from_this_message in self.changed.items():
                if from_this_message:
                    self.prefs[key].message_id = inbound_id
            store.save_facts(
                self.conn,
                customer_id=state.customer_id,
                facts=[self.prefs[key] for key in self.changed],
                existing=existing,
            )
        if self.opt_change:
            opted_out = state.opted_out_at is not None
            store.set_opt_out(
                self.conn,
                customer_id=state.customer_id,
                at=state.opted_out_at,
                message_id=inbound_id if opted_out else None,
            )
        ids = store.insert_messages(
            self.conn,
            [
                {
                    "customer_id": state.customer_id,
                    "channel": inbound.channel,
                    "direction": Direction.OUT,
                    "address": inbound.address,
                    "text": out.text,
                    "question_key": out.question_key,
                    "intent": out.intent,
                    "reply_to_id": inbound_id,
                    "status": DeliveryStatus.QUEUED,
                    "created_at": self.now,
                    "needs_review": False,
                }
                for out in self.outs
            ],
        )
        state.version = version + 1
        state.last_activity = self.now
        store.save_state(self.conn, state, expected_version=version)
        replies = tuple(
            self.engine.reply_from_row(i, out.text, out.intent, out.question_key)
            for i, out in zip(ids, self.outs, strict=True)
        )
        return TurnResult(state.customer_id, inbound_id, replies)

    def _dispatch(self, *, first_contact: bool, idle: timedelta | None) -> None:
        text = normalize(self.text)

        if self.state.opted_out_at is not None:
            self._while_opted_out(detect_command(self.text) if text else None)
            return
        if self.conv.with_person:
            self._while_with_person(detect_command(self.text) if text else None)
            return
        if first_contact:
            self.say(texts.greeting(self.cfg, self.state.name), "greeting")
        elif idle is not None and idle >= self.cfg.resume_after:
            pending = self.bank.get(self.state.pending_key)
            self.say(texts.welcome_back(self.state.name, pending), "welcome_back")

        if self.inbound.choice is not None and self._button(self.inbound.choice):
            return
        if not text:
            self._no_text(first_contact=first_contact)
            return
        if self.state.pending_kind == PendingKind.OFFER_PERSON and self._offer_answer(self.text):
            return
        confirming = self.state.pending_kind in (PendingKind.CONFIRM_FORGET, PendingKind.CONFIRM_STOP)
        if confirming and self._confirmation(self.text):
            return
        if self.state.pending_kind == PendingKind.SUGGESTION and store.unseen_suggestion(
            self.conn, customer_id=self.state.customer_id
        ):
            # A proactive offer still waiting (or cancelled, or failed) has not been seen: "yes"
            # is about something else.
            self.state.pending_key = self.state.pending_kind = None
        if self.state.pending_kind == PendingKind.SUGGESTION and self._suggestion_answer(self.text):
            return
        self._understand(first_contact=first_contact)

    def _no_text(self, *, first_contact: bool) -> None:
        """An empty message, or only a picture, sticker, location...: say so briefly (not to a
        newcomer, who was just greeted) and ask the pending question again."""
        media = bool(self.inbound.media)
        self.intent("media" if media else "empty")
        if not first_contact:
            self.say(texts.TEXT_ONLY if media else texts.EMPTY, "fallback")
        self.ask_next()

    # -- replies ----------------------------------------------------------------------------

    def say(self, text: str, intent: str, question_key: str | None = None) -> None:
        self.outs.append(_Out(text, intent, question_key))

    def intent(self, intent: str, *, review: bool = False) -> None:
        self.understood.intent = intent
        if review:
            self.understood.needs_review = True

    def understood_as(self, question: Question, value: Any, confidence: float | None) -> None:
        self.understood.question_key = question.key
        self.understood.parsed_value = value
        self.understood.confidence = round(confidence, 3) if confidence is not None else None

    # -- asking -----------------------------------------------------------------------------

    def ask_next(self, *, prefix: str = "") -> None:
        """End the turn with (at most) one question: the pending one, or the next per the policy."""
        if self.asked:
            return
        self.asked = True
        step = self._next_step()
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

    def _next_step(self) -> Next:
        """The policy's next step, after answering what usage can answer, with plan questions in
        order of how likely their answer changes the suggested plan (value of information)."""
        state = self.state
        if not state.has_usage:
            return next_step(self.bank, state, self.prefs, self.now)
        open_now = open_questions(self.bank, state, self.prefs, self.now)
        for question in open_now:
            if question.derive_from_usage is None:
                continue
            value = self.engine.advisor.derive(self.conn, state.customer_id, question)
            if value is not None:
                self.prefs[question.key] = Fact(question.key, value, Source.USAGE, self.now, self.now)
                self.changed[question.key] = False
        open_now = [q for q in open_now if q.key not in self.prefs]
        ranked = self.engine.advisor.question_order(
            self.conn,
            customer_id=state.customer_id,
            current_plan=state.current_plan_id,
            preferences=self._values(),
            open_questions=open_now,
        )
        if ranked is None:
            return next_step(self.bank, state, self.prefs, self.now)
        order, useless = ranked
        return next_step(self.bank, state, self.prefs, self.now, order=order, skip=useless)

    def _values(self) -> dict[str, Any]:
        return {key: fact.value for key, fact in self.prefs.items()}

    # -- plans --------------------------------------------------------------------------------

    def _advice(self) -> Any:
        return self.engine.advisor.advise(
            self.conn,
            customer_id=self.state.customer_id,
            current_plan=self.state.current_plan_id,
            preferences=self._values(),
            now=self.now,
        )

    def _suggest(self) -> None:
        """ "Which plan fits me?": the fit with its numbers, and YES/NO when a switch pays."""
        advice = self._advice()
        if advice.offer:
            self.state.pending_key = f"plan:{advice.fit.best_plan}"
            self.state.pending_kind = PendingKind.SUGGESTION
            self.asked = True
            self.say(explain(advice), "suggestion")
            return
        self.say(no_offer_reason(advice), "fit")
        self.ask_next()

    def _suggestion_answer(self, text: str) -> bool:
        """YES: a switch request; NO: the decline is remembered. False if it is neither."""
        yes_no = parse_yes_no(text)
        offered = (self.state.pending_key or "").removeprefix("plan:")
        self.state.pending_key = self.state.pending_kind = None
        if not self.accept(yes_no) or yes_no is None:
            return False
        advice = self._advice()
        if advice.fit.best_plan != offered or not advice.fit.suggest:
            self.intent("suggestion_stale")
            self.say(texts.SUGGESTION_CHANGED, "fallback")
            self._suggest()
            return True
        best, current = advice.best, advice.current
        assert best is not None
        customer_id, now, advisor = self.state.customer_id, self.now, self.engine.advisor
        if yes_no.value:
            self.intent("suggestion_yes")
            self.after_insert.append(
                lambda mid: advisor.record_switch(
                    self.conn, advice, customer_id=customer_id, message_id=mid, now=now
                )
            )
            self.ask_next(prefix=texts.switch_requested(best.name) + " ")
        else:
            self.intent("suggestion_no")
            self.after_insert.append(
                lambda mid: advisor.record_decline(
                    self.conn, advice, customer_id=customer_id, message_id=mid, now=now
                )
            )
            keep = current.name if current else "your plan"
            self.ask_next(prefix=texts.suggestion_declined(keep, best.name) + " ")
        return True

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
        self.prefs[question.key] = Fact(
            key=question.key,
            value=parse.value,
            source=Source.ASKED,
            stated_at=self.now,
            confirmed_at=self.now,
            channel=self.inbound.channel,
        )
        self.changed[question.key] = True
        if question.key in self.state.deferred:
            self.state.deferred = {k: v for k, v in self.state.deferred.items() if k != question.key}
        self.understood_as(question, parse.value, parse.confidence)
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
        # YES is a carrier opt-in keyword (CTIA), but only here: otherwise it answers a question.
        bare = u.clean(self.text).rstrip(".! ")
        starts = self.engine.understander(self.conn).data.start
        if kind is CommandKind.START or bare == "yes" or bare in starts:
            self.state.opted_out_at = None
            self.opt_change = True
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
        self.state.opted_out_at = self.now
        self.opt_change = True
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
        self.intent("command:forget")
        self.erase = True
        self.prefs.clear()
        self.changed.clear()
        self.state.pending_key = self.state.pending_kind = None
        self.state.deferred = {}
        self.state.reask_count = 0
        self.state.finished_at = self.now
        self.asked = True
        self.say(texts.ERASED, "erased")

    def _command(self, command: Command, *, first_contact: bool) -> None:
        kind = command.kind
        self.intent(f"command:{kind.value}" if kind not in CARRIER_KEYWORDS else f"keyword:{kind.value}")
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
            self._suggest()
        elif kind is CommandKind.GREETING:
            if not first_contact:
                self.say(texts.hello_again(self.state.name), "greeting")
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
            self.understood.question_key = question.key
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
                self.changed.setdefault(question.key, False)
                self.state.pending_key = self.state.pending_kind = None
                self.understood_as(question, pref.value, yes_no.confidence)
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

    # -- understanding, then deciding ------------------------------------------------------

    def _understand(self, *, first_contact: bool) -> None:
        """Understand the message, then act on what it means."""
        kind = self.state.pending_kind
        pending = self.pending_question() if kind in (PendingKind.ASK, None) else None
        known = {k: u.StatedFact(f.value, f.stated_at) for k, f in self.prefs.items()}
        meant = self.engine.understander(self.conn).understand(
            self.bank, self.text, pending=pending, known=known
        )
        self.understood.confidence = round(meant.confidence, 3)
        intent = meant.intent
        reconfirming = kind == PendingKind.RECONFIRM
        if (
            reconfirming
            and intent in (u.ANSWER, u.FACTS, u.UNKNOWN, u.OUT_OF_SCOPE)
            and self._reconfirm(self.text)
        ):
            return
        if intent == u.STOP:
            self.intent("keyword:stop" if meant.source == "rules" else "command:stop")
            self._opt_out()
        elif intent in _COMMAND_KINDS:
            command = Command(_COMMAND_KINDS[intent], meant.command_topic, meant.command_value)
            self._command(command, first_contact=first_contact)
            self.understood.needs_review = self.understood.needs_review or meant.needs_review
        elif intent == u.ACCOUNT:
            self._account(meant)
        elif intent == u.HANDOFF:
            self._want_person("asked")
        elif intent == u.SMALLTALK:
            self._small_talk(meant, first_contact=first_contact)
        elif intent == u.OUT_OF_SCOPE and meant.confidence < u.CLASSIFIER_MIN and pending is not None:
            # Like nothing the bot knows, and the question is open: ask it again, with its options.
            self._not_understood(pending, first_contact=first_contact)
        elif intent in (u.COMPLAINT, u.OUT_OF_SCOPE):
            self.intent(intent, review=meant.needs_review)
            self.say(texts.COMPLAINT if intent == u.COMPLAINT else texts.OUT_OF_SCOPE, intent)
            self.ask_next()
        elif intent in (u.ANSWER, u.FACTS, u.CORRECTION) and meant.facts:
            self._store(meant, pending)
        else:
            self._not_understood(pending, first_contact=first_contact)

    def _store(self, meant: u.Understanding, pending: Question | None) -> None:
        """Remember every fact stated, acknowledged in one sentence."""
        items: list[tuple[Question, Any]] = []
        answered: Question | None = None
        for hit in meant.facts:
            question = self.bank.get(hit.key)
            if question is None:
                continue
            parse = Parse(hit.value, hit.confidence, hit.matched)
            if meant.intent == u.CORRECTION:
                label = "correction"
            else:
                label = "answer" if question is pending else "out_of_turn"
            self.remember(question, parse, intent=label)
            items.append((question, hit.value))
            if question is pending:
                answered = question
        if answered is not None:
            self.intent("answer")
        if len(items) > 1:
            # The message's row keeps every value it stated (the history of each fact).
            self.understood.question_key = None
            self.understood.parsed_value = {q.key: value for q, value in items}
            self.understood.confidence = round(meant.confidence, 3)
        elif answered is not None:
            self.understood_as(answered, self.prefs[answered.key].value, meant.confidence)
        if meant.needs_review:
            self.understood.needs_review = True
        if meant.intent == u.CORRECTION:
            prefix = texts.corrected(items)
        elif len(items) == 1 and answered is not None:
            prefix = texts.ack(answered, items[0][1])
        else:
            prefix = texts.noted(items)
        self.ask_next(prefix=prefix.rstrip() + " ")

    def _account(self, meant: u.Understanding) -> None:
        """An account question answered from what the bot holds, then back to the question."""
        topic = meant.topic or "plan"
        self.intent(f"account:{topic}", review=meant.needs_review)
        if topic == "fit":
            self._suggest()
            return
        answer = self.engine.account.answer(
            self.conn,
            customer_id=self.state.customer_id,
            current_plan=self.state.current_plan_id,
            topic=topic,
        )
        self.say(answer, "account")
        self.ask_next()

    def _small_talk(self, meant: u.Understanding, *, first_contact: bool) -> None:
        topic = meant.topic or "other"
        self.intent(f"smalltalk:{topic}", review=meant.needs_review)
        if topic == "greeting":
            if not first_contact:
                self.say(texts.hello_again(self.state.name), "smalltalk")
        else:
            self.say(texts.small_talk(topic, self.cfg), "smalltalk")
        self.ask_next()

    def _not_understood(self, pending: Question | None, *, first_contact: bool) -> None:
        if pending is None:
            self.intent("chat", review=not first_contact)
            if not first_contact:
                self.say(texts.fallback(self.state.finished_at is not None), "fallback")
            self.ask_next()
            return
        self.understood.question_key = pending.key
        self.intent("unparsed", review=True)
        self.state.reask_count += 1
        if self.state.reask_count >= self.cfg.max_failed_tries:
            self._offer_person()
            return
        self._ask(Next(pending, PendingKind.ASK), prefix=texts.reask_prefix(pending), again=True)
        self.asked = True

    # -- a person (handoff) -----------------------------------------------------------------

    def _want_person(self, reason: str, *, keep_intent: bool = False) -> None:
        """Hand the conversation to a person and tell the customer at once what happens next.
        The pending question stays as it is: the bot resumes there once the person resolves."""
        if not keep_intent:
            self.intent("handoff")
        if self.state.pending_kind in _YES_NO_ASIDES:  # a yes/no asked meanwhile is dropped
            self.state.pending_kind = PendingKind.ASK if self.state.pending_key else None
        if not self.conv.with_person:
            self.conv = conversations.move(
                self.conn,
                conversation_id=self.conv.id,
                to=ConversationState.WAITING,
                now=self.now,
                reason=reason,
            )
        self.asked = True
        self.say(handoff.waiting_text(self.cfg.handoff.hours, self.now), "handoff")

    def _while_with_person(self, command: Command | None) -> None:
        """A person has (or is awaited for) the conversation: the bot is quiet. Keywords still
        work; told nobody is free, the customer may carry on with the bot."""
        kind = command.kind if command else None
        if kind in _KEYWORDS:
            self.intent(f"keyword:{kind.value}")
        if kind is CommandKind.STOP:
            self._opt_out()
        elif kind is None and self._opts_out_in_words():
            self.intent("command:stop")
            self._opt_out()
        elif kind is CommandKind.HELP:
            self.say(texts.help_text(self.cfg, opted_out=False), "help")
        elif kind is CommandKind.START:
            self.say(texts.ALREADY_IN, "ack")
        elif (
            self.conv.state == ConversationState.WAITING
            and self.conv.timeout_notified_at is not None
            and handoff.back_to_bot(self.text)
        ):
            self.conv = conversations.move(
                self.conn, conversation_id=self.conv.id, to=ConversationState.BOT, now=self.now
            )
            self.intent("back_to_bot")
            self.ask_next(prefix=handoff.BACK_WITH_BOT + " ")
        else:
            self.intent("to_person")  # stored and shown to the operator; the bot says nothing

    def _opts_out_in_words(self) -> bool:
        """Whether the message revokes consent in any wording ("pls dont text me anymore",
        "BAJA"): honoured at once even while a person has the conversation."""
        meant = self.engine.understander(self.conn).understand(self.bank, self.text, pending=None, known={})
        return meant.intent == u.STOP

    def _offer_person(self) -> None:
        """After failing to understand twice in a row: offer a person (the question stays pending)."""
        self.state.pending_kind = PendingKind.OFFER_PERSON
        self.asked = True
        self.say(handoff.OFFER, "offer_person")

    def _offer_answer(self, text: str) -> bool:
        """YES to the offer: a person; NO: move on from the question. False if it is neither."""
        yes_no = parse_yes_no(text)
        self.state.pending_kind = PendingKind.ASK if self.state.pending_key else None
        self.state.reask_count = 0
        if not self.accept(yes_no) or yes_no is None:
            return False
        if yes_no.value:
            self._want_person("offered")
            return True
        self.intent("offer_declined")
        pending = self.pending_question()
        if pending is not None:
            self._defer(pending)
        self.ask_next(prefix=texts.MOVE_ON + " ")
        return True

    def _handoff_rule(self) -> None:
        """``HANDOFF_ON_INTENTS``: a message understood as one of them goes to a person (instead
        of the bot's next question)."""
        intent = self.understood.intent
        if (
            intent not in self.cfg.handoff.on_intents
            or self.conv.with_person
            or self.state.opted_out_at is not None
        ):
            return
        self.outs = [out for out in self.outs if out.intent not in ("ask", "reask", "fallback")]
        self._want_person(f"intent:{intent}", keep_intent=True)


_COMMAND_KINDS = {
    u.SKIP: CommandKind.SKIP,
    u.WHY: CommandKind.WHY,
    u.PROFILE: CommandKind.PROFILE,
    u.CHANGE: CommandKind.CHANGE,
    u.FORGET: CommandKind.FORGET,
    u.HELP: CommandKind.HELP,
    u.START: CommandKind.START,
}
_KEYWORDS = (CommandKind.STOP, CommandKind.START, CommandKind.HELP)
_YES_NO_ASIDES = (PendingKind.CONFIRM_FORGET, PendingKind.CONFIRM_STOP, PendingKind.OFFER_PERSON)
