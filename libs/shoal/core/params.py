"""Parameter expansion and the var pool.

``${name}`` in a task's command is replaced by the parameter's value when the task is
dispatched (so the event log records exactly what ran). A name that is not a known
parameter is left untouched: in a shell task ``${HOME}`` still means the environment
variable, as in DolphinScheduler. Tasks publish outputs by printing
``${setValue(name=value)}`` on stdout; declared outputs enter the var pool of their
descendants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_SET_VALUE = re.compile(r"\$\{setValue\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*?)\)\}")


def expand(text: str, params: Mapping[str, str]) -> str:
    """Replace every ``${name}`` whose name is in ``params``; leave the rest as written."""
    return _REF.sub(lambda m: params.get(m.group(1), m.group(0)), text)


def parse_outputs(lines: Iterable[str], declared: Iterable[str]) -> dict[str, str]:
    """Collect ``${setValue(k=v)}`` values for declared names; the last value wins."""
    wanted = set(declared)
    found: dict[str, str] = {}
    for line in lines:
        for m in _SET_VALUE.finditer(line):
            key, value = m.group(1), m.group(2).strip()
            if key in wanted:
                found[key] = value
    return found
