"""Split a SQL script into statements without breaking strings, comments or dollar quotes.

PostgreSQL's lexical rules that matter for ``;``: single-quoted strings (``''`` inside),
``E'...'`` strings (backslash escapes), double-quoted identifiers, ``-- line`` and nested
``/* block */`` comments, and ``$tag$ ... $tag$`` dollar quoting. Empty statements are
dropped; each statement keeps its text as written (without the ``;``).
"""

from __future__ import annotations

import re

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def split_sql(script: str) -> list[str]:
    out: list[str] = []
    start = i = 0
    n = len(script)
    while i < n:
        c = script[i]
        if c == ";":
            _keep(out, script[start:i])
            start = i = i + 1
            continue
        if c == "'":
            escapes = i > 0 and script[i - 1] in "eE" and (i < 2 or not (
                script[i - 2].isalnum() or script[i - 2] == "_"))
            i = _end_quote(script, i + 1, "'", backslash=escapes)
        elif c == '"':
            i = _end_quote(script, i + 1, '"', backslash=False)
        elif script.startswith("--", i):
            nl = script.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif script.startswith("/*", i):
            i = _end_block_comment(script, i + 2)
        elif c == "$" and (i == 0 or not (script[i - 1].isalnum() or script[i - 1] == "_")):
            m = _DOLLAR.match(script, i)
            if m:
                end = script.find(m.group(0), m.end())
                i = n if end < 0 else end + len(m.group(0))
            else:
                i += 1
        else:
            i += 1
    _keep(out, script[start:])
    return out


def _keep(out: list[str], stmt: str) -> None:
    if _strip_comments(stmt).strip():
        out.append(stmt.strip())


def _strip_comments(stmt: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", stmt, flags=re.DOTALL)


def _end_quote(s: str, i: int, q: str, *, backslash: bool) -> int:
    """Index after the closing quote (a doubled quote is an escaped one)."""
    n = len(s)
    while i < n:
        if backslash and s[i] == "\\":
            i += 2
            continue
        if s[i] == q:
            if i + 1 < n and s[i + 1] == q:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _end_block_comment(s: str, i: int) -> int:
    depth, n = 1, len(s)
    while i < n and depth:
        if s.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif s.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i
