"""API tokens minted at run time: create (the value shown once), list, revoke. Admin only."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from shoal.infra.auth import (
    DEFAULT_EXPIRES_IN,
    MAX_EXPIRES_IN,
    MIN_EXPIRES_IN,
    Role,
    name_problem,
)
from shoal.infra.tokens import NameTaken, TokenStore
from shoal_api.deps import ADMIN, Actor, Res
from shoal_api.models import TokenCreated, TokenOut
from shoal_api.problems import ERRORS

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], dependencies=[ADMIN],
                   responses=ERRORS)


class TokenCreate(BaseModel):
    """Body of ``POST /api/v1/tokens``."""

    model_config = {"extra": "forbid"}

    name: str = Field(description="the actor the audit trail records for this token's "
                                  "commands: 1-63 of a-z 0-9 _ . -; unique among live tokens",
                      min_length=1, max_length=63)
    role: Literal["viewer", "operator", "admin"]
    expires_in: int = Field(default=DEFAULT_EXPIRES_IN, ge=MIN_EXPIRES_IN, le=MAX_EXPIRES_IN,
                            description="seconds until it expires (default 90 days, at most "
                                        "366 days; only SHOAL_API_TOKENS never expire)")


@router.post("", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenCreate, res: Res, actor: Actor) -> dict[str, Any]:
    """Mint a token. Its value is in this answer only; store it now."""
    problem = name_problem(body.name)
    if problem:
        raise HTTPException(422, {"message": f"name: {problem}",
                                  "problems": [{"path": "name", "message": problem}]})
    try:
        record, token = await TokenStore(res.pool).create(body.name, Role[body.role],
                                                          body.expires_in, actor)
    except NameTaken:
        raise HTTPException(409, {"message": f"a token named '{body.name}' exists and is not "
                                             "revoked; revoke it or choose another name"}
                            ) from None
    out = record.as_dict()
    return {k: out[k] for k in ("id", "name", "role", "created_at", "expires_at")} | {
        "token": token}


@router.get("", response_model=list[TokenOut])
async def list_tokens(res: Res) -> list[dict[str, Any]]:
    """Every minted token (active, expired and revoked), never a value. The bootstrap
    tokens of SHOAL_API_TOKENS are not listed."""
    return [t.as_dict() for t in await TokenStore(res.pool).list()]


@router.delete("/{token_id}", response_model=TokenOut)
async def revoke_token(token_id: uuid.UUID, res: Res, actor: Actor) -> dict[str, Any]:
    """Revoke a token: refused from the next request on, on every API process."""
    record = await TokenStore(res.pool).revoke(token_id, actor)
    if record is None:
        raise HTTPException(404, {"message": f"no token {token_id}"})
    return record.as_dict()
