"""The question bank: a declarative TOML file of preference questions, validated on load."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_BANK = "questions.toml"
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class BankError(ValueError):
    """The question bank file is invalid; the message names the question and the problem."""


class Kind(StrEnum):
    """How an answer to a question is understood and stored."""

    CHOICE = "choice"
    YES_NO = "yes_no"
    NUMBER = "number"
    MONEY = "money"
    TIME_WINDOW = "time_window"
    FREE_TEXT = "free_text"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Option(_Strict):
    """One answer a choice (or time window, or number) question accepts.

    ``value`` is what gets stored: a string for choices and time windows, a number for number
    questions whose common answers are words ("just me" = 1). ``start``/``end`` (HH:MM) give the
    window of a time-window option.
    """

    value: str | float
    label: str
    synonyms: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str | None) -> str | None:
        if v is not None and not _HHMM.match(v):
            raise ValueError(f"time {v!r} is not HH:MM")
        return v


class DeriveRule(_Strict):
    """How a question can be answered from usage instead of asking (applied by ``plans``).

    The ``aggregate`` of ``metric`` over the last ``lookback`` periods is taken; a yes/no
    question is answered "yes" when it is above ``above``, a number question takes the value.
    """

    metric: str
    aggregate: Literal["mean", "max", "sum"] = "mean"
    lookback: int = Field(default=3, ge=1)
    above: float | None = None


class Question(_Strict):
    """One preference question."""

    key: str
    text: str
    why: str
    kind: Kind
    label: str = ""
    priority: int = 0
    topics: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    stale_after_days: int | None = Field(default=None, ge=1)
    confirm_text: str | None = None
    derive_from_usage: DeriveRule | None = None
    fit: Literal["budget", "month_to_month", "perk"] | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _KEY.match(v):
            raise ValueError("key must be lower_snake_case")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Question:
        if self.kind in (Kind.CHOICE, Kind.TIME_WINDOW) and not self.options:
            raise ValueError(f"a {self.kind.value} question needs options")
        if self.kind is Kind.TIME_WINDOW and any(o.start is None or o.end is None for o in self.options):
            raise ValueError("every time_window option needs start and end")
        if self.kind is Kind.CHOICE and any(not isinstance(o.value, str) for o in self.options):
            raise ValueError("choice option values must be strings")
        if self.kind is Kind.NUMBER and any(isinstance(o.value, str) for o in self.options):
            raise ValueError("number option values must be numbers")
        if self.kind in (Kind.YES_NO, Kind.MONEY, Kind.FREE_TEXT) and self.options:
            raise ValueError(f"a {self.kind.value} question takes no options")
        values = [o.value for o in self.options]
        if len(set(values)) != len(values):
            raise ValueError("option values must be unique")
        if self.derive_from_usage is not None:
            if self.kind not in (Kind.YES_NO, Kind.NUMBER):
                raise ValueError("derive_from_usage works for yes_no and number questions only")
            if self.kind is Kind.YES_NO and self.derive_from_usage.above is None:
                raise ValueError("derive_from_usage on a yes_no question needs 'above'")
        if self.fit == "budget" and self.kind is not Kind.MONEY:
            raise ValueError("fit = 'budget' needs a money question")
        if self.fit == "perk" and self.kind is not Kind.CHOICE:
            raise ValueError("fit = 'perk' needs a choice question (option values are perk names)")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is above maximum")
        return self

    @property
    def name(self) -> str:
        """What the bot calls this question's topic ("monthly budget")."""
        return self.label or self.key.replace("_", " ")

    def option(self, value: object) -> Option | None:
        """The option stored as ``value``, if any."""
        return next((o for o in self.options if o.value == value), None)


class QuestionBank:
    """An ordered, validated set of questions (highest priority first)."""

    def __init__(self, questions: list[Question], *, source: str = "<memory>") -> None:
        seen: set[str] = set()
        for q in questions:
            if q.key in seen:
                raise BankError(f"{source}: question {q.key!r}: duplicate key")
            seen.add(q.key)
        # A stable order: priority descending, then file order.
        order = {q.key: i for i, q in enumerate(questions)}
        self._questions = sorted(questions, key=lambda q: (-q.priority, order[q.key]))
        self._by_key = {q.key: q for q in self._questions}
        self.source = source

    def __iter__(self) -> Iterator[Question]:
        return iter(self._questions)

    def __len__(self) -> int:
        return len(self._questions)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __getitem__(self, key: str) -> Question:
        return self._by_key[key]

    def get(self, key: str | None) -> Question | None:
        """The question with ``key``, or None."""
        return self._by_key.get(key) if key else None

    def fit_roles(self) -> dict[str, str]:
        """Preference key -> its role in the plan fit, for the questions that have one."""
        return {q.key: q.fit for q in self._questions if q.fit is not None}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<memory>") -> QuestionBank:
        """Build a bank from parsed TOML (a ``question`` array of tables)."""
        raw = data.get("question")
        if not isinstance(raw, list) or not raw:
            raise BankError(f"{source}: no [[question]] entries")
        questions: list[Question] = []
        for index, item in enumerate(raw, start=1):
            name = repr(item.get("key")) if isinstance(item, dict) and item.get("key") else f"#{index}"
            try:
                questions.append(Question.model_validate(item))
            except ValidationError as exc:
                problems = "; ".join(_describe(err) for err in exc.errors())
                raise BankError(f"{source}: question {name}: {problems}") from None
        return cls(questions, source=source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> QuestionBank:
        """Load the bank at ``path``, or the default bank shipped with the package."""
        if path is None:
            text = resources.files("dialogs").joinpath(DEFAULT_BANK).read_text(encoding="utf-8")
            source = f"dialogs/{DEFAULT_BANK}"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise BankError(f"{path}: cannot read the question bank: {exc.strerror}") from None
            source = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BankError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=source)


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "enum":
        return f"unknown kind {err.get('input')!r} (expected one of: {', '.join(k.value for k in Kind)})"
    return f"{loc}: {msg}" if loc else msg
