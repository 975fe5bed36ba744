"""Bearer tokens and roles (``SHOAL_API_TOKENS`` = comma-separated ``role:token`` pairs).

Roles are ordered: ``viewer`` reads, ``operator`` also starts and controls runs, ``admin``
also writes definitions, schedules and backfills. A token is compared with every
configured token in constant time, so the answer's timing says nothing about how much of
a guess was right. Tokens are never logged.
"""

from __future__ import annotations

import hmac
from enum import IntEnum


class Role(IntEnum):
    viewer = 1
    operator = 2
    admin = 3


class Tokens:
    """The configured tokens; ``enabled`` is false when none are (auth off)."""

    def __init__(self, pairs: list[tuple[Role, bytes]]) -> None:
        self._pairs = pairs

    @property
    def enabled(self) -> bool:
        return bool(self._pairs)

    def role_of(self, token: str | None) -> Role | None:
        """The role of ``token``, or None. Every configured token is compared."""
        if token is None:
            return None
        given = token.encode("utf-8", "surrogateescape")
        found: Role | None = None
        for role, secret in self._pairs:
            if hmac.compare_digest(given, secret) and (found is None or role > found):
                found = role
        return found


def parse_tokens(spec: str | None) -> Tokens:
    """Parse ``SHOAL_API_TOKENS``; a malformed entry fails start-up naming its position
    (never its value)."""
    pairs: list[tuple[Role, bytes]] = []
    for i, item in enumerate(p.strip() for p in (spec or "").split(",")):
        if not item:
            continue
        role, sep, token = item.partition(":")
        if not sep or not token.strip():
            raise ValueError(f"SHOAL_API_TOKENS entry {i + 1} is not role:token")
        if role.strip() not in Role.__members__:
            raise ValueError(f"SHOAL_API_TOKENS entry {i + 1}: unknown role {role.strip()!r} "
                             "(viewer, operator, admin)")
        if len(token.strip()) < 16:
            raise ValueError(f"SHOAL_API_TOKENS entry {i + 1}: a token needs at least 16 "
                             "characters")
        pairs.append((Role[role.strip()], token.strip().encode()))
    return Tokens(pairs)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
