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
                      params={"a": "1"}),
        StartWorkflow(message_id=IID, instance_id=IID, sent_at="t", workflow="wf",
                      start_from=("a", "b"), scope=Scope.UPSTREAM, dry_run=True),
        TaskSucceeded(message_id=IID, instance_id=IID, sent_at="t", task="a", attempt=1,
                      dispatch_id=IID, worker_id="w", exit_code=0, outputs={"k": "v"}),
        TaskKilled(message_id=IID, instance_id=IID, sent_at="t", task="a", attempt=2,
                   dispatch_id=IID, worker_id="w", exit_code=137, error="killed"),
        StopWorkflow(message_id=IID, instance_id=IID, sent_at="t"),
        ExpireLease(message_id=IID, instance_id=IID, sent_at="t", task="a", attempt=1,
                    dispatch_id=IID, worker_id="w"),
        ForceTaskSuccess(message_id=IID, instance_id=IID, sent_at="t", task="a"),
        FireTimer(message_id=IID, instance_id=IID, sent_at="t", timer_id="retry:a:2"),
    ]:
        assert codec.decode_command(codec.encode_command(cmd)) == cmd

