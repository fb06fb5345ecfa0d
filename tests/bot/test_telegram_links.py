"""Link codes and customer merging, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select

from dialogs.engine import DialogEngine, Inbound
from storage.db import transaction
from storage.link_models import LinkCode
from storage.links import (
    LinkOutcome,
    create_link_code,
    customer_of,
    link_address,
    link_code_for_phone,
    merge_customers,
    redeem_link_code,
)
from storage.models import Customer
from storage.queries import preferences
from storage.tables import CUSTOMER, MESSAGE, STATE, USAGE
from tests.utils import START

PHONE = "+14155550177"


def _talk(dialog: DialogEngine, channel: str, address: str, *texts: str, phone: str | None = None) -> int:
    customer = 0
    for i, text in enumerate(texts):
        result = dialog.handle(
            Inbound(
                channel, address, text, provider_id=f"{address}-{text}-{i}", phone=phone, received_at=START
            )
        )
        customer = result.customer_id
    return customer


def test_a_code_is_single_use_and_stored_hashed(db: Engine, dialog: DialogEngine) -> None:
    customer = _talk(dialog, "sms", PHONE, "hi", phone=PHONE)
    with transaction(db) as s:
        code = link_code_for_phone(s, phone=PHONE, now=START)
    assert len(code) >= 16
    with transaction(db) as s:
        (stored,) = s.exec(select(LinkCode)).all()  # type: ignore[call-overload]
        assert code not in stored[0].code_hash
    with transaction(db) as s:
        assert redeem_link_code(s, code=code, used_by="telegram:1", now=START) == customer
    with transaction(db) as s:
        assert redeem_link_code(s, code=code, used_by="telegram:1", now=START) == customer  # redelivery
        assert redeem_link_code(s, code=code, used_by="telegram:2", now=START) is None  # someone else
        assert redeem_link_code(s, code="not-a-code", used_by="telegram:2", now=START) is None


def test_a_code_expires(db: Engine, dialog: DialogEngine) -> None:
    customer = _talk(dialog, "sms", PHONE, "hi", phone=PHONE)
    with transaction(db) as s:
        code = create_link_code(s, customer_id=customer, now=START, ttl=timedelta(hours=1))
    with transaction(db) as s:
        assert redeem_link_code(s, code=code, used_by="telegram:1", now=START + timedelta(hours=1)) is None
        assert (
            redeem_link_code(s, code=code, used_by="telegram:1", now=START + timedelta(minutes=59))
            == customer
        )


def test_no_code_for_an_unknown_phone(db: Engine) -> None:
    with transaction(db) as s, pytest.raises(LookupError):
        link_code_for_phone(s, phone=PHONE)


def test_linking_a_new_address_adds_an_identity(db: Engine, dialog: DialogEngine) -> None:
    customer = _talk(dialog, "sms", PHONE, "hi", phone=PHONE)
    with transaction(db) as s:
        assert link_address(s, channel="telegram", address="7", customer_id=customer) is LinkOutcome.LINKED
    with transaction(db) as s:
        assert link_address(s, channel="telegram", address="7", customer_id=customer) is LinkOutcome.ALREADY
        assert customer_of(s, channel="telegram", address="7") == customer


def test_merging_keeps_the_targets_answers_and_gains_the_rest(db: Engine, dialog: DialogEngine) -> None:
    # Target: the SMS customer said "text message" (contact_channel) and "mornings".
    target = _talk(dialog, "sms", PHONE, "hi", "text message", "mornings", phone=PHONE)
    # Source: a Telegram chat said "email" (contact_channel) and then gave its budget out of turn.
    source = _talk(dialog, "telegram", "8", "hi", "email", "actually my budget is $40")
    with transaction(db) as s:
        s.get(Customer, source).name = "Ada"  # type: ignore[union-attr]
        s.execute(USAGE.insert(), [
            {"customer_id": source, "period": 202601, "metric": "data_mb", "quantity_milli": 1},
            {"customer_id": source, "period": 202602, "metric": "data_mb", "quantity_milli": 2},
            {"customer_id": target, "period": 202602, "metric": "data_mb", "quantity_milli": 5},
        ])  # fmt: skip
    with transaction(db) as s:
        before = s.execute(select(func.count()).select_from(MESSAGE)).scalar_one()
        assert link_address(s, channel="telegram", address="8", customer_id=target) is LinkOutcome.MERGED

    with transaction(db) as s:
        assert s.get(Customer, source) is None
        merged = s.get(Customer, target)
        assert merged is not None and merged.name == "Ada" and merged.phone == PHONE
        assert customer_of(s, channel="telegram", address="8") == target
        assert s.execute(select(func.count()).select_from(MESSAGE)).scalar_one() == before
        owners = set(s.execute(select(MESSAGE.c.customer_id)).scalars())
        assert owners == {target}
        values = {k: p.value for k, p in preferences(s, customer_id=target).items()}
        assert values["contact_channel"] == "sms"  # the target's own
        assert values["contact_time"]["window"] == "morning"
        assert float(values["monthly_budget"]) == 40  # gained from the source
        usage = dict(s.execute(select(USAGE.c.period, USAGE.c.quantity_milli)).all())
        assert usage == {202601: 1, 202602: 5}
        assert set(s.execute(select(STATE.c.customer_id)).scalars()) == {target}
        assert s.execute(select(func.count()).select_from(CUSTOMER)).scalar_one() == 1

    # The conversation goes on as the target's, on either channel.
    result = dialog.handle(Inbound("telegram", "8", "hello", provider_id="after", received_at=START))
    assert result.customer_id == target


def test_merging_into_a_customer_without_a_conversation_keeps_the_sources(
    db: Engine, dialog: DialogEngine
) -> None:
    source = _talk(dialog, "telegram", "9", "hi", "email")
    with transaction(db) as s:
        imported = Customer(phone=PHONE, external_id="C-1")
        s.add(imported)
        s.flush()
        assert imported.id is not None
        merge_customers(s, source_id=source, target_id=imported.id)
        target = imported.id
    with transaction(db) as s:
        assert set(s.execute(select(STATE.c.customer_id)).scalars()) == {target}
        assert preferences(s, customer_id=target)["contact_channel"].value == "email"
    with transaction(db) as s, pytest.raises(ValueError):
        merge_customers(s, source_id=target, target_id=target)
