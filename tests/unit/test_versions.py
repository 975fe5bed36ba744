"""Schema versions: every event and message type has one, readers upcast earlier shapes
through the core's upcasters and refuse later ones, and the schemas say which version
they describe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core import rows, versions
from shoal.core.errors import MessageInvalid
from shoal.core.model import COMMAND_TYPES, EVENT_TYPES, TaskSucceededEvent, event_from_data
from shoal.infra import codec
from shoal.infra.codec import schemas_dir

IID = "5b0c1a52-7a6f-4bb3-9d7c-3f1f0f7b9a11"
MID = "0d8f7d2e-2f64-4c5c-8f0a-1d8b6c0c7e22"


def test_every_event_and_message_type_has_a_version_and_a_schema() -> None:
    assert set(versions.EVENTS.current) == set(EVENT_TYPES)
    assert set(COMMAND_TYPES) <= set(versions.MESSAGES.current)
    assert set(versions.COMMAND_MESSAGES) == set(COMMAND_TYPES)
    described = {name for kind, name, _ in _schema_files() if kind != "events"}
    assert set(versions.MESSAGES.current) == described


def _schema_files() -> list[tuple[str, str, Path]]:
    out = []
    for kind in ("commands", "tasks", "topics", "events"):
        for p in sorted((schemas_dir() / kind).glob("*.json")):
            out.append((kind, p.stem, p))
    return out


@pytest.mark.parametrize(("kind", "name", "path"), _schema_files(),
                         ids=[f"{k}/{n}" for k, n, _ in _schema_files()])
def test_each_schema_states_the_version_it_describes(kind: str, name: str, path: Path) -> None:
    """A shape change that needs a new version must touch the table and keep the earlier
    schema: the current file states the current version, each earlier one is archived."""
    schema = json.loads(path.read_text())
    table = versions.EVENTS if kind == "events" else versions.MESSAGES
    current = table.current.get(name)
    assert current is not None, f"{kind}/{name} has no entry in shoal.core.versions"
    assert schema.get("x-schema-version") == current, (
        f"{path} says version {schema.get('x-schema-version')}, the table {current}")
    for v in range(1, current):
        assert (schemas_dir() / "versions" / str(v) / kind / f"{name}.json").is_file()
    if kind != "events":  # on the wire the version travels in the message itself
        assert "schema_version" in schema["properties"]


@pytest.mark.parametrize("bad", [0, -1, "2", True, 1.5, None])
def test_a_version_that_is_not_a_positive_integer_is_refused(bad: Any) -> None:
    with pytest.raises(MessageInvalid, match="schema_version"):
        versions.version_of({"schema_version": bad})


def test_no_version_reads_as_version_1() -> None:
    """What releases before versioning wrote."""
    assert versions.version_of({"type": "StartWorkflow"}) == 1


# A made-up next release: StartWorkflow at 3 (v1 -> v2 renames ``workflow`` to ``name``,
# v2 -> v3 adds ``labels``), everything else as now.
def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "workflow"}
    out["name"] = d["workflow"]
    return out


def _v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "labels": []}


NEXT = versions.Versions({**versions.MESSAGES.current, "StartWorkflow": 3},
                         {("StartWorkflow", 1): _v1_to_v2, ("StartWorkflow", 2): _v2_to_v3})


def test_upcasters_chain_from_any_earlier_version() -> None:
    v1 = {"workflow": "etl", "params": {}}
    assert versions.upcast("StartWorkflow", 1, v1, NEXT) == {"name": "etl", "params": {},
                                                             "labels": []}
    assert versions.upcast("StartWorkflow", 2, {"name": "etl"}, NEXT) == {"name": "etl",
                                                                          "labels": []}
    assert versions.upcast("StartWorkflow", 3, {"name": "etl"}, NEXT) == {"name": "etl"}
    assert v1 == {"workflow": "etl", "params": {}}  # the input is not altered


@given(st.integers(min_value=4, max_value=2**15))
def test_a_later_version_is_refused_naming_it(v: int) -> None:
    with pytest.raises(versions.FutureVersion,
                       match=f"StartWorkflow schema_version {v} is newer than this release "
                             "reads \\(up to 3\\)"):
        versions.upcast("StartWorkflow", v, {}, NEXT)


def test_a_version_without_its_upcaster_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="without an upcaster from version"):
        versions.Versions({"StartWorkflow": 3}, {("StartWorkflow", 1): _v1_to_v2})
    with pytest.raises(ValueError, match="outside"):
        versions.Versions({"StartWorkflow": 1}, {("StartWorkflow", 1): _v1_to_v2})


def _start(**extra: Any) -> bytes:
    return json.dumps({"type": "StartWorkflow", "message_id": MID, "instance_id": IID,
                       "sent_at": "2026-12-03T00:00:00+00:00", "workflow": "etl",
                       "params": {}, **extra}).encode()


def test_commands_are_written_with_their_version_and_read_with_or_without_one() -> None:
    cmd = codec.decode_command(_start())
    wire = json.loads(codec.encode_command(cmd))
    assert wire["schema_version"] == versions.MESSAGES.of("StartWorkflow")
    assert codec.decode_command(json.dumps(wire).encode()) == cmd


def test_a_command_of_a_future_version_is_refused() -> None:
    with pytest.raises(versions.FutureVersion, match="newer than this release reads"):
        codec.decode_command(_start(schema_version=versions.MESSAGES.of("StartWorkflow") + 1))


def test_every_message_encoder_stamps_the_version() -> None:
    beat = json.loads(codec.message("Heartbeat", {"worker_id": "w"}))
    assert beat["schema_version"] == versions.MESSAGES.of("Heartbeat")


def test_the_next_releases_upcaster_runs_on_every_event_read_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An event upcaster added to the table is applied by the orchestrator's fold
    (event_from_data) and by the read-model fold (rows) alike, from the stored version."""
    def rename(d: dict[str, Any]) -> dict[str, Any]:  # v1 called it ``code``
        out = {k: v for k, v in d.items() if k != "code"}
        out["exit_code"] = d.get("code")
        return out
    table = versions.Versions({**versions.EVENTS.current, "TaskSucceeded": 2},
                              {("TaskSucceeded", 1): rename})
    monkeypatch.setattr(versions, "EVENTS", table)
    v1 = {"at": "2026-12-03T00:00:00+00:00", "task": "t", "attempt": 1, "code": 7,
          "outputs": {}, "worker_id": "w1"}
    e = event_from_data("TaskSucceeded", v1, 1)
    assert isinstance(e, TaskSucceededEvent) and e.exit_code == 7
    with pytest.raises(versions.FutureVersion):
        event_from_data("TaskSucceeded", v1, 3)

    class Stored:
        instance_id, seq, type, data, schema_version = IID, 2, "TaskSucceeded", v1, 1
    seen = rows.current(Stored())
    assert seen.data["exit_code"] == 7 and seen.schema_version == 2
