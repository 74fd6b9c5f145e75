"""`edge hq`'s own configuration (hq.yaml): typed and validated with the machinery of
config.yaml (edge/config.py: `opt`, `section`, `build`, `${NAME}` secrets, one line per
problem naming file and key), with its own generated reference (`edge hq --reference`,
docs/hq.md)."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path

from edge import config as config_mod
from edge.config import TOPIC_PREFIX, Problems, TlsConfig, opt, section
from edge.outputs.access import load_secret
from edge.redact import redact

# Secrets come from the environment or systemd credentials, never from hq.yaml.
USERNAME_ENV, PASSWORD_ENV = "EDGE_HQ_MQTT_USERNAME", "EDGE_HQ_MQTT_PASSWORD"
PASSWORD_CREDENTIAL = "hq-mqtt-password"
DB_PASSWORD_ENV, DB_PASSWORD_CREDENTIAL = "EDGE_HQ_DB_PASSWORD", "hq-db-password"


@dataclass(frozen=True)
class HqBrokerConfig:
    host: str = opt("localhost", "Head office broker host name or address.", nonempty=True)
    port: int = opt(1883, "Broker port (usually 1883, or 8883 with TLS).", low=1, high=65535)
    tls: TlsConfig = section(TlsConfig, "TLS to the broker.")
    username: str | None = opt(
        None, f"User name; the environment variable {USERNAME_ENV} overrides it."
    )
    password: str | None = opt(
        None,
        f"Password. Better left out of this file: {PASSWORD_ENV} in the environment, "
        f"or the systemd credential {PASSWORD_CREDENTIAL} (LoadCredential=).",
    )
    keepalive_s: int = opt(30, "Seconds between keepalive pings.", low=2, high=3600)
    topic_prefix: str = opt(
        "edge", "The boxes' mqtt.topic_prefix: topics are <topic_prefix>/<store>/..."
    )
    share_group: str = opt(
        "edge-hq",
        "MQTT 5 shared-subscription group ($share/<group>/...): every `edge hq` of "
        "one group gets a share of the messages, each message goes to one of them.",
    )
    client_id: str = opt(
        "",
        "MQTT client id, unique per process and stable across its restarts (its "
        "persistent session holds the messages dealt to it while it is down); default "
        "edge-hq-<host name>.",
    )
    session_expiry_s: int = opt(
        7 * 86400,
        "How long the broker keeps this process's session (its subscription and the "
        "messages dealt to it) while it is disconnected.",
        low=0,
        high=4294967295,
    )
    receive_maximum: int = opt(
        2000,
        "Messages the broker may have sent and not yet had acknowledged (MQTT 5 "
        "Receive Maximum): each is acknowledged only once its row is committed, so "
        "this bounds what waits in memory while the database is away.",
        low=1,
        high=65535,
    )
    leave_on_stop: bool = opt(
        False,
        "At a stop (SIGTERM): unsubscribe, write and acknowledge what is in hand, and "
        "end the session, so the group's other members get everything from then on "
        "(scaling in). false: the session stays and messages dealt to this process "
        "wait at the broker for its restart (Mosquitto deals shared messages to "
        "stopped members too). A killed process always keeps its session.",
    )


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = opt(
        "postgresql://edge_hq@localhost/edge_hq",
        f"PostgreSQL connection URL (libpq). Its password is better left out: "
        f"{DB_PASSWORD_ENV} in the environment, or the systemd credential "
        f"{DB_PASSWORD_CREDENTIAL}, takes its place.",
        nonempty=True,
    )
    connect_timeout_s: int = opt(
        10, "Seconds to wait for a connection before retrying.", low=1, high=300
    )
    retention_months: int = opt(
        25,
        "Months of intervals and plays kept: whole month partitions (UTC) older than "
        "this many months before the current one are dropped, at start and hourly.",
        low=1,
        high=1200,
    )
    partitions_ahead: int = opt(
        2, "Month partitions created ahead of the current month.", low=1, high=24
    )


@dataclass(frozen=True)
class IngestConfig:
    batch_size: int = opt(500, "Messages written in one transaction at most.", low=1, high=10000)
    max_delay_s: float = opt(
        0.5,
        "A batch is written at the latest this long after its first message.",
        low=0.01,
        high=60,
    )
    max_message_bytes: int = opt(
        262144,
        "Larger messages are rejected (the `rejected` table) unread.",
        low=1024,
        high=268435455,
    )
    rejected_max_rows: int = opt(
        10000,
        "Rows the `rejected` table keeps (the latest); older ones are trimmed.",
        low=10,
        high=100000000,
    )


@dataclass(frozen=True)
class HqMetricsConfig:
    listen: str = opt("127.0.0.1", "Address the Prometheus endpoint (/metrics) listens on.")
    port: int = opt(9118, "Port of the metrics endpoint; 0 turns it off.", low=0, high=65535)
    max_connections: int = opt(16, "Connections served at once.", low=1, high=1000)


@dataclass(frozen=True)
class HqDashboardConfig:
    enabled: bool = opt(False, "Serve the fleet dashboard.")
    listen: str = opt("127.0.0.1", "Address the fleet dashboard listens on.")
    port: int = opt(8088, "Port of the fleet dashboard.", low=1, high=65535)
    token_env: str = opt(
        "EDGE_HQ_DASHBOARD_TOKEN",
        "Environment variable (or systemd credential of that name) holding the "
        "dashboard's access token; required off the loopback interface.",
        nonempty=True,
    )


@dataclass(frozen=True)
class HqConfig:
    broker: HqBrokerConfig = section(HqBrokerConfig, "The head office's MQTT broker.")
    database: DatabaseConfig = section(DatabaseConfig, "The PostgreSQL database.")
    ingest: IngestConfig = section(IngestConfig, "Batching and bad messages.")
    metrics: HqMetricsConfig = section(HqMetricsConfig, "Prometheus metrics of the ingest.")
    dashboard: HqDashboardConfig = section(HqDashboardConfig, "The fleet dashboard.")
    log_level: str = opt("info", "Logging level.", choices=("debug", "info", "warning", "error"))

    base_dir: Path = dataclasses.field(
        default=config_mod.PROJECT_ROOT, repr=False, metadata={"internal": True}
    )

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"edge-hq-{socket.gethostname()}"

    def mqtt_credentials(self) -> tuple[str | None, str | None]:
        return (
            load_secret(USERNAME_ENV) or self.broker.username,
            load_secret(PASSWORD_ENV, PASSWORD_CREDENTIAL) or self.broker.password,
        )

    def db_password(self) -> str | None:
        """The database password from the environment or a credential; None: the URL's
        own (or none, e.g. peer or certificate authentication)."""
        return load_secret(DB_PASSWORD_ENV, DB_PASSWORD_CREDENTIAL)


_GROUP = config_mod._ID  # letters, digits, - and _ (a topic level, no wildcards)


def load(path: str | Path | None) -> HqConfig:
    """hq.yaml, validated; None gives the defaults. Every problem in one HqConfigError
    line naming the file and the key."""
    return config_mod.load_typed(path, HqConfig, "hq config", _cross_checks)


def _cross_checks(config: HqConfig, problems: Problems) -> None:
    add = problems.cross
    hosts = (
        ("broker.host", config.broker.host),
        ("metrics.listen", config.metrics.listen),
        ("dashboard.listen", config.dashboard.listen),
    )
    config_mod.host_problems(hosts, add)
    if not TOPIC_PREFIX.fullmatch(config.broker.topic_prefix):
        add(
            f"'broker.topic_prefix' is {config.broker.topic_prefix!r}; use letters, digits, "
            "- and _, levels separated by /"
        )
    if not _GROUP.fullmatch(config.broker.share_group):
        add(f"'broker.share_group' is {config.broker.share_group!r}; use letters, digits, - and _")
    url = config.database.url
    if not url.startswith(("postgresql://", "postgres://")):
        add(f"'database.url' is {redact(url)!r}: give a postgresql:// URL")
    tls = config.broker.tls
    if tls.enabled:
        config_mod.tls_file_problems(tls, config.resolve, "broker.tls", add)


def reference() -> str:
    """docs/hq.md's key table (`edge hq --reference`)."""
    return config_mod.reference_table(HqConfig)
