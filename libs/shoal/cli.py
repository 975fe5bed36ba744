"""The ``shoal`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TERMINAL = {"succeeded", "failed", "stopped"}
CLI_CONFIG = "cli.json"  # under SHOAL_DATA_DIR: {"api_url", "api_token"}, written by `shoal dev`


def _data_dir() -> Path:
    return Path(os.environ.get("SHOAL_DATA_DIR", ".shoal"))


def _config() -> dict[str, str]:
    try:
        found = json.loads((_data_dir() / CLI_CONFIG).read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _api() -> str:
    """SHOAL_API_URL, else what `shoal dev` wrote, else SHOAL_API_HOST/PORT."""
    if os.environ.get("SHOAL_API_URL"):
        return os.environ["SHOAL_API_URL"].rstrip("/")
    if _config().get("api_url"):
        return _config()["api_url"].rstrip("/")
    host = os.environ.get("SHOAL_API_HOST", "127.0.0.1")
    port = os.environ.get("SHOAL_API_PORT", "8460")
    return f"http://{host}:{port}"


def _headers() -> dict[str, str]:
    token = os.environ.get("SHOAL_API_TOKEN") or _config().get("api_token")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _fail(r: Any, method: str, path: str) -> None:
    """One line (plus the problems of invalid input) and a non-zero exit."""
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text.strip()[:500]}
    detail = body.get("detail") if isinstance(body, dict) else str(body)
    if isinstance(detail, dict):  # a server speaking the older shape
        detail = detail.get("message", "")
    lines = [f"shoal: {detail or r.reason_phrase} ({r.status_code} on {method} {path})"]
    problems = body.get("problems") if isinstance(body, dict) else None
    if problems and len(problems) > 1:
        lines += [f"  {p['path']}: {p['message']}" for p in problems]
    if r.status_code == 401:
        lines.append("  set SHOAL_API_TOKEN (or run `make dev`, which writes it for the CLI)")
    sys.exit("\n".join(lines))


def _request(method: str, path: str, **kw: Any) -> Any:
    import httpx

    try:
        r = httpx.request(method, _api() + path, timeout=30,
                          headers={**_headers(), **kw.pop("headers", {})}, **kw)
    except httpx.HTTPError as exc:
        sys.exit(f"shoal: cannot reach the API at {_api()}: {exc} (is it running? "
                 "SHOAL_API_URL)")
    if r.status_code >= 400:
        _fail(r, method, path)
    if not r.content:
        return None
    return r.json() if "json" in r.headers.get("content-type", "") else r.text


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Aligned columns with a header; None shows as '-'."""
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _show(found: Any, as_json: bool, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """``found`` as JSON for scripts, else ``rows`` as a table."""
    if as_json:
        _print(found)
    else:
        _table(rows, columns)


def _short(ts: str | None) -> str | None:
    """An RFC 3339 time as 'YYYY-MM-DD HH:MM:SS' (UTC as stored)."""
    return ts[:19].replace("T", " ") if ts else None


def cmd_apply(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if path.suffix == ".py":
        for definition in _sdk_workflows(path):
            _published(_request("POST", "/api/v1/workflows", json=definition))
        return
    ctype = "application/json" if path.suffix == ".json" else "application/yaml"
    _published(_request("POST", "/api/v1/workflows", content=path.read_bytes(),
                        headers={"content-type": ctype}))


def _published(out: dict[str, Any]) -> None:
    state = "published" if out.get("changed") else "unchanged"
    print(f"{out['name']} version {out['version']} ({state})")
    for w in out.get("warnings") or []:
        print(f"  warning: {w['path']}: {w['message']}", file=sys.stderr)


def _sdk_workflows(path: Path) -> list[dict[str, Any]]:
    """Every module-level ``shoal.sdk.Workflow`` of a Python file; the API validates them."""
    import traceback

    from shoal.sdk import workflows_in_file

    try:
        workflows = workflows_in_file(path)
    except Exception:  # noqa: BLE001 - the user's file failed: show where, exit non-zero
        sys.exit(f"shoal: {path} failed to load:\n{traceback.format_exc()}")
    if not workflows:
        sys.exit(f"shoal: {path} defines no module-level shoal.sdk.Workflow")
    return [w.to_dict(validate=False) for w in workflows]


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
    _started(_request("POST", f"/api/v1/workflows/{args.workflow}/runs", json=body), args)


def _started(out: dict[str, Any], args: argparse.Namespace) -> None:
    """Print a new run's id; with --wait, its outcome (exit 1 unless it succeeded)."""
    iid = out["instance_id"]
    print(iid)
    if args.wait:
        run = _wait(iid, args.timeout)
        _show_run(run, args.json)
        if run["state"] != "succeeded":
            sys.exit(1)


def _wait(iid: str, timeout: float) -> Any:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{_api()}/api/v1/runs/{iid}", timeout=10, headers=_headers())
        except httpx.HTTPError:
            r = None  # a restarting API: keep waiting
        if r is not None and r.status_code in (401, 403):
            _fail(r, "GET", f"/api/v1/runs/{iid}")
        if r is not None and r.status_code == 200 and r.json()["state"] in TERMINAL:
            return r.json()
        time.sleep(0.3)
    sys.exit(f"shoal: run {iid} not finished after {timeout}s")


def _show_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print(run)
        return
    took = f"{run['duration_ms']} ms" if run.get("duration_ms") is not None else "-"
    print(f"{run['instance_id']}  {run['workflow']} v{run['version']}  {run['state']}  "
          f"attempt {run['attempt']}  submitted {_short(run['submitted_at'])}  took {took}")
    if run.get("failure"):
        print(f"failure: {run['failure']}")
    if run.get("forked_from"):
        f = run["forked_from"]
        print(f"forked from {f['instance_id']} after event {f['seq']}")
    if run.get("imported"):
        print("imported from an incident bundle: read-only, never executed here")
    if run.get("params"):
        print("params: " + " ".join(f"{k}={v}" for k, v in run["params"].items()))
    _table([{**t, "started_at": _short(t["started_at"]), "ms": t["duration_ms"],
             "exit": t["exit_code"], "outputs": " ".join(
                 f"{k}={v}" for k, v in (t["outputs"] or {}).items()) or None}
            for t in run["tasks"]],
           ["task", "attempt", "state", "worker_id", "started_at", "ms", "exit", "outputs"])


def cmd_control(args: argparse.Namespace) -> None:
    if len(args.id) == 1:
        out = _request("POST", f"/api/v1/runs/{args.id[0]}/{args.cmd}")
        print(f"{out['command']} sent to {out['instance_id']}")
        return
    out = _request("POST", f"/api/v1/runs/batch/{args.cmd}", json={"instance_ids": args.id})
    _show(out, args.json, out["results"], ["instance_id", "status", "detail"])
    if out["refused"]:
        sys.exit(1)


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
        sys.stdout.write(_request("GET", path, params=params) or "")
        return
    # Reads wait as long as the task is silent; connecting still times out.
    try:
        with httpx.stream("GET", _api() + path, params=params, headers=_headers(),
                          timeout=httpx.Timeout(10.0, read=None)) as r:
            if r.status_code >= 400:
                r.read()
                _fail(r, "GET", path)
            for _, event, data in _sse(r.iter_lines()):
                if event == "end":
                    break
                print(data, flush=True)
    except httpx.HTTPError as exc:
        sys.exit(f"shoal: the log stream from {_api()} broke off: {exc}")


def _sse(lines: Any) -> Iterator[tuple[str | None, str, str]]:
    """``(id, event, data)`` of each server-sent message."""
    msg_id: str | None = None
    event, data = "message", None
    for line in lines:
        if line.startswith("id: "):
            msg_id = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data:"):
            data = line[6:]
        elif not line:
            if data is not None:
                yield msg_id, event, data
            event, data = "message", None


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
        found = _request("GET", "/api/v1/schedules",
                         params={"workflow": args.workflow} if args.workflow else {})
        _show(found, args.json, [
            {**s, "next": (s["next_fires"] or [None])[0] if s["enabled"] else None,
             "enabled": "yes" if s["enabled"] else "no"} for s in found],
            ["id", "workflow", "cron", "timezone", "enabled", "catchup", "next"])
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
    path = f"/api/v1/workflows/{args.workflow}/backfill"
    # What will happen, said before it happens (the API plans without creating).
    plan = _request("POST", path, json={**body, "dry_run": True})
    if args.dry_run and args.json:
        _print(plan)
        return
    print(f"plan: {plan['description']}", flush=True)
    if args.dry_run:
        return
    if plan["needs_confirmation"] and not args.yes:
        sys.exit(f"shoal: not started: {plan['count']:,} runs is more than "
                 f"{plan['confirm_above']:,}; check the timetable ({plan['source']}: "
                 f"'{plan['cron']}') and --start/--end, give --cron or --date, or pass --yes "
                 "to backfill anyway")
    out = _request("POST", path, json=body)
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> int:
    """'3600', '45s', '30m', '12h' or '90d' as seconds."""
    unit = _UNITS.get(text[-1:].lower())
    try:
        return int(text[:-1]) * unit if unit else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, or a number with s, m, h or d"
                                         ) from None


def cmd_tokens(args: argparse.Namespace) -> None:
    if args.action == "create":
        body: dict[str, Any] = {"name": args.name, "role": args.role}
        if args.expires_in is not None:
            body["expires_in"] = args.expires_in
        out = _request("POST", "/api/v1/tokens", json=body)
        if args.json:
            _print(out)
            return
        print(f"token {out['name']} ({out['role']}, id {out['id']}, expires "
              f"{_short(out['expires_at']) or 'never'}):", file=sys.stderr)
        print(out["token"])
        print("store it now: it is not shown again", file=sys.stderr)
    elif args.action == "list":
        found = _request("GET", "/api/v1/tokens")
        _show(found, args.json, [{**t, "created": _short(t["created_at"]),
                                  "expires": _short(t["expires_at"]),
                                  "revoked": _short(t["revoked_at"])} for t in found],
              ["id", "name", "role", "state", "created", "expires", "revoked"])
    else:
        out = _request("DELETE", f"/api/v1/tokens/{args.id}")
        if args.json:
            _print(out)
        else:
            print(f"token {out['name']} ({out['id']}) revoked at {_short(out['revoked_at'])}")


def cmd_workflow(args: argparse.Namespace) -> None:
    if args.action == "delete":
        _request("DELETE", f"/api/v1/workflows/{args.name}")
        print(f"workflow {args.name} deleted")
    else:
        _request("POST", f"/api/v1/workflows/{args.name}/{args.action}")
        print(f"workflow {args.name} is {args.action}")


def cmd_workers(args: argparse.Namespace) -> None:
    found = _request("GET", "/api/v1/workers")
    _show(found, args.json, [{**w, "running": len(w["running"]),
                              "last_heartbeat": _short(w["last_heartbeat"])} for w in found],
          ["worker_id", "group", "slots", "running", "last_heartbeat"])


def cmd_cluster(args: argparse.Namespace) -> None:
    found = _request("GET", "/api/v1/cluster")
    if args.json:
        _print(found)
        return
    rows = [{"member": o["member_id"], "kind": "orchestrator", "group": o["group"],
             "partitions": ",".join(map(str, o["partitions"])) or None,
             "lag": sum(o["lag"].values()), "seen": _short(o["last_seen"])}
            for o in found["orchestrators"]]
    rows += [{"member": w["worker_id"], "kind": "worker", "group": w["group"],
              "partitions": ",".join(map(str, w["partitions"])) or None,
              "lag": sum(w["lag"].values()), "seen": _short(w["last_heartbeat"])}
             for w in found["workers"]]
    _table(rows, ["member", "kind", "group", "partitions", "lag", "seen"])


def cmd_status(args: argparse.Namespace) -> None:
    _show_run(_request("GET", f"/api/v1/runs/{args.id}"), args.json)


def cmd_events(args: argparse.Namespace) -> None:
    if args.follow:
        _follow_events(args)
        return
    events = _request("GET", f"/api/v1/runs/{args.id}/events")
    if args.json:
        _print(events)
        return
    for e in events:
        print(_event_line(e))


def _event_line(e: dict[str, Any]) -> str:
    return (f"{e['seq']:>4} {e['recorded_at']} {e['type']:<18} "
            f"{json.dumps({k: v for k, v in e['data'].items() if k != 'definition'})}")


def _follow_events(args: argparse.Namespace) -> None:
    """The run's events as they are committed (server-sent events), until it finishes;
    a dropped connection resumes after the last event seen (Last-Event-ID)."""
    import httpx

    path = f"/api/v1/runs/{args.id}/stream"
    last: str | None = None
    for _ in range(1000):
        headers = {**_headers(), **({"Last-Event-ID": last} if last else {})}
        try:
            with httpx.stream("GET", _api() + path, headers=headers,
                              timeout=httpx.Timeout(10, read=60)) as r:
                if r.status_code != 200:
                    r.read()
                    _fail(r, "GET", path)
                for msg_id, event, data in _sse(r.iter_lines()):
                    last = msg_id or last
                    if event == "end":
                        return
                    e = json.loads(data)
                    print(json.dumps(e) if args.json else _event_line(e), flush=True)
        except httpx.HTTPError:
            time.sleep(1.0)  # the API restarts or the network drops: resume where it left
    sys.exit("shoal: the event stream kept dropping; giving up")


def cmd_replay(args: argparse.Namespace) -> None:
    """The state rebuilt from the log after each event, as the API's replay returns it."""
    params: dict[str, Any] = {}
    if args.until:
        params["until"] = args.until
    if args.at:
        params["at"] = args.at
    out = _request("GET", f"/api/v1/runs/{args.id}/replay", params=params)
    if args.json:
        _print(out)
        return
    if not out["steps"]:
        return
    # One row per event, one column per task of the DAG: the state after that event.
    names = [t["task"] for t in out["steps"][0]["tasks"]]
    header = ["seq", "event", "run", *names]
    rows = [[str(st["seq"]), st["type"], st["state"],
             *[_task_cell(t) for t in st["tasks"]]] for st in out["steps"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _task_cell(t: dict[str, Any]) -> str:
    if t["state"] is None:
        return "-"
    return t["state"] if (t["attempt"] or 1) == 1 else f"{t['state']}#{t['attempt']}"


def cmd_export_run(args: argparse.Namespace) -> None:
    """The run's incident bundle as JSON on stdout (or in --output)."""
    bundle = _request("GET", f"/api/v1/runs/{args.id}/bundle")
    text = json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"bundle of run {args.id}: {len(bundle['events'])} events -> {args.output}",
              file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_import_run(args: argparse.Namespace) -> None:
    """Import a bundle read-only: replayable and inspectable here, never executed."""
    try:
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        bundle = json.loads(raw)
    except (OSError, ValueError) as exc:
        sys.exit(f"shoal: cannot read a bundle from {args.file}: {exc}")
    out = _request("POST", "/api/v1/runs/import", json=bundle)
    print(f"imported run {out['instance_id']} ({out['workflow']} v{out['version']}, "
          f"{out['events']} events), read-only: shoal status/events/replay "
          f"{out['instance_id']}")


def cmd_check(args: argparse.Namespace) -> None:
    """The consistency checker; exit 1 when it finds a violation."""
    out = _request("GET", "/api/v1/check", params={"since": args.since, "grace": args.grace})
    if args.json:
        _print(out)
    else:
        print(f"checked {out['instances']} instances (positions {out['since']}..{out['until']})"
              f" in {out['seconds']:.2f} s: {len(out['violations']) or 'no'} violation(s)")
        if out["violations"]:
            _table(out["violations"], ["instance_id", "seq", "kind", "detail"])
    if out["violations"]:
        sys.exit(1)


def cmd_shadow_replay(args: argparse.Namespace) -> None:
    """This build's decisions over recorded history; exit 1 when any would differ."""
    import asyncio

    import asyncpg

    from shoal.infra.settings import Settings
    from shoal.infra.shadow import (
        Filter,
        Summary,
        bundle_histories,
        database_histories,
        instant,
        shadow_histories,
    )

    def usage(msg: str) -> None:
        print(f"shoal shadow-replay: {msg}", file=sys.stderr)
        sys.exit(2)

    since = None
    if args.since:
        try:
            since = instant(args.since)
        except ValueError:
            usage(f"--since {args.since!r} is not an RFC 3339 time or a date")
    if args.instance:
        try:
            import uuid

            args.instance = str(uuid.UUID(args.instance))
        except ValueError:
            usage(f"--instance {args.instance!r} is not a run id")
    flt = Filter(since=since, workflow=args.workflow, instance=args.instance)
    if args.bundle:
        summary = Summary()
        for name in args.bundle:
            try:
                raw = sys.stdin.read() if name == "-" else Path(name).read_text()
                histories = bundle_histories(json.loads(raw))
            except (OSError, ValueError) as exc:
                usage(f"cannot read a bundle from {name}: {exc}")
            summary.runs.extend(shadow_histories(histories, flt))
    else:
        # Reads the log directly, read-only: SHOAL_DATABASE_URL, else what `shoal dev`
        # wrote, else the default.
        url = os.environ.get("SHOAL_DATABASE_URL") or _config().get("database_url") \
            or Settings().database_url
        try:
            summary = asyncio.run(database_histories(url, flt))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"shoal shadow-replay: cannot read the log: {exc!r}", file=sys.stderr)
            sys.exit(3)
    if args.json:
        _print(summary.as_dict())
    else:
        _shadow_text(summary)
    sys.exit(1 if summary.differences else 0)


def _shadow_text(summary: Any) -> None:
    out = summary.as_dict()
    for d in out["differences"]:
        print(f"DIFFERENT  run {d['instance_id']} ({d['workflow']}) seq {d['seq']} "
              f"{d['event_type']}  [input {d['input_type']}, causation {d['causation_id']}]")
        print(f"  {d['diff']}")
        print(f"  recorded:   {', '.join(e['type'] for e in d['expected'])}")
        print(f"  this build: {', '.join(e['type'] for e in d['got']) or '(nothing)'}")
    shown = 20  # the rest by reason: a busy log has many refused duplicate reports
    for u in out["unreconstructed"][:shown]:
        print(f"NOT REBUILT  run {u['instance_id']} ({u['workflow']}) seq {u['seq']} "
              f"{u['event_type']}: {u['reason']}")
    if len(out["unreconstructed"]) > shown:
        from collections import Counter

        rest = Counter(u["reason"] for u in out["unreconstructed"][shown:])
        print(f"NOT REBUILT  {len(out['unreconstructed']) - shown} more (--json lists each):")
        for reason, n in rest.most_common():
            print(f"  {n} x {reason}")
    skipped = f", {out['skipped']} before --since" if out["skipped"] else ""
    print(f"shadow replay: {out['runs']} run(s), {out['compared']} decision(s) compared"
          f"{skipped}: {len(out['differences'])} differ, {len(out['unreconstructed'])} "
          "input(s) could not be rebuilt from the log")


def cmd_fork(args: argparse.Namespace) -> None:
    """A new run from the state after event --at of this one, with params overridden."""
    _started(_request("POST", f"/api/v1/runs/{args.id}/fork",
                      json={"at": args.at, "params": _params(args.param)}), args)


def cmd_runs(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"limit": args.limit}
    for k in ("workflow", "since", "until", "parent", "actor"):
        if getattr(args, k):
            params[k] = getattr(args, k)
    if args.state:
        params["state"] = args.state
    out = _request("GET", "/api/v1/runs", params=params)
    if args.json:
        _print(out)
        return
    _table([{**r, "submitted": _short(r["submitted_at"]), "v": r["version"],
             "ms": r["duration_ms"], "scheduled": _short(r["schedule_time"])}
            for r in out["runs"]],
           ["instance_id", "workflow", "v", "state", "submitted", "scheduled", "ms", "actor"])
    if out["next_cursor"]:
        print(f"(more: --limit, or GET /api/v1/runs?cursor={out['next_cursor']})")


def cmd_workflows(args: argparse.Namespace) -> None:
    found = _request("GET", "/api/v1/workflows")
    _show(found, args.json, [{**w, "version": w["latest_version"], "online": "yes" if w["online"]
                              else "no", "updated": _short(w["updated_at"])} for w in found],
          ["name", "version", "online", "updated", "description"])


def cmd_export(args: argparse.Namespace) -> None:
    params = {"version": args.version} if args.version else {}
    sys.stdout.write(_request("GET", f"/api/v1/workflows/{args.name}/export", params=params))


def cmd_import_ds(args: argparse.Namespace) -> None:
    """DolphinScheduler workflows (REST bodies or export files), all files in one request:
    every workflow is imported, or none."""
    body: list[Any] = []
    for name in args.files:
        try:
            data = json.loads(Path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            sys.exit(f"shoal: {name}: {exc}")
        body += data if isinstance(data, list) else [data]
    params: dict[str, Any] = {"online": "true" if args.online else "false"}
    if args.datasource:
        params["datasource"] = args.datasource
    out = _request("POST", "/api/v1/import/dolphinscheduler", json=body, params=params)
    for w in out["workflows"]:
        code = f" (code {w['source_code']})" if w.get("source_code") else ""
        print(f"{w['source_name']}{code} -> {w['name']} version {w['version']}")
    for warning in out.get("warnings") or []:
        print(f"  warning: {warning}", file=sys.stderr)


def cmd_projections(args: argparse.Namespace) -> None:
    import asyncio

    import asyncpg

    from shoal.infra.readmodels import RebuildBusy, RebuildHeld, Rebuilt, rebuild
    from shoal.infra.settings import Settings

    # The one verb that talks to the database: SHOAL_DATABASE_URL, else what `shoal dev`
    # wrote, else the default.
    url = os.environ.get("SHOAL_DATABASE_URL") or _config().get("database_url") \
        or Settings().database_url

    def progress(n: int) -> None:
        print(f"  {n} events projected", file=sys.stderr, flush=True)

    async def go() -> Rebuilt:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        assert pool is not None
        try:
            return await rebuild(pool, progress=progress if sys.stderr.isatty() else None)
        finally:
            await pool.close()

    try:
        done = asyncio.run(go())
    except (RebuildBusy, RebuildHeld) as exc:
        sys.exit(f"shoal: {exc}")
    except (OSError, asyncpg.PostgresError) as exc:
        sys.exit(f"shoal: cannot rebuild the read models in the database: {exc!r}")
    print(f"read models rebuilt from {done.events} events ({done.runs} runs) in "
          f"{done.seconds:.2f} s, {done.rate:.0f} events/s; swapped in online")
    if done.left_out:
        for position, reason in done.left_out:
            print(f"left out: position {position}: {reason}", file=sys.stderr)
        sys.exit(f"shoal: {len(done.left_out)} event(s) could not be projected and were "
                 "left out (listed above); `shoal check` names their runs")


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
    s = sub.add_parser("apply", help="publish a workflow definition (YAML, JSON, or a .py "
                                          "file using shoal.sdk)")
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
        s = sub.add_parser(verb, help=text + " (several ids: one batch request)")
        s.add_argument("id", nargs="+")
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
    s = sub.add_parser("cluster", help="live orchestrators and workers, their partitions, lag")
    s.set_defaults(fn=cmd_cluster)
    s = sub.add_parser("status", help="a run with its tasks")
    s.add_argument("id")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("events", help="a run's event history")
    s.add_argument("id")
    s.add_argument("--follow", "-f", action="store_true",
                   help="stream the events as they are committed, until the run finishes")
    s.set_defaults(fn=cmd_events)
    s = sub.add_parser("replay", help="rebuild a run's state from its log, step by step")
    s.add_argument("id")
    s.add_argument("--until", type=int, help="stop after this event (seq)")
    s.add_argument("--at", help="the state at this instant (RFC 3339)")
    s.set_defaults(fn=cmd_replay)
    s = sub.add_parser("export-run", help="a run's incident bundle (definition, every event, "
                                          "log pointers) as JSON")
    s.add_argument("id")
    s.add_argument("--output", "-o", help="write it here instead of stdout")
    s.set_defaults(fn=cmd_export_run)
    s = sub.add_parser("import-run", help="import a bundle read-only (never executed here)")
    s.add_argument("file", help="a bundle from shoal export-run ('-' = stdin)")
    s.set_defaults(fn=cmd_import_run)
    s = sub.add_parser("check", help="check the read models against the log (exit 1 on a "
                                     "violation)")
    s.add_argument("--since", type=int, default=0, metavar="POS",
                   help="only instances with events after this global position")
    s.add_argument("--grace", type=float, default=60.0,
                   help="seconds a running run may sit idle before it counts as stuck")
    s.set_defaults(fn=cmd_check)
    s = sub.add_parser(
        "shadow-replay",
        help="this build's decisions over recorded history (the log, read-only, or bundles): "
             "exit 1 if any differs from what was recorded",
        description="Runs this build's decide over every recorded decision of the log at "
                    "SHOAL_DATABASE_URL (one read-only snapshot; nothing is written) or of "
                    "--bundle files, and names every decision that would differ (run, event "
                    "seq and type, recorded vs this build's events). Inputs the log cannot "
                    "rebuild are listed too. Exit 0: identical; 1: a difference; 2: usage "
                    "error; 3: the log could not be read.")
    s.add_argument("--since", metavar="T", help="compare decisions recorded at or after T "
                                                "(RFC 3339 or a date; earlier ones are folded)")
    s.add_argument("--workflow", metavar="W", help="only runs of this workflow")
    s.add_argument("--instance", metavar="ID", help="only this run")
    s.add_argument("--bundle", action="append", metavar="FILE",
                   help="a bundle from shoal export-run instead of the log (repeatable, "
                        "'-' = stdin)")
    s.set_defaults(fn=cmd_shadow_replay)
    s = sub.add_parser("fork", help="a new run from the state after event SEQ of a run "
                                    "(what had succeeded is kept), with params overridden")
    s.add_argument("id")
    s.add_argument("--at", type=int, required=True, metavar="SEQ",
                   help="the event whose state the fork starts from (see shoal replay)")
    s.add_argument("--param", action="append", metavar="K=V", help="override a parameter")
    s.add_argument("--wait", action="store_true", help="wait until the new run finishes")
    s.add_argument("--timeout", type=float, default=3600)
    s.set_defaults(fn=cmd_fork)
    s = sub.add_parser("runs", help="list runs, newest first")
    s.add_argument("--workflow")
    s.add_argument("--state", action="append", help="repeatable, e.g. --state failed")
    s.add_argument("--since", help="submitted at or after (RFC 3339 or a date)")
    s.add_argument("--until", help="submitted before")
    s.add_argument("--parent", help="runs started by this run (sub-workflows)")
    s.add_argument("--actor", help="runs started by this actor (a token's name, scheduler, "
                                   "kafka)")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(fn=cmd_runs)
    s = sub.add_parser("workflows", help="published workflows")
    s.set_defaults(fn=cmd_workflows)
    s = sub.add_parser("export", help="a workflow as YAML (shoal apply takes it back)")
    s.add_argument("name")
    s.add_argument("--version", type=int)
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("import-ds", help="import DolphinScheduler workflows (its REST bodies "
                                         "or UI export files)")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--online", action="store_true", help="enable their schedules")
    s.add_argument("--datasource", action="append", metavar="ID:NAME",
                   help="a DolphinScheduler datasource id and the Shoal datasource it is")
    s.set_defaults(fn=cmd_import_ds)
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
    s.add_argument("--dry-run", action="store_true", help="print the plan, create nothing")
    s.add_argument("--yes", action="store_true",
                   help="backfill even when it plans more than 1,000 runs")
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
    s = sub.add_parser("tokens", help="API tokens (admin): create, list, revoke")
    tsub = s.add_subparsers(dest="action", required=True)
    c = tsub.add_parser("create", help="mint a token; it is printed once")
    c.add_argument("name", help="its name: the actor the audit trail records")
    c.add_argument("--role", choices=["viewer", "operator", "admin"], required=True)
    c.add_argument("--expires-in", type=_seconds, metavar="DURATION",
                   help="e.g. 3600, 12h, 30d (default 90d, at most 366d)")
    tsub.add_parser("list", help="tokens without their values")
    tsub.add_parser("revoke", help="refused from the next request on").add_argument("id")
    s.set_defaults(fn=cmd_tokens)
    s = sub.add_parser("projections", help="read-model maintenance")
    s.add_argument("action", choices=["rebuild"])
    s.set_defaults(fn=cmd_projections)
    _add_json_flag(sub)
    args = p.parse_args(argv)
    try:
        args.fn(args)
    except BrokenPipeError:  # `shoal events ID | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        sys.exit(130)


def _add_json_flag(sub: Any) -> None:
    """``--json`` on every verb (and sub-verb): machine-readable output for scripts."""
    for parser in sub.choices.values():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _add_json_flag(nested[0])
        else:
            parser.add_argument("--json", action="store_true", help="print JSON")


if __name__ == "__main__":
    main()
