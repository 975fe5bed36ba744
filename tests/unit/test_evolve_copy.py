"""evolve's own ``replace`` (no ``__init__``) gives exactly what ``dataclasses.replace``
gives, shares nothing it should not, and refuses names that are not fields."""

from __future__ import annotations

import dataclasses

import pytest

from shoal.core.evolve import fold, replace
from shoal.core.model import TaskState, TaskSucceeded
from tests.unit.test_workflow import IID, Driver, diamond


def a_run():  # type: ignore[no-untyped-def]
    d = Driver(diamond())
    d.start()
    return fold(d.log, instance_id=IID)


def test_replace_equals_dataclasses_replace():
    run = a_run()
    changes = {"seq": run.seq + 7, "failure": "x", "tasks": {}}
    ours, theirs = replace(run, **changes), dataclasses.replace(run, **changes)
    assert ours == theirs and ours is not run
    assert run.seq != ours.seq and run.tasks, "the original is untouched"
    t = next(iter(run.tasks.values()))
    assert replace(t, state=TaskState.FAILED) == dataclasses.replace(t, state=TaskState.FAILED)
    assert replace(run) == run and replace(t) == t


def test_replace_refuses_a_name_that_is_not_a_field():
    with pytest.raises(AttributeError):
        replace(a_run(), no_such_field=1)


def test_evolve_leaves_the_state_it_was_given_as_it_was():
    d = Driver(diamond())
    d.start()
    before = fold(d.log, instance_id=IID)
    seq, tasks = before.seq, dict(before.tasks)
    d.run = before
    d.report(TaskSucceeded, "a", exit_code=0)
    assert before.seq == seq and before.tasks == tasks
