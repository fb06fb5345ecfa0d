"""The segment filter: a small expression language choosing a broadcast's customers.

It is tokenized and parsed by hand into an AST, then evaluated in Python over each customer's
facts; it is never ``eval``'d nor pasted into SQL, so a string is only ever data.

Syntax::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | primary
    primary := "(" expr ")" | term [op literal | ["not"] "in" "(" literal ("," literal)* ")"]
    term    := FIELD | FUNC "(" NAME ")"
    op      := "==" | "!=" | "<" | "<=" | ">" | ">="
    literal := "string" | 'string' | number | true | false | null

A term without a comparison is true when its value is truthy (``consent``, ``suggest``).

Fields: ``plan`` (current plan id), ``suggested`` (best plan id, or null), ``suggest`` (the fit
suggests a switch), ``saving`` / ``yearly_saving`` / ``current_cost`` (money a month / a year,
0 when there is no suggestion), ``months`` (months of usage), ``consent`` (marketing consent),
``channel`` (the channel a message would use: "sms", "telegram", "whatsapp", or null).
Functions: ``avg(metric)`` (mean monthly usage over the fit's months, e.g. ``avg(data_gb)``),
``over(metric)`` (months over the current plan's allowance), ``pref(key)`` (a stored preference).

A comparison with a missing value (null) is false, except ``== null`` / ``!= null``.
Example: ``plan in ("plus-20", "unlimited") and avg(data_gb) < 5 and saving >= 10 and consent``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias

Value: TypeAlias = str | Decimal | bool | None
Kind = Literal["str", "num", "bool", "any"]

FIELDS: Mapping[str, Kind] = {
    "plan": "str",
    "suggested": "str",
    "suggest": "bool",
    "saving": "num",
    "yearly_saving": "num",
    "current_cost": "num",
    "months": "num",
    "consent": "bool",
    "channel": "str",
}
FUNCTIONS: Mapping[str, Kind] = {"avg": "num", "over": "num", "pref": "any"}
OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
MAX_DEPTH = 32
"""The deepest nesting of brackets and ``not`` an expression may have (a clear error past it,
never a RecursionError)."""


class SegmentError(ValueError):
    """A segment expression that does not parse; ``position`` is the 0-based offset."""

    def __init__(self, message: str, position: int, source: str) -> None:
        self.position = position
        self.source = source
        super().__init__(f"{message} at position {position}\n  {source}\n  {' ' * position}^")


# -- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: Literal["name", "string", "number", "op", "(", ")", ",", "end"]
    text: str
    position: int
    value: Value = None

    def describe(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text)


def tokenize(source: str) -> list[Token]:
    """The tokens of ``source``; a bad character or an unclosed string raises SegmentError."""
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            tokens.append(Token(c, c, i))  # type: ignore[arg-type]
            i += 1
        elif c in "\"'":
            start, i, chars = i, i + 1, []
            while i < n and source[i] != c:
                if source[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(source[i])
                i += 1
            if i >= n:
                raise SegmentError("unclosed string: expected a closing " + c, start, source)
            i += 1
            tokens.append(Token("string", source[start:i], start, "".join(chars)))
        elif c.isdigit() or (c in "-." and i + 1 < n and (source[i + 1].isdigit() or source[i + 1] == ".")):
            start = i
            i += 1
            while i < n and (source[i].isdigit() or source[i] in "._"):
                i += 1
            text = source[start:i]
            try:
                number = Decimal(text.replace("_", ""))
            except InvalidOperation:
                raise SegmentError(f"bad number {text!r}", start, source) from None
            tokens.append(Token("number", text, start, number))
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (source[i].isalnum() or source[i] in "_-"):
                i += 1
            tokens.append(Token("name", source[start:i], start))
        elif source.startswith(("==", "!=", "<=", ">="), i):
            tokens.append(Token("op", source[i : i + 2], i))
            i += 2
        elif c in "<>":
            tokens.append(Token("op", c, i))
            i += 1
        else:
            raise SegmentError(f"unexpected character {c!r}", i, source)
    tokens.append(Token("end", "", n))
    return tokens


# -- the AST ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """A field (``arg`` None) or a function of a name (``avg(data_gb)``)."""

    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}({self.arg})"


@dataclass(frozen=True, slots=True)
class Compare:
    term: Term
    op: str  # one of OPERATORS, "in", "not in", or "truthy"
    values: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]


Node: TypeAlias = Compare | Not | BoolOp


# -- the parser ---------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0
        self.depth = 0

    def nest(self) -> None:
        """One level deeper (a bracket or a ``not``); too deep raises SegmentError."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SegmentError(
                f"too deeply nested: at most {MAX_DEPTH} levels of brackets and not",
                self.token.position,
                self.source,
            )

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def fail(self, expected: str, token: Token | None = None) -> SegmentError:
        token = token or self.token
        return SegmentError(f"expected {expected}, found {token.describe()}", token.position, self.source)

    def keyword(self, word: str) -> bool:
        if self.token.kind == "name" and self.token.text.lower() == word:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, expected: str) -> Token:
        token = self.token
        if token.kind != kind:
            raise self.fail(expected)
        self.i += 1
        return token

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.fail("a condition")
        node = self.or_()
        if self.i < len(self.tokens) - 1:
            raise self.fail('"and", "or" or the end')
        return node

    def or_(self) -> Node:
        operands = [self.and_()]
        while self.keyword("or"):
            operands.append(self.and_())
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def and_(self) -> Node:
        operands = [self.not_()]
        while self.keyword("and"):
            operands.append(self.not_())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def not_(self) -> Node:
        if self.keyword("not"):
            self.nest()
            node = Not(self.not_())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        if self.token.kind == "(":
            self.i += 1
            self.nest()
            node = self.or_()
            self.expect(")", '")"')
            self.depth -= 1
            return node
        term, kind = self.term()
        token = self.token
        if token.kind == "op":
            self.i += 1
            value = self.literal(kind)
            if token.text in ("<", "<=", ">", ">=") and not isinstance(value, Decimal):
                raise self.fail("a number", self.tokens[self.i - 1])
            return Compare(term, token.text, (value,))
        negated = False
        if self.token.kind == "name" and self.token.text.lower() == "not":
            follower = self.tokens[self.i + 1]
            if follower.kind == "name" and follower.text.lower() == "in":
                self.i += 1
                negated = True
            else:
                raise self.fail('"in" after "not"', follower)
        if self.keyword("in"):
            self.expect("(", '"(" after "in"')
            values = [self.literal(kind)]
            while self.token.kind == ",":
                self.i += 1
                values.append(self.literal(kind))
            self.expect(")", '"," or ")"')
            return Compare(term, "not in" if negated else "in", tuple(values))
        return Compare(term, "truthy")

    def term(self) -> tuple[Term, Kind]:
        token = self.token
        name = token.text.lower()
        if token.kind != "name" or name in KEYWORDS:
            raise self.fail("a field (" + ", ".join(FIELDS) + ") or a function (avg, over, pref)")
        self.i += 1
        if name in FUNCTIONS:
            self.expect("(", f'"(" after {name}')
            arg = self.token
            if arg.kind == "string" and isinstance(arg.value, str):
                key = arg.value
            elif arg.kind == "name":
                key = arg.text
            else:
                raise self.fail(f"a name inside {name}()")
            self.i += 1
            self.expect(")", f'")" closing {name}(')
            return Term(name, key), FUNCTIONS[name]
        if name in FIELDS:
            return Term(name), FIELDS[name]
        raise self.fail("a field (" + ", ".join(FIELDS) + ") or a function (avg, over, pref)", token)

    def literal(self, kind: Kind) -> Value:
        token = self.token
        value: Value
        if token.kind in ("string", "number"):
            value = token.value
        elif token.kind == "name" and token.text.lower() in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[token.text.lower()]
        else:
            raise self.fail("a value (a quoted string, a number, true, false or null)")
        wanted = {"str": str, "num": Decimal, "bool": bool}.get(kind)
        if wanted is not None and value is not None and not isinstance(value, wanted):
            raise self.fail({"str": "a quoted string", "num": "a number", "bool": "true or false"}[kind])
        self.i += 1
        return value


def parse(source: str) -> Node:
    """The AST of a segment expression; raises SegmentError naming the position and what was expected."""
    return _Parser(source).parse()


# -- evaluation ---------------------------------------------------------------------------------

Facts: TypeAlias = Callable[[Term], Any]  # a term -> the customer's value of it


def _normal(value: Any) -> Value:
    if value is None or isinstance(value, (bool, str, Decimal)):
        return value
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    return str(value)


def _equal(a: Value, b: Value) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _compare(a: Value, op: str, b: Value) -> bool:
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if not isinstance(a, Decimal) or isinstance(a, bool) or not isinstance(b, Decimal):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def evaluate(node: Node, facts: Facts) -> bool:
    """Whether a customer whose values ``facts`` gives matches ``node``."""
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(evaluate(n, facts) for n in node.operands)
        return any(evaluate(n, facts) for n in node.operands)
    if isinstance(node, Not):
        return not evaluate(node.operand, facts)
    value = _normal(facts(node.term))
    if node.op == "truthy":
        return bool(value)
    if node.op == "in":
        return any(_equal(value, v) for v in node.values)
    if node.op == "not in":
        return value is not None and not any(_equal(value, v) for v in node.values)
    if value is None and node.values[0] is not None and node.op in ("==", "!="):
        return node.op == "!="  # null != "x"
    if value is None and node.op not in ("==", "!="):
        return False
    return _compare(value, node.op, node.values[0])


def terms(node: Node) -> list[Term]:
    """Every term the expression reads (to check metric names, or fetch only what it needs)."""
    if isinstance(node, BoolOp):
        return [t for n in node.operands for t in terms(n)]
    if isinstance(node, Not):
        return terms(node.operand)
    return [node.term]


def check_metrics(node: Node, metrics: Sequence[str]) -> None:
    """Raise ValueError when ``avg()`` / ``over()`` name a metric the catalog does not know."""
    unknown = sorted({str(t.arg) for t in terms(node) if t.name in ("avg", "over") and t.arg not in metrics})
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(str, unknown))}; known: {', '.join(metrics)}")
