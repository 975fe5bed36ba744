"""Small functions for the example workflows' Python function tasks."""

from __future__ import annotations

import asyncio


def fibo(n: int) -> dict[str, int]:
    """The n-th Fibonacci number, computed naively (as Windmill's benchmark does)."""
    def f(k: int) -> int:
        return k if k < 2 else f(k - 1) + f(k - 2)
    return {"value": f(n)}


def total(rows: int, value: int) -> dict[str, int]:
    print(f"rows={rows} value={value}")
    return {"total": rows + value}


async def report(total: int, label: str) -> dict[str, str]:
    await asyncio.sleep(0.1)  # an async def task: awaited in its own event loop
    return {"line": f"{label}: {total}"}
