"""The shared vocabularies of storage.types: plain strings where stored, one name for each value."""

from __future__ import annotations

import pytest

from dialogs.commands import CARRIER_KEYWORDS, CommandKind
from storage import models
from storage.types import ALLOWED_WHILE_OPTED_OUT, Channel, Intent


def test_vocabularies_compare_and_store_as_their_strings() -> None:
    stored: list[str] = ["sms", "command:forget"]  # as a column gives them back
    assert stored == [Channel.SMS, Intent.COMMAND_FORGET]
    assert f"{Channel.TELEGRAM}" == "telegram"
    assert "opt_in" in ALLOWED_WHILE_OPTED_OUT and "greeting" not in ALLOWED_WHILE_OPTED_OUT


def test_every_command_kind_has_an_intent() -> None:
    for kind in CommandKind:
        assert Intent.of_command(kind.value) == f"command:{kind.value}"
    for kind in CARRIER_KEYWORDS:
        assert Intent.of_command(kind.value, keyword=True) == f"keyword:{kind.value}"


def test_an_unknown_command_is_no_intent() -> None:
    with pytest.raises(ValueError, match="command:dance"):
        Intent.of_command("dance")


def test_models_reexport_the_vocabularies_unchanged() -> None:
    assert models.Channel is Channel and models.Intent is Intent
