"""The FastAPI application; resources are opened in ``lifespan``, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response

import shoal
from shoal.infra import kafka, metrics
from shoal.infra.auth import parse_tokens
from shoal.infra.db import DB_ERRORS, connect_pool, migrate
from shoal.infra.lifecycle import setup_logging
from shoal.infra.settings import Settings
from shoal.infra.store import EventStore
from shoal_api import problems
from shoal_api.deps import METRICS, Resources
from shoal_api.hub import EventHub
from shoal_api.limits import BodyLimit, RequestMetrics, StreamLimit
from shoal_api.records import republish_all
from shoal_api.routes import (
    backfills,
    bundles,
    check,
    cluster,
    console,
    dsimport,
    logs,
    runs,
    schedules,
    streams,
    tokens,
    workflows,
)

log = logging.getLogger("shoal.api")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate(settings.database_url)
        await kafka.ensure_topics(settings, kafka.base_topics(settings))
        pool = await connect_pool(settings.database_url)
        producer = await kafka.start_producer(settings)
        app.state.resources = Resources(settings, pool, producer, EventStore(pool))
        n = await republish_all(settings, pool, producer)
        if n:
            log.info("re-published %d schedule and backfill records", n)
        app.state.hub = EventHub(settings)
        stop = asyncio.Event()
        keeper = asyncio.create_task(kafka.keep_topics(settings, kafka.base_topics(settings),
                                                       stop))
        try:
            yield
        finally:
            stop.set()
            await keeper
            await app.state.hub.close()
            await producer.stop()
            await pool.close()

    app = FastAPI(title="Shoal", version=shoal.__version__, lifespan=lifespan,
                  description="Distributed DAG workflow scheduler. With SHOAL_API_TOKENS set, "
                              "every endpoint but /healthz needs a bearer token.")
    app.state.tokens = parse_tokens(settings.api_tokens)
    app.state.settings = settings
    app.state.streams = StreamLimit(settings.api_streams_per_token)
    if not app.state.tokens.enabled:
        log.warning("SHOAL_API_TOKENS is not set: the API accepts requests without a token")
    problems.install(app)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    app.add_middleware(RequestMetrics)
    app.include_router(workflows.router)
    app.include_router(dsimport.router)
    app.include_router(bundles.router)
    app.include_router(runs.router)
    app.include_router(logs.router)
    app.include_router(schedules.router)
    app.include_router(backfills.router)
    app.include_router(cluster.router)
    app.include_router(check.router)
    app.include_router(streams.router)
    app.include_router(tokens.router)
    app.include_router(console.router)

    @app.get("/healthz", tags=["health"], responses={503: {
        "description": "the database does not answer", "content": {"application/json": {}}}})
    async def healthz(response: Response) -> dict[str, str]:
        """200 while the API can reach its database, else 503."""
        try:
            await asyncio.wait_for(app.state.resources.pool.fetchval("SELECT 1"), 2.0)
        except DB_ERRORS as exc:
            # Unauthenticated: the error text (host, user, database) goes to the log only.
            log.warning("healthz: the database does not answer: %r", exc)
            response.status_code = 503
            return {"status": "unhealthy", "database": "unavailable"}
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], dependencies=[METRICS], response_class=Response,
             responses={**problems.ERRORS, 200: {
                 "content": {"text/plain": {"schema": {"type": "string"}}},
                 "description": "Prometheus text exposition"}})
    async def prometheus() -> Response:
        body, ctype = metrics.exposition()
        return Response(body, media_type=ctype)

    return app


def run() -> None:
    import uvicorn

    settings = Settings()
    setup_logging(settings.log_level, "api", settings.log_format)
    # log_config=None: uvicorn's own loggers go through the handler set up above.
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level.lower(), log_config=None)
