"""The core must stay pure: no clock, no randomness, no I/O libraries."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "libs" / "shoal" / "core"
BANNED_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("time", "time"),
                ("time", "monotonic"), ("uuid", "uuid4"), ("uuid", "uuid1"), ("os", "urandom")}
BANNED_MODULES = {"random", "asyncio", "aiokafka", "asyncpg", "fastapi", "orjson", "faust",
                  "httpx", "socket", "subprocess", "secrets", "shoal.infra"}


def test_core_has_no_clock_randomness_or_io():
    offences = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in BANNED_CALLS):
                offences.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for m in mods:
                if any(m == b or m.startswith(b + ".") for b in BANNED_MODULES):
                    offences.append(f"{path.name}:{node.lineno} import {m}")
    assert offences == []
    assert list(CORE.rglob("*.py")), "the core was not found"
