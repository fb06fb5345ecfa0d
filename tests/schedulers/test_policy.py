"""The contact policy, rule by rule, and a property test over random customers and clocks."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers.policy import Contact, PolicyConfig, Skip, Window, decide, local_zone, next_in_window

CONFIG = PolicyConfig(default_timezone="America/New_York")
NY = ZoneInfo("America/New_York")
OK = Contact(marketing_consent=True, channel="sms", address="+14155550100", timezone="America/New_York")


def ny(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=NY).astimezone(UTC)


def with_(**changes: object) -> Contact:
    fields = {name: getattr(OK, name) for name in Contact.__dataclass_fields__}
    return Contact(**{**fields, **changes})


NOON = ny(2026, 3, 4, 12)


@pytest.mark.parametrize(
    ("contact", "reason"),
    [
        (with_(marketing_consent=False), Skip.NO_CONSENT),
        (with_(opted_out=True), Skip.OPTED_OUT),
        (with_(erased=True), Skip.ERASED),
        (with_(suppressed=True), Skip.SUPPRESSED),
        (with_(declined=True), Skip.DECLINED),
        (with_(channel=None, address=None), Skip.NO_CHANNEL),
        (with_(channel="email", address="a@example.com"), Skip.CHANNEL_UNAVAILABLE),
        (with_(channel="telegram", address=None), Skip.NO_ADDRESS),
        (
            with_(contact_time={"window": "custom", "start": "05:00", "end": "07:00"}),
            Skip.CONTACT_TIME_OUTSIDE_WINDOW,
        ),
    ],
)
def test_a_hard_rule_skips_the_message_for_good(contact: Contact, reason: str) -> None:
    decision = decide(contact, NOON, CONFIG)
    assert (decision.allowed, decision.reason, decision.next_allowed_at) == (False, reason, None)


@pytest.mark.parametrize(
    ("hour", "minute", "allowed", "next_at"),
    [
        (7, 59, False, ny(2026, 3, 4, 8)),
        (8, 0, True, None),
        (20, 59, True, None),
        (21, 0, False, ny(2026, 3, 5, 8)),
        (23, 30, False, ny(2026, 3, 5, 8)),
        (0, 0, False, ny(2026, 3, 4, 8)),
    ],
)
def test_window_edges_in_local_time(hour: int, minute: int, allowed: bool, next_at: datetime | None) -> None:
    decision = decide(OK, ny(2026, 3, 4, hour, minute), CONFIG)
    assert decision.allowed is allowed
    assert decision.next_allowed_at == next_at
    if not allowed:
        assert decision.reason == Skip.QUIET_HOURS


def test_dst_spring_forward_night_defers_to_8_local_after_the_change() -> None:
    # 2026-03-08 02:00 New York jumps to 03:00: 8:00 that morning is 12:00 UTC, not 13:00.
    decision = decide(OK, datetime(2026, 3, 8, 5, 30, tzinfo=UTC), CONFIG)  # 00:30 local
    assert decision.next_allowed_at == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    fall = decide(OK, datetime(2026, 11, 1, 5, 30, tzinfo=UTC), CONFIG)  # 01:30 EDT, before the fall-back
    assert fall.next_allowed_at == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_window_start_inside_a_dst_gap_resolves_after_the_gap() -> None:
    window = Window(time(2, 30), time(4))
    moment = next_in_window(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), NY, window)  # 00:00 local
    assert window.start <= moment.astimezone(NY).time() < window.end


@pytest.mark.parametrize(
    ("timezone", "phone", "zone"),
    [
        ("Europe/Berlin", "+14155550100", "Europe/Berlin"),  # the profile wins
        (None, "+442071838750", "Europe/London"),  # from the phone number
        ("Not/AZone", "+81312345678", "Asia/Tokyo"),  # a bad profile zone falls back to the phone
        (None, "+14155550100", "America/Los_Angeles"),  # a San Francisco number
        (None, None, "America/New_York"),  # the default setting
        (None, "+999", "America/New_York"),  # an unparseable phone
    ],
)
def test_local_zone_comes_from_profile_then_phone_then_default(
    timezone: str | None, phone: str | None, zone: str
) -> None:
    assert local_zone(with_(timezone=timezone, phone=phone), CONFIG).key == zone


def test_phone_zone_drives_the_window() -> None:
    london = with_(timezone=None, phone="+442071838750")
    assert not decide(london, datetime(2026, 6, 1, 6, 59, tzinfo=UTC), CONFIG).allowed  # 07:59 BST
    assert decide(london, datetime(2026, 6, 1, 7, 0, tzinfo=UTC), CONFIG).allowed  # 08:00 BST


def test_a_stricter_region_window_applies_by_the_phones_country() -> None:
    config = PolicyConfig(region_windows={"DE": Window(time(9), time(20))})
    berlin = with_(timezone="Europe/Berlin", phone="+4930123456")
    at_8_30 = datetime(2026, 6, 1, 6, 30, tzinfo=UTC)
    assert decide(berlin, at_8_30, config).next_allowed_at == datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
    us = with_(timezone="Europe/Berlin", phone="+14155550100")
    assert decide(us, at_8_30, config).allowed


def test_preferred_time_of_day_narrows_the_window() -> None:
    evenings = with_(contact_time={"window": "evening", "start": "17:00", "end": "21:00"})
    decision = decide(evenings, NOON, CONFIG)
    assert (decision.allowed, decision.reason) == (False, Skip.CONTACT_TIME)
    assert decision.next_allowed_at == ny(2026, 3, 4, 17)
    assert decide(evenings, ny(2026, 3, 4, 17), CONFIG).allowed


@pytest.mark.parametrize(
    ("recent", "cap", "allowed", "next_at"),
    [
        ([], 1, True, None),
        ([NOON - timedelta(days=8)], 1, True, None),
        ([NOON - timedelta(days=6)], 1, False, NOON + timedelta(days=1)),
        ([NOON - timedelta(days=6)], 2, True, None),
        ([NOON - timedelta(days=6), NOON - timedelta(days=2)], 2, False, NOON + timedelta(days=1)),
        ([NOON + timedelta(days=1)], 1, False, NOON + timedelta(days=8)),  # one already queued for later
    ],
)
def test_frequency_cap(recent: list[datetime], cap: int, allowed: bool, next_at: datetime | None) -> None:
    decision = decide(with_(recent=recent), NOON, PolicyConfig(default_timezone="UTC", cap=cap))
    assert decision.allowed is allowed
    assert decision.next_allowed_at == next_at
    if not allowed:
        assert decision.reason == Skip.FREQUENCY_CAP


def test_cap_deferral_lands_inside_the_window() -> None:
    sent = ny(2026, 2, 25, 20, 30)  # seven days later it is 20:30 + 7 d, then night falls
    decision = decide(with_(recent=[sent]), ny(2026, 3, 4, 9), CONFIG)
    assert decision.next_allowed_at == ny(2026, 3, 4, 20, 30)
    late = decide(with_(recent=[ny(2026, 2, 25, 22)]), ny(2026, 3, 4, 9), CONFIG)
    assert late.next_allowed_at == ny(2026, 3, 5, 8)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="start before"):
        Window(time(21), time(8))
    with pytest.raises(ValueError, match="at least one"):
        PolicyConfig(cap=0)
    with pytest.raises(ValueError, match="aware"):
        decide(OK, datetime(2026, 3, 4, 12), CONFIG)


# -- property ------------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
]
PHONES = [None, "+14155550100", "+442071838750", "+61291234567", "+4930123456", "+12"]
WINDOWS = [
    None,
    {"start": "08:00", "end": "12:00"},
    {"start": "17:00", "end": "23:00"},
    {"start": "06:00", "end": "07:00"},
]
moments = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Contact, datetime, PolicyConfig]:
    now = draw(moments)
    offsets = draw(st.lists(st.integers(-20 * 24 * 60, 10 * 24 * 60), max_size=4))
    contact = Contact(
        marketing_consent=draw(st.booleans()),
        opted_out=draw(st.booleans()),
        erased=draw(st.booleans()),
        suppressed=draw(st.booleans()),
        declined=draw(st.booleans()),
        timezone=draw(st.sampled_from([None, "Bad/Zone", *ZONES])),
        phone=draw(st.sampled_from(PHONES)),
        channel=draw(st.sampled_from([None, "sms", "telegram", "email"])),
        address=draw(st.sampled_from([None, "", "addr"])),
        contact_time=draw(st.sampled_from(WINDOWS)),
        recent=[now + timedelta(minutes=m) for m in offsets],
    )
    config = PolicyConfig(
        window=draw(st.sampled_from([Window(time(8), time(21)), Window(time(9), time(17))])),
        region_windows={"GB": Window(time(9), time(20))},
        default_timezone=draw(st.sampled_from(ZONES)),
        cap=draw(st.integers(1, 3)),
        cap_period=timedelta(days=draw(st.integers(1, 7))),
    )
    return contact, now, config


def _rules_hold(contact: Contact, at: datetime, config: PolicyConfig) -> bool:
    from schedulers.policy import contact_window

    window = contact_window(contact, config)
    zone = local_zone(contact, config)
    in_cap = sum(1 for t in contact.recent if abs(t - at) < config.cap_period) < config.cap
    return (
        contact.marketing_consent
        and not (contact.opted_out or contact.erased or contact.suppressed or contact.declined)
        and contact.channel in config.channels
        and bool(contact.address)
        and window is not None
        and at.astimezone(zone).time() in window
        and window.start <= at.astimezone(zone).time() < window.end
        and in_cap
    )


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_nothing_forbidden_is_allowed_and_every_eligible_message_eventually_goes(
    scenario: tuple[Contact, datetime, PolicyConfig],
) -> None:
    contact, now, config = scenario
    decision = decide(contact, now, config)
    assert decision.allowed == _rules_hold(contact, now, config)
    if decision.allowed:
        assert decision.next_allowed_at is None
        return
    if decision.next_allowed_at is None:  # skipped for good: a hard rule says no at every moment
        later = [now + timedelta(hours=h) for h in range(0, 24 * 30, 7)]
        assert not any(_rules_hold(contact, t, config) for t in later)
        return
    when = decision.next_allowed_at
    assert when > now
    assert decide(contact, when, config).allowed
    assert _rules_hold(contact, when, config)
    # ... and it is the first such moment (checked on a minute grid before it)
    step = max((when - now) / 200, timedelta(minutes=1))
    probe = now
    while probe < when - timedelta(minutes=1):
        assert not _rules_hold(contact, probe, config)
        probe += step
