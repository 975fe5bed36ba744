"""sql and http tasks: run inside the worker's event loop, no subprocess.

Each is a coroutine given the dispatch's expanded ``spec`` and a ``say`` callback that
writes log lines (stamped and shipped like a shell task's output). Cancelling the
coroutine is how such an attempt is killed. Failures come back as an :class:`Outcome`
whose ``error`` names the cause: the database's message, the unreachable host, the
unexpected status, the JSON path that matched nothing.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.parser import parse as jsonpath

from shoal.core.sqlsplit import split_sql
from shoal_worker.executor import Outcome, Say
from shoal_worker.prepare import shown_name

_SHOWN_ROWS = 20
_SHOWN_BODY = 64 * 1024


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)


_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "char", "name", "unknown", "json",
                         "jsonb", "xml", "citext"})
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def to_pg(value: str, type_name: str) -> Any:
    """A param's text as the Python value asyncpg sends for a placeholder of PostgreSQL
    type ``type_name`` (as the server inferred it for the prepared statement)."""
    v = value.strip()
    try:
        match type_name:
            case t if t in _TEXT_TYPES:
                return value
            case "int2" | "int4" | "int8" | "oid":
                return int(v)
            case "float4" | "float8":
                return float(v)
            case "numeric":
                return decimal.Decimal(v)
            case "bool":
                if v.lower() in _TRUE | _FALSE:
                    return v.lower() in _TRUE
                raise ValueError("not a boolean")
            case "date":
                return datetime.date.fromisoformat(v)
            case "timestamp":
                return datetime.datetime.fromisoformat(v)
            case "timestamptz":
                stamp = datetime.datetime.fromisoformat(v)
                return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)
            case "time":
                return datetime.time.fromisoformat(v)
            case "uuid":
                return uuid.UUID(v)
    except (ValueError, decimal.InvalidOperation) as exc:
        raise ValueError(f"{value!r} is not a valid {type_name} ({exc})") from None
    raise ValueError(f"a placeholder of type {type_name} takes no text value (cast it in the "
                     f"SQL, e.g. ${{name}}::text::{type_name})")


async def run_sql(spec: Mapping[str, Any], outputs: Sequence[str], say: Say,
                  datasources: Mapping[str, str]) -> Outcome:
    """Run the statements in one transaction; the first row of the last statement that
    returned rows gives the declared outputs (by column name)."""
    name = spec["datasource"]
    url = datasources.get(name)
    if url is None:
        return await _fail(say, f"unknown datasource '{name}' (configured: "
                                f"{', '.join(sorted(datasources)) or 'none'})")
    kind = urlsplit(url).scheme.split("+")[0]
    if kind not in ("postgres", "postgresql"):
        return await _fail(say, f"unsupported datasource kind '{kind}' for '{name}' "
                                "(supported: postgresql)")
    # Split on the author's text, then each statement's params bound (prepare.py): a value
    # can neither add a statement nor become SQL.
    bound: list[Mapping[str, Any]] = spec.get("statements") or [
        {"sql": s, "names": [], "args": []} for s in split_sql(spec["sql"])]
    statements = [b["sql"] for b in bound]
    if not statements:
        return await _fail(say, "no SQL statement to run")
    try:
        conn = await asyncpg.connect(url, timeout=30)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return await _fail(say, f"cannot connect to datasource '{name}': "
                                f"{type(exc).__name__}: {exc}")
    last: list[asyncpg.Record] | None = None
    try:
        async with conn.transaction():
            for i, sql in enumerate(statements, 1):
                await say(f"[{i}/{len(statements)}] {sql}")
                names = list(bound[i - 1]["names"])
                if names:
                    await say("  bound: " + ", ".join(
                        f"${j} = {shown_name(n)}" for j, n in enumerate(names, 1)))
                try:
                    stmt = await conn.prepare(sql)
                    args = []
                    for name, value, ptype in zip(names, bound[i - 1]["args"],
                                                  stmt.get_parameters(), strict=True):
                        try:
                            args.append(to_pg(str(value), ptype.name))
                        except ValueError as exc:
                            return await _fail(say, f"statement {i}: {shown_name(name)} "
                                                    f"cannot be bound: {exc}")
                    rows = await stmt.fetch(*args)
                except asyncpg.PostgresError as exc:
                    detail = f" ({exc.detail})" if getattr(exc, "detail", None) else ""
                    return await _fail(say, f"statement {i} failed: {type(exc).__name__}: "
                                            f"{exc}{detail}")
                await say(f"  -> {stmt.get_statusmsg()}")
                if stmt.get_attributes():
                    last = rows
                    for r in rows[:_SHOWN_ROWS]:
                        await say("  " + json.dumps({k: _text(v) for k, v in r.items()}))
                    if len(rows) > _SHOWN_ROWS:
                        await say(f"  ... {len(rows) - _SHOWN_ROWS} more rows")
    finally:
        await conn.close()
    found: dict[str, str] = {}
    if outputs:
        if not last:
            return await _fail(say, f"outputs {', '.join(outputs)} need a row, but the last "
                                    "query returned none")
        first = last[0]
        columns = list(first.keys())
        missing = [o for o in outputs if o not in columns]
        if missing:
            return await _fail(say, f"outputs {', '.join(missing)} are not columns of the "
                                    f"last query (columns: {', '.join(first.keys())})")
        found = {o: _text(first[o]) for o in outputs}
        await say(f"outputs: {json.dumps(found)}")
    return Outcome(exit_code=0, outputs=found)


async def run_http(spec: Mapping[str, Any], say: Say, request_timeout: float) -> Outcome:
    """Send the request; the status must be expected; outputs are JSON paths into the
    response body."""
    method, url = spec["method"], spec["url"]
    await say(f"{method} {url}")
    try:
        async with httpx.AsyncClient(timeout=request_timeout, follow_redirects=True) as client:
            resp = await client.request(method, url, headers=dict(spec.get("headers") or {}),
                                        content=spec.get("body") or None)
    except httpx.HTTPError as exc:
        return await _fail(say, f"request failed: {type(exc).__name__}: {exc or 'no detail'}")
    body = resp.text
    await say(f"-> {resp.status_code} {resp.reason_phrase}")
    await say(body[:_SHOWN_BODY] + (" ..." if len(body) > _SHOWN_BODY else ""))
    expected = spec.get("expected_status") or [200]
    if resp.status_code not in expected:
        return await _fail(say, f"unexpected status {resp.status_code} (expected "
                                f"{', '.join(map(str, expected))})")
    paths: Mapping[str, str] = spec.get("output_paths") or {}
    found: dict[str, str] = {}
    if paths:
        try:
            doc = resp.json()
        except ValueError:
            return await _fail(say, "the response is not JSON, so outputs "
                                    f"{', '.join(paths)} cannot be read from it")
        for name, path in paths.items():
            try:
                matches = jsonpath(path).find(doc)
            except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # noqa: BLE001 - the library raises plain Exceptions too
                return await _fail(say, f"output '{name}': bad JSON path {path!r}: {exc}")
            if not matches:
                return await _fail(say, f"output '{name}': JSON path {path!r} matched nothing")
            found[name] = _text(matches[0].value)
        await say(f"outputs: {json.dumps(found)}")
    return Outcome(exit_code=0, outputs=found)


async def _fail(say: Say, error: str) -> Outcome:
    await say(f"ERROR: {error}")
    return Outcome(exit_code=1, error=error)
