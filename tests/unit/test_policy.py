"""The error policy's verdicts (``shoal.infra.policy.classify``)."""

from __future__ import annotations

import base64

import asyncpg
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError

from shoal.core.errors import DefinitionInvalid, MessageInvalid, StreamConflict
from shoal.infra import codec
from shoal.infra.policy import Verdict, classify, dead_letter


def _json_error() -> ValueError:
    try:
        orjson.loads(b"{")
    except ValueError as exc:
        return exc
    raise AssertionError


@pytest.mark.parametrize("exc", [
    asyncpg.ConnectionDoesNotExistError("closed"), asyncpg.SerializationError("x"),
    asyncpg.DeadlockDetectedError("x"), asyncpg.LockNotAvailableError("lock timeout"),
    asyncpg.QueryCanceledError("statement timeout"), asyncpg.AdminShutdownError("x"),
    asyncpg.TooManyConnectionsError("x"), asyncpg.InterfaceError("connection is closed"),
    ConnectionResetError(), TimeoutError(), OSError("unreachable"), StreamConflict("x"),
    KafkaConnectionError(), KafkaTimeoutError(), UnknownTopicOrPartitionError()])
def test_transient(exc: BaseException):
    assert classify(exc) is Verdict.TRANSIENT


@pytest.mark.parametrize("exc", [
    asyncpg.DataError("invalid input"), asyncpg.InvalidTextRepresentationError("uuid"),
    asyncpg.UntranslatableCharacterError("\\u0000"), asyncpg.NotNullViolationError("x"),
    MessageInvalid("bad"), DefinitionInvalid("bad"), _json_error(),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")])
def test_poison(exc: BaseException):
    assert classify(exc) is Verdict.POISON


@pytest.mark.parametrize("exc", [KeyError("x"), AssertionError(), asyncpg.UndefinedTableError("x"),
                                 TypeError("x")])
def test_bug(exc: BaseException):
    assert classify(exc) is Verdict.BUG


@pytest.mark.parametrize("iid", ["0" * 36, "-" * 36, "g" * 8 + "-0000-0000-0000-" + "0" * 12])
def test_ids_that_are_not_uuids_are_refused_at_decode(iid: str):
    cmd = {"type": "StopWorkflow", "message_id": iid, "instance_id": iid, "sent_at": "t"}
    with pytest.raises(MessageInvalid, match="uuid"):
        codec.decode_command(orjson.dumps(cmd))


def test_a_dead_letter_keeps_the_original_bytes():
    raw = b"\xff\xfe not utf-8"
    d = dead_letter(reason="poison: x", service="s", topic="t", partition=1, offset=2,
                    key=None, value=raw, dead_at="now")
    assert base64.b64decode(d["value_b64"]) == raw and d["size"] == len(raw)
    codec.validate("topics", "DeadLetter", d)
