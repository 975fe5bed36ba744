"""A task sees no credential of its worker, secrets reach it and nothing else shows them
(issue 22, items 1 and 4), on real processes and a real warm Python runner."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from shoal_worker.executor import Attempt
from shoal_worker.prepare import Secrets, mask, prepare, task_env
from shoal_worker.warm import WarmPython

CREDENTIALS = {
    "SHOAL_API_TOKENS": "admin:tok-admin-5f1e,operator:tok-op-77aa",
    "SHOAL_DATABASE_URL": "postgresql://shoal:db-pass-91c2@127.0.0.1/shoal",
    "SHOAL_DATASOURCES": '{"wh": "postgresql://wh:ds-pass-3b7d@127.0.0.1/wh"}',
    "SHOAL_ALERT_CHANNELS": '{"ops": {"type": "webhook", "url": "https://x/alert-key-4411"}}',
    "SHOAL_SECRET_API_KEY": "sec-value-8e21",
    "SHOAL_METRICS_TOKEN": "metrics-tok-1d9d",
}
LEAKS = ["tok-admin-5f1e", "tok-op-77aa", "db-pass-91c2", "ds-pass-3b7d", "alert-key-4411",
         "sec-value-8e21", "metrics-tok-1d9d", "SHOAL_API_TOKENS", "SHOAL_DATABASE_URL",
         "SHOAL_SECRET_API_KEY", "SHOAL_SECRETS_DIR", "SHOAL_TASK_ENV_PASS"]


def worker_env(tmp_path: Path) -> dict[str, str]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    (secrets_dir / "FROM_FILE").write_text("file-secret-62c0\n")
    return {**os.environ, **CREDENTIALS, "SHOAL_SECRETS_DIR": str(secrets_dir),
            "JAVA_HOME": "/opt/java-passed", "OTHER_VAR": "not-passed-0c3e",
            "LC_ALL": "C.UTF-8", "SHOAL_TASK_ENV_PASS": "JAVA_HOME, NOT_SET"}


def dispatch(task_type: str, spec: dict, **extra: object) -> dict:
    return {"instance_id": "i", "task": "t", "attempt": 1, "dispatch_id": "d",
            "workflow": "w", "task_type": task_type, "command": "", "outputs": ["echoed"],
            "spec": {"values": {}, **spec}, **extra}


def test_the_environment_is_an_allow_list():
    env = task_env({"PATH": "/bin", "HOME": "/h", "LANG": "C", "LC_TIME": "C", "TZ": "UTC",
                    **CREDENTIALS, "JAVA_HOME": "/j", "X": "y",
                    "SHOAL_TASK_ENV_PASS": "JAVA_HOME,SHOAL_API_TOKENS"},
                   {"GREETING": "hi", "SHOAL_TASK": "forged"}, {"SHOAL_TASK": "t"})
    assert env == {"PATH": "/bin", "HOME": "/h", "LANG": "C", "LC_TIME": "C", "TZ": "UTC",
                   "JAVA_HOME": "/j", "GREETING": "hi", "SHOAL_TASK": "t"}


def test_secrets_come_from_variables_then_files_and_a_missing_one_is_named(tmp_path):
    s = Secrets(worker_env(tmp_path))
    assert s.get("API_KEY") == "sec-value-8e21" and s.get("FROM_FILE") == "file-secret-62c0"
    assert s.get("../etc/passwd") is None and s.get("NOPE") is None
    with pytest.raises(Exception, match="secret\\(s\\) NOPE not found"):
        prepare(dispatch("shell", {"template": "echo ${secret.NOPE} ${secret.API_KEY}"}), s)


def test_a_value_holding_a_secret_reference_stays_text(tmp_path):
    d = dispatch("shell", {"template": "echo ${v} ${secret.API_KEY}",
                           "values": {"v": "${secret.API_KEY}"}})
    p = prepare(d, Secrets(worker_env(tmp_path)))
    assert p.dispatch["command"] == "echo '${secret.API_KEY}' 'sec-value-8e21'"


def test_masking_covers_every_line_of_a_multi_line_secret():
    assert mask("a sec-1 b", ["sec-1"]) == "a *** b"
    pem = ["line-one-x\nline-two-y"]
    assert mask("-----\nline-one-x\nline-two-y", pem) == "-----\n***"
    # A log is masked line by line: each line of the secret alone is masked too.
    assert [mask(ln, pem) for ln in ["-----", "line-one-x", "line-two-y"]] == \
        ["-----", "***", "***"]


SCRIPT_SHELL = ("env; echo \"key=${secret.API_KEY} file=${secret.FROM_FILE}\"; "
                "echo '${setValue(echoed=${secret.API_KEY})}'; "
                "cat /proc/$PPID/environ | tr '\\0' '\\n'")
SCRIPT_PY = textwrap.dedent("""\
    import os
    for k, v in sorted(os.environ.items()):
        print(f"{k}={v}")
    print("key=${secret.API_KEY} file=${secret.FROM_FILE}")
    print("${setValue(echoed=%s)}" % "${secret.API_KEY}")
    print(open(f"/proc/{os.getppid()}/environ").read().replace("\\0", "\\n"))
    """)
TASKS = """\
import os

def show(key):
    for k, v in sorted(os.environ.items()):
        print(f"{k}={v}")
    print(open(f"/proc/{os.getppid()}/environ").read().replace("\\0", "\\n"))
    print("key=" + key)
    return {"echoed": key}
"""


@pytest.mark.parametrize("kind", ["shell", "python", "warm-script", "function"])
async def test_a_task_sees_no_credential_and_its_secrets_only_masked(tmp_path, kind):
    env = worker_env(tmp_path)
    code = tmp_path / "code"
    (code / "envtasks").mkdir(parents=True)
    (code / "envtasks" / "__init__.py").write_text(TASKS)
    warm = WarmPython.for_worker({**env, "SHOAL_CODE_PATH": str(code)}) \
        if kind in ("warm-script", "function") else None
    if kind == "shell":
        d = dispatch("shell", {"template": SCRIPT_SHELL})
    elif kind in ("python", "warm-script"):
        d = dispatch("python", {"template": SCRIPT_PY})
    else:
        d = dispatch("python", {"function": "envtasks:show", "args": {},
                                "args_template": {"key": "${secret.API_KEY}"}})
    d["spec"]["env_template"] = {"GREETING": "hi ${v}"}
    d["spec"]["values"] = {"v": "there"}
    lines: list[str] = []

    async def sink(batch: list[tuple[str, str]]) -> None:
        lines.extend(text for _, text in batch)
    a = Attempt(d, tmp_path / "data", env, on_lines=sink, warm=warm, keep_workdir="always",
                code_path=(str(code),))
    try:
        out = await a.run()
    finally:
        if warm is not None:
            await warm.close()
    log = "\n".join(lines)
    assert out.exit_code == 0, (out.error, log)
    assert "JAVA_HOME=/opt/java-passed" in log and "GREETING=hi there" in log
    assert "SHOAL_TASK=t" in log and "LC_ALL=C.UTF-8" in log
    assert "not-passed-0c3e" not in log
    for leak in LEAKS:
        assert leak not in log, leak
    # The secret reached the task (it printed it) and was masked everywhere it left.
    assert "key=***" in log
    if kind != "function":
        assert "file=***" in log and "file-secret-62c0" not in log
    assert out.outputs == {"echoed": "***"}
    file_log = (a.workdir / "task.log").read_text()
    assert "key=***" in file_log and "sec-value-8e21" not in file_log


def test_sql_values_take_the_type_postgres_infers_or_fail_clearly():
    import datetime
    import decimal

    from shoal_worker.inloop import to_pg

    assert to_pg("42", "int4") == 42 and to_pg(" 7 ", "int8") == 7
    assert to_pg("1.5", "float8") == 1.5 and to_pg("1.10", "numeric") == decimal.Decimal("1.10")
    assert to_pg("yes", "bool") is True and to_pg("0", "bool") is False
    assert to_pg("20240131", "date") == to_pg("2024-01-31", "date") == datetime.date(2024, 1, 31)
    assert to_pg("2024-01-31 10:00", "timestamptz").tzinfo is not None
    assert to_pg("x'; drop table t; --", "text") == "x'; drop table t; --"
    with pytest.raises(ValueError, match=r"'1; drop' is not a valid int4"):
        to_pg("1; drop", "int4")
    with pytest.raises(ValueError, match="cast it in the SQL"):
        to_pg("1 day", "interval")
