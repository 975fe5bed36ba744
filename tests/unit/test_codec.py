import pytest

from shoal.core.errors import MessageInvalid
from shoal.core.model import (
    ExpireLease,
    FireTimer,
    ForceTaskSuccess,
    Scope,
    StartWorkflow,
    StopWorkflow,
    TaskKilled,
    TaskSucceeded,
)
from shoal.infra import codec

IID = "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"not json", "not JSON"),
    (b"[1]", "must be a JSON object"),
    (b'{"type": "Launch"}', "unknown command type 'Launch'"),
    (b'{"type": "StartWorkflow", "message_id": "x"}', "StartWorkflow"),
    (None, "tombstone"),
])
def test_bad_commands_are_named(raw, fragment):
    with pytest.raises(MessageInvalid, match=fragment):
        codec.decode_command(raw)


def test_commands_round_trip():
    for cmd in [
        StartWorkflow(message_id=IID, instance_id=IID, sent_at="t", workflow="wf",
                      params={"a": "1"}, actor="alice"),
        StartWorkflow(message_id=IID, instance_id=IID, sent_at="t", workflow="wf",
                      start_from=("a", "b"), scope=Scope.UPSTREAM, dry_run=True,
                      actor="scheduler"),
        TaskSucceeded(message_id=IID, instance_id=IID, sent_at="t", task="a", attempt=1,
                      dispatch_id=IID, worker_id="w", exit_code=0, outputs={"k": "v"}),
        TaskKilled(message_id=IID, instance_id=IID, sent_at="t", task="a", attempt=2,
                   dispatch_id=IID, worker_id="w", exit_code=137, error="killed"),
        StopWorkflow(message_id=IID, instance_id=IID, sent_at="t", actor="bob"),
        ExpireLease(message_id=IID, instance_id=IID, sent_at="t", task="a", attempt=1,
                    dispatch_id=IID, worker_id="w"),
        ForceTaskSuccess(message_id=IID, instance_id=IID, sent_at="t", task="a", actor="c"),
        FireTimer(message_id=IID, instance_id=IID, sent_at="t", timer_id="retry:a:2"),
    ]:
        assert codec.decode_command(codec.encode_command(cmd)) == cmd


@pytest.mark.parametrize(("command", "actor"), [
    ({"type": "StartWorkflow", "workflow": "wf"}, "kafka"),
    ({"type": "StartWorkflow", "workflow": "wf", "actor": "etl-bot"}, "etl-bot"),
    ({"type": "StopWorkflow"}, "kafka"),
    ({"type": "StopWorkflow", "actor": None}, "kafka"),
    ({"type": "ForceTaskSuccess", "task": "a"}, "kafka"),
    ({"type": "FireTimer", "timer_id": "t"}, None),  # Shoal's own inputs are not audited
    ({"type": "TaskStarted", "task": "a", "attempt": 1, "dispatch_id": IID,
      "worker_id": "w"}, None),
])
def test_a_command_without_an_actor_records_kafka_when_people_send_it(command, actor):
    raw = codec.dumps({**command, "message_id": IID, "instance_id": IID, "sent_at": "t"})
    assert codec.decode_command(raw).actor == actor


def test_an_actor_must_be_a_short_string():
    base = {"type": "StopWorkflow", "message_id": IID, "instance_id": IID, "sent_at": "t"}
    for bad in (42, "x" * 201, ["a"]):
        with pytest.raises(MessageInvalid, match="actor"):
            codec.decode_command(codec.dumps({**base, "actor": bad}))

