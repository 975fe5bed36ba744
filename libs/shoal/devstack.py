"""``shoal dev``: the whole stack on one machine, stopped cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from shoal.infra.processes import (
    OwnedProcess,
    free_port,
    service_argv,
    start_broker,
    start_embedded_postgres,
    wait_port,
)


def run_dev(examples: Path, workers: int = 1) -> None:
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
        env.setdefault("SHOAL_DATA_DIR", str(data_dir))
        env.setdefault("SHOAL_TOPIC_PREFIX", "shoal")
        api_host = env.setdefault("SHOAL_API_HOST", "127.0.0.1")
        api_port = int(env.setdefault("SHOAL_API_PORT", "8460"))
        names = ["api", "orchestrator", "projector", "scheduler"] + ["worker"] * workers
        for i, name in enumerate(names):
            wenv = dict(env)
            if name == "worker":
                wenv["SHOAL_WORKER_ID"] = f"dev-worker-{i}-{secrets.token_hex(2)}"
            owned.append(OwnedProcess(name, service_argv(name), wenv,
                                      logs / f"{name}-{i}.log").start())
        wait_port(api_host, api_port, timeout=60)
        base = f"http://{api_host}:{api_port}"
        _load_examples(base, examples)
        print(f"\nShoal is running.\n  API:      {base}/api/v1/workflows\n"
              f"  OpenAPI:  {base}/docs\n  logs:     {logs}\n"
              f"  CLI:      SHOAL_API_URL={base} .venv/bin/shoal run diamond --wait\n"
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


def _load_examples(base: str, examples: Path) -> None:
    import httpx

    for path in sorted(examples.glob("*.y*ml")):
        r = httpx.post(f"{base}/api/v1/workflows", content=path.read_bytes(),
                       headers={"content-type": "application/yaml"}, timeout=30)
        print(f"loaded {path.name}: {r.status_code} {r.text}")
