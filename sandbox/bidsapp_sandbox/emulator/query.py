"""The files.list `q` grammar: a tokenizer and a recursive-descent parser into a predicate.

Supported as on Drive: `'ID' in parents` (also owners/writers/readers), `name = '…'`,
`name contains '…'`, `mimeType = / != / contains`, `trashed = true|false`, `starred`,
`sharedWithMe`, time comparisons on createdTime/modifiedTime, `properties has { key='k' and
value='v' }`, `and`, `or`, `not`, parentheses, and strings with `\\'` and `\\\\` escapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bidsapp_sandbox.emulator.errors import ApiError, bad_request

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]
# A parsed piece of `q` and the parent ids any match must have (lets a listing scan only
# those folders' children instead of every file).
Parsed = tuple[Predicate, frozenset[str]]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_OPERATORS = ("!=", "<=", ">=", "=", "<", ">")
_KEYWORDS = {"and", "or", "not", "in", "has", "contains", "true", "false"}
_MEMBERSHIP = ("parents", "owners", "writers", "readers")
_TEXT = ("name", "mimeType", "fullText")
_BOOLS = ("trashed", "starred", "hidden", "sharedWithMe")
_TIMES = ("createdTime", "modifiedTime", "viewedByMeTime")
_MAPS = ("properties", "appProperties")


@dataclass(frozen=True)
class Token:
    kind: str  # "str", "word", "op", "punct", "end"
    value: str
    pos: int


def _invalid(q: str, why: str) -> ApiError:
    return bad_request(f"Invalid Value: {why} in query {q!r}", location="q")


def tokenize(q: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(q):
        ch = q[i]
        if ch.isspace():
            i += 1
        elif ch == "'":
            start, i, buf = i, i + 1, []
            while True:
                if i >= len(q):
                    raise _invalid(q, "unterminated string")
                if q[i] == "\\":
                    if i + 1 >= len(q) or q[i + 1] not in "'\\":
                        raise _invalid(q, "bad escape (only \\' and \\\\ are allowed)")
                    buf.append(q[i + 1])
                    i += 2
                elif q[i] == "'":
                    i += 1
                    break
                else:
                    buf.append(q[i])
                    i += 1
            tokens.append(Token("str", "".join(buf), start))
        elif ch in "(){}":
            tokens.append(Token("punct", ch, i))
            i += 1
        elif op := next((o for o in _OPERATORS if q.startswith(o, i)), None):
            tokens.append(Token("op", op, i))
            i += len(op)
        elif m := _WORD.match(q, i):
            tokens.append(Token("word", m.group(), i))
            i = m.end()
        else:
            raise _invalid(q, f"unexpected character {ch!r}")
    tokens.append(Token("end", "", len(q)))
    return tokens


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _compare(op: str, left: Any, right: Any) -> bool:
    match op:
        case "=":
            return bool(left == right)
        case "!=":
            return bool(left != right)
        case "<":
            return bool(left < right)
        case "<=":
            return bool(left <= right)
        case ">":
            return bool(left > right)
        case _:
            return bool(left >= right)


class _Parser:
    def __init__(self, q: str, aliases: Mapping[str, str]) -> None:
        self.q = q
        self.tokens = tokenize(q)
        self.i = 0
        self.aliases = aliases

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def word(self, value: str) -> bool:
        tok = self.peek()
        if tok.kind == "word" and tok.value == value:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: str | None = None) -> Token:
        tok = self.take()
        if tok.kind != kind or (value is not None and tok.value != value):
            raise _invalid(self.q, f"expected {value or kind} at {tok.pos}")
        return tok

    def parse(self) -> Parsed:
        parsed = self.disjunction()
        if self.peek().kind != "end":
            raise _invalid(self.q, f"unexpected {self.peek().value!r} at {self.peek().pos}")
        return parsed

    def disjunction(self) -> Parsed:
        parts = [self.conjunction()]
        while self.word("or"):
            parts.append(self.conjunction())
        if len(parts) == 1:
            return parts[0]
        preds = [p for p, _ in parts]
        required = frozenset.intersection(*(r for _, r in parts))
        return (lambda row: any(p(row) for p in preds)), required

    def conjunction(self) -> Parsed:
        parts = [self.factor()]
        while self.word("and"):
            parts.append(self.factor())
        if len(parts) == 1:
            return parts[0]
        preds = [p for p, _ in parts]
        required = frozenset().union(*(r for _, r in parts))
        return (lambda row: all(p(row) for p in preds)), required

    def factor(self) -> Parsed:
        if self.word("not"):
            inner, _ = self.factor()
            return (lambda row: not inner(row)), frozenset()
        tok = self.peek()
        if tok.kind == "punct" and tok.value == "(":
            self.take()
            parsed = self.disjunction()
            self.expect("punct", ")")
            return parsed
        if tok.kind == "str":
            return self.membership()
        return self.clause(), frozenset()

    def membership(self) -> Parsed:
        tok = self.take()
        self.expect("word", "in")
        field = self.expect("word").value
        if field not in _MEMBERSHIP:
            raise _invalid(self.q, f"'in' is not supported for {field!r}")
        if field == "parents":
            parent = self.aliases.get(tok.value, tok.value)
            return (lambda row: parent in row.get("parents", ())), frozenset({parent})
        value = tok.value
        return (lambda row: value in row.get(field, ())), frozenset()

    def clause(self) -> Predicate:
        tok = self.take()
        if tok.kind != "word" or tok.value in _KEYWORDS:
            raise _invalid(self.q, f"expected a field at {tok.pos}")
        field = tok.value
        if field in _MAPS:
            return self.has_clause(field)
        op_tok = self.take()
        op = op_tok.value
        if op_tok.kind == "word" and op == "contains":
            if field not in _TEXT:
                raise _invalid(self.q, f"'contains' is not supported for {field!r}")
            needle = self.expect("str").value.lower()
            key = "name" if field == "fullText" else field
            return lambda row: needle in str(row.get(key, "")).lower()
        if op_tok.kind != "op":
            raise _invalid(self.q, f"expected an operator after {field!r}")
        if field in _BOOLS:
            if op not in ("=", "!="):
                raise _invalid(self.q, f"{field!r} only supports = and !=")
            lit = self.expect("word").value
            if lit not in ("true", "false"):
                raise _invalid(self.q, f"{field!r} needs true or false")
            flag = lit == "true"
            return lambda row: _compare(op, bool(row.get(field, False)), flag)
        if field in _TIMES:
            try:
                when = _parse_time(self.expect("str").value)
            except ValueError as exc:
                raise _invalid(self.q, "bad RFC 3339 time") from exc
            return lambda row: field in row and _compare(op, _parse_time(row[field]), when)
        if field in ("name", "mimeType"):
            if op not in ("=", "!="):
                raise _invalid(self.q, f"{field!r} only supports =, != and contains")
            text = self.expect("str").value
            return lambda row: _compare(op, row.get(field), text)
        raise _invalid(self.q, f"unknown field {field!r}")

    def has_clause(self, field: str) -> Predicate:
        self.expect("word", "has")
        self.expect("punct", "{")
        self.expect("word", "key")
        self.expect("op", "=")
        key = self.expect("str").value
        self.expect("word", "and")
        self.expect("word", "value")
        self.expect("op", "=")
        value = self.expect("str").value
        self.expect("punct", "}")
        return lambda row: (row.get(field) or {}).get(key) == value


def compile_query(q: str, aliases: Mapping[str, str] | None = None) -> Parsed:
    """Parse `q` into a predicate over a file row, and the parent ids every match must have.

    `aliases` maps names such as 'root' to ids.
    """
    if not q.strip():
        return (lambda row: True), frozenset()
    return _Parser(q, aliases or {}).parse()
