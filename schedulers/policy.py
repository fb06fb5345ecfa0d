"""The contact policy: may this proactive (marketing) message go to this customer now, and if not,
when? One pure function, :func:`decide`, used by every proactive send.

Conversational replies to a customer's own message never come here: they are not marketing.

Rules, in order. A *hard* rule (:data:`EXCLUSION_RULES`, each with the name recorded as the
reason) skips the message (no ``next_allowed_at``); a *timing* rule defers it to the next moment
every timing rule allows:

- hard: marketing consent; not opted out; not erased; no person has (or is awaited for) the
  conversation (handoff: the bot is quiet meanwhile); the address not suppressed; the plan not
  declined lately (the advisor's rule, passed in as ``declined``); the preferred channel usable
  (configured, and the customer has an address on it; on WhatsApp: opted in, and inside the
  24-hour session window or with a template for the message, else the audience moves it to SMS
  when it can, see :func:`whatsapp_refusal`); the preferred time of day overlapping
  the contact window.
  (configured, and the customer has an address on it); the preferred time of day overlapping
  the contact window; for offers (the scan, nudges), not in the measurement holdout.
- timing: inside the contact window in the customer's local time (a per-country override may be
  stricter), narrowed to the preferred time of day; within the frequency cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone


class Skip:
    """Reasons a message does not go now (stored in ``outreach_event.reason``)."""

    NO_CONSENT = "no_consent"
    OPTED_OUT = "opted_out"
    ERASED = "erased"
    SUPPRESSED = "suppressed"
    DECLINED = "declined_recently"
    NO_CHANNEL = "no_channel"
    CHANNEL_UNAVAILABLE = "channel_unavailable"
    NO_ADDRESS = "no_address_on_channel"
    CONTACT_TIME_OUTSIDE_WINDOW = "contact_time_outside_window"
    QUIET_HOURS = "quiet_hours"
    CONTACT_TIME = "outside_contact_time"
    FREQUENCY_CAP = "frequency_cap"
    WITH_PERSON = "with_person"
    WHATSAPP_NO_OPT_IN = "whatsapp_no_opt_in"
    WHATSAPP_NO_TEMPLATE = "whatsapp_window_closed_no_template"
    HOLDOUT = "holdout"  # in the measurement holdout: never offered proactively (storage.holdout)


TIMING_REASONS = frozenset({Skip.QUIET_HOURS, Skip.CONTACT_TIME, Skip.FREQUENCY_CAP})


@dataclass(frozen=True, slots=True)
class Window:
    """A daily window of local wall-clock time, ``start`` included, ``end`` excluded."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"a contact window must start before it ends: {self.start}-{self.end}")

    def __contains__(self, moment: time) -> bool:
        return self.start <= moment < self.end

    def narrow(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when they do not overlap."""
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Window(start, end) if start < end else None

    @classmethod
    def parse(cls, text: str) -> Window:
        """From "08:00-21:00"."""
        start, _, end = text.partition("-")
        return cls(time.fromisoformat(start.strip()), time.fromisoformat(end.strip()))


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Tunables of the policy (set from Rapport's settings)."""

    window: Window = Window(time(8), time(21))
    region_windows: Mapping[str, Window] = field(default_factory=dict)  # ISO country -> window
    default_timezone: str = "UTC"
    default_region: str = "US"
    cap: int = 1  # proactive messages ...
    cap_period: timedelta = timedelta(days=7)  # ... per this long
    channels: frozenset[str] = frozenset({"sms", "telegram"})  # channels proactive messages use
    # Intents with an approved WhatsApp template (sent outside the 24-hour session window).
    whatsapp_templates: frozenset[str] = frozenset()
    holdout_percent: int = 0  # share of customers never offered proactively (HOLDOUT_PERCENT)

    def __post_init__(self) -> None:
        if self.cap < 1:
            raise ValueError("the frequency cap must allow at least one message per period")
        if self.cap_period <= timedelta(0):
            raise ValueError("the frequency cap period must be positive")
        if not 0 <= self.holdout_percent <= 100:
            raise ValueError("the holdout is a percentage, 0 to 100")
        ZoneInfo(self.default_timezone)  # a typo fails at start-up, not at the first send


@dataclass(frozen=True, slots=True)
class Contact:
    """What the policy needs to know about a customer and the message.

    ``channel`` is the preferred channel (None: none stated and none known), ``address`` the
    customer's address on it; ``contact_time`` the stored ``contact_time`` preference;
    ``recent`` the times of proactive messages already sent or queued for the customer.
    """

    marketing_consent: bool
    opted_out: bool = False
    erased: bool = False
    suppressed: bool = False
    declined: bool = False
    timezone: str | None = None
    phone: str | None = None
    channel: str | None = None
    address: str | None = None
    contact_time: Any = None
    recent: Sequence[datetime] = ()
    with_person: bool = False  # handed to a person (storage.handoff.with_person)
    # WhatsApp: why this message cannot go there (a Skip.WHATSAPP_* reason; set by the audience
    # when no other channel can take it), and why it goes on ``channel`` instead of WhatsApp.
    whatsapp_refusal: str | None = None
    rerouted: str | None = None
    holdout: bool = False  # an offer to a customer in the holdout (storage.holdout.in_holdout)


@dataclass(frozen=True, slots=True)
class Decision:
    """``allowed``: it may go now. Otherwise ``reason`` says why not, and ``next_allowed_at`` when
    it may (None: never, on these facts). An allowed message's ``reason``: why it goes on another
    channel than the preferred one (WhatsApp's window closed and no template, say), else None."""

    allowed: bool
    reason: str | None = None
    next_allowed_at: datetime | None = None

    @property
    def deferred(self) -> bool:
        """Not now, but at ``next_allowed_at`` (a timing rule): the message is queued for then."""
        return not self.allowed and self.next_allowed_at is not None

    @property
    def excluded(self) -> bool:
        """Never, on these facts (a hard rule, named by ``reason``): nothing is queued."""
        return not self.allowed and self.next_allowed_at is None


def decide(contact: Contact, now: datetime, config: PolicyConfig) -> Decision:
    """Whether a proactive message may go to ``contact`` at ``now`` (aware), and when if not."""
    if now.tzinfo is None:
        raise ValueError("decide() needs a timezone-aware time")
    hard = refusal(contact, config)
    if hard is not None:
        return Decision(False, hard)
    window = contact_window(contact, config)
    if window is None:
        return Decision(False, Skip.CONTACT_TIME_OUTSIDE_WINDOW)
    zone = local_zone(contact, config)
    if not _cap_ok(contact.recent, now, config):
        return Decision(False, Skip.FREQUENCY_CAP, next_allowed(contact.recent, now, zone, window, config))
    if now.astimezone(zone).time() not in window:
        in_base = now.astimezone(zone).time() in base_window(contact, config)
        reason = Skip.CONTACT_TIME if in_base else Skip.QUIET_HOURS
        return Decision(False, reason, next_allowed(contact.recent, now, zone, window, config))
    return Decision(True, contact.rerouted)


@dataclass(frozen=True, slots=True)
class Rule:
    """A hard rule of the policy: it excludes a contact when ``excludes`` says so; ``name`` is the
    reason recorded (outreach events, a broadcast's exclusions by rule, the dry run)."""

    name: str
    excludes: Callable[[Contact, PolicyConfig], bool]


# The customer's standing: facts that may change while a proactive message waits in the outbox,
# so the delivery asks again at the last moment (schedulers.audience.last_moment_refusals). These
# rules read only the contact, never the config.
STANDING_RULES: tuple[Rule, ...] = (
    Rule(Skip.ERASED, lambda c, _: c.erased),
    Rule(Skip.OPTED_OUT, lambda c, _: c.opted_out),
    Rule(Skip.NO_CONSENT, lambda c, _: not c.marketing_consent),
    Rule(Skip.WITH_PERSON, lambda c, _: c.with_person),
)

# Every hard rule, in the order they are asked (the first that excludes names the reason). A new
# exclusion goes here, with the fact it reads on Contact, filled in by schedulers.audience.
EXCLUSION_RULES: tuple[Rule, ...] = (
    *STANDING_RULES,
    Rule(Skip.NO_CHANNEL, lambda c, _: c.channel is None),
    Rule(Skip.CHANNEL_UNAVAILABLE, lambda c, config: c.channel not in config.channels),
    Rule(Skip.NO_ADDRESS, lambda c, _: not c.address),
    Rule(Skip.WHATSAPP_NO_OPT_IN, lambda c, _: c.whatsapp_refusal == Skip.WHATSAPP_NO_OPT_IN),
    Rule(Skip.WHATSAPP_NO_TEMPLATE, lambda c, _: c.whatsapp_refusal == Skip.WHATSAPP_NO_TEMPLATE),
    Rule(Skip.SUPPRESSED, lambda c, _: c.suppressed),
    Rule(Skip.DECLINED, lambda c, _: c.declined),
    Rule(Skip.HOLDOUT, lambda c, _: c.holdout),
)


WHATSAPP = "whatsapp"
WHATSAPP_SESSION = timedelta(hours=24)


def whatsapp_refusal(
    *,
    opted_in: bool,
    session_at: datetime | None,
    intent: str | None,
    now: datetime,
    config: PolicyConfig,
) -> str | None:
    """Why a proactive message for ``intent`` may not go on WhatsApp at ``now`` (None: it may):
    not without the customer's opt-in; outside the 24-hour session window only as an approved
    template, so not for an intent without one."""
    if not opted_in:
        return Skip.WHATSAPP_NO_OPT_IN
    if session_at is not None and session_at <= now < session_at + WHATSAPP_SESSION:
        return None
    return None if intent in config.whatsapp_templates else Skip.WHATSAPP_NO_TEMPLATE


def refusal(contact: Contact, config: PolicyConfig, rules: Sequence[Rule] = EXCLUSION_RULES) -> str | None:
    """The name of the first of ``rules`` that excludes ``contact``, or None."""
    for rule in rules:
        if rule.excludes(contact, config):
            return rule.name
    return None


def _cap_ok(recent: Sequence[datetime], at: datetime, config: PolicyConfig) -> bool:
    """Fewer than ``cap`` proactive messages within one period either side of ``at``: messages
    queued for later count too, so deferring one message never lets two go close together."""
    return sum(1 for t in recent if abs(t - at) < config.cap_period) < config.cap


def next_allowed(
    recent: Sequence[datetime], moment: datetime, zone: ZoneInfo, window: Window, config: PolicyConfig
) -> datetime:
    """The first moment from ``moment`` inside the window and within the cap."""
    candidates = sorted(t + config.cap_period for t in recent)
    while True:
        if not _cap_ok(recent, moment, config):
            # The cap frees up only when a message leaves the period: at one of the candidates.
            moment = next(c for c in candidates if c > moment and _cap_ok(recent, c, config))
        in_window = next_in_window(moment, zone, window)
        if in_window == moment:
            return moment
        moment = in_window


def base_window(contact: Contact, config: PolicyConfig) -> Window:
    """The contact window for the customer's country (from the phone), else the default."""
    if not config.region_windows:  # no per-country windows: no phone to parse
        return config.window
    region = _region(contact.phone, config.default_region)
    return config.region_windows.get(region, config.window) if region else config.window


def contact_window(contact: Contact, config: PolicyConfig) -> Window | None:
    """The base window narrowed to the customer's preferred time of day; None: no overlap."""
    base = base_window(contact, config)
    preferred = preferred_window(contact.contact_time)
    return base if preferred is None else base.narrow(preferred)


def preferred_window(value: Any) -> Window | None:
    """The ``contact_time`` preference ({"window", "start", "end"}) as a window, if it is one."""
    if not isinstance(value, Mapping):
        return None
    try:
        return Window(time.fromisoformat(str(value["start"])), time.fromisoformat(str(value["end"])))
    except (KeyError, ValueError):
        return None


def local_zone(contact: Contact, config: PolicyConfig) -> ZoneInfo:
    """The customer's zone: the profile's, else the phone number's, else the default."""
    zone = _zone(contact.timezone) or _zone(_phone_zone(contact.phone, config.default_region))
    return zone or ZoneInfo(config.default_timezone)


@lru_cache(maxsize=1024)
def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _parse_phone(phone: str | None, region: str) -> phonenumbers.PhoneNumber | None:
    if not phone:
        return None
    try:
        return phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return None


@lru_cache(maxsize=4096)
def _phone_zone(phone: str | None, region: str) -> str | None:
    number = _parse_phone(phone, region)
    if number is None:
        return None
    zones = [z for z in phone_timezone.time_zones_for_number(number) if z != "Etc/Unknown"]
    return zones[0] if zones else None  # a country with several zones: its first (documented)


@lru_cache(maxsize=4096)
def _region(phone: str | None, region: str) -> str | None:
    number = _parse_phone(phone, region)
    return phonenumbers.region_code_for_number(number) if number is not None else None


def next_in_window(moment: datetime, zone: ZoneInfo, window: Window) -> datetime:
    """The first moment at or after ``moment`` whose local time in ``zone`` lies in ``window``.

    DST: the window's start is taken on the local calendar; a start inside a spring-forward gap
    resolves to the instant just after the gap, which the loop then checks like any other.
    """
    moment = moment.astimezone(UTC)
    for _ in range(4):
        local = moment.astimezone(zone)
        if local.time() in window:
            return moment
        day: date = local.date() if local.time() < window.start else local.date() + timedelta(days=1)
        start = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
        moment = start if start > moment else moment + timedelta(minutes=30)
    # Unreachable for real zones (a start is never skipped twice in a row); stay safe anyway.
    return moment
