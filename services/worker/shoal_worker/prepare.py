"""What an attempt runs: its text rendered from the dispatched templates, its secrets
resolved, its environment built from an allow-list.

The orchestrator dispatches a task's text as the author wrote it (``$[...]`` evaluated)
with the values of the params it refers to. Here, on the worker, each template is rendered
once (:mod:`shoal.core.render`): param values and ``${secret.NAME}`` values go in as data
for their context. Secrets come from this worker's ``SHOAL_SECRET_<NAME>`` variables or
the file ``NAME`` under ``SHOAL_SECRETS_DIR`` and exist only here, in the attempt's memory
and process; the log, outputs and error of the attempt have them replaced by ``***``.

A task process gets only :data:`ALLOWED` and ``LC_*`` from the worker's environment, the
variables named in ``SHOAL_TASK_ENV_PASS``, the attempt's own ``SHOAL_*`` variables and
the task's ``env``: never a token, a database URL or another ``SHOAL_*`` of the worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.core.params import json_value
from shoal.core.render import (
    SECRET_NAME,
    SECRET_PREFIX,
    bind_sql,
    render_args,
    render_body,
    render_env,
    render_header,
    render_python,
    render_shell,
    render_url,
    secret_names,
    template_texts,
)
from shoal.core.sqlsplit import split_sql

ALLOWED = ("PATH", "HOME", "LANG", "TZ")
PASS_VAR = "SHOAL_TASK_ENV_PASS"  # noqa: S105 - a variable name
MASK = "***"


def task_env(worker_env: Mapping[str, str], task_env_vars: Mapping[str, str],
             attempt_vars: Mapping[str, str]) -> dict[str, str]:
    """The environment of a task process: PATH, HOME, LANG, LC_*, TZ and the names listed
    in SHOAL_TASK_ENV_PASS (never a ``SHOAL_*`` one) from the worker's, then the task's
    ``env``, then the attempt's own SHOAL_* variables (which the task cannot replace)."""
    passed = {n.strip() for n in worker_env.get(PASS_VAR, "").split(",") if n.strip()}
    env = {k: v for k, v in worker_env.items()
           if k in ALLOWED or k.startswith("LC_")
           or (k in passed and not k.startswith("SHOAL_"))}
    return {**env, **task_env_vars, **attempt_vars}


def hide_environment() -> bool:
    """Keep this worker's credentials from the tasks it starts. A task cannot inherit them
    (:func:`task_env`), but it could read its parent's ``/proc/PID/environ``: the values
    of the worker's credentials (:func:`_credential`: ``SHOAL_*``, ``PG*`` and names
    holding TOKEN, SECRET, PASSWORD, KEY or CREDENTIAL) are overwritten with ``*`` in the
    process's original environment block (Python's ``os.environ`` is a copy made at
    start and keeps them; C libraries reading their own variables, such as OpenSSL's
    ``SSL_CERT_FILE``, are left alone), and the process is made non-dumpable (Linux
    ``PR_SET_DUMPABLE`` 0), so a task of the same user cannot read its memory either.
    A task's own process is dumpable again once it executes a program. False where this
    is not available (not Linux)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        keep = set(task_env(os.environ, {}, {}))
        array = ctypes.c_void_p.in_dll(libc, "environ").value
        if array:
            entries = ctypes.cast(array, ctypes.POINTER(ctypes.c_void_p))
            i = 0
            while (addr := entries[i]) is not None:
                text = ctypes.string_at(addr)
                name, eq, value = text.partition(b"=")
                key = name.decode(errors="replace")
                if eq and value and key not in keep and _credential(key):
                    ctypes.memset(addr + len(name) + 1, ord("*"), len(value))
                i += 1
        return int(libc.prctl(4, 0, 0, 0, 0)) == 0  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError, ValueError):
        return False


_CREDENTIAL = re.compile(r"SHOAL_|PG|.*(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL)",
                         re.IGNORECASE)


def _credential(name: str) -> bool:
    return bool(_CREDENTIAL.match(name))


class SecretMissing(Exception):
    """A referenced secret has no value on this worker."""


class Secrets:
    """Where this worker finds secrets: ``SHOAL_SECRET_<NAME>``, else the file ``NAME``
    under ``SHOAL_SECRETS_DIR`` (one trailing newline dropped)."""

    def __init__(self, worker_env: Mapping[str, str]) -> None:
        self.env = worker_env
        self.dir = worker_env.get("SHOAL_SECRETS_DIR") or None

    def get(self, name: str) -> str | None:
        if not SECRET_NAME.fullmatch(name):
            return None
        value = self.env.get(f"SHOAL_SECRET_{name}")
        if value is None and self.dir:
            path = Path(self.dir) / name
            try:
                value = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
            value = value[:-1] if value.endswith("\n") else value
        return value


@dataclass(slots=True)
class Prepared:
    """The rendered dispatch (``command``, ``spec``, ``env``) and its secret values."""

    dispatch: dict[str, Any]
    secrets: list[str] = field(default_factory=list)

    def mask(self, text: str) -> str:
        return mask(text, self.secrets)


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value (and every line of a multi-line one) as ``***``."""
    for s in sorted(_mask_parts(secrets), key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


def _mask_parts(secrets: list[str]) -> set[str]:
    parts: set[str] = set()
    for s in secrets:
        if s:
            parts.add(s)
            if "\n" in s:
                parts |= {ln for ln in (x.strip() for x in s.split("\n")) if len(ln) >= 4}
    return parts


def prepare(d: Mapping[str, Any], secrets: Secrets) -> Prepared:
    """Render a dispatch; raises :class:`SecretMissing` or :class:`RenderError` naming the
    secret or param. A dispatch without templates (from before templates) runs as sent."""
    spec: dict[str, Any] = dict(d.get("spec") or {})
    out = dict(d)
    if "values" not in spec:
        return Prepared(out)
    values: Mapping[str, str] = spec["values"]
    wanted = sorted({n for t in template_texts(str(d["task_type"]), spec)
                     for n in secret_names(t)})
    found = {n: secrets.get(n) for n in wanted}
    missing = [n for n, v in found.items() if v is None]
    if missing:
        raise SecretMissing(f"secret(s) {', '.join(missing)} not found on this worker "
                            "(SHOAL_SECRET_<NAME> or a file under SHOAL_SECRETS_DIR)")

    def lookup(name: str) -> str | None:
        if name.startswith(SECRET_PREFIX):
            return found.get(name[len(SECRET_PREFIX):])
        return values.get(name)

    def whole(name: str) -> object:
        v = lookup(name)
        return v if name.startswith(SECRET_PREFIX) else json_value(v or "")

    ttype = d["task_type"]
    if "template" in spec:
        out["command"] = (render_shell(spec["template"], lookup) if ttype == "shell" else
                          render_python(spec["template"], lookup, spec.get("types")))
    elif ttype == "sql":
        statements = []
        for stmt in split_sql(spec["sql"]):
            sql, names = bind_sql(stmt, lambda n: lookup(n) is not None)
            statements.append({"sql": sql, "names": names,
                               "args": [lookup(n) for n in names]})
        spec["statements"] = statements
    elif ttype == "http":
        headers = {k: render_header(v, lookup) for k, v in spec["headers"].items()}
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        spec |= {"url": render_url(spec["url"], lookup), "headers": headers,
                 "body": render_body(spec["body"], lookup, ctype)}
    elif "args_template" in spec:
        spec["args"] = render_args(spec["args_template"], lookup, whole)
    if "env_template" in spec:
        out["env"] = render_env(spec["env_template"], lookup)
    out["spec"] = spec
    return Prepared(out, [v for v in found.values() if v])


def shown_name(name: str) -> str:
    """How a bound placeholder's name is shown in the log."""
    return f"secret {name[len(SECRET_PREFIX):]}" if name.startswith(SECRET_PREFIX) else name

