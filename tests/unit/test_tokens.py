"""The pure parts of API tokens: format, hashing, names, expiry and the stream budget."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from shoal.infra.auth import (
    MAX_EXPIRES_IN,
    Principal,
    Role,
    bootstrap_name,
    expiry,
    looks_minted,
    name_problem,
    new_token,
    parse_tokens,
    token_hash,
    token_state,
)
from shoal_api.limits import StreamLimit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_minted_token_has_256_random_bits_and_a_recognisable_shape():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("shoal_") and len(t) == 6 + 43 and looks_minted(t) for t in tokens)
    assert not looks_minted("shoal_short") and not looks_minted("x" * 49)
    assert not looks_minted("shoal_" + "a" * 42 + "!")


def test_only_the_sha256_of_a_token_is_kept():
    t = new_token()
    assert token_hash(t) == hashlib.sha256(t.encode()).hexdigest()
    assert t not in token_hash(t)


def test_a_bootstrap_token_has_a_stable_name_per_token_and_role():
    tokens = parse_tokens("admin:" + "a" * 20 + ", viewer:" + "b" * 20)
    admin = tokens.principal_of("a" * 20)
    assert admin == Principal(bootstrap_name(Role.admin, "a" * 20), Role.admin)
    assert admin.name == "admin-" + hashlib.sha256(b"a" * 20).hexdigest()[:8]
    assert tokens.principal_of("b" * 20).name.startswith("viewer-")
    assert tokens.principal_of("c" * 20) is None and tokens.principal_of(None) is None
    assert tokens.role_of("a" * 20) is Role.admin


@pytest.mark.parametrize("name", ["ci", "etl-bot", "a.b_c-1", "x" * 63])
def test_good_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "-x", "Upper", "with space", "x" * 64, "a/b",
                                  "scheduler", "kafka", "anonymous", "orchestrator",
                                  "admin-0123abcd", "viewer-deadbeef"])
def test_names_that_are_malformed_or_would_pass_for_shoal_itself_are_refused(name):
    assert name_problem(name)


def test_revocation_wins_and_expiry_is_exclusive():
    soon = NOW + timedelta(seconds=1)
    assert token_state(NOW, None, None) == "active"
    assert token_state(NOW, soon, None) == "active"
    assert token_state(soon, soon, None) == "expired"
    assert token_state(NOW, soon, NOW) == "revoked"
    assert token_state(NOW, soon, soon) == "active"  # revoked in the future: not yet


def test_expiry_is_bounded():
    assert expiry(NOW, 60) == NOW + timedelta(seconds=60)
    for bad in (0, -1, MAX_EXPIRES_IN + 1):
        with pytest.raises(ValueError, match="expires_in"):
            expiry(NOW, bad)


def test_a_key_gets_its_streams_up_to_the_limit_and_a_closed_one_frees_a_place():
    limit = StreamLimit(2)
    a1, a2 = limit.acquire("a"), limit.acquire("a")
    assert a1 is not None and a2 is not None
    assert limit.acquire("a") is None
    assert limit.acquire("b") is not None  # another token has its own budget
    a1.release()
    a1.release()  # idempotent
    a3 = limit.acquire("a")
    assert a3 is not None and limit.acquire("a") is None
    del a2, a3  # a slot whose stream never ran is freed when it is collected
    assert limit.open.get("a") is None
