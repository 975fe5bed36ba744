"""The small, safe expression language of ``switch`` cases (never ``eval``).

``${region} == 'eu' and (${n} > 10 or not ${dry})``. Grammar, loosest first::

    expr  := and (("or" | "||") and)*
    and   := not (("and" | "&&") not)*
    not   := ("not" | "!") not | cmp
    cmp   := atom [(== | != | < | <= | > | >=) atom | [not] in list]
    atom  := ${name} | 'text' | "text" | number | true | false | ( expr ) | list
    list  := [ atom, ... ] | ( atom, ... )

Parameters are strings; a comparison is numeric when both sides read as numbers, else
textual. A value alone (``${flag}``) holds when it is ``true``, ``yes``, ``y`` or ``1``.
An expression is parsed when its definition is published (syntax errors are 422s) and
evaluated when the switch task runs; a ``${name}`` with no value then fails the task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<ref>\$\{[A-Za-z_][A-Za-z0-9_.]*\})
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<op>==|!=|<=|>=|<|>|&&|\|\||!|\(|\)|\[|\]|,)
    | (?P<word>[A-Za-z_]+)
    )""", re.VERBOSE)
_WORDS = {"and", "or", "not", "in", "true", "false"}
_CMP = ("==", "!=", "<=", ">=", "<", ">")


class ExpressionInvalid(ValueError):
    """An expression that cannot be parsed or evaluated; the message says where."""


@dataclass(frozen=True, slots=True)
class Node:
    """``kind`` is ref | lit | list | not | and | or | one of the comparisons | in | nin."""

    kind: str
    value: str = ""
    args: tuple[Node, ...] = ()


def parse(text: str) -> Node:
    """The expression's tree, or ExpressionInvalid naming the first problem."""
    tokens = _tokenize(text)
    if not tokens:
        raise ExpressionInvalid("empty expression")
    parser = _Parser(tokens, text)
    node = parser.expr()
    if parser.pos != len(tokens):
        raise ExpressionInvalid(f"unexpected {tokens[parser.pos][1]!r} in {text!r}")
    return node


def references(node: Node) -> set[str]:
    """The parameter names ``node`` reads."""
    if node.kind == "ref":
        return {node.value}
    out: set[str] = set()
    for a in node.args:
        out |= references(a)
    return out


def holds(node: Node, params: Mapping[str, str]) -> bool:
    """Evaluate ``node`` as a condition over ``params``."""
    k = node.kind
    if k == "or":
        return any(holds(a, params) for a in node.args)
    if k == "and":
        return all(holds(a, params) for a in node.args)
    if k == "not":
        return not holds(node.args[0], params)
    if k in _CMP:
        return _compare(k, _value(node.args[0], params), _value(node.args[1], params))
    if k in ("in", "nin"):
        left = _value(node.args[0], params)
        found = any(_compare("==", left, _value(x, params)) for x in node.args[1].args)
        return found if k == "in" else not found
    if k == "list":
        raise ExpressionInvalid("a list is not a condition")
    return _value(node, params).strip().lower() in ("true", "yes", "y", "1")


def _value(node: Node, params: Mapping[str, str]) -> str:
    if node.kind == "lit":
        return node.value
    if node.kind == "ref":
        if node.value not in params:
            raise ExpressionInvalid(f"parameter '{node.value}' has no value")
        return params[node.value]
    return "true" if holds(node, params) else "false"


def _number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _compare(op: str, a: str, b: str) -> bool:
    na, nb = _number(a), _number(b)
    left: float | str
    right: float | str
    left, right = (na, nb) if na is not None and nb is not None else (a, b)
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right  # type: ignore[operator]
    if op == "<=":
        return left <= right  # type: ignore[operator]
    if op == ">":
        return left > right  # type: ignore[operator]
    return left >= right  # type: ignore[operator]


def _tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionInvalid(f"unexpected character {text[pos:].lstrip()[:1]!r} at "
                                    f"offset {pos} in {text!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "word":
            if value.lower() not in _WORDS:
                raise ExpressionInvalid(
                    f"unknown word {value!r} in {text!r}: write parameters as ${{{value}}} "
                    "and text in quotes")
            value = value.lower()
        out.append((kind, value))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.pos = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, *values: str) -> str | None:
        tok = self._peek()
        if tok is not None and tok[0] in ("op", "word") and tok[1] in values:
            self.pos += 1
            return tok[1]
        return None

    def _fail(self, want: str) -> ExpressionInvalid:
        tok = self._peek()
        got = repr(tok[1]) if tok else "the end"
        return ExpressionInvalid(f"expected {want}, found {got} in {self.text!r}")

    def expr(self) -> Node:
        args = [self._and()]
        while self._take("or", "||"):
            args.append(self._and())
        return args[0] if len(args) == 1 else Node("or", args=tuple(args))

    def _and(self) -> Node:
        args = [self._not()]
        while self._take("and", "&&"):
            args.append(self._not())
        return args[0] if len(args) == 1 else Node("and", args=tuple(args))

    def _not(self) -> Node:
        if self._take("not", "!"):
            return Node("not", args=(self._not(),))
        return self._cmp()

    def _cmp(self) -> Node:
        left = self._atom()
        op = self._take(*_CMP)
        if op:
            return Node(op, args=(left, self._atom()))
        negated = False
        if self._peek() == ("word", "not") and self.pos + 1 < len(self.tokens) and \
                self.tokens[self.pos + 1] == ("word", "in"):
            self.pos += 1
            negated = True
        if self._take("in"):
            right = self._atom()
            if right.kind != "list":
                raise ExpressionInvalid(f"'in' needs a list such as ['a', 'b'] in {self.text!r}")
            return Node("nin" if negated else "in", args=(left, right))
        return left

    def _atom(self) -> Node:
        tok = self._peek()
        if tok is None:
            raise self._fail("a value")
        kind, value = tok
        if kind == "ref":
            self.pos += 1
            return Node("ref", value[2:-1])
        if kind == "str":
            self.pos += 1
            return Node("lit", re.sub(r"\\(.)", r"\1", value[1:-1]))
        if kind == "num" or value in ("true", "false"):
            self.pos += 1
            return Node("lit", value)
        if self._take("["):
            return self._list("]")
        if self._take("("):
            inner = self.expr()
            if self._take(","):
                items = [inner, *self._items(")")]
                return Node("list", args=tuple(items))
            if not self._take(")"):
                raise self._fail("')'")
            return inner
        raise self._fail("a value")

    def _list(self, close: str) -> Node:
        if self._take(close):
            return Node("list")
        return Node("list", args=tuple(self._items(close)))

    def _items(self, close: str) -> list[Node]:
        items = [self._atom()]
        while self._take(","):
            items.append(self._atom())
        if not self._take(close):
            raise self._fail(f"{close!r}")
        return items
