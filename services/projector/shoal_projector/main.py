"""Projector entry point: follows the log, woken by NOTIFY, with a polling fallback."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from shoal.infra import checker, codec, kafka, metrics, policy
from shoal.infra.db import DB_ERRORS, connect_pool, migrate, until_available
from shoal.infra.health import Health
from shoal.infra.lifecycle import run_service, setup_logging
from shoal.infra.settings import Settings
from shoal.infra.store import COMMITTED, StoredEvent
from shoal_projector.alerts import Deliverer, Recorder
from shoal_projector.observe import Observer, gauges
from shoal_projector.projection import project_once
from shoal_projector.streams import follow_heartbeats, follow_logs

log = logging.getLogger("shoal.projector")

# The dead letter of an event the projection left out names the log as its source: its
# offset is the event's global position.
LOG = "shoal.events"


async def follow(settings: Settings, pool: asyncpg.Pool, recorder: Recorder,
                 dead: policy.DeadLetters | None, stop: asyncio.Event) -> None:
    wake = asyncio.Event()
    observer = Observer()
    holding: list[int] = []  # the log position the read models wait at, once logged
    held_now = asyncio.Event()

    async def poison(e: StoredEvent, reason: str) -> None:
        if dead is not None:
            await dead.send(reason, topic=LOG, partition=0, offset=e.global_position,
                            key=e.instance_id.encode(), value=codec.dumps(e.as_dict()))

    def held(e: StoredEvent, reason: str) -> None:
        held_now.set()
        if holding != [e.global_position]:
            holding[:] = [e.global_position]
            log.error("the read models wait at log position %d (run %s seq %d): %s; a "
                      "projector of a release that reads it carries on from there",
                      e.global_position, e.instance_id, e.seq, reason)

    async def listen() -> asyncpg.Connection:
        conn = await asyncpg.connect(settings.database_url)
        await conn.add_listener(COMMITTED, lambda *_: wake.set())
        return conn

    listener = await until_available("listening", listen)
    try:
        while not stop.is_set():
            if listener.is_closed():  # lost in a database outage: poll until it is back
                with contextlib.suppress(*DB_ERRORS):
                    listener = await listen()
            wake.clear()  # before the pass: a NOTIFY during it must not be lost
            held_now.clear()
            try:
                applied = await project_once(pool, settings.projector_batch,
                                             also=recorder.record, poison=poison, held=held)
                observer.observe(applied)
                n = len(applied)
            except DB_ERRORS as exc:
                log.warning("projection failed (%r); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # a bug outside any one event: logged, retried, not fatal
                log.exception("projection pass failed; retrying in 5 s")
                await asyncio.sleep(5.0)
                continue
            if n:
                continue
            # Held at an event of a newer release: nothing will change until a projector
            # of that release takes over (or this one is upgraded), so look less often.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((stop if held_now.is_set() else wake).wait(),
                                       5.0 if held_now.is_set() else 0.5)
    finally:
        await listener.close()


async def check_continuously(settings: Settings, pool: asyncpg.Pool,
                             stop: asyncio.Event) -> None:
    """The consistency checker as a periodic job, incremental by global position; its
    checkpoint and sweep cursor live in shoal_read.checkpoints / shoal.checker_state."""
    if settings.check_interval <= 0:  # disabled; returning would end the service
        await stop.wait()
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.check_interval)
        if stop.is_set():
            return
        try:
            await checker.periodic(pool, grace=settings.check_grace,
                                   sweep=settings.check_sweep)
        except DB_ERRORS as exc:
            log.warning("consistency check failed (%r); next pass in %.0f s", exc,
                        settings.check_interval)
        except Exception:  # a bug: logged, and the projector keeps projecting
            log.exception("consistency check failed; next pass in %.0f s",
                          settings.check_interval)


async def main(settings: Settings) -> None:
    setup_logging(settings.log_level, "projector", settings.log_format)
    await migrate(settings.database_url)
    pool = await connect_pool(settings.database_url, max_size=5)
    recorder = Recorder()
    health = Health()
    deliverer = Deliverer(settings, pool, recorder.recorded)
    producer = kafka.producer(settings)
    await producer.start()
    dead = policy.DeadLetters(producer, settings.dead_letters_topic, "projector")
    try:
        await kafka.ensure_topics(settings, kafka.base_topics(settings))
        await run_service("projector", [
            lambda stop: follow(settings, pool, recorder, dead, stop),
            deliverer.run,
            lambda stop: follow_logs(settings, pool, dead, stop),
            lambda stop: follow_heartbeats(settings, pool, dead, stop),
            lambda stop: gauges(pool, stop),
            lambda stop: check_continuously(settings, pool, stop),
            lambda stop: kafka.keep_topics(settings, kafka.base_topics(settings), stop),
            lambda stop: metrics.serve(settings, "projector", stop, health),
            lambda stop: health.watch(pool, stop),
        ])
    finally:
        await producer.stop()
        await pool.close()


def run() -> None:
    asyncio.run(main(Settings()))
