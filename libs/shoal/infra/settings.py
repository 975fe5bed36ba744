"""Settings from ``SHOAL_*`` environment variables. Built per service, never global."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    topic_prefix: str = "shoal"
    partitions: int = 12
    api_host: str = "127.0.0.1"
    api_port: int = 8460
    # Comma-separated role:token pairs (viewer, operator, admin); unset: no auth.
    api_tokens: str | None = None
    # At most this many server-sent-event streams open at once per token (per API
    # process); one more gets 429.
    api_streams_per_token: int = 8
    # A credential good for GET /metrics alone (every service's, the API's too): what a
    # Prometheus scraper and the worker get instead of an API token.
    metrics_token: str | None = None
    # Larger request bodies are refused with 413 before they are read.
    api_max_body_bytes: int = 8 * 1024 * 1024
    # A command on the commands topic larger than this goes to dead letters unread.
    max_command_bytes: int = 1024 * 1024
    worker_group: str = "default"
    worker_slots: int = 32
    worker_prefetch: int = 16
    worker_kill_grace: float = 5.0
    worker_keep_workdir: Literal["failed", "always", "never"] = "failed"
    worker_run_as: str | None = None
    worker_heartbeat_interval: float = 2.0
    lease_timeout: float = 6.0
    worker_id: str | None = None
    # A dispatch sent before (this many seconds after) the worker got its partition may
    # have been claimed by the partition's previous owner: the worker asks before running it.
    worker_claim_skew: float = 5.0
    data_dir: Path = Path(".shoal")
    # How long the broker may hold a fetch: while records flow, consumers on the path of
    # a hop use the short wait; when quiet it grows towards the long one (FetchPacer).
    kafka_fetch_max_wait_ms: int = 500
    kafka_fetch_hot_wait_ms: int = 10
    # Producers send at once (0): a lone report or dispatch is not held back, and under
    # load what queues behind a request in flight still goes as one batch.
    kafka_linger_ms: int = 0
    outbox_relay_interval: float = 1.0
    # --- Kafka: connection security, group membership, durability (README "Kafka") ---
    # How every client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL with
    # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; TLS trusts SSL_CAFILE (else the system's CAs)
    # and presents SSL_CERTFILE/SSL_KEYFILE when the broker asks for a client certificate.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = \
        "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # How long a dead group member keeps its partitions: bounds failover after a crash.
    # 6 s is the least a stock Apache Kafka accepts (group.min.session.timeout.ms); a
    # broker that refuses it stops the service with an error naming this setting.
    kafka_session_timeout_ms: int = 6_000
    # Heartbeats to the group coordinator; a broker notices a clean leave at once and a
    # crash after the session timeout.
    kafka_heartbeat_interval_ms: int = 1_000
    # How long the coordinator waits for every member to rejoin during a rebalance, and
    # how long a member may go without polling before it leaves its group.
    kafka_rebalance_timeout_ms: int = 60_000
    kafka_max_poll_interval_ms: int = 300_000
    # Replication factor of the topics Shoal creates (and of the scheduler's changelogs):
    # unset, min(3, brokers in the cluster); min.insync.replicas of them: unset, min(2, rf).
    kafka_replication_factor: int | None = None
    kafka_min_insync_replicas: int | None = None
    # Idempotent producers: unset, on when the broker supports them (InitProducerId).
    kafka_idempotence: bool | None = None
    # The largest record a producer sends: larger ones are refused before they leave the
    # process. Keep it at or below the broker's message.max.bytes (Apache Kafka's default
    # is 1048588): a record the broker refuses breaks an idempotent producer's sequence
    # on that partition (every later send there fails OutOfOrderSequenceNumber).
    kafka_max_message_bytes: int = Field(default=1_000_000, ge=64 * 1024)
    # --- end of the Kafka block ---
    # The scheduler re-plans at least this often (seconds).
    scheduler_tick: float = 1.0
    # While a backfill waits for its runs, the scheduler checks their progress this often.
    scheduler_backfill_poll: float = 0.25
    projector_batch: int = 1000
    # The orchestrator stores an instance's folded state every this many events (0 = never),
    # so loading it reads the snapshot and the events after it.
    snapshot_every: int = 100
    # The projector's consistency check: every this many seconds (0 = off) it checks the
    # instances changed since its last pass plus check_sweep others; a run counts as stuck
    # once it has been quiet for check_grace seconds.
    check_interval: float = 60.0
    check_grace: float = 60.0
    check_sweep: int = 100
    # sql tasks: JSON object of datasource name -> connection URL; unset: "default" is
    # database_url. http tasks: a request gives up after this many seconds.
    datasources: str | None = None
    worker_http_timeout: float = 60.0
    # Python tasks: directories (":"-separated) on the import path of function tasks, the
    # modules the warm runner imports once, and whether script tasks use it (false: each
    # script starts its own interpreter; function tasks always use the warm runner).
    code_path: str | None = None
    python_preload: str | None = None
    worker_warm_python: bool = True
    # Alert channels by name, a JSON object: {"ops": {"type": "webhook", "url": ...,
    # "secret": ...}, "mail": {"type": "email", "host": ..., "port": 25, "from": ...,
    # "to": [...]}}. Workflows choose channels with `alerts: {on, channels}`.
    alert_channels: str | None = None
    log_level: str = "INFO"
    # Text lines for a terminal, or one JSON object per line for log shippers.
    log_format: Literal["json", "text"] = "json"
    # /metrics and /healthz of the orchestrator, worker, projector and scheduler (the api
    # serves them on its own port). Unset: 9461-9464 by service.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # Fault handling (README "Error policy"). A database statement gives up after
    # db_statement_timeout seconds and the append lock is waited for at most
    # db_lock_timeout: both are transient failures, retried with backoff.
    db_statement_timeout: float = 60.0
    db_lock_timeout: float = 10.0
    # A worker refuses (reports failed) a dispatch sent longer ago than this (0 = never):
    # a dispatch replayed from expired offsets, or one that waited through an outage
    # longer than any retry interval, is not run blind.
    dispatch_horizon_s: float = 3600.0
    # processed_messages (redelivery de-duplication) and successes (dependent tasks'
    # look-up) older than this many days are deleted, in small batches (0 = keep all).
    retention_days: float = 30.0

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # Made absolute at start: a task runs with its own working directory, so a relative
        # path to its script would resolve inside that directory and not be found.
        return v.resolve()

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"

    @property
    def commands_topic(self) -> str:
        return self.topic("commands")

    @property
    def events_topic(self) -> str:
        return self.topic("events")

    @property
    def schedules_topic(self) -> str:
        return self.topic("schedules")

    @property
    def dead_letters_topic(self) -> str:
        return self.topic("dead-letters")

    def datasource_urls(self) -> dict[str, str]:
        """The named connections sql tasks may use (a bad SHOAL_DATASOURCES fails start-up).
        None when unset: Shoal's own database is never a datasource by default."""
        if not self.datasources:
            return {}
        parsed = json.loads(self.datasources)
        if not isinstance(parsed, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
            raise ValueError("SHOAL_DATASOURCES must be a JSON object of name -> URL")
        return parsed

    def datasource_names(self) -> list[str]:
        """The names of the configured datasources (what the API checks sql tasks against;
        it never connects to them)."""
        return sorted(self.datasource_urls())

    def alert_channel_map(self) -> dict[str, dict[str, Any]]:
        """The configured alert channels (a malformed SHOAL_ALERT_CHANNELS fails start-up)."""
        if not self.alert_channels:
            return {}
        parsed = json.loads(self.alert_channels)
        channels: dict[str, dict[str, Any]] = {}
        for name, ch in (parsed if isinstance(parsed, dict) else {"": None}).items():
            c: dict[str, Any] = ch if isinstance(ch, dict) else {}
            webhook = c.get("type") == "webhook" and isinstance(c.get("url"), str)
            email = c.get("type") == "email" and isinstance(c.get("host"), str) and \
                isinstance(c.get("to"), list) and isinstance(c.get("from"), str)
            if not (webhook or email):
                raise ValueError(f"SHOAL_ALERT_CHANNELS[{name!r}]: a webhook needs url; an "
                                 "email channel needs host, from and to")
            channels[name] = c
        return channels

    def code_paths(self) -> tuple[str, ...]:
        """SHOAL_CODE_PATH as absolute directories (tasks run in their own cwd)."""
        return tuple(str(Path(p).resolve()) for p in (self.code_path or "").split(":") if p)

    def tasks_topic(self, group: str) -> str:
        return self.topic(f"tasks.{group}")
