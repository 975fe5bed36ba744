"""Minted API tokens in ``shoal.api_tokens`` (see ``shoal.infra.auth`` for the design).

No cache: a lookup is one indexed equality on the token's hash per request (measured in
the README, Security), which is what makes a revocation hold at once on every API process
sharing the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shoal.infra.auth import Principal, Role, expiry, new_token, token_hash, token_state


class NameTaken(Exception):
    """Another token that is not revoked has this name."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token as the API shows it (never its value)."""

    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    state: str

    def as_dict(self) -> dict[str, Any]:
        def iso(v: datetime | None) -> str | None:
            return v.isoformat() if v else None

        return {"id": self.id, "name": self.name, "role": self.role,
                "created_at": iso(self.created_at), "created_by": self.created_by,
                "expires_at": iso(self.expires_at), "revoked_at": iso(self.revoked_at),
                "revoked_by": self.revoked_by, "state": self.state}


_COLS = ("id, name, role, created_at, created_by, expires_at, revoked_at, revoked_by, "
         "now() AS now")


def _record(r: Any) -> TokenRecord:
    return TokenRecord(id=str(r["id"]), name=r["name"], role=r["role"],
                       created_at=r["created_at"], created_by=r["created_by"],
                       expires_at=r["expires_at"], revoked_at=r["revoked_at"],
                       revoked_by=r["revoked_by"],
                       state=token_state(r["now"], r["expires_at"], r["revoked_at"]))


class TokenStore:
    """Create, list, revoke and look up minted tokens."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, name: str, role: Role, expires_in: int,
                     created_by: str | None) -> tuple[TokenRecord, str]:
        """A new token and its value (the only time the value exists outside the
        client); ``NameTaken`` when a live token has the name."""
        token = new_token()
        async with self.pool.acquire() as conn:
            now: datetime = await conn.fetchval("SELECT now()")
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO shoal.api_tokens (id, name, role, token_hash, created_at, "
                    f"created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    f"RETURNING {_COLS}", uuid.uuid4(), name, role.name, token_hash(token),
                    now, created_by, expiry(now, expires_in))
            except asyncpg.UniqueViolationError:
                raise NameTaken(name) from None
        return _record(row), token

    async def list(self) -> list[TokenRecord]:
        rows = await self.pool.fetch(f"SELECT {_COLS} FROM shoal.api_tokens "
                                     "ORDER BY created_at, id")
        return [_record(r) for r in rows]

    async def revoke(self, token_id: uuid.UUID, by: str | None) -> TokenRecord | None:
        """Revoke (idempotent: a revoked token keeps its first revocation); None when
        there is no such token."""
        row = await self.pool.fetchrow(
            f"UPDATE shoal.api_tokens SET revoked_at = coalesce(revoked_at, now()), "
            f"revoked_by = CASE WHEN revoked_at IS NULL THEN $2 ELSE revoked_by END "
            f"WHERE id = $1 RETURNING {_COLS}", token_id, by)
        return _record(row) if row else None

    async def principal(self, token: str) -> Principal | None:
        """The principal of a live (not revoked, not expired) minted token, or None."""
        row = await self.pool.fetchrow(
            "SELECT name, role FROM shoal.api_tokens WHERE token_hash = $1 AND "
            "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
            token_hash(token))
        return Principal(row["name"], Role[row["role"]]) if row else None
