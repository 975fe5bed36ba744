"""The warm Python runner (zygote) on real processes: scripts and function tasks forked
from one warm interpreter, with the process semantics of every other task."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal_worker.executor import Attempt
from shoal_worker.warm import WarmPython

TASKS = '''
import asyncio, os, subprocess, sys, time

def add(rows, answer, label="none"):
    print("adding", rows, answer, label)
    return {"total": rows + answer, "label": label, "undeclared": 1}

async def later(x):
    await asyncio.sleep(0.01)
    return {"total": x * 2}

def boom():
    raise ValueError("no good")

def leave(code):
    sys.stdout.flush()
    os._exit(code)

def linger(pidfile):
    child = subprocess.Popen(["sleep", "60"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(60)

def slow(seconds):
    time.sleep(seconds)
    return {"slept": seconds}

def where():
    return {"cwd": os.getcwd(), "task": os.environ["SHOAL_TASK"], "pgid": os.getpgid(0),
            "pid": os.getpid()}
'''


@pytest.fixture
def code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    (root / "wtasks").mkdir(parents=True)
    (root / "wtasks" / "__init__.py").write_text("")
    (root / "wtasks" / "jobs.py").write_text(textwrap.dedent(TASKS))
    return root


@pytest.fixture
async def warm() -> AsyncIterator[WarmPython]:
    w = WarmPython(dict(os.environ))
    yield w
    await w.close()


def function(name: str, fn: str, args: dict | None = None, outputs: list[str] | None = None,
             ) -> dict:
    return {"instance_id": "i", "task": name, "attempt": 1, "dispatch_id": f"d-{name}",
            "task_type": "python", "command": fn, "outputs": outputs or [],
            "spec": {"function": f"wtasks.jobs:{fn}", "args": args or {}}}


def attempt(d: dict, tmp_path: Path, warm: WarmPython, code: Path,
            lines: list[str] | None = None) -> Attempt:
    async def sink(batch: list[tuple[str, str]]) -> None:
        if lines is not None:
            lines.extend(text for _, text in batch)
    return Attempt(d, tmp_path / "data", dict(os.environ), on_lines=sink, warm=warm,
                   code_path=(str(code),))


async def test_a_function_gets_typed_args_and_returns_declared_outputs(tmp_path, warm, code):
    lines: list[str] = []
    out = await attempt(function("add", "add", {"rows": 42, "answer": 1, "label": "day 1"},
                                 ["total", "label"]), tmp_path, warm, code, lines).run()
    assert (out.exit_code, out.error) == (0, "")
    assert out.outputs == {"total": "43", "label": "day 1"}  # undeclared names are dropped
    assert "adding 42 1 day 1" in lines


async def test_async_callables_run_to_completion(tmp_path, warm, code):
    out = await attempt(function("later", "later", {"x": 21}, ["total"]), tmp_path, warm,
                        code).run()
    assert out.outputs == {"total": "42"}


async def test_an_exception_fails_with_the_user_traceback_in_log_and_error(tmp_path, warm,
                                                                           code):
    lines: list[str] = []
    out = await attempt(function("boom", "boom"), tmp_path, warm, code, lines).run()
    assert out.exit_code == 1
    assert "ValueError: no good" in out.error and "jobs.py" in out.error
    assert "zygote.py" not in out.error  # the runner's own frames are left out
    assert "ValueError: no good" in lines and any("Traceback" in ln for ln in lines)


async def test_unknown_module_or_callable_fails_naming_it(tmp_path, warm, code):
    d = function("nomod", "x")
    d["spec"]["function"] = "wtasks.missing:x"
    out = await attempt(d, tmp_path, warm, code).run()
    assert out.exit_code == 1 and "cannot import module 'wtasks.missing'" in out.error
    out = await attempt(function("noattr", "nope"), tmp_path, warm, code).run()
    assert out.exit_code == 1 and "'wtasks.jobs' has no attribute 'nope'" in out.error


async def test_os_exit_gives_its_exit_code(tmp_path, warm, code):
    out = await attempt(function("leave", "leave", {"code": 3}), tmp_path, warm, code).run()
    assert out.exit_code == 3 and out.error == "exit code 3"


async def test_scripts_run_like_python_file_with_outputs_and_exit_codes(tmp_path, warm, code):
    d = {"instance_id": "i", "task": "s", "attempt": 1, "dispatch_id": "d-s",
         "task_type": "python", "outputs": ["x"],
         "command": "import sys\nprint('${setValue(x=5)}')\nprint(__name__)\nsys.exit(4)"}
    lines: list[str] = []
    out = await attempt(d, tmp_path, warm, code, lines).run()
    assert out.exit_code == 4 and out.outputs == {"x": "5"} and "__main__" in lines


async def test_each_attempt_is_its_own_process_group_in_its_own_directory(tmp_path, warm,
                                                                         code):
    a = attempt(function("where", "where", outputs=["cwd", "task", "pgid", "pid"]), tmp_path,
                warm, code)
    a.keep_workdir = "always"
    out = await a.run()
    assert out.outputs["cwd"] == str(a.workdir) and out.outputs["task"] == "where"
    assert out.outputs["pgid"] == out.outputs["pid"] != str(os.getpid())


async def test_a_kill_ends_the_function_and_its_children(tmp_path, warm, code):
    pidfile = tmp_path / "pids"
    a = attempt(function("linger", "linger", {"pidfile": str(pidfile)}), tmp_path, warm, code)
    run = asyncio.create_task(a.run())
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    pids = [int(p) for p in pidfile.read_text().split()]
    await a.kill("stopped", grace=5.0)
    out = await asyncio.wait_for(run, 5)
    assert out.killed and out.exit_code == 128 + signal.SIGTERM
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_attempts_outlive_a_killed_zygote_and_the_next_one_gets_a_new_zygote(
        tmp_path, warm, code):
    running = [asyncio.create_task(attempt(function(f"slow{i}", "slow", {"seconds": 1.0},
                                                    ["slept"]), tmp_path, warm, code).run())
               for i in range(3)]
    await asyncio.sleep(0.5)
    first = warm.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    outs = await asyncio.wait_for(asyncio.gather(*running), 10)
    assert [o.exit_code for o in outs] == [0, 0, 0]
    assert all(o.outputs == {"slept": "1.0"} for o in outs)
    out = await attempt(function("after", "add", {"rows": 1, "answer": 2}, ["total"]),
                        tmp_path, warm, code).run()
    assert out.outputs == {"total": "3"} and warm.pid not in (None, first)
    assert warm.started == 2


async def test_preloaded_modules_are_imported_once_in_the_zygote(tmp_path, code):
    env = {**os.environ, "SHOAL_CODE_PATH": str(code), "SHOAL_PYTHON_PRELOAD":
           "wtasks.jobs, no_such_module_here"}
    w = WarmPython(env)
    try:
        await w.start()  # a bad preload is reported, not fatal
        assert w.pid is not None
        import_check = ("import sys\nprint('${setValue(pre=%s)}' % "
                        "('wtasks.jobs' in sys.modules))")
        d = {"instance_id": "i", "task": "p", "attempt": 1, "dispatch_id": "d-p",
             "task_type": "python", "outputs": ["pre"], "command": import_check}
        out = await Attempt(d, tmp_path / "data", env, warm=w).run()
        assert out.outputs == {"pre": "True"}
    finally:
        await w.close()


async def test_attempts_being_forked_when_the_zygote_dies_still_run(tmp_path, warm, code):
    await warm.start()
    for round_ in range(3):
        runs = [asyncio.create_task(attempt(function(f"r{round_}-{i}", "add",
                                                     {"rows": i, "answer": 1}, ["total"]),
                                            tmp_path, warm, code).run()) for i in range(8)]
        await asyncio.sleep(0.002)  # some requests in flight, some not yet sent
        if warm.pid is not None:
            os.kill(warm.pid, signal.SIGKILL)
        outs = await asyncio.wait_for(asyncio.gather(*runs), 30)
        assert [o.exit_code for o in outs] == [0] * 8, [o.error for o in outs]
        assert [o.outputs for o in outs] == [{"total": str(i + 1)} for i in range(8)]


async def test_a_late_failure_against_a_dead_zygote_leaves_its_replacement_alone(warm):
    # Several attempts fail on the same dead zygote; the first one's retry may already
    # have started a new one, which the others must not take for the dead one.
    await warm.start()
    dead = warm.proc
    assert dead is not None
    os.kill(dead.pid, signal.SIGKILL)
    await dead.wait()
    await warm.start()
    replacement = warm.proc
    assert replacement is not dead
    await warm._forget(dead)
    assert warm.proc is replacement and replacement.returncode is None
