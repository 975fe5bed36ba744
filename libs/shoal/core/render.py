"""Parameter values into task text as data, never as code.

A task's text (a shell command, a Python script, SQL, an http request) is written by the
definition's author; ``${name}`` in it refers to a parameter (or ``${secret.NAME}`` to a
secret) whose value may come from whoever starts the run. Each renderer here lexes the
author's text once, finds the context every reference sits in, and puts the value there in
a form that context reads as data:

* shell: bare ``${x}`` becomes a single-quoted word; inside ``"..."`` the value is
  backslash-escaped; inside ``'...'`` the quote is closed, the value single-quoted and the
  quote reopened (so ``echo '${setValue(n=${x})}'`` still prints the marker with the
  value); inside a here-document or a comment a value may not hold a newline; in
  arithmetic only an integer is accepted;
* Python: bare ``${x}`` becomes a string literal (``repr``); inside a string literal the
  value is escaped for that literal;
* SQL: every reference becomes a placeholder ``$n`` bound to the value (as
  DolphinScheduler's ``SqlTask`` binds ``['"]*${x}['"]*`` to ``?``);
* http: in the URL a value is percent-encoded as one component; in a JSON body it is
  JSON-escaped (a JSON string outside quotes unless it is a JSON number, boolean or null).

A reference ``lookup`` does not know stays as written (in a shell ``${HOME}`` is still the
variable). Values are never scanned again, so a value holding ``${secret.X}`` stays text.
A value that a context cannot hold safely raises :class:`RenderError` naming the param.
Everything here is pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote, quote_plus

REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
SECRET_PREFIX = "secret."  # noqa: S105 - the reference syntax, not a secret
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Lookup = Callable[[str], "str | None"]


class RenderError(ValueError):
    """A value cannot be put where its reference is, safely; names the param only."""


def _what(name: str) -> str:
    return f"secret '{name[len(SECRET_PREFIX):]}'" if name.startswith(SECRET_PREFIX) \
        else f"param '{name}'"


def _no_nul(name: str, value: str) -> str:
    if "\x00" in value:
        raise RenderError(f"{_what(name)} contains a NUL character")
    return value


def references(text: str) -> list[str]:
    """Every name referenced as ``${name}``, in order."""
    return REF.findall(text)


def secret_names(text: str) -> list[str]:
    """The secrets ``text`` refers to as ``${secret.NAME}``."""
    return [n[len(SECRET_PREFIX):] for n in REF.findall(text) if n.startswith(SECRET_PREFIX)]


# ---------------------------------------------------------------------------- shell

def shell_word(value: str) -> str:
    """``value`` as one single-quoted shell word (``'`` as ``'\\''``)."""
    return "'" + value.replace("'", "'\\''") + "'"


def _dq(value: str) -> str:
    return re.sub(r'([\\$`"])', r"\\\1", value)


def _backticks(text: str, depth: int) -> str:
    for _ in range(depth):
        text = re.sub(r"([\\$`])", r"\\\1", text)
    return text


_INTEGER = re.compile(r"[+-]?[0-9]+")
_CASE_WORD = re.compile(r"(case|esac)(?=[\s;&|)]|$)")
_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([A-Za-z0-9_.-]+))")


def render_shell(script: str, lookup: Lookup) -> str:
    """The author's shell ``script`` with each known reference quoted for its context."""
    out: list[str] = []
    # Context stack of [kind, open parens, open `case`s]: kind "bare" (top level or inside
    # $(...)), "dq", "arith" or "bt" (inside backticks). A `case` pattern's `)` does not
    # close a $(...).
    stack: list[list[object]] = [["bare", 0, 0]]
    heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, strip tabs, quoted)
    i, n = 0, len(script)

    def bt_depth() -> int:
        return sum(1 for c in stack if c[0] == "bt")

    def value_for(name: str, ctx: str) -> str | None:
        v = lookup(name)
        if v is None:
            return None
        v = _no_nul(name, v)
        if ctx == "bare":
            form = shell_word(v)
        elif ctx == "dq":
            form = _dq(v)
        elif ctx == "sq":
            form = "'" + shell_word(v) + "'"
        elif ctx == "dsq":
            form = "'" + shell_word(v) + "$'"
        elif ctx == "arith":
            if not _INTEGER.fullmatch(v.strip()):
                raise RenderError(f"{_what(name)} is used in shell arithmetic, so it must be "
                                  "an integer")
            form = v.strip()
        elif ctx == "comment":
            form = v.replace("\r", "\\r").replace("\n", "\\n")
        else:  # here-document bodies: a newline could end the document early
            if "\n" in v or "\r" in v:
                raise RenderError(f"{_what(name)} holds a newline, which a here-document "
                                  "cannot hold safely")
            form = v if ctx == "heredoc-quoted" else re.sub(r"([\\$`])", r"\\\1", v)
        return _backticks(form, bt_depth())

    def ref_at(j: int, ctx: str) -> tuple[str, int] | None:
        m = REF.match(script, j)
        if not m:
            return None
        form = value_for(m.group(1), ctx)
        return (m.group(0) if form is None else form), m.end()

    def seg(text: str, ctx: str) -> str:
        return _segment(text, ctx, value_for)

    while i < n:
        if heredocs and (i == 0 or script[i - 1] == "\n") and stack[-1][0] != "dq":
            # Here-document bodies start at the line after their operator.
            for delim, tabs, quoted in heredocs:
                while i < n:
                    end = script.find("\n", i)
                    line_end = n if end < 0 else end
                    line = script[i:line_end]
                    if (line.lstrip("\t") if tabs else line) == delim:
                        out.append(line + ("\n" if end >= 0 else ""))
                        i = line_end + 1
                        break
                    out.append(seg(line, "heredoc-quoted" if quoted else "heredoc"))
                    out.append("\n" if end >= 0 else "")
                    i = line_end + 1
            heredocs = []
            continue
        ctx = str(stack[-1][0])
        c = script[i]
        if c == "$" and script.startswith("${", i):
            got = ref_at(i, "bare" if ctx == "bt" else ctx)
            if got is not None:
                out.append(got[0])
                i = got[1]
                continue
        if ctx == "dq":
            if c == "\\":
                out.append(script[i:i + 2])
                i += 2
            elif c == '"':
                stack.pop()
                out.append(c)
                i += 1
            elif script.startswith("$((", i):
                stack.append(["arith", 0, 0])
                out.append("$((")
                i += 3
            elif script.startswith("$(", i):
                stack.append(["bare", 0, 0])
                out.append("$(")
                i += 2
            elif c == "`":
                stack.append(["bt", 0, 0])
                out.append(c)
                i += 1
            else:
                out.append(c)
                i += 1
            continue
        if ctx == "arith":
            if script.startswith("))", i) and stack[-1][1] == 0:
                stack.pop()
                out.append("))")
                i += 2
                continue
            if c == "(":
                stack[-1][1] = int(str(stack[-1][1])) + 1
            elif c == ")":
                stack[-1][1] = int(str(stack[-1][1])) - 1
            out.append(c)
            i += 1
            continue
        # bare or inside backticks
        if c == "\\":
            out.append(script[i:i + 2])
            i += 2
        elif c == "`" and ctx == "bt":
            stack.pop()
            out.append(c)
            i += 1
        elif c == "`":
            stack.append(["bt", 0, 0])
            out.append(c)
            i += 1
        elif c == "'":
            end = script.find("'", i + 1)
            end = n if end < 0 else end
            out.append("'" + seg(script[i + 1:end], "sq") +
                       ("'" if end < n else ""))
            i = end + 1
        elif script.startswith("$'", i):
            j = i + 2
            while j < n and script[j] != "'":
                j += 2 if script[j] == "\\" else 1
            end = min(j, n)
            out.append("$'" + seg(script[i + 2:end], "dsq") +
                       ("'" if end < n else ""))
            i = end + 1
        elif c == '"':
            stack.append(["dq", 0, 0])
            out.append(c)
            i += 1
        elif c == "#" and (i == 0 or script[i - 1] in " \t\n;&|()"):
            end = script.find("\n", i)
            end = n if end < 0 else end
            out.append(seg(script[i:end], "comment"))
            i = end
        elif script.startswith("$((", i) or (script.startswith("((", i)):
            width = 3 if c == "$" else 2
            stack.append(["arith", 0, 0])
            out.append(script[i:i + width])
            i += width
        elif script.startswith("$(", i):
            stack.append(["bare", 0, 0])
            out.append("$(")
            i += 2
        elif c == "(" and len(stack) > 1 and ctx == "bare":
            stack[-1][1] = int(str(stack[-1][1])) + 1
            out.append(c)
            i += 1
        elif ctx in ("bare", "bt") and (i == 0 or script[i - 1] in " \t\n;&|(") and \
                (word := _CASE_WORD.match(script, i)):
            cases = int(str(stack[-1][2]))
            stack[-1][2] = cases + 1 if word.group(1) == "case" else max(cases - 1, 0)
            out.append(word.group(1))
            i = word.end()
        elif c == ")" and len(stack) > 1 and ctx == "bare":
            if stack[-1][1] == 0 and stack[-1][2] != 0:
                pass  # the end of a case pattern
            elif stack[-1][1] == 0:
                stack.pop()
            else:
                stack[-1][1] = int(str(stack[-1][1])) - 1
            out.append(c)
            i += 1
        elif script.startswith("<<", i) and not script.startswith("<<<", i):
            m = _HEREDOC.match(script, i)
            if m:
                delim = m.group(2) if m.group(2) is not None else (
                    m.group(3) if m.group(3) is not None else m.group(4))
                quoted = m.group(4) is None or script[m.start(4) - 1] == "\\"
                heredocs.append((delim, m.group(1) == "-", quoted))
                out.append(m.group(0))
                i = m.end()
            else:
                out.append("<<")
                i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _segment(text: str, ctx: str, value_for: Callable[[str, str], str | None]) -> str:
    """A quoted, comment or here-document segment: references replaced for ``ctx``,
    everything else as written."""
    def one(m: re.Match[str]) -> str:
        form = value_for(m.group(1), ctx)
        return m.group(0) if form is None else form
    return REF.sub(one, text)


# ---------------------------------------------------------------------------- Python

_PY_STRING = re.compile(r"([rRbBuUfF]{0,2})('''|\"\"\"|'|\")")


def _py_escape(value: str, quote_char: str, fstring: bool) -> str:
    out = []
    for ch in value:
        if ch == "\\" or ch == quote_char:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        elif fstring and ch in "{}":
            out.append(ch * 2)
        else:
            out.append(ch)
    return "".join(out)


def render_python(script: str, lookup: Lookup,
                  types: Mapping[str, str] | None = None) -> str:
    """The author's Python ``script`` with each known reference as data: a string literal
    in code, escaped inside a string literal, ``repr`` in a comment. A bare reference to a
    param declared ``int``, ``float`` or ``bool`` (``types``) whose value is of that type
    becomes the number or ``True``/``False``, as DolphinScheduler's textual substitution
    gives ``n = ${n} + 1`` a number; any other value stays a string literal."""
    out: list[str] = []
    i, n = 0, len(script)

    def value(name: str) -> str | None:
        v = lookup(name)
        return None if v is None else _no_nul(name, v)

    while i < n:
        c = script[i]
        if c == "#":
            end = script.find("\n", i)
            end = n if end < 0 else end
            out.append(REF.sub(lambda m: m.group(0) if (v := value(m.group(1))) is None
                               else repr(v), script[i:end]))
            i = end
            continue
        m = _PY_STRING.match(script, i)
        if m and not (m.group(1) and i > 0 and (script[i - 1].isalnum() or
                                                  script[i - 1] == "_")):
            prefix, q = m.group(1), m.group(2)
            j = m.end()
            raw = "r" in prefix.lower()
            while j < n and not script.startswith(q, j):
                if script[j] == "\\":
                    j += 2
                elif len(q) == 1 and script[j] == "\n":
                    break
                else:
                    j += 1
            body = script[m.end():min(j, n)]
            lower = prefix.lower()

            def inside(mm: re.Match[str], lower: str = lower, q: str = q,
                       prefix: str = prefix, raw: bool = raw) -> str:
                v = value(mm.group(1))
                if v is None:
                    return mm.group(0)
                if raw or "b" in lower:
                    lit = repr(v.encode()) if "b" in lower else repr(v)
                    return f"{q} {lit} {prefix}{q}"
                return _py_escape(v, q[0], "f" in lower)

            out.append(prefix + q + REF.sub(inside, body))
            if j < n and script.startswith(q, j):
                out.append(q)
                j += len(q)
            i = j
            continue
        if c == "$":
            mref = REF.match(script, i)
            if mref:
                v = value(mref.group(1))
                out.append(mref.group(0) if v is None else
                           _py_literal(v, (types or {}).get(mref.group(1))))
                i = mref.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


_PY_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = {"true", "1", "yes", "t", "y", "on"}
_FALSE = {"false", "0", "no", "f", "n", "off"}


def _py_literal(value: str, ptype: str | None) -> str:
    """``value`` as Python code that evaluates to it: of its declared type when it is a
    valid one (digits, a finite float's ``repr``, ``True``/``False``: nothing else can be
    written), else a string literal."""
    text = value.strip()
    if ptype == "int" and _PY_INT.fullmatch(text):
        return str(int(text))
    if ptype == "float":
        try:
            f = float(text)
        except ValueError:
            return repr(value)
        if math.isfinite(f):
            return repr(f)
    if ptype == "bool" and text.lower() in _TRUE | _FALSE:
        return str(text.lower() in _TRUE)
    return repr(value)


# ---------------------------------------------------------------------------- SQL

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def bind_sql(statement: str, known: Callable[[str], bool]) -> tuple[str, list[str]]:
    """One statement with every known reference replaced by a placeholder ``$1, $2, ...``
    and the referenced names in placeholder order (each occurrence its own placeholder).

    As DolphinScheduler's ``SqlTask`` (``['"]*\\$\\{(.*?)\\}['"]*`` → ``?``), a reference
    that is a whole quoted literal (``'${day}'``) becomes the placeholder, quotes included;
    one inside a longer string literal becomes ``' || $n::text || '``. A reference in a
    comment stays as written; one inside a dollar-quoted body or a quoted identifier cannot
    be bound and raises :class:`RenderError`."""
    out: list[str] = []
    names: list[str] = []
    i, n = 0, len(statement)

    def placeholder(name: str) -> str:
        names.append(name)
        return f"${len(names)}"

    while i < n:
        c = statement[i]
        if c in "'\"":
            e_string = c == "'" and i > 0 and statement[i - 1] in "eE" and (
                i < 2 or not (statement[i - 2].isalnum() or statement[i - 2] == "_"))
            j = i + 1
            while j < n:
                if e_string and statement[j] == "\\":
                    j += 2
                    continue
                if statement[j] == c:
                    if j + 1 < n and statement[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            body = statement[i + 1:min(j, n)]
            whole = REF.fullmatch(body)
            if whole and known(whole.group(1)):
                if e_string:
                    out.pop()  # the E prefix
                out.append(placeholder(whole.group(1)))
            elif any(known(r) for r in REF.findall(body)):
                if c == '"':
                    raise RenderError(f"{_what(REF.findall(body)[0])} is inside a quoted "
                                      "identifier, which cannot be bound")
                reopen = "E'" if e_string else "'"

                def inside(m: re.Match[str], reopen: str = reopen) -> str:
                    if not known(m.group(1)):
                        return m.group(0)
                    return f"' || {placeholder(m.group(1))}::text || {reopen}"
                out.append("'" + REF.sub(inside, body) + ("'" if j < n else ""))
            else:
                out.append(statement[i:min(j + 1, n)])
            i = j + 1
            continue
        if statement.startswith("--", i):
            end = statement.find("\n", i)
            end = n if end < 0 else end
            out.append(statement[i:end])
            i = end
            continue
        if statement.startswith("/*", i):
            end = statement.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(statement[i:end])
            i = end
            continue
        if c == "$":
            mref = REF.match(statement, i)
            if mref:
                out.append(placeholder(mref.group(1)) if known(mref.group(1))
                           else mref.group(0))
                i = mref.end()
                continue
            mtag = _DOLLAR_TAG.match(statement, i)
            if mtag and (i == 0 or not (statement[i - 1].isalnum() or statement[i - 1] == "_")):
                end = statement.find(mtag.group(0), mtag.end())
                end = n if end < 0 else end + len(mtag.group(0))
                body = statement[i:end]
                bad = [r for r in REF.findall(body) if known(r)]
                if bad:
                    raise RenderError(f"{_what(bad[0])} is inside a dollar-quoted string, "
                                      "which cannot be bound")
                out.append(body)
                i = end
                continue
        out.append(c)
        i += 1
    return "".join(out), names


# ---------------------------------------------------------------------------- http

_JSON_SCALAR = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null")


def render_url(url: str, lookup: Lookup) -> str:
    """Each known reference percent-encoded as one component (``/``, ``?``, ``#``, ``@``,
    ``:`` included), so a value cannot change the scheme, host or path structure."""
    def one(m: re.Match[str]) -> str:
        v = lookup(m.group(1))
        return m.group(0) if v is None else quote(_no_nul(m.group(1), v), safe="")
    return REF.sub(one, url)


def render_header(value: str, lookup: Lookup) -> str:
    """A header value; a value holding a line break is refused (it would add a header)."""
    def one(m: re.Match[str]) -> str:
        v = lookup(m.group(1))
        if v is None:
            return m.group(0)
        if "\r" in v or "\n" in v or "\x00" in v:
            raise RenderError(f"{_what(m.group(1))} holds a line break or NUL, which a "
                              "header cannot hold")
        return v
    return REF.sub(one, value)


def render_body(body: str, lookup: Lookup, content_type: str = "") -> str:
    """A request body. JSON (by content type, or a body starting with ``{`` or ``[``): a
    reference inside a JSON string is JSON-escaped; outside one it is the value when that
    is a JSON number, boolean or null, else a JSON string. Form-encoded bodies get
    ``quote_plus``; any other body takes the value as it is (it is data to the server)."""
    ctype = content_type.lower()
    if "json" in ctype or (not ctype and body.lstrip()[:1] in ("{", "[")):
        return _render_json(body, lookup)
    if "x-www-form-urlencoded" in ctype:
        return REF.sub(lambda m: m.group(0) if (v := lookup(m.group(1))) is None
                       else quote_plus(v), body)
    return REF.sub(lambda m: m.group(0) if (v := lookup(m.group(1))) is None else v, body)


def _render_json(body: str, lookup: Lookup) -> str:
    out: list[str] = []
    i, n, in_string = 0, len(body), False
    while i < n:
        c = body[i]
        if c == "$":
            m = REF.match(body, i)
            if m:
                v = lookup(m.group(1))
                if v is None:
                    out.append(m.group(0))
                elif in_string:
                    out.append(json.dumps(v)[1:-1])
                else:
                    out.append(v if _JSON_SCALAR.fullmatch(v) else json.dumps(v))
                i = m.end()
                continue
        if in_string and c == "\\":
            out.append(body[i:i + 2])
            i += 2
            continue
        if c == '"':
            in_string = not in_string
        out.append(c)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------------------- tasks

def render_args(value: object, lookup: Lookup, whole: Callable[[str], object]) -> object:
    """A function task's argument: a string that is exactly one known reference takes
    ``whole(name)`` (the param's JSON value); other strings get values as text (they are
    keyword arguments, data already); lists and mappings are rendered inside."""
    if isinstance(value, str):
        m = REF.fullmatch(value)
        if m and lookup(m.group(1)) is not None:
            return whole(m.group(1))
        return REF.sub(lambda mm: mm.group(0) if (v := lookup(mm.group(1))) is None else v,
                       value)
    if isinstance(value, dict):
        return {k: render_args(v, lookup, whole) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_args(v, lookup, whole) for v in value]
    return value


def render_env(env: dict[str, str], lookup: Lookup) -> dict[str, str]:
    """Environment values take values as they are (the environment is data)."""
    return {k: REF.sub(lambda m: m.group(0) if (x := lookup(m.group(1))) is None
                       else _no_nul(m.group(1), x), v) for k, v in env.items()}


def template_texts(task_type: str, spec: dict[str, object]) -> list[str]:
    """Every text of a dispatched task's templates (to find the secrets it uses)."""
    texts: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, str):
            texts.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)
    for key in ("template", "sql", "url", "headers", "body", "args_template", "env_template"):
        if key in spec:
            walk(spec[key])
    return texts
