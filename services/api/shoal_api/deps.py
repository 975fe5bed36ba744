"""Request-scoped access to the resources opened in the app's lifespan, and the role checks."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shoal.core.model import ANONYMOUS_ACTOR
from shoal.infra.auth import Principal, Role, Tokens, looks_minted
from shoal.infra.db import DB_ERRORS
from shoal.infra.settings import Settings
from shoal.infra.store import EventStore
from shoal.infra.tokens import TokenStore
from shoal_api.limits import StreamLimit, StreamSlot


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    store: EventStore


def _resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


Res = Annotated[Resources, Depends(_resources)]


_bearer = HTTPBearer(auto_error=False, description="a token of SHOAL_API_TOKENS, or one "
                                                   "minted by POST /api/v1/tokens")


async def current_principal(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """Who the request acts as. A bootstrap token (SHOAL_API_TOKENS) is matched in memory;
    a minted one is looked up in the database on every request (no cache: a revocation or
    expiry holds at once on every API process). With tokens off, a request without a
    known token is ``anonymous`` and may do everything; 401 without a valid token when
    they are on. FastAPI resolves this once per request."""
    tokens: Tokens = request.app.state.tokens
    given = credentials.credentials if credentials else None
    found = tokens.principal_of(given)
    if found is None and given is not None and looks_minted(given):
        try:
            found = await TokenStore(request.app.state.resources.pool).principal(given)
        except DB_ERRORS:
            raise HTTPException(503, {"message": "the database that holds the tokens does "
                                                 "not answer; try again", "type": "unavailable"}
                                ) from None
    if not tokens.enabled:
        return Principal(found.name if found else ANONYMOUS_ACTOR, Role.admin)
    if found is None:
        raise HTTPException(401, {"message": "a valid bearer token is required "
                                             "(Authorization: Bearer <token>)"},
                            headers={"WWW-Authenticate": "Bearer"})
    return found


async def current_actor(principal: Annotated[Principal, Depends(current_principal)]) -> str:
    """The name the audit trail records for the request's commands."""
    return principal.name


# The acting principal and its name, for routes that record who did what.
Who = Annotated[Principal, Depends(current_principal)]
Actor = Annotated[str, Depends(current_actor)]


def _need(role: Role) -> Callable[..., Coroutine[Any, Any, None]]:
    async def check(have: Who) -> None:
        if have.role < role:
            raise HTTPException(403, {"message": f"this needs the {role.name} role; the token "
                                                 f"has {have.role.name}"})

    return check


# Route dependencies: viewer reads, operator starts and controls runs, admin writes
# definitions, schedules and backfills.
VIEWER = Depends(_need(Role.viewer))
OPERATOR = Depends(_need(Role.operator))
ADMIN = Depends(_need(Role.admin))


async def _metrics(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """/metrics: SHOAL_METRICS_TOKEN (good for nothing else), or any token a viewer has."""
    settings: Settings = request.app.state.settings
    given = credentials.credentials if credentials else None
    if settings.metrics_token and given is not None and hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), settings.metrics_token.encode()):
        return
    await _need(Role.viewer)(await current_principal(request, credentials))


METRICS = Depends(_metrics)


def stream_slot(request: Request, who: Principal) -> StreamSlot:
    """A slot of the token's stream budget (SHOAL_API_STREAMS_PER_TOKEN), 429 beyond.
    Without tokens every client address has its own budget. The route hands the slot to
    its stream, which releases it when it ends."""
    limit: StreamLimit = request.app.state.streams
    key = who.name
    if who.name == ANONYMOUS_ACTOR:
        key = f"{who.name}@{request.client.host if request.client else '?'}"
    slot = limit.acquire(key)
    if slot is None:
        raise HTTPException(429, {"message": f"this token already has {limit.per_key} open "
                                             "streams (SHOAL_API_STREAMS_PER_TOKEN); close one "
                                             "first"})
    return slot
