"""Parameter expansion and the var pool.

``${name}`` in a task's command is replaced by the parameter's value when the task is
dispatched (so the event log records exactly what ran). A name that is not a known
parameter is left untouched: in a shell task ``${HOME}`` still means the environment
variable, as in DolphinScheduler. Tasks publish outputs by printing
``${setValue(name=value)}`` on stdout; declared outputs enter the var pool of their
descendants.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
MAX_OUTPUT_LINES = 1024          # DolphinScheduler's maxOneParameterRows
MAX_OUTPUT_BYTES = 64 * 1024


def expand(text: str, params: Mapping[str, str]) -> str:
    """Replace every ``${name}`` whose name is in ``params``; leave the rest as written."""
    return _REF.sub(lambda m: params.get(m.group(1), m.group(0)), text)


def whole_reference(text: str) -> str | None:
    """The name when ``text`` is exactly one ``${name}``, else None."""
    m = _REF.fullmatch(text)
    return m.group(1) if m else None


def json_value(text: str) -> Any:
    """A var-pool value (always text) as the JSON value it spells: ``"42"`` is 42,
    ``"true"`` is True, ``'{"a": 1}'`` a dict; text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def output_text(value: Any) -> str:
    """How a function task's returned value enters the var pool: strings as they are,
    everything else as JSON (so ``json_value`` gives it back)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def references(text: str) -> set[str]:
    """The parameter names ``text`` refers to as ``${name}``."""
    return set(_REF.findall(text))


class OutputParser:
    """DolphinScheduler's ``${setValue(k=v)}`` / ``#{setValue(k=v)}`` reader, fed line by
    line: a value may span lines until ``)}``; several markers may share a line; the last
    value of a name wins. Only declared names are kept; a declared value larger than the
    cap (:data:`MAX_OUTPUT_LINES` lines or :data:`MAX_OUTPUT_BYTES` bytes) is dropped and
    named in ``errors`` (the task then fails saying so)."""

    def __init__(self, declared: Iterable[str]) -> None:
        self.wanted = set(declared)
        self.outputs: dict[str, str] = {}
        self.errors: list[str] = []
        self._open: list[str] | None = None
        self._size = 0
        self._over = False

    def feed(self, line: str) -> None:
        while True:
            if self._open is None:
                starts = [i for i in (line.find("${setValue("), line.find("#{setValue("))
                          if i >= 0]
                if not starts:
                    return
                line = line[min(starts) + len("${setValue("):]
                self._open, self._size, self._over = [], 0, False
            end = line.find(")}")
            part = line if end < 0 else line[:end]
            self._size += len(part.encode())
            if len(self._open) >= MAX_OUTPUT_LINES or self._size > MAX_OUTPUT_BYTES:
                self._over = True
            elif not self._over:
                self._open.append(part)
            if end < 0:
                return
            self._close("\n".join(self._open))
            line = line[end + 2:]

    def _close(self, text: str) -> None:
        self._open = None
        key, eq, value = text.partition("=")
        key = key.strip()
        if not eq or key not in self.wanted:
            return
        if self._over:
            self.outputs.pop(key, None)
            self.errors.append(f"output '{key}' is larger than the cap ({MAX_OUTPUT_LINES} "
                               f"lines or {MAX_OUTPUT_BYTES} bytes)")
        else:
            self.outputs[key] = value.strip()


def parse_outputs(lines: Iterable[str], declared: Iterable[str]) -> dict[str, str]:
    """The declared outputs ``lines`` set (see :class:`OutputParser`)."""
    parser = OutputParser(declared)
    for line in lines:
        parser.feed(line)
    return parser.outputs
