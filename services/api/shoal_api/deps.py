"""Request-scoped access to the resources opened in the app's lifespan, and the role checks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shoal.infra.auth import Role, Tokens
from shoal.infra.settings import Settings
from shoal.infra.store import EventStore


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


_bearer = HTTPBearer(auto_error=False, description="a token of SHOAL_API_TOKENS")


async def current_role(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Role | None:
    """The role of the request's bearer token; None when tokens are off (everyone may do
    everything); 401 without a valid token when they are on."""
    tokens: Tokens = request.app.state.tokens
    if not tokens.enabled:
        return None
    have = tokens.role_of(credentials.credentials if credentials else None)
    if have is None:
        raise HTTPException(401, {"message": "a valid bearer token is required "
                                             "(Authorization: Bearer <token>)"},
                            headers={"WWW-Authenticate": "Bearer"})
    return have


def _need(role: Role) -> Callable[..., Coroutine[Any, Any, None]]:
    async def check(have: Annotated[Role | None, Depends(current_role)]) -> None:
        if have is not None and have < role:
            raise HTTPException(403, {"message": f"this needs the {role.name} role; the token "
                                                 f"has {have.name}"})

    return check


# Route dependencies: viewer reads, operator starts and controls runs, admin writes
# definitions, schedules and backfills.
VIEWER = Depends(_need(Role.viewer))
OPERATOR = Depends(_need(Role.operator))
ADMIN = Depends(_need(Role.admin))
