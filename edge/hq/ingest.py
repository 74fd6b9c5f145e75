"""The ingest: MQTT 5 shared subscriptions in, batched PostgreSQL transactions out.

Guarantees (docs/hq.md):
- A message is acknowledged (PUBACK) only after the transaction holding its rows (or
  its `rejected` row) has committed. paho's manual acknowledgements (manual_ack=True)
  make that possible; a persistent session (clean_start false, a session expiry) keeps
  what is not acknowledged at the broker across a crash of this process, and the
  broker sends it again. So a kill at any moment loses nothing; what it repeats, the
  idempotent inserts (ON CONFLICT DO NOTHING on the box's record ids) absorb.
- The database going away stops the commits, not the process: the batch in hand is
  kept and written once a new connection works (backoff 0.5 to 10 s); the broker sends
  at most broker.receive_maximum unacknowledged messages, so memory stays bounded
  and the rest waits at the broker.
- A bad message never blocks the ingest: it is written to `rejected` with its reason
  and acknowledged. A row the database refuses (a value out of a column's range)
  takes the batch apart: each message in a savepoint of its own, the refused ones to
  `rejected`, the others committed.
- Scale out: every process of a share group gets a share of the messages
  ($share/<group>/...); each message goes to one of them.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import ConfigError
from edge.hq import schema
from edge.hq.config import HqConfig
from edge.hq.messages import PATTERNS, Parsed, Rejected, excerpt, parse
from edge.hq.metrics import HqMetrics
from edge.outputs import mqttclient
from edge.outputs.mqttclient import GuardedClient, ProblemLog, RepeatLimiter
from edge.redact import redact

log = logging.getLogger(__name__)

MAINTENANCE_S = 3600.0  # partitions ahead and retention, this often
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0  # database reconnect backoff
REJECT_LOG_S = 60.0  # a kind of rejection is logged at most once a minute


@dataclass
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received: dt.datetime


class Stopping(Exception):
    """The process is stopping while the database is away: the batch stays unacknowledged."""


def connect_db(config: HqConfig):
    import psycopg

    kwargs: dict[str, Any] = {
        "connect_timeout": config.database.connect_timeout_s,
        "application_name": config.client_id[:63],
        # Transactions are explicit (conn.transaction()): with autocommit off, psycopg
        # would open one at the first SELECT and every later block would be a savepoint
        # of it, never committed, its locks held.
        "autocommit": True,
    }
    password = config.db_password()
    if password:
        kwargs["password"] = password
    try:
        return psycopg.connect(config.database.url, **kwargs)
    except psycopg.ProgrammingError as exc:  # a URL libpq cannot read
        raise ConfigError(f"'database.url' cannot be used: {redact(str(exc))}") from None


class Ingest:
    def __init__(
        self, config: HqConfig, metrics: HqMetrics, clock: Callable[[], float] = time.time
    ):
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.queue: queue.Queue[Message] = queue.Queue()
        self.conn: Any = None
        self.db_connected = False
        self.mqtt_connected = False
        self.last_lag_s = 0.0
        self.known_months: set[dt.date] = set()
        self.fatal: BaseException | None = None
        self._in_hand = 0  # messages taken from the queue, not yet acknowledged
        self._closing = threading.Event()  # no new messages are taken in
        self._writer_done = threading.Event()
        self._stopped = threading.Event()
        self._next_maintenance = 0.0
        self._db_problems = RepeatLimiter(600.0)
        self._rejects_logged = RepeatLimiter(REJECT_LOG_S)
        self._unsubscribed = threading.Event()
        broker = config.broker
        self.where = f"{broker.host}:{broker.port}"
        self._mqtt_problems = ProblemLog(f"mqtt {self.where}")
        self.topics = [f"$share/{broker.share_group}/{broker.topic_prefix}/+/{p}" for p in PATTERNS]
        self.client = self._make_client()
        self._writer = threading.Thread(target=self._write_loop, name="hq-writer", daemon=True)

    @property
    def pending(self) -> int:
        return self.queue.qsize() + self._in_hand

    # -- start and stop --------------------------------------------------------------

    def start(self, ready: Callable[[], bool] = lambda: False) -> None:
        """Database first (migrated, partitions made), then the broker: nothing is
        taken in before it can be written. Waits for the database, retrying, unless
        `ready()` says to give up (a stop)."""
        self._reconnect_db(give_up=ready)
        self._retrying(self._maintain)
        self._writer.start()
        broker = self.config.broker
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = broker.session_expiry_s
        props.ReceiveMaximum = broker.receive_maximum
        self.client.connect_async(
            broker.host,
            broker.port,
            keepalive=broker.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what is in hand, then disconnect. With
        broker.leave_on_stop, unsubscribe first and end the session (scaling in)."""
        leave = self.config.broker.leave_on_stop and self.mqtt_connected
        if leave:
            self.client.unsubscribe(self.topics)
            self._unsubscribed.wait(timeout=5)
            # Messages the broker dealt us before the unsubscription are still coming:
            # take them in until the line has been quiet a moment.
            deadline = time.monotonic() + timeout
            quiet_since = time.monotonic()
            seen = -1
            while time.monotonic() < deadline:
                now_pending = self.pending
                if now_pending != seen:
                    seen, quiet_since = now_pending, time.monotonic()
                elif now_pending == 0 and time.monotonic() - quiet_since > 0.5:
                    break
                time.sleep(0.05)
        self._closing.set()
        self._writer_done.wait(timeout)
        if leave and (not self._writer_done.is_set() or self.pending):
            # Ending the session now would drop what is still unacknowledged in it.
            log.warning(
                "hq: %d message(s) not written at stop (the database is away): the session "
                "is kept, so they wait at the broker for this client id's next start",
                self.pending,
            )
            leave = False
        if leave:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
        else:
            self.client.disconnect()
        self.client.loop_stop()
        self._stopped.set()
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    # -- MQTT --------------------------------------------------------------------------

    def _make_client(self) -> GuardedClient:
        broker = self.config.broker
        client = GuardedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        username, password = self.config.mqtt_credentials()
        if username or password:
            client.username_pw_set(username, password)
        tls = broker.tls
        if tls.enabled:
            try:
                client.tls_set(
                    ca_certs=str(self.config.resolve(tls.ca_file)) if tls.ca_file else None,
                    certfile=str(self.config.resolve(tls.cert_file)) if tls.cert_file else None,
                    keyfile=str(self.config.resolve(tls.key_file)) if tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"'broker.tls' files cannot be used: {exc}") from None
        client.reconnect_delay_set(mqttclient.RECONNECT_MIN_S, mqttclient.RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = lambda *args: self._unsubscribed.set()
        return client

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._mqtt_problems.problem(f"connection refused ({mqttclient.explain(reason)})")
            return
        self.mqtt_connected = True
        present = getattr(flags, "session_present", False)
        self._mqtt_problems.ok(
            f"connected as {self.config.client_id}, "
            + ("session resumed" if present else "new session")
        )
        if not self._closing.is_set():
            # Subscribed again on every connect: a no-op on a resumed session, and the
            # subscription on a session the broker dropped (expired, or restarted
            # without persistence).
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error(
                "hq: the broker refused subscriptions (%s): check its ACL for %s",
                ", ".join(refused),
                self.config.client_id,
            )
        else:
            log.info(
                "hq: subscribed (%d topics, share group %s)",
                len(reasons),
                self.config.broker.share_group,
            )

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.mqtt_connected = False
        if not self._stopped.is_set() and not self._closing.is_set():
            self._mqtt_problems.lost(
                reason, self.config.client_id, (self.config.broker.host, self.config.broker.port)
            )

    def _on_message(self, client, userdata, msg) -> None:
        if self._closing.is_set():
            return  # not acknowledged: the broker keeps it for our session (or the group)
        self.queue.put(
            Message(
                msg.topic,
                bytes(msg.payload),
                msg.mid,
                msg.qos,
                dt.datetime.fromtimestamp(self.clock(), dt.UTC),
            )
        )

    # -- the writer --------------------------------------------------------------------

    def _collect(self) -> list[Message]:
        """Up to batch_size messages: the first waited for (briefly, so maintenance and
        a stop are seen), the rest for at most max_delay_s after it."""
        cfg = self.config.ingest
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + cfg.max_delay_s
        while len(batch) < cfg.batch_size:
            left = deadline - time.monotonic()
            try:
                batch.append(
                    self.queue.get(timeout=max(0.0, left)) if left > 0 else self.queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        try:
            while True:
                if self._closing.is_set() and self.queue.empty():
                    break
                batch = self._collect()
                self._in_hand = len(batch)
                if time.monotonic() >= self._next_maintenance:
                    self._retrying(self._maintain)
                if batch:
                    committed = self._retrying(functools.partial(self._write, batch))
                    self._acknowledge(batch, committed)
                self._in_hand = 0
        except Stopping:
            log.warning(
                "hq: stopping with %d message(s) not written (the database is away); "
                "the broker keeps them unacknowledged for the next start",
                self.pending,
            )
        except BaseException as exc:  # noqa: BLE001 - a bug: stop, the broker keeps the rest
            log.exception("hq: the writer failed; stopping (unwritten messages stay at the broker)")
            self.fatal = exc
        finally:
            self._writer_done.set()

    def _retrying(self, work: Callable[[], Any]) -> Any:
        """`work()` until it succeeds: a failed connection or transaction is counted,
        logged (once per cause, then every 10 minutes), and tried again on a new
        connection after a backoff."""
        import psycopg

        delay = RETRY_MIN_S
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self._reconnect_db(give_up=self._closing.is_set)
                return work()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._db_failed(exc)
                if self._closing.is_set():
                    raise Stopping() from None
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _db_failed(self, exc: BaseException) -> None:
        self.metrics.database_errors.inc()
        self.db_connected = False
        text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        show, left_out = self._db_problems.check(type(exc).__name__)
        if show:
            log.warning(
                "hq database: %s; messages stay unacknowledged at the broker, retrying%s",
                text,
                f" ({left_out} more failures since the last line)" if left_out else "",
            )
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        self.conn = None

    def _reconnect_db(self, give_up: Callable[[], bool]) -> None:
        import psycopg

        delay = RETRY_MIN_S
        while True:
            try:
                self.conn = connect_db(self.config)
                schema.migrate(self.conn, redact(self.config.database.url))
                self.known_months = schema.existing_months(self.conn)
                self.db_connected = True
                log.info("hq database: connected (%s)", redact(self.config.database.url))
                return
            except psycopg.OperationalError as exc:
                self._db_failed(exc)
                if give_up():
                    raise Stopping() from None
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    # -- maintenance -------------------------------------------------------------------

    def months_kept(self) -> tuple[dt.date, dt.date]:
        """[first kept month, first month past the partitions made ahead)."""
        this = schema.month_start(dt.datetime.fromtimestamp(self.clock(), dt.UTC))
        db = self.config.database
        return (
            schema.add_months(this, -db.retention_months),
            schema.add_months(this, db.partitions_ahead + 1),
        )

    def _maintain(self) -> None:
        first, past = self.months_kept()
        schema.drop_partitions_before(self.conn, first)
        this = schema.add_months(past, -self.config.database.partitions_ahead - 1)
        wanted = {
            schema.add_months(this, n) for n in range(self.config.database.partitions_ahead + 1)
        }
        schema.ensure_partitions(self.conn, wanted)
        self.known_months = schema.existing_months(self.conn)
        self._next_maintenance = time.monotonic() + MAINTENANCE_S

    # -- one batch ---------------------------------------------------------------------

    def _parse(self, batch: list[Message]) -> tuple[list, list]:
        first, past = self.months_kept()
        parsed: list[tuple[Message, Parsed]] = []
        rejected: list[tuple[Message, Rejected]] = []
        cfg = self.config
        for m in batch:
            try:
                p = parse(m.topic, m.payload, cfg.broker.topic_prefix, cfg.ingest.max_message_bytes)
                if p.start is not None:
                    month = schema.month_start(p.start)
                    if month < first:
                        raise Rejected(
                            "outside retention",
                            f"starts {p.start.isoformat()}, before the months kept "
                            f"(database.retention_months)",
                        )
                    if month >= past:
                        raise Rejected("in the future", f"starts {p.start.isoformat()}")
                parsed.append((m, p))
            except Rejected as r:
                rejected.append((m, r))
        return parsed, rejected

    def _write(self, batch: list[Message]) -> list[tuple[Message, Parsed]]:
        """One transaction for the batch; the messages written (the others rejected)."""
        import psycopg

        parsed, rejected = self._parse(batch)
        months = {schema.month_start(p.start) for _, p in parsed if p.start is not None}
        if months - self.known_months:
            schema.ensure_partitions(self.conn, months - self.known_months)
            self.known_months |= months
        try:
            with self.conn.transaction():
                self._insert([p for _, p in parsed])
                self._insert_rejected(rejected)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error:
            # Some row the database refuses: each message on its own, in a savepoint.
            kept = []
            with self.conn.transaction():
                for m, p in parsed:
                    try:
                        with self.conn.transaction():
                            self._insert([p])
                        kept.append((m, p))
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise
                    except psycopg.Error as exc:
                        diag = getattr(exc, "diag", None)
                        why = (diag.message_primary if diag else None) or str(exc)
                        rejected.append((m, Rejected("database refused", why[:200])))
                self._insert_rejected(rejected)
            parsed = kept
        for m, r in rejected:
            self._log_reject(m, r)
        return parsed

    def _acknowledge(self, batch: list[Message], written: list[tuple[Message, Parsed]]) -> None:
        now = self.clock()
        for m in batch:
            if m.qos:
                self.client.ack(m.mid, m.qos)
        for _, p in written:
            self.metrics.messages.labels(p.kind).inc()
            if p.time is not None:
                self.last_lag_s = max(0.0, now - p.time.timestamp())
                self.metrics.lag_seconds.observe(self.last_lag_s)
        self.metrics.batch_size.observe(len(batch))

    def _log_reject(self, m: Message, r: Rejected) -> None:
        self.metrics.rejected.labels(r.key).inc()
        show, left_out = self._rejects_logged.check(r.key)
        if show:
            log.warning(
                "hq: rejected a message on %s: %s (kept in the rejected table)%s",
                m.topic[:200],
                r,
                f"; {left_out} more like it since the last line" if left_out else "",
            )

    def _insert(self, parsed: list[Parsed]) -> None:
        for table in schema.PARTITIONED:
            rows = [row for p in parsed for row in p.rows.get(table, ())]
            insert_rows(self.conn, table, schema.columns(table), rows)
        statuses: dict[tuple[str, str], tuple] = {}
        for p in parsed:
            if p.status is not None:
                key = (p.status[0], p.status[1])
                if key not in statuses or statuses[key][-1] <= p.status[-1]:
                    statuses[key] = p.status
        if statuses:
            now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
            with self.conn.cursor() as cur:
                cur.executemany(STATUS_UPSERT, [(*s, now) for s in statuses.values()])
        stores = self._store_updates(parsed)
        if stores:
            with self.conn.cursor() as cur:
                cur.executemany(STORE_UPSERT, stores)

    def _store_updates(self, parsed: list[Parsed]) -> list[dict]:
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        by_store: dict[str, dict] = {}
        for p in parsed:  # in the order received: the latest availability wins
            s = by_store.setdefault(
                p.store,
                {"store": p.store, "seen": now, "online": None, "availability": None,
                 "zone": None, "offset": None, "stats": None, "stats_at": None},
            )  # fmt: skip
            if p.online is not None:
                s["online"] = p.online
            if p.availability is not None:
                s["availability"] = p.availability
            if p.zone:
                s["zone"] = p.zone
            if p.offset and not s["offset"]:
                s["offset"] = p.offset
            if p.stats is not None and (s["stats_at"] is None or s["stats_at"] <= p.time):
                s["stats"], s["stats_at"] = p.stats, p.time
        return list(by_store.values())

    def _insert_rejected(self, rejected: list[tuple[Message, Rejected]]) -> None:
        if not rejected:
            return
        store_of = self.config.broker.topic_prefix + "/"
        rows = []
        for m, r in rejected:
            store = m.topic[len(store_of) :].split("/")[0] if m.topic.startswith(store_of) else None
            rows.append(
                (
                    m.received,
                    m.topic[:1000].replace("\x00", ""),
                    (store or "")[:64] or None,
                    str(r)[:500].replace("\x00", ""),
                    excerpt(m.payload),
                )
            )
        columns = ("received", "topic", "store", "reason", "payload")
        insert_rows(self.conn, "rejected", columns, rows, conflict=False)
        self.conn.execute(
            "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - %s",
            (self.config.ingest.rejected_max_rows,),
        )


STATUS_UPSERT = """
INSERT INTO camera_status AS c
    (store, camera, name, online, state, error, reconnects_last_hour, since, updated)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (store, camera) DO UPDATE SET
    name = EXCLUDED.name, online = EXCLUDED.online, state = EXCLUDED.state,
    error = EXCLUDED.error, reconnects_last_hour = EXCLUDED.reconnects_last_hour,
    since = EXCLUDED.since, updated = EXCLUDED.updated
WHERE c.since <= EXCLUDED.since
"""

# A named zone (stats' `timezone`) replaces what was known; an offset read from a
# payload's time only fills a gap. Stats: the newest by the box's time.
STORE_UPSERT = """
INSERT INTO stores AS s (store, tz, last_seen, online, availability, stats, stats_at)
VALUES (%(store)s, coalesce(%(zone)s, %(offset)s), %(seen)s, %(online)s, %(availability)s,
        %(stats)s::jsonb, %(stats_at)s)
ON CONFLICT (store) DO UPDATE SET
    tz = coalesce(%(zone)s, s.tz, %(offset)s),
    last_seen = greatest(s.last_seen, EXCLUDED.last_seen),
    online = coalesce(EXCLUDED.online, s.online),
    availability = coalesce(EXCLUDED.availability, s.availability),
    stats = CASE WHEN s.stats_at IS NULL OR EXCLUDED.stats_at >= s.stats_at
                 THEN coalesce(EXCLUDED.stats, s.stats) ELSE s.stats END,
    stats_at = CASE WHEN s.stats_at IS NULL OR EXCLUDED.stats_at >= s.stats_at
                    THEN coalesce(EXCLUDED.stats_at, s.stats_at) ELSE s.stats_at END
"""


def insert_rows(
    conn: Any, table: str, columns: tuple[str, ...], rows: list[tuple], *, conflict: bool = True
) -> None:
    """One INSERT per row (ON CONFLICT DO NOTHING: idempotent), sent together:
    psycopg's executemany prepares the statement once and pipelines the rows. A
    multi-row VALUES list of thousands of parameters cost 4 to 5 times the client CPU
    (95 against 20 us a message of tools/fleet_sim.py's, in a batch of 500) and took
    4 times as long."""
    if not rows:
        return
    values = ", ".join(["%s"] * len(columns))
    tail = " ON CONFLICT DO NOTHING" if conflict else ""
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}){tail}", rows)
