"""Parameters are data, tasks see no credential, secrets are never stored (issue 22, items
1-4), through real services: run params on the API and on Kafka, fork and backfill params,
into shell, python-script, sql (a datasource database separate from Shoal's) and http."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest

from tests.e2e.kafka_io import publish_with_librdkafka, read_all
from tests.support import JsonHandler, Stack, eventually, serving, start_command

pytestmark = pytest.mark.e2e

# Each value tries to run something its author did not write: touch MARK (shell, Python)
# or create table pwned (SQL); the http value tries another host and path.
CORPUS = [
    "x'; touch {mark}; echo '", 'x"; touch {mark}; echo "', "$(touch {mark})", "`touch {mark}`",
    "a\ntouch {mark}", "a && touch {mark}", "a || touch {mark}", "a; touch {mark} # c",
    "x'); create table pwned(x int); --", "x'; create table pwned(x int); select '1",
    "1; create table pwned(x int)", "x\"); open('{mark}', 'w'); print(\"",
    "x'); open('{mark}', 'w'); print('", "\\'; touch {mark}; #", "-- x\n/* y */ # z",
    "@evil.example.com/../x?y=1#z", "{{\"a\": 1}}, \"b\": \"c", "${{secret.PW}}",
]


class _Hook(JsonHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append({"path": self.path, "body": body})
        self.reply(200, {"ok": True})


def definition(n: int, out: Path, hook: str) -> dict[str, Any]:
    ps = [f"p{i}" for i in range(n)]
    shell = "\n".join(f"printf %s ${{{p}}} > \"$OUT/$SHOAL_INSTANCE_ID.sh.bare.{p}\"\n"
                      f"printf %s \"${{{p}}}\" > \"$OUT/$SHOAL_INSTANCE_ID.sh.dq.{p}\"\n"
                      f"printf %s '${{{p}}}' > \"$OUT/$SHOAL_INSTANCE_ID.sh.sq.{p}\""
                      for p in ps)
    python = "import os\nd = os.environ['OUT'] + '/' + os.environ['SHOAL_INSTANCE_ID']\n" + \
        "\n".join(f"open(d + '.py.dq.{p}', 'w').write(\"${{{p}}}\")\n"
                  f"open(d + '.py.sq.{p}', 'w').write('${{{p}}}')\n"
                  f"open(d + '.py.bare.{p}', 'w').write(${{{p}}})" for p in ps)
    sql = "create table if not exists seen(tag text, i int, v text);\n" + "\n".join(
        f"insert into seen values ('${{tag}}', {i}, '${{{p}}}');" for i, p in enumerate(ps))
    body = "{" + ", ".join(f'"{p}": "${{{p}}}"' for p in ps) + ', "tag": "${tag}"}'
    return {"name": "inj", "params": {"tag": "t", **{p: "x" for p in ps}}, "tasks": [
        {"name": "sh", "command": shell, "env": {"OUT": str(out)}},
        {"name": "py", "type": "python", "script": python, "env": {"OUT": str(out)}},
        {"name": "sql", "type": "sql", "sql": sql},
        {"name": "http", "type": "http", "method": "POST",
         "url": f"{hook}/h/${{p0}}?tag=${{tag}}&v=${{p1}}",
         "headers": {"Content-Type": "application/json"}, "body": body}]}


async def check_run(stack: Stack, iid: str, tag: str, values: list[str], out: Path,
                    mark: Path, ds: asyncpg.Connection) -> None:
    run = await stack.wait_run(iid, timeout=90)
    assert run["state"] == "succeeded", json.dumps(run)
    for i, v in enumerate(values):
        for kind in ("sh.bare", "sh.dq", "sh.sq", "py.dq", "py.sq", "py.bare"):
            got = (out / f"{iid}.{kind}.p{i}").read_text()
            assert got == v, (kind, i, v, got)
    rows = await ds.fetch("SELECT i, v FROM seen WHERE tag = $1 ORDER BY i", tag)
    assert [r["v"] for r in rows] == values
    sent = [h for h in _Hook.received if h["body"].get("tag") == tag]
    assert len(sent) == 1 and [sent[0]["body"][f"p{i}"] for i in range(len(values))] == values
    assert sent[0]["path"].startswith("/h/") and sent[0]["path"].count("/") == 2
    assert not mark.exists()
    assert await ds.fetchval("SELECT to_regclass('pwned')") is None


async def test_injected_values_arrive_as_data_from_every_source(stack: Stack, tmp_path: Path):
    stack.start("scheduler")
    out = tmp_path / "out"
    out.mkdir()
    mark = tmp_path / "MARK"
    values = [v.format(mark=mark) for v in CORPUS]
    params = {f"p{i}": v for i, v in enumerate(values)}
    ds = await asyncpg.connect(stack.datasource_url)
    _Hook.received = []
    try:
        with serving(_Hook) as hook:
            await stack.apply(definition(len(values), out, hook))
            # Started on the API.
            r = await stack.request("POST", "/api/v1/workflows/inj/runs", role="operator",
                                    json={"params": {**params, "tag": "api"}})
            assert r.status_code == 202, r.text
            api_run = r.json()["instance_id"]
            await check_run(stack, api_run, "api", values, out, mark, ds)
            # Forked with the values reversed.
            back = values[::-1]
            r = await stack.request("POST", f"/api/v1/runs/{api_run}/fork", role="operator",
                                    json={"at": 1, "params": {
                                        **{f"p{i}": v for i, v in enumerate(back)},
                                        "tag": "fork"}})
            assert r.status_code == 202, r.text
            await check_run(stack, r.json()["instance_id"], "fork", back, out, mark, ds)
            # Started on Kafka.
            iid = str(uuid.uuid4())
            publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands", [(iid, json.dumps(
                start_command("inj", iid, params={**params, "tag": "kafka"})).encode())])
            await check_run(stack, iid, "kafka", values, out, mark, ds)
            # A backfill's params.
            r = await stack.request("POST", "/api/v1/workflows/inj/backfill", json={
                "dates": ["2026-01-01"], "cron": "0 0 * * *", "params": {**params,
                                                                         "tag": "backfill"}})
            assert r.status_code in (200, 202), r.text
            await check_run(stack, r.json()["instance_ids"][0], "backfill", values, out, mark,
                            ds)
    finally:
        await ds.close()


async def test_undeclared_mistyped_or_nul_params_are_refused_naming_them(stack: Stack):
    await stack.apply({"name": "typed", "params": {
        "day": {"value": "$[yyyy-MM-dd]", "type": "date"}, "n": {"value": "1", "type": "int"},
        "region": {"value": "eu", "type": "enum", "values": ["eu", "us"]}},
        "tasks": [{"name": "t", "command": "echo ${day} ${n} ${region} ${l}",
                   "params": {"l": "local"}}]})
    ok = await stack.request("POST", "/api/v1/workflows/typed/runs",
                             json={"params": {"day": "2026-01-31", "n": 5, "l": "x"}})
    assert ok.status_code == 202, ok.text
    assert (await stack.wait_run(ok.json()["instance_id"]))["state"] == "succeeded"
    for params, name in [({"rows": "1"}, "rows"), ({"n": "1; drop"}, "n"),
                         ({"region": "fr"}, "region"), ({"day": "tomorrow"}, "day"),
                         ({"l": "a\x00b"}, "l")]:
        r = await stack.request("POST", "/api/v1/workflows/typed/runs", json={"params": params})
        assert r.status_code == 422, r.text
        assert f"params.{name}" in r.text, r.text
        r = await stack.request("POST", f"/api/v1/runs/{ok.json()['instance_id']}/fork",
                                json={"at": 1, "params": params})
        assert r.status_code == 422 and f"params.{name}" in r.text, r.text
        r = await stack.request("POST", "/api/v1/schedules", json={
            "workflow": "typed", "cron": "0 0 * * *", "params": params})
        assert r.status_code == 422 and f"params.{name}" in r.text, r.text
        r = await stack.request("POST", "/api/v1/workflows/typed/backfill", json={
            "dates": ["2026-01-01"], "cron": "0 0 * * *", "params": params})
        assert r.status_code == 422 and f"params.{name}" in r.text, r.text
    # On Kafka: a dead letter naming it, and no run.
    iid = str(uuid.uuid4())
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands", [(iid, json.dumps(
        start_command("typed", iid, params={"rows": "$(id)"})).encode())])

    async def dead() -> dict | None:
        found = [d for d in await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters")
                 if d.get("key") == iid]
        return found[0] if found else None
    letter = await eventually(dead, what="the undeclared param dead-lettered")
    assert "'rows' is not a parameter the definition declares" in letter["reason"]
    assert await stack.run_state(iid) is None
    # A value that is not of the type PostgreSQL infers fails the sql task, naming it.
    await stack.apply({"name": "conv", "params": {"n": "1"}, "tasks": [
        {"name": "q", "type": "sql", "sql": "select ${n} + 1 as m", "outputs": ["m"]}]})
    good = await stack.request("POST", "/api/v1/workflows/conv/runs", json={"params": {"n": 41}})
    bad = await stack.request("POST", "/api/v1/workflows/conv/runs",
                              json={"params": {"n": "1; select 2"}})
    assert (await stack.wait_run(good.json()["instance_id"]))["tasks"][0]["outputs"] == \
        {"m": "42"}
    assert (await stack.wait_run(bad.json()["instance_id"]))["state"] == "failed"
    errors = [e["data"]["error"] for e in await stack.events(bad.json()["instance_id"])
              if e["type"] == "TaskFailed"]
    assert errors == ["statement 1: n cannot be bound: '1; select 2' is not a valid int4 "
                      "(invalid literal for int() with base 10: '1; select 2')"]
    # A bad type spec and an unknown datasource are refused at publish.
    r = await stack.request("POST", "/api/v1/workflows", json={"name": "bad", "params": {
        "n": {"value": "x", "type": "int"}}, "tasks": [{"name": "t", "command": "echo ${n}"}]})
    assert r.status_code == 422 and "params.n.value" in r.text, r.text
    r = await stack.request("POST", "/api/v1/workflows", json={"name": "bad", "tasks": [
        {"name": "q", "type": "sql", "datasource": "warehouse", "sql": "select 1"}]})
    assert r.status_code == 422, r.text
    assert r.json()["problems"] == [{"path": "tasks[0].datasource", "message":
                                     "unknown datasource 'warehouse' (SHOAL_DATASOURCES has: "
                                     "default)"}]


async def test_unset_datasources_means_none(bare_stack: Stack):
    bare_stack.start("api")
    await eventually(bare_stack._healthy, timeout=60, what="API up")
    r = await bare_stack.request("POST", "/api/v1/workflows", json={"name": "q", "tasks": [
        {"name": "q", "type": "sql", "sql": "delete from shoal.events"}]})
    assert r.status_code == 422, r.text
    assert "unknown datasource 'default' (SHOAL_DATASOURCES has: none)" in r.text


CODE = """\
import os

def show(pw):
    print("\\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
    print(open(f"/proc/{os.getppid()}/environ").read().replace("\\0", "\\n"))
    print("pw=" + pw)
    return {"pw_md5": __import__("hashlib").md5(pw.encode()).hexdigest()}
"""


async def test_tasks_see_no_credential_and_secrets_are_never_stored(bare_stack: Stack,
                                                                    datasource: str,
                                                                    tmp_path: Path):
    stack = bare_stack
    secret = f"s3cr3t-{uuid.uuid4().hex[:10]}"
    code = tmp_path / "code"
    (code / "envtasks").mkdir(parents=True)
    (code / "envtasks" / "__init__.py").write_text(CODE)
    stack.datasource_url = datasource
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator")
    stack.start("projector")
    stack.start("worker", SHOAL_SECRET_PW=secret, JAVA_HOME="/opt/java-passed",
                SHOAL_TASK_ENV_PASS="JAVA_HOME", SHOAL_CODE_PATH=str(code),
                SHOAL_WORKER_WARM_PYTHON="true")
    md5 = hashlib.md5(secret.encode()).hexdigest()
    await stack.apply({"name": "sec", "tasks": [
        {"name": "sh", "command": "env\ncat /proc/$PPID/environ | tr '\\0' '\\n'\n"
                                  "echo \"pw=${secret.PW}\"\n"
                                  "echo '${setValue(pw_md5='$(printf %s ${secret.PW} | "
                                  "md5sum | cut -c1-32)')}'", "outputs": ["pw_md5"]},
        {"name": "py", "type": "python", "script":
            "import os, hashlib\nprint(dict(os.environ))\nprint('pw=${secret.PW}')\n"
            "print('${setValue(pw_md5=%s)}' % hashlib.md5('${secret.PW}'.encode()).hexdigest())",
         "outputs": ["pw_md5"]},
        {"name": "fn", "type": "python", "function": "envtasks:show",
         "args": {"pw": "${secret.PW}"}, "outputs": ["pw_md5"]},
        {"name": "sql", "type": "sql", "sql": "select md5('${secret.PW}') as pw_md5",
         "outputs": ["pw_md5"]},
        {"name": "leak", "command": "echo '${setValue(out=${secret.PW})}'", "outputs": ["out"]},
    ]})
    r = await stack.request("POST", "/api/v1/workflows/sec/runs", json={})
    iid = r.json()["instance_id"]
    run = await stack.wait_run(iid, timeout=90)
    assert run["state"] == "succeeded", json.dumps(run)
    tasks = {t["task"]: t for t in run["tasks"]}
    # The secret reached every task type (its fingerprint is right) ...
    for name in ("sh", "py", "fn", "sql"):
        assert tasks[name]["outputs"] == {"pw_md5": md5}, name
    assert tasks["leak"]["outputs"] == {"out": "***"}
    logs = {}
    for name in tasks:
        async def log(name: str = name) -> str | None:
            r = await stack.request("GET", f"/api/v1/runs/{iid}/tasks/{name}/log")
            return r.text if r.status_code == 200 and r.text.strip() else None
        logs[name] = await eventually(log, what=f"log of {name}")
    assert "pw=***" in logs["sh"] and "pw=***" in logs["py"] and "pw=***" in logs["fn"]
    # ... and no credential of the installation reached any task; the passed name did.
    assert "JAVA_HOME=/opt/java-passed" in logs["sh"]
    assert "JAVA_HOME=/opt/java-passed" in logs["fn"]
    credentials = [secret, *stack.tokens.values(), stack.database_url, datasource]
    for name, text in logs.items():
        for c in credentials:
            assert c not in text, (name, c)
        # Not in the task's environment; the worker's own (/proc/PPID/environ of a shell
        # task) shows the names with their values overwritten (or empty: the test's
        # worker is given SHOAL_API_TOKENS="").
        assert not re.search(r"SHOAL_(API_TOKENS?|DATABASE_URL|DATASOURCES|SECRET_PW)="
                             r"(?![*\n]|\Z)", text), name
    # The value is nowhere Shoal keeps or serves: events, run, bundle, read models.
    served = [json.dumps(await stack.events(iid)),
              (await stack.request("GET", f"/api/v1/runs/{iid}")).text,
              (await stack.request("GET", f"/api/v1/runs/{iid}/bundle")).text,
              (await stack.request("GET", "/api/v1/runs")).text]
    assert "${secret.PW}" in served[0]  # the events hold the reference
    conn = await asyncpg.connect(stack.database_url)
    try:
        for table in ("shoal_read.workflow_runs", "shoal_read.task_runs", "shoal.events"):
            served += [str(r) for r in await conn.fetch(f"SELECT t::text FROM {table} t")]
    finally:
        await conn.close()
    for text in served:
        assert secret not in text
