"""LossWatch: records below an offset this member committed mean the broker lost the log."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from shoal.infra.kafka import LossWatch

TP, OTHER = TopicPartition("t", 0), TopicPartition("t", 1)


def batch(tp: TopicPartition, *offsets: int) -> dict:
    return {tp: [SimpleNamespace(offset=o) for o in offsets]}


def test_only_records_below_the_committed_offset_count_as_a_loss():
    w = LossWatch()
    assert w.lost(batch(TP, 0, 1, 2)) == []          # nothing committed yet
    w.committed_up_to({TP: 3})
    w.committed_up_to({TP: 2})                        # never moves back
    assert w.lost(batch(TP, 3, 4)) == []              # where the group left off
    assert w.lost(batch(TP, 7)) == []                 # further on (another member read 3-6)
    assert w.lost(batch(OTHER, 0)) == []              # a partition never committed here
    assert w.lost(batch(TP, 0, 1)) == [TP]            # the log starts again below 3
    assert w.lost(batch(TP, 2)) == []                 # the new numbering is not a new loss
    assert w.lost({TP: []}) == []
