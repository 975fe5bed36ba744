"""The ``shoal`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TERMINAL = {"succeeded", "failed", "stopped"}


def _api() -> str:
    host = os.environ.get("SHOAL_API_HOST", "127.0.0.1")
    port = os.environ.get("SHOAL_API_PORT", "8460")
    return os.environ.get("SHOAL_API_URL", f"http://{host}:{port}")


def _request(method: str, path: str, **kw: Any) -> Any:
    import httpx

    try:
        r = httpx.request(method, _api() + path, timeout=30, **kw)
    except httpx.HTTPError as exc:
        sys.exit(f"shoal: cannot reach the API at {_api()}: {exc}")
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        if isinstance(detail, dict):
            lines = [detail.get("message", "")]
            lines += [f"  {p['path']}: {p['message']}" for p in detail.get("problems", [])]
            detail = "\n".join(lines)
        sys.exit(f"shoal: {method} {path} -> {r.status_code}\n{detail}")
    return r.json()


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_apply(args: argparse.Namespace) -> None:
    path = Path(args.file)
    ctype = "application/json" if path.suffix == ".json" else "application/yaml"
    out = _request("POST", "/api/v1/workflows", content=path.read_bytes(),
                   headers={"content-type": ctype})
    state = "published" if out.get("changed") else "unchanged"
    print(f"{out['name']} version {out['version']} ({state})")


def cmd_run(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"params": _params(args.param)}
    if args.version:
        body["version"] = args.version
    if args.start_from:
        body["start_from"] = args.start_from
        body["scope"] = args.scope
    if args.priority:
        body["priority"] = args.priority
    if args.dry_run:
        body["dry_run"] = True
    out = _request("POST", f"/api/v1/workflows/{args.workflow}/runs", json=body)
    iid = out["instance_id"]
    print(iid)
    if args.wait:
        run = _wait(iid, args.timeout)
        _print(run)
        if run["state"] != "succeeded":
            sys.exit(1)


def _wait(iid: str, timeout: float) -> Any:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{_api()}/api/v1/runs/{iid}", timeout=10)
        if r.status_code == 200 and r.json()["state"] in TERMINAL:
            return r.json()
        time.sleep(0.3)
    sys.exit(f"shoal: run {iid} not finished after {timeout}s")


def cmd_control(args: argparse.Namespace) -> None:
    out = _request("POST", f"/api/v1/runs/{args.id}/{args.cmd}")
    print(f"{out['command']} sent to {out['instance_id']}")


def cmd_force(args: argparse.Namespace) -> None:
    _request("POST", f"/api/v1/runs/{args.id}/tasks/{args.task}/force-success")
    print(f"ForceTaskSuccess sent for {args.task} of {args.id}")


def cmd_logs(args: argparse.Namespace) -> None:
    import httpx

    params: dict[str, Any] = {"follow": str(args.follow).lower()}
    if args.attempt:
        params["attempt"] = args.attempt
    path = f"/api/v1/runs/{args.id}/tasks/{args.task}/log"
    if not args.follow:
        r = httpx.get(_api() + path, params=params, timeout=60)
        if r.status_code >= 400:
            sys.exit(f"shoal: {r.status_code} {r.text}")
        sys.stdout.write(r.text)
        return
    # Reads wait as long as the task is silent; connecting still times out.
    with httpx.stream("GET", _api() + path, params=params,
                      timeout=httpx.Timeout(10.0, read=None)) as r:
        if r.status_code >= 400:
            sys.exit(f"shoal: {r.status_code} {r.read().decode()}")
        event = "message"
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") or line == "data:":
                if event == "end":
                    return
                print(line[6:], flush=True)
            elif not line:
                event = "message"


def _params(pairs: list[str] | None) -> dict[str, str]:
    params = {}
    for p in pairs or []:
        if "=" not in p:
            sys.exit(f"shoal: --param expects k=v, got {p!r}")
        k, v = p.split("=", 1)
        params[k] = v
    return params


def _schedule_line(s: dict[str, Any]) -> str:
    nxt = s["next_fires"][0] if s["next_fires"] and s["enabled"] else "-"
    return (f"{s['id']}  {s['workflow']:<20} {s['cron']:<18} {s['timezone']:<16} "
            f"{'enabled' if s['enabled'] else 'disabled':<8} catchup={s['catchup']:<6} "
            f"next={nxt}")


def cmd_schedule(args: argparse.Namespace) -> None:
    if args.action == "create":
        body: dict[str, Any] = {"workflow": args.workflow, "cron": args.cron,
                                "timezone": args.timezone, "catchup": args.catchup,
                                "enabled": not args.disabled, "params": _params(args.param)}
        if args.start:
            body["start"] = args.start
        if args.end:
            body["end"] = args.end
        out = _request("POST", "/api/v1/schedules", json=body)
        print(_schedule_line(out))
        print("next fires: " + ", ".join(out["next_fires"]))
    elif args.action == "list":
        path = "/api/v1/schedules" + (f"?workflow={args.workflow}" if args.workflow else "")
        for s in _request("GET", path):
            print(_schedule_line(s))
    elif args.action == "show":
        _print(_request("GET", f"/api/v1/schedules/{args.id}"))
    elif args.action in ("enable", "disable"):
        change: dict[str, Any] = {"enabled": args.action == "enable"}
        if getattr(args, "catchup", None):
            change["catchup"] = args.catchup
        print(_schedule_line(_request("PUT", f"/api/v1/schedules/{args.id}", json=change)))
    elif args.action == "delete":
        _request("DELETE", f"/api/v1/schedules/{args.id}")
        print(f"schedule {args.id} deleted")


def _backfill_line(b: dict[str, Any]) -> str:
    return (f"{b['backfill_id']}  {b['workflow']:<20} {b['state']:<9} {b['mode']:<8} "
            f"planned={b['planned']} started={b['started']} finished={b['finished']} "
            f"succeeded={b['succeeded']} failed={b['failed']}")


def cmd_backfill(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"mode": args.mode, "parallelism": args.parallelism,
                            "reverse": args.reverse, "params": _params(args.param)}
    for k in ("start", "end", "cron", "timezone"):
        if getattr(args, k):
            body[k] = getattr(args, k)
    if args.date:
        body["dates"] = args.date
    out = _request("POST", f"/api/v1/workflows/{args.workflow}/backfill", json=body)
    n = len(out["instance_ids"])
    print(f"backfill {out['backfill_id']}: {n} run(s)"
          + ("" if out.get("created", True) else " (already submitted: nothing new)"))
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            b = _request("GET", f"/api/v1/backfills/{out['backfill_id']}")
            if b["state"] in ("finished", "cancelled"):
                print(_backfill_line(b))
                sys.exit(0 if b["failed"] == 0 and b["state"] == "finished" else 1)
            time.sleep(0.5)
        sys.exit(f"shoal: backfill not finished after {args.timeout}s")


def cmd_backfills(args: argparse.Namespace) -> None:
    if args.action == "list":
        for b in _request("GET", "/api/v1/backfills"):
            print(_backfill_line(b))
    elif args.action == "show":
        print(_backfill_line(_request("GET", f"/api/v1/backfills/{args.id}")))
    else:
        out = _request("POST", f"/api/v1/backfills/{args.id}/{args.action}")
        print(f"backfill {out['backfill_id']}: {out['state']}")


def cmd_workflow(args: argparse.Namespace) -> None:
    if args.action == "delete":
        _request("DELETE", f"/api/v1/workflows/{args.name}")
        print(f"workflow {args.name} deleted")
    else:
        _request("POST", f"/api/v1/workflows/{args.name}/{args.action}")
        print(f"workflow {args.name} is {args.action}")


def cmd_workers(args: argparse.Namespace) -> None:
    for w in _request("GET", "/api/v1/workers"):
        print(f"{w['worker_id']:<32} group={w['group']:<12} slots={w['slots']:<3} "
              f"running={len(w['running']):<3} last={w['last_heartbeat']}")


def cmd_status(args: argparse.Namespace) -> None:
    _print(_request("GET", f"/api/v1/runs/{args.id}"))


def cmd_events(args: argparse.Namespace) -> None:
    for e in _request("GET", f"/api/v1/runs/{args.id}/events"):
        print(f"{e['seq']:>4} {e['recorded_at']} {e['type']:<18} "
              f"{json.dumps({k: v for k, v in e['data'].items() if k != 'definition'})}")


def cmd_replay(args: argparse.Namespace) -> None:
    """Rebuild the state from the log step by step (reads the event store directly)."""
    import asyncio

    from shoal.core.model import event_from_data
    from shoal.core.workflow import evolve
    from shoal.infra.settings import Settings

    async def go() -> None:
        import asyncpg

        from shoal.infra.store import EventStore

        pool = await asyncpg.create_pool(Settings().database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            run = None
            for e in await EventStore(pool).events_of(args.id):
                if args.until and e.seq > args.until:
                    break
                run = evolve(run, event_from_data(e.type, e.data), instance_id=args.id)
                tasks = " ".join(f"{t.name}={t.state.value}" for t in run.tasks.values())
                print(f"{e.seq:>4} {e.type:<18} run={run.state.value} {tasks}")
        finally:
            await pool.close()

    asyncio.run(go())


def cmd_projections(args: argparse.Namespace) -> None:
    import asyncio

    import asyncpg

    from shoal.infra.readmodels import rebuild
    from shoal.infra.settings import Settings

    async def go() -> None:
        pool = await asyncpg.create_pool(Settings().database_url, min_size=1, max_size=1)
        assert pool is not None
        try:
            await rebuild(pool)
        finally:
            await pool.close()

    asyncio.run(go())
    print("read models emptied; the running projector refills them from the event log")


def cmd_service(args: argparse.Namespace) -> None:
    name = args.name
    if name == "api":
        from shoal_api.app import run
    elif name == "orchestrator":
        from shoal_orchestrator.main import run
    elif name == "worker":
        from shoal_worker.main import run
    elif name == "projector":
        from shoal_projector.main import run
    elif name == "scheduler":
        from shoal_scheduler.main import run
    else:
        sys.exit(f"shoal: unknown service {name!r} "
                 "(api, orchestrator, worker, projector, scheduler)")
    run()


def cmd_dev(args: argparse.Namespace) -> None:
    from shoal.devstack import run_dev

    run_dev(examples=Path(args.examples), workers=args.workers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="shoal", description="Shoal workflow scheduler")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("dev", help="run the whole stack locally (embedded broker/Postgres)")
    s.add_argument("--examples", default="examples")
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(fn=cmd_dev)
    s = sub.add_parser("service", help="run one service in the foreground")
    s.add_argument("name", choices=["api", "orchestrator", "worker", "projector", "scheduler"])
    s.set_defaults(fn=cmd_service)
    s = sub.add_parser("apply", help="publish a workflow definition (YAML or JSON)")
    s.add_argument("file")
    s.set_defaults(fn=cmd_apply)
    s = sub.add_parser("run", help="start a run")
    s.add_argument("workflow")
    s.add_argument("--param", action="append", metavar="K=V")
    s.add_argument("--version", type=int)
    s.add_argument("--start-from", action="append", metavar="TASK",
                   help="start from this task (repeatable) instead of the DAG's roots")
    s.add_argument("--scope", choices=["downstream", "upstream", "only"], default="downstream")
    s.add_argument("--priority", choices=["highest", "high", "medium", "low", "lowest"])
    s.add_argument("--dry-run", action="store_true", help="every task succeeds without running")
    s.add_argument("--wait", action="store_true", help="wait until the run finishes")
    s.add_argument("--timeout", type=float, default=3600)
    s.set_defaults(fn=cmd_run)
    for verb, text in [("pause", "let running tasks finish, dispatch nothing new"),
                       ("resume", "continue a paused run"),
                       ("stop", "kill running tasks; the run ends stopped"),
                       ("rerun", "run everything again (attempt + 1)"),
                       ("recover", "re-run only what failed, was killed or never ran")]:
        s = sub.add_parser(verb, help=text)
        s.add_argument("id")
        s.set_defaults(fn=cmd_control)
    s = sub.add_parser("force-success", help="mark a failed or killed task as succeeded")
    s.add_argument("id")
    s.add_argument("task")
    s.set_defaults(fn=cmd_force)
    s = sub.add_parser("logs", help="a task's output (latest attempt by default)")
    s.add_argument("id")
    s.add_argument("task")
    s.add_argument("--attempt", type=int)
    s.add_argument("--follow", "-f", action="store_true", help="stream until the attempt ends")
    s.set_defaults(fn=cmd_logs)
    s = sub.add_parser("workers", help="live workers")
    s.set_defaults(fn=cmd_workers)
    s = sub.add_parser("status", help="a run with its tasks")
    s.add_argument("id")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("events", help="a run's event history")
    s.add_argument("id")
    s.set_defaults(fn=cmd_events)
    s = sub.add_parser("replay", help="rebuild a run's state from its log, step by step")
    s.add_argument("id")
    s.add_argument("--until", type=int)
    s.set_defaults(fn=cmd_replay)
    s = sub.add_parser("schedule", help="cron schedules of workflows")
    ssub = s.add_subparsers(dest="action", required=True)
    c = ssub.add_parser("create", help="schedule a workflow")
    c.add_argument("workflow")
    c.add_argument("--cron", required=True,
                   help="5-field cron, or Quartz 6/7-field with seconds first: '0 0 2 * * ?'")
    c.add_argument("--timezone", default="UTC", help="IANA name, e.g. Europe/Berlin")
    c.add_argument("--start", help="no fire before this time (RFC 3339; naive = local)")
    c.add_argument("--end", help="no fire after this time")
    c.add_argument("--param", action="append", metavar="K=V")
    c.add_argument("--catchup", choices=["all", "latest", "none"], default="all",
                   help="fires missed while no scheduler ran or the schedule was off")
    c.add_argument("--disabled", action="store_true", help="create it switched off")
    lst = ssub.add_parser("list", help="schedules with their next fire")
    lst.add_argument("--workflow")
    for verb in ("show", "enable", "disable", "delete"):
        v = ssub.add_parser(verb)
        v.add_argument("id")
        if verb == "enable":
            v.add_argument("--catchup", choices=["all", "latest", "none"],
                           help="what to do with the fires missed while it was off")
    s.set_defaults(fn=cmd_schedule)
    s = sub.add_parser("backfill", help="run a workflow for past dates (complement data)")
    s.add_argument("workflow")
    s.add_argument("--start", help="first time, e.g. 2026-01-01")
    s.add_argument("--end", help="last time (inclusive)")
    s.add_argument("--date", action="append", help="an explicit date (repeatable)")
    s.add_argument("--cron", help="default: the workflow's schedule, else daily at midnight")
    s.add_argument("--timezone")
    s.add_argument("--mode", choices=["serial", "parallel"], default="serial")
    s.add_argument("--parallelism", type=int, default=1)
    s.add_argument("--reverse", action="store_true", help="latest date first")
    s.add_argument("--param", action="append", metavar="K=V")
    s.add_argument("--wait", action="store_true", help="wait until every run finished")
    s.add_argument("--timeout", type=float, default=86400)
    s.set_defaults(fn=cmd_backfill)
    s = sub.add_parser("backfills", help="backfills: list, show, pause, resume, cancel")
    bsub = s.add_subparsers(dest="action", required=True)
    bsub.add_parser("list")
    for verb in ("show", "pause", "resume", "cancel"):
        bsub.add_parser(verb).add_argument("id")
    s.set_defaults(fn=cmd_backfills)
    s = sub.add_parser("workflow", help="put a workflow online or offline, or delete it")
    s.add_argument("action", choices=["online", "offline", "delete"])
    s.add_argument("name")
    s.set_defaults(fn=cmd_workflow)
    s = sub.add_parser("projections", help="read-model maintenance")
    s.add_argument("action", choices=["rebuild"])
    s.set_defaults(fn=cmd_projections)
    args = p.parse_args(argv)
    try:
        args.fn(args)
    except BrokenPipeError:  # `shoal events ID | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
