"""The worker's process runner on real processes (no broker needed)."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from shoal_worker.executor import Attempt, Outcome, describe_exit, exit_code_of


def dispatch(command: str, **extra: object) -> dict:
    return {"instance_id": "i", "task": "t", "attempt": 1, "dispatch_id": "d",
            "task_type": "shell", "command": command, "outputs": ["rows"], **extra}


async def test_exit_code_outputs_and_a_line_longer_than_the_stream_limit(tmp_path):
    cmd = ("python3 -c \"print('x' * 300000)\"; echo '${setValue(rows=7)}'; "
           "echo \"$SHOAL_TASK/$SHOAL_ATTEMPT/$GREETING\"; exit 4")
    a = Attempt(dispatch(cmd, env={"GREETING": "hi"}), tmp_path, dict(os.environ))
    out = await a.run()
    assert out.exit_code == 4 and out.outputs == {"rows": "7"}
    log = (a.workdir / "task.log").read_bytes()  # kept after failure
    assert b"x" * 300000 in log and b"t/1/hi" in log


async def test_success_removes_the_working_directory(tmp_path):
    a = Attempt(dispatch("echo ok"), tmp_path, dict(os.environ))
    assert (await a.run()).exit_code == 0
    assert not a.workdir.exists()


async def test_python_tasks_run_with_the_interpreter(tmp_path):
    d = dispatch("print('${setValue(rows=%d)}' % (6 * 7))", task_type="python")
    assert (await Attempt(d, tmp_path, dict(os.environ)).run()).outputs == {"rows": "42"}


def test_signal_deaths_map_to_128_plus_n_and_read_like_dolphinscheduler():
    assert exit_code_of(-signal.SIGKILL) == 137 and exit_code_of(3) == 3
    assert describe_exit(137) == "killed by SIGKILL (exit code 137)"
    assert describe_exit(143) == "killed by SIGTERM (exit code 143)"
    assert describe_exit(127) == "command not found (exit code 127)"
    assert describe_exit(2) == "exit code 2"


async def test_workdir_policies(tmp_path):
    for keep, ok_kept, failed_kept in [("failed", False, True), ("always", True, True),
                                       ("never", False, False)]:
        ok = Attempt(dispatch("true", task=f"ok-{keep}"), tmp_path, dict(os.environ),
                     keep_workdir=keep)
        bad = Attempt(dispatch("nosuchcommand-xyz", task=f"bad-{keep}"), tmp_path,
                      dict(os.environ), keep_workdir=keep)
        assert (await ok.run()).exit_code == 0
        out = await bad.run()
        assert out.exit_code == 127 and out.error == "command not found (exit code 127)"
        assert ok.workdir.exists() is ok_kept and bad.workdir.exists() is failed_kept, keep


async def test_an_unknown_run_as_user_fails_the_attempt_cleanly(tmp_path):
    out = await Attempt(dispatch("true"), tmp_path, dict(os.environ),
                        run_as="no-such-user-shoal").run()
    assert out.exit_code is None and out.error.startswith("could not start")


async def test_context_variables(tmp_path):
    d = dispatch("echo \"$SHOAL_SCHEDULE_TIME\" > ctx", schedule_time="2026-01-02T00:00:00Z")
    a = Attempt(d, tmp_path, dict(os.environ), keep_workdir="always")
    await a.run()
    assert (a.workdir / "ctx").read_text().strip() == "2026-01-02T00:00:00Z"


async def test_an_in_loop_attempt_logs_like_a_process_and_is_killed_by_cancelling(tmp_path):
    shipped: list[str] = []

    async def on_lines(lines: list[tuple[str, str]]) -> None:
        shipped.extend(text for _, text in lines)

    async def slow(say, spec) -> Outcome:
        await say("step 1\nstep 2")
        await asyncio.sleep(60)
        return Outcome(exit_code=0)

    a = Attempt(dispatch("", task_type="sql"), tmp_path, {}, on_lines=on_lines, in_loop=slow)
    running = asyncio.create_task(a.run())
    await asyncio.sleep(0.1)
    await a.kill("stop", grace=1.0)
    out = await asyncio.wait_for(running, 5)
    assert out.killed and out.error == "killed (stop)"
    assert shipped == ["step 1", "step 2", "killed (stop)"]
    assert (a.workdir / "task.log").read_text() == "step 1\nstep 2\nkilled (stop)\n"


async def test_an_in_loop_attempt_that_raises_fails_with_the_error(tmp_path):
    async def broken(say, spec) -> Outcome:
        raise RuntimeError("boom")

    a = Attempt(dispatch("", task_type="http"), tmp_path, {}, in_loop=broken)
    out = await a.run()
    assert out.exit_code is None and out.error == "RuntimeError: boom"


async def test_an_output_over_the_cap_fails_the_attempt(tmp_path):
    cmd = "echo '${setValue(rows='; seq 1 2000; echo ')}'"
    out = await Attempt(dispatch(cmd), tmp_path, dict(os.environ)).run()
    assert out.exit_code == 1 and "output 'rows' is larger than the cap" in out.error


async def test_a_kill_that_arrives_before_the_process_starts_is_honoured(tmp_path):
    a = Attempt(dispatch("sleep 30; echo never"), tmp_path, dict(os.environ))
    await a.kill("stopped before start", 1.0)   # nothing runs yet
    out = await asyncio.wait_for(a.run(), 10)
    assert out.killed and "stopped before start" in out.error


async def test_an_in_loop_attempt_killed_before_it_starts_never_runs(tmp_path):
    ran: list[bool] = []

    async def runner(say):
        ran.append(True)
        return Outcome(exit_code=0)

    a = Attempt(dispatch("", task_type="sql"), tmp_path, dict(os.environ), in_loop=runner)
    await a.kill("stopped before start", 1.0)
    out = await a.run()
    assert out.killed and ran == []


class _NoBroker:
    """A producer whose broker never answers (as during a long outage)."""

    async def send_and_wait(self, *args, **kw):  # type: ignore[no-untyped-def]
        from aiokafka.errors import KafkaConnectionError

        await asyncio.sleep(0.01)
        raise KafkaConnectionError("broker away")


async def test_log_shipping_that_fails_for_long_never_blocks_the_task(tmp_path):
    from shoal_worker.logship import LogShipper

    d = dispatch("for i in $(seq 1 200000); do echo line $i; done; echo done")
    shipper = LogShipper(_NoBroker(), "t.task-logs", d, give_up_after=0.2)  # type: ignore[arg-type]
    a = Attempt(d, tmp_path, dict(os.environ), on_lines=shipper.add, keep_workdir="always")
    out = await asyncio.wait_for(a.run(), 60)
    assert out.exit_code == 0
    await asyncio.wait_for(shipper.close(), 10)
    assert shipper.dropped > 0
    assert (a.workdir / "task.log").read_text().splitlines()[-1] == "done"


async def test_a_shell_attempt_leaves_its_exit_status_and_nested_shells_do_not(tmp_path):
    """The shell writes its exit status as it exits (for a worker killed before it saw
    the end); a shell the task starts does not overwrite it, and a script that replaces
    its shell (exec) leaves none."""
    from shoal_worker.executor import EXIT_FILE

    for i, (command, written) in enumerate([
            ("bash -c 'exit 5'; exit 3", "3"), ("echo ok", "0"), ("exec true", None),
            ('[ -z "$BASH_ENV" ] || exit 9; exit 0', "0")]):
        a = Attempt(dispatch(command, task=f"t{i}"), tmp_path, dict(os.environ),
                    keep_workdir="always")
        await a.run()
        exit_file = a.workdir / EXIT_FILE
        assert (exit_file.read_text().strip() if exit_file.exists() else None) == written, \
            command


class _Recorder:
    """A producer that keeps what it is given and, like aiokafka, refuses a record above
    its limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.sent = limit, []

    async def send_and_wait(self, topic, value, key=None):  # type: ignore[no-untyped-def]
        from aiokafka.errors import MessageSizeTooLargeError

        if len(value) > self.limit:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        self.sent.append(json.loads(value))


async def test_log_chunks_never_exceed_one_record_and_lose_no_line():
    """Lines that would make a chunk larger than a record are sent as several chunks; a
    line too long for a record alone is cut, saying so. Before, the chunk was refused and
    its lines dropped (and 5 s of the lines after it)."""
    from shoal_worker.logship import LogShipper

    limit = 100_000
    producer = _Recorder(limit)
    shipper = LogShipper(producer, "t.task-logs", dispatch("true"), limit=limit)  # type: ignore[arg-type]
    lines = [("t", f"{i} " + "\\" * 30_000) for i in range(6)]  # escaped: ~60 KB each
    lines.append(("t", "long " + "y" * 250_000))
    lines.append(("t", "last"))
    await shipper.add(lines)
    await shipper.close()
    assert shipper.dropped == 0
    assert all(len(json.dumps(c)) <= limit for c in producer.sent)
    assert [c["chunk"] for c in producer.sent] == list(range(len(producer.sent)))
    got = [line for c in producer.sent for _, line in c["lines"]]
    assert got[:6] == [line for _, line in lines[:6]] and got[-1] == "last"
    assert got[6].startswith("long yyy") and "line cut at" in got[6] and len(got) == 8
    assert producer.sent[-1]["final"] and not any(c["final"] for c in producer.sent[:-1])
