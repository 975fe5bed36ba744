"""Online migrations on a large log (`make bench BENCH=migrations`).

A database is built at the previous release's schema (the migration files of git
revision ``BENCH_MIGRATIONS_BASE``, default 328c9b8: 001-013), filled with realistic
histories written through the store (a 1,000-task chain, a run rerun to ≥ 10,000 events,
200 short chains with start reports and reruns), copied under new instance ids until the
log holds ``BENCH_MIGRATIONS_EVENTS`` events (1,000,000), vacuumed and analyzed. Then this
tree's pending migrations (the files whose version the base does not have; plus any
``BENCH_MIGRATIONS_EXTRA`` files, comma-separated paths, to try a candidate) are applied
one by one with :func:`shoal.infra.db.migrate_report`, while an appender commits a
3-event batch with an outbox row through ``EventStore.commit`` every 10 ms, and a sampler
reads every 2 ms the table locks the migrating backend holds. With
``BENCH_MIGRATIONS_READER_S`` (seconds), each migration starts while a transaction that
read shoal.events stays open that long: the migration must wait for it, and the figures
show what the lock timeout makes of that wait.

For each migration it prints: the duration (first attempt to commit), the attempts (an
attempt that waited longer than the lock timeout for a lock is rolled back and retried),
the longest relation lock seen held (table and mode; sampled, so a hold shorter than the
sampling period may be seen as 0 or missed, hence also the successful attempt's duration:
for a transactional migration, an upper bound on every lock it held), and the longest
append (commit start to end) overlapping it. An append stall over 1 s is printed as such.
Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.log_bench import _long_history, _store, grow
from shoal.infra.db import (
    APPLICATION_NAME,
    lock_timeout_ms,
    migrate,
    migrate_report,
    migration_files,
)
from shoal.infra.store import Append, EventStore, OutboxRow

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = "libs/shoal/infra/migrations"
STALL_LIMIT_S = 1.0
# Lock modes that conflict with what an append takes (EXCLUSIVE on shoal.events, ROW
# EXCLUSIVE on the tables it writes): ACCESS SHARE and ROW SHARE never hold one up.
STRONG = ("RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
          "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")


def base_migrations(rev: str) -> list[tuple[int, str, str]]:
    """The migration files of git revision ``rev``: (version, name, sql), in order."""
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:{MIGRATIONS}"],
        check=True, capture_output=True, text=True).stdout.split()
    out = []
    for name in names:
        if name.endswith(".sql"):
            sql = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{MIGRATIONS}/{name}"],
                                 check=True, capture_output=True, text=True).stdout
            out.append((int(name.split("_", 1)[0]), name, sql))
    return sorted(out)


def pending_migrations(base: list[tuple[int, str, str]],
                       extra: list[Path]) -> list[tuple[int, str, str]]:
    have = {v for v, _, _ in base}
    out = [f for f in migration_files() if f[0] not in have]
    last = max([v for v, _, _ in base + out], default=0)
    for i, path in enumerate(extra, 1):
        out.append((last + i, f"{last + i:03d}_{path.name}", path.read_text()))
    return out


def previous_store(rev: str) -> Any:
    """The append path of release ``rev`` (its ``shoal/infra/store.py``, loaded from the
    repository's history beside this tree's core): what keeps appending, in the previous
    release's shape, while the new release's first service migrates the database."""
    name = f"shoal_store_{rev}"
    if name not in sys.modules:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:libs/shoal/infra/store.py"],
                             check=True, capture_output=True, text=True).stdout
        module = types.ModuleType(name)
        sys.modules[name] = module  # dataclasses look their module up
        exec(compile(src, f"{rev}:libs/shoal/infra/store.py", "exec"), module.__dict__)
    return sys.modules[name]


async def fill(pool: asyncpg.Pool, total: int, base: str) -> dict[str, object]:
    """Histories written through the previous release's store, then copied until the
    log holds ``total``."""
    store = previous_store(base).EventStore(pool)
    t0 = time.monotonic()
    await _store(store, _long_history(1000), every=100)
    await _store(store, _long_history(1000, min_events=10_000), every=100)
    short, rerun = _long_history(8, min_events=40), _long_history(8)
    for i in range(200):
        await _store(store, rerun if i % 4 == 0 else short, every=100)
    template = await pool.fetchval("SELECT count(*) FROM shoal.events")
    events = await grow(pool, total, streams=True)
    filled_s = time.monotonic() - t0
    t0 = time.monotonic()
    await pool.execute("VACUUM ANALYZE")
    return {"events": events, "template_events": template,
            "instances": await pool.fetchval("SELECT count(*) FROM shoal.streams"),
            "fill_s": round(filled_s, 1), "vacuum_analyze_s": round(time.monotonic() - t0, 1),
            "events_size_mb": round(await pool.fetchval(
                "SELECT pg_total_relation_size('shoal.events')") / 2**20)}


@dataclass
class Appender:
    """Commits a run's first batch (its submission, start and first dispatch, with an
    outbox row) through the real append path every ``pace`` seconds; keeps each commit's
    (start, end) on the loop's clock."""

    store: EventStore
    pace: float = 0.01
    commits: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        events = _long_history(3)[0]  # a run's first batch: submitted, started, dispatched
        while not self.stop.is_set():
            iid = str(uuid.uuid4())
            t0 = loop.time()
            try:
                await self.store.commit([Append(iid, 1, events, str(uuid.uuid4()), 0,
                                                "running")],
                                        [OutboxRow("bench.tasks", iid.encode(), b"{}")])
            except Exception as exc:  # a failed append is a figure here
                self.errors.append(repr(exc))
            self.commits.append((t0, loop.time()))
            await asyncio.sleep(self.pace)

    def during(self, start: float, end: float) -> dict[str, object]:
        spans = [(a, b) for a, b in self.commits if b >= start and a <= end]
        longest = max((b - a for a, b in spans), default=0.0)
        return {"appends": len(spans), "longest_append_ms": round(longest * 1000, 1)}


@dataclass
class LockSampler:
    """Polls pg_locks for the table locks held by the migrating backend(s) (not those on
    indexes, which no append waits for)."""

    pool: asyncpg.Pool
    period: float = 0.002
    held: dict[tuple[str, str], float] = field(default_factory=dict)  # since when
    longest: dict[tuple[str, str], float] = field(default_factory=dict)
    samples: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        async with self.pool.acquire() as conn:
            query = await conn.prepare(
                "SELECT l.relation::regclass::text AS rel, l.mode FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE a.application_name = $1 "
                "AND l.locktype = 'relation' AND l.granted AND l.mode = ANY($2::text[]) "
                "AND l.relation IN (SELECT c.oid FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname LIKE 'shoal%' "
                "AND c.relkind IN ('r', 'p'))")
            while not stop.is_set():
                now = loop.time()
                seen = {(r["rel"], r["mode"]) for r in
                        await query.fetch(APPLICATION_NAME, list(STRONG))}
                self.samples += 1
                for key in seen:
                    since = self.held.setdefault(key, now)
                    self.longest[key] = max(self.longest.get(key, 0.0), now - since)
                for key in set(self.held) - seen:
                    del self.held[key]
                await asyncio.sleep(self.period)

    def report(self) -> dict[str, object]:
        if not self.longest:
            return {"longest_lock": None, "longest_lock_ms": 0.0}
        (rel, mode), span = max(self.longest.items(), key=lambda kv: kv[1])
        return {"longest_lock": f"{mode} on {rel}", "longest_lock_ms": round(span * 1000, 1),
                "locks": {f"{m} on {r}": round(s * 1000, 1)
                          for (r, m), s in sorted(self.longest.items())}}


async def long_reader(db: str, seconds: float, held: asyncio.Event) -> None:
    """A transaction that read shoal.events (ACCESS SHARE, as a long report or a
    ``pg_dump`` holds it) and stays open for ``seconds``."""
    conn = await asyncpg.connect(db)
    try:
        async with conn.transaction():
            await conn.fetchval("SELECT count(*) FROM shoal.events WHERE global_position < 100")
            held.set()
            await asyncio.sleep(seconds)
    finally:
        await conn.close()


async def bench_migrations(admin_url: str) -> dict[str, object]:
    rev = os.environ.get("BENCH_MIGRATIONS_BASE", "328c9b8")
    total = int(os.environ.get("BENCH_MIGRATIONS_EVENTS", "1000000"))
    reader_s = float(os.environ.get("BENCH_MIGRATIONS_READER_S", "0"))
    extra = [Path(p) for p in os.environ.get("BENCH_MIGRATIONS_EXTRA", "").split(",") if p]
    base = base_migrations(rev)
    pending = pending_migrations(base, extra)
    name = f"shoal_bench_mig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = admin_url.rpartition("/")[0] + "/" + name
    out: dict[str, Any] = {"base": rev, "base_migrations": f"{base[0][1]} .. {base[-1][1]}",
                           "lock_timeout_ms": lock_timeout_ms(), "reader_s": reader_s,
                           "migrations": []}
    try:
        await migrate(db, migrations=base)
        pool = await asyncpg.create_pool(db, min_size=2, max_size=6)
        assert pool is not None
        try:
            out["log"] = await fill(pool, total, rev)
            if os.environ.get("BENCH_MIGRATIONS_APPENDER", "previous") == "current":
                # This release appends: its own migrations are in, only the extra ones
                # (candidates for a later release) are measured.
                ours = migration_files()
                await migrate(db, migrations=[f for f in pending if f in ours])
                pending = [f for f in pending if f not in ours]
            print(f"log at {rev}'s schema: {out['log']}", file=sys.stderr)
            # Who appends while the migrations run: the previous release (a rolling
            # upgrade's first service migrating), or this one (a later migration).
            current = os.environ.get("BENCH_MIGRATIONS_APPENDER", "previous") == "current"
            appender = Appender(EventStore(pool) if current
                                else previous_store(rev).EventStore(pool))
            out["appender"] = "current" if current else rev
            task = asyncio.create_task(appender.run())
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.sleep(2.0)
            out["baseline"] = appender.during(t0, loop.time())
            for i, (_, mig, _) in enumerate(pending):
                sampler, stop = LockSampler(pool), asyncio.Event()
                sampling = asyncio.create_task(sampler.run(stop))
                reading = None
                if reader_s:
                    held = asyncio.Event()
                    reading = asyncio.create_task(long_reader(db, reader_s, held))
                    await held.wait()
                await asyncio.sleep(0.05)
                start = loop.time()
                done = await migrate_report(db, migrations=base + pending[:i + 1])
                end = loop.time()
                stop.set()
                await sampling
                if reading is not None:
                    await reading
                row: dict[str, Any] = {"migration": mig}
                if done:
                    a = done[0]
                    row.update(seconds=round(a.seconds, 3), attempts=a.attempts,
                               last_attempt_ms=round(a.last_attempt_seconds * 1000, 1),
                               transactional=a.transactional)
                row.update(sampler.report())
                row.update(appender.during(start, end))
                row["append_stall_over_1s"] = row["longest_append_ms"] > STALL_LIMIT_S * 1000
                out["migrations"].append(row)
                await asyncio.sleep(1.0)
            appender.stop.set()
            await task
            out["append_errors"] = appender.errors[:5]
            out["events_after"] = await pool.fetchval("SELECT count(*) FROM shoal.events")
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(migrations_table(out))
    return out


def migrations_table(out: dict[str, Any]) -> str:
    log = out.get("log", {})
    lines = [f"Online migrations: {log.get('events', 0):,} events "
             f"({log.get('instances', 0):,} instances, {log.get('events_size_mb')} MB) at "
             f"{out['base']}'s schema ({out['base_migrations']}), lock timeout "
             f"{out['lock_timeout_ms']} ms"
             + (f", each migration started behind a {out['reader_s']} s reader of shoal.events"
                if out.get("reader_s") else "")
             + f"; appends without a migration: longest "
             f"{out.get('baseline', {}).get('longest_append_ms')} ms",
             "| migration | duration | attempts | longest lock seen (sampled) | successful "
             "attempt | appends during | longest append |", "|---|---|---|---|---|---|---|"]
    for r in out["migrations"]:
        lock = ("none seen" if not r.get("longest_lock") else
                f"{r['longest_lock']}: one sample (< 2 ms)" if not r["longest_lock_ms"] else
                f"{r['longest_lock']}: {r['longest_lock_ms']} ms")
        stall = f"{r['longest_append_ms']} ms"
        if r["append_stall_over_1s"]:
            stall += " — APPENDS STALLED OVER 1 s"
        lines.append(f"| {r['migration']} | {r.get('seconds')} s | {r.get('attempts')} | {lock} "
                     f"| {r.get('last_attempt_ms')} ms | {r['appends']} | {stall} |")
    if not out["migrations"]:
        lines.append("| (no pending migration) | | | | | | |")
    if out.get("append_errors"):
        lines.append(f"append errors: {out['append_errors']}")
    return "\n".join(lines)


if __name__ == "__main__":
    admin_url = os.environ.get("SHOAL_DATABASE_URL",
                               "postgresql://postgres@127.0.0.1:5432/postgres")
    print(asyncio.run(bench_migrations(admin_url)))
