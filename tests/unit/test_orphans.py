"""Task process groups of a dead worker are killed, and nothing else ever is."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from shoal_worker.orphans import (
    TaskGroups,
    is_task_group,
    kill_group,
    reap_predecessors,
    start_time,
)


def _task(dispatch_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["bash", "-c", "sleep 30 & wait"], start_new_session=True,
                            env={**os.environ, "SHOAL_DISPATCH_ID": dispatch_id})


def _gone(p: subprocess.Popen[bytes]) -> bool:
    for _ in range(50):
        if p.poll() is not None:
            return True
        time.sleep(0.05)
    return False


def test_a_group_is_killed_only_while_it_is_verifiably_the_tasks():
    p = _task("d-1")
    try:
        leader = start_time(p.pid)
        assert leader is not None
        assert not is_task_group(p.pid, leader + 1, "d-1")   # a reused pid: left alone
        assert not kill_group(p.pid, leader + 1, "d-1")
        assert p.poll() is None
        assert kill_group(p.pid, leader, "d-1")
        assert _gone(p)
    finally:
        p.kill()


def test_a_dead_predecessors_groups_are_killed_and_a_live_ones_are_not(tmp_path: Path):
    dead_worker = subprocess.Popen(["true"])
    dead_worker.wait()
    mine, theirs = _task("d-dead"), _task("d-live")
    try:
        (tmp_path / f"{dead_worker.pid}.json").write_text(json.dumps({
            "pid": dead_worker.pid, "start": 1, "worker_id": "w0",
            "groups": [[mine.pid, start_time(mine.pid), "d-dead"]]}))
        (tmp_path / "live.json").write_text(json.dumps({
            "pid": os.getpid(), "start": start_time(os.getpid()), "worker_id": "w1",
            "groups": [[theirs.pid, start_time(theirs.pid), "d-live"]]}))
        assert reap_predecessors(tmp_path) == 1
        assert _gone(mine) and theirs.poll() is None
        assert sorted(f.name for f in tmp_path.iterdir()) == ["live.json"]
    finally:
        mine.kill()
        theirs.kill()


def test_an_end_report_stays_journaled_until_reported_and_a_successor_adopts_it(
        tmp_path: Path):
    groups = TaskGroups(tmp_path, "w0")
    groups.dir.mkdir(parents=True)
    groups.finish(None, "d-1", "m-1", b"i-1", b'{"type": "TaskSucceeded"}')
    groups.finish(None, "d-2", "m-2", b"i-2", b'{"type": "TaskFailed"}')
    groups.reported("m-2")                       # that one reached the broker
    data = json.loads(groups.path.read_text())
    dead_worker = subprocess.Popen(["true"])      # the worker dies: its pid is gone
    dead_worker.wait()
    data["pid"] = dead_worker.pid
    groups.path.unlink()
    (groups.dir / f"{dead_worker.pid}.json").write_text(json.dumps(data))
    adopted: dict[str, tuple[str, str]] = {}
    assert reap_predecessors(groups.dir, adopted) == 0
    assert adopted == {"m-1": ("i-1", '{"type": "TaskSucceeded"}')}
    assert not list(groups.dir.iterdir())


def test_a_sibling_adopts_a_dead_workers_unsent_end_reports_once(tmp_path: Path):
    """A worker sharing the data directory takes over the unsent end reports of one that
    died (it checks every second), journaling them as its own until they are sent."""
    dead_worker = subprocess.Popen(["true"])
    dead_worker.wait()
    groups = tmp_path / "task-groups"
    groups.mkdir()
    (groups / f"{dead_worker.pid}.json").write_text(json.dumps({
        "pid": dead_worker.pid, "start": 1, "worker_id": "w0", "groups": [],
        "pending": [["m-1", "i-1", '{"type": "TaskSucceeded"}']]}))
    sibling = TaskGroups(tmp_path, "w1")
    sibling._save()
    assert sibling.adopt() == {"m-1": ("i-1", '{"type": "TaskSucceeded"}')}
    assert json.loads(sibling.path.read_text())["pending"] == [
        ["m-1", "i-1", '{"type": "TaskSucceeded"}']]
    assert sibling.adopt() == {}
    sibling.reported("m-1")
    assert json.loads(sibling.path.read_text())["pending"] == []
    assert [f.name for f in groups.iterdir()] == [sibling.path.name]


async def test_a_shell_attempt_is_expected_before_its_process_exists_and_its_end_composed(
        tmp_path: Path):
    """A worker lagging under load may record a task's group only after the task ended:
    the attempt (and where its shell writes its exit status) is in the file before the
    process is spawned, and a dead worker's ended attempt becomes its end report."""
    from shoal_worker.executor import Attempt

    seen: list[dict] = []

    class Recording(TaskGroups):
        def add(self, pgid: int, dispatch_id: str) -> None:
            seen.append(dict(self.attempts))
            super().add(pgid, dispatch_id)

    groups = Recording(tmp_path, "w0")
    groups.dir.mkdir(parents=True)
    d = {"instance_id": "i", "task": "t", "attempt": 1, "dispatch_id": "d-1",
         "task_type": "shell", "command": "true", "outputs": []}
    attempt = Attempt(d, tmp_path, dict(os.environ), groups=groups, keep_workdir="always")
    await attempt.run()
    assert list(seen[0]) == ["d-1"], seen
    data = json.loads(groups.path.read_text())       # the worker died before seeing the end
    dead_worker = subprocess.Popen(["true"])
    dead_worker.wait()
    data["pid"] = dead_worker.pid
    groups.path.unlink()
    (groups.dir / f"{dead_worker.pid}.json").write_text(json.dumps(data))
    adopted: dict[str, tuple[str, str]] = {}
    reap_predecessors(groups.dir, adopted,
                      lambda ended, code: (f"{ended['dispatch_id']}/{ended['worker_id']}",
                                           ended["instance_id"], str(code)))
    assert adopted == {"d-1/w0": ("i", "0")}
