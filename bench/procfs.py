"""What the benchmarks read of processes from ``/proc`` (Linux): CPU ticks, memory, family."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


def stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _live() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                yield int(entry.name), stat(int(entry.name))


def cpu_ticks(pid: int) -> int:
    """User plus system CPU ticks of one process."""
    f = stat(pid)
    return int(f[11]) + int(f[12])


def children(pid: int) -> list[int]:
    return [p for p, f in _live() if int(f[1]) == pid]


def group_ticks(pgid: int) -> int:
    """CPU ticks of every live process in a process group."""
    return sum(int(f[11]) + int(f[12]) for _, f in _live() if int(f[2]) == pgid)


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return round(status_kb(pid, "VmRSS") / 1024, 1)


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages counted once across the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
