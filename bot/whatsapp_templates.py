"""WhatsApp message templates: which approved template goes out for a business-initiated message
outside the customer's 24-hour session window.

A TOML file (``WHATSAPP_TEMPLATES``) maps an outbound message's intent (``suggestion``,
``nudge``, ``broadcast``...) to the template's Content SID and its variables::

    [suggestion]
    content_sid = "HX0123456789abcdef0123456789abcdef"
    variables = { 1 = "{name}", 2 = "{text}" }

A variable's value may use ``{name}`` (the customer's name, or "there"), ``{text}`` (the message
Rapport would have sent in the window) and ``{company}``. The file is read and checked once at
start-up: an error names the file and the problem. An intent without a template is not sent on
WhatsApp outside the window (the contact policy picks another channel, or skips it with the
reason recorded).
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDERS = frozenset({"name", "text", "company"})
_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")
_INTENT = re.compile(r"[a-z][a-z0-9_]{0,31}")
_VARIABLE = re.compile(r"[1-9][0-9]{0,1}")
MAX_VALUE = 1024


class TemplateError(ValueError):
    """The templates file is missing, unreadable or wrong; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class Template:
    """An approved WhatsApp template: its Content SID and variable number -> value pattern."""

    intent: str
    content_sid: str
    variables: Mapping[str, str] = field(default_factory=dict)

    def render(self, *, name: str | None, text: str, company: str) -> dict[str, str]:
        """The ContentVariables for one message."""
        values = {"name": name or "there", "text": text, "company": company}
        return {key: pattern.format_map(values)[:MAX_VALUE] for key, pattern in self.variables.items()}


@dataclass(frozen=True, slots=True)
class Templates:
    """The templates by intent (empty: none configured)."""

    by_intent: Mapping[str, Template] = field(default_factory=dict)
    path: Path | None = None

    def get(self, intent: str | None) -> Template | None:
        return self.by_intent.get(intent) if intent else None

    @property
    def intents(self) -> frozenset[str]:
        return frozenset(self.by_intent)

    def sids(self) -> frozenset[str]:
        """The Content SIDs of the configured templates."""
        return frozenset(t.content_sid for t in self.by_intent.values())


def load_templates(path: Path | None) -> Templates:
    """The templates in ``path`` (None: no templates). Raises :class:`TemplateError`."""
    if path is None:
        return Templates()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"WHATSAPP_TEMPLATES {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"WHATSAPP_TEMPLATES {path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"WHATSAPP_TEMPLATES {path}: not valid TOML ({exc})") from None
    found = {}
    for intent, entry in data.items():
        where = f"WHATSAPP_TEMPLATES {path}: [{intent}]"
        if not _INTENT.fullmatch(intent):
            raise TemplateError(f"{where}: an intent is lower-case letters, digits and _ (e.g. suggestion)")
        if not isinstance(entry, dict):
            raise TemplateError(f"{where}: expected a table with content_sid and variables")
        unknown = set(entry) - {"content_sid", "variables"}
        if unknown:
            raise TemplateError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        sid = entry.get("content_sid")
        if not isinstance(sid, str) or not _CONTENT_SID.fullmatch(sid):
            raise TemplateError(
                f"{where}: content_sid must be a Content SID (HX and 32 hex digits), got {sid!r}"
            )
        variables = entry.get("variables", {})
        if not isinstance(variables, dict):
            raise TemplateError(f'{where}: variables must be a table such as {{ 1 = "{{name}}" }}')
        for key, value in variables.items():
            if not _VARIABLE.fullmatch(key):
                raise TemplateError(f"{where}: variable {key!r} is not a template variable number (1, 2...)")
            if not isinstance(value, str):
                raise TemplateError(f"{where}: variable {key} must be a string")
            _check_pattern(where, key, value)
        found[intent] = Template(intent, sid, {str(k): str(v) for k, v in variables.items()})
    return Templates(found, path)


def _check_pattern(where: str, key: str, value: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise TemplateError(f"{where}: variable {key} {value!r}: {exc}") from None
    wrong = names - PLACEHOLDERS
    if wrong:
        allowed = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
        raise TemplateError(
            f"{where}: variable {key} uses {', '.join(sorted(wrong))!s}; only {allowed} are known"
        )
