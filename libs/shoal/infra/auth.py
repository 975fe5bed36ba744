"""Bearer tokens and roles.

Two sources of tokens:

- the bootstrap set, ``SHOAL_API_TOKENS`` = comma-separated ``role:token`` pairs, fixed for
  the life of a process. Setting it turns authentication on. Each has a stable name for
  the audit trail, ``<role>-<first 8 hex digits of sha256(token)>`` (see ``bootstrap_name``).
- tokens minted at run time (``POST /api/v1/tokens``), stored only as the sha256 of the
  token in ``shoal.api_tokens`` and looked up per request (``shoal.infra.tokens``), so a
  revocation or an expiry holds on every API process at its next request.

Roles are ordered: ``viewer`` reads, ``operator`` also starts and controls runs, ``admin``
also writes definitions, schedules, backfills and tokens. A bootstrap token is compared
with every configured one in constant time, so the answer's timing says nothing about how
much of a guess was right. Tokens are never logged.

Why sha256 and not bcrypt for stored tokens: a minted token carries 256 random bits, so
no dictionary or brute force can invert its hash; a slow hash only protects secrets people
choose. sha256 also lets the lookup be one indexed equality on the hash (a salted bcrypt
hash cannot be looked up, and would cost ~100 ms of CPU on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from shoal.core.model import RESERVED_ACTORS


class Role(IntEnum):
    viewer = 1
    operator = 2
    admin = 3


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's name (the audit trail's actor) and its role."""

    name: str
    role: Role


class Tokens:
    """The bootstrap tokens; ``enabled`` is false when none are configured (auth off)."""

    def __init__(self, pairs: list[tuple[Role, bytes]]) -> None:
        self._pairs = [(role, secret, bootstrap_name(role, secret.decode()))
                       for role, secret in pairs]

    @property
    def enabled(self) -> bool:
        return bool(self._pairs)

    def principal_of(self, token: str | None) -> Principal | None:
        """The bootstrap principal ``token`` is, or None. Every configured token is
        compared (constant time per comparison)."""
        if token is None:
            return None
        given = token.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        for role, secret, name in self._pairs:
            if hmac.compare_digest(given, secret) and (found is None or role > found.role):
                found = Principal(name, role)
        return found

    def role_of(self, token: str | None) -> Role | None:
        """The role of ``token``, or None."""
        found = self.principal_of(token)
        return found.role if found else None


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


# --------------------------------------------------------------------------- minted tokens

TOKEN_PREFIX = "shoal_"  # noqa: S105 - a public prefix, not a secret
_TOKEN = re.compile(r"^shoal_[A-Za-z0-9_-]{43}\Z")  # 32 random bytes, urlsafe base64
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
_BOOTSTRAP_NAME = re.compile(r"^(viewer|operator|admin)-[0-9a-f]{8}\Z")
# expires_in bounds (seconds): at least a second, at most 366 days; tokens that never
# expire exist only in SHOAL_API_TOKENS (rotated by redeploying).
MIN_EXPIRES_IN = 1
MAX_EXPIRES_IN = 366 * 86_400
DEFAULT_EXPIRES_IN = 90 * 86_400


def new_token() -> str:
    """A fresh token: ``shoal_`` and 32 random bytes (256 bits), urlsafe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_minted(token: str) -> bool:
    """Whether ``token`` has the shape of a minted token (only those are looked up in the
    database, so garbage bearer headers cost no query)."""
    return bool(_TOKEN.match(token))


def token_hash(token: str) -> str:
    """What is stored and looked up: the hex sha256 of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bootstrap_name(role: Role, token: str) -> str:
    """The audit name of a ``SHOAL_API_TOKENS`` token: its role and the first 8 hex digits
    of its sha256 (stable across restarts, different per token, reveals nothing usable of
    a 16+ character random token)."""
    return f"{role.name}-{token_hash(token)[:8]}"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a minted token, or None."""
    if not NAME.match(name):
        return ("a token name is 1-63 characters of a-z, 0-9, '_', '.', '-', starting with a "
                "letter or digit")
    if name in RESERVED_ACTORS or _BOOTSTRAP_NAME.match(name):
        return f"'{name}' is reserved for Shoal's own actors and the bootstrap tokens"
    return None


def token_state(now: datetime, expires_at: datetime | None,
                revoked_at: datetime | None) -> str:
    """``active``, ``expired`` or ``revoked`` (revocation wins; expiry is exclusive:
    a token is expired from ``expires_at`` on)."""
    if revoked_at is not None and revoked_at <= now:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


def expiry(now: datetime, expires_in: int) -> datetime:
    """When a token minted at ``now`` for ``expires_in`` seconds expires."""
    if not MIN_EXPIRES_IN <= expires_in <= MAX_EXPIRES_IN:
        raise ValueError(f"expires_in must be {MIN_EXPIRES_IN}..{MAX_EXPIRES_IN} seconds")
    return now + timedelta(seconds=expires_in)
