"""Phone numbers, stored in one form (E.164) whichever door they came in by."""

from __future__ import annotations

import phonenumbers


def to_e164(raw: str, region: str | None, *, strict: bool = True) -> str:
    """``raw`` (in any common notation; ``region`` for numbers without a country code) as E.164.

    ``strict`` asks for a number that is valid in its numbering plan; otherwise a merely
    possible one passes (right for numbers a carrier just delivered from). ValueError says what
    to fix.
    """
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{raw!r} is not a phone number ({exc}); write it as +14155550100") from None
    ok = phonenumbers.is_valid_number(number) if strict else phonenumbers.is_possible_number(number)
    if not ok:
        raise ValueError(f"{raw!r} is not a valid phone number; write it as +14155550100")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
