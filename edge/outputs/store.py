"""The local audience store: interval counts and plays in SQLite, for `edge report` and
the dashboard, kept for store.retention_days.

- Standard library sqlite3, WAL journal (readers never block the writer), one writer
  thread that owns the only writing connection; the pipeline only puts records on a
  queue, so a slow disk never holds up a frame.
- Every record is its own transaction with synchronous=FULL: once committed it
  survives a crash or a power cut, and a cut mid-write loses at most the record being
  written (SQLite's journal rolls it back on the next open).
- Inserts are idempotent by the record's id (camera/start, display/start), so a record
  written twice (a replay) is counted once.
- A write that fails for a reason that passes (sqlite3.OperationalError: disk full,
  database locked, I/O error) keeps the record in a bounded queue (RETRY_MAX) and is
  tried again, oldest first, as the MQTT outbox does; `failures` counts the failed
  attempts (Prometheus edge_store_write_failures). A record that can never be written
  (bad data) is logged and dropped. The WAL is truncated back to JOURNAL_LIMIT_BYTES
  after checkpoints (PRAGMA journal_size_limit), so it cannot grow without bound.
- Pruning (retention_days) counts back from the newest stored record when the wall
  clock is ahead of it: a clock that jumped forward deletes nothing (docs/metrics.md).
- The schema is versioned (PRAGMA user_version); MIGRATIONS are applied in order, each
  in one transaction, and a store written by a newer version is refused, not guessed at.
- Aggregates only, like MQTT: counts per segment, times, ids of cameras, displays, ads.
  Each interval and play has one row, and one row per segment it counted someone in
  (interval_segments, play_segments: segment, age class, gender and the figures that
  docs/metrics.md defines); edge/outputs/reporting.py holds the queries over them.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.errors import EX_CONFIG, EdgeError
from edge.events import Event, IntervalEvent, PlayEvent
from edge.records import AGE_CLASSES, GENDERS, UNCLASSIFIED, segment_parts

log = logging.getLogger(__name__)

FILENAME = "audience.db"
SEGMENTS = tuple((c, g) for c in AGE_CLASSES for g in GENDERS)  # schema 1's wide columns
PRUNE_EVERY_S = 86400.0
RETRY_MAX = 10000  # records kept for a retry while the disk is full: days of intervals
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # back-off between retries
JOURNAL_LIMIT_BYTES = 4 * 1024 * 1024
CLOCK_SLACK_S = 300.0  # a clock this far behind the newest record is "behind"


def _segment_columns(prefix: str) -> str:
    return ", ".join(f"{prefix}_{c}_{g} INTEGER NOT NULL DEFAULT 0" for c, g in SEGMENTS)


def _v1_segments() -> str:
    """Schema 1's wide segment columns as rows of the segment tables (migration 2)."""
    parts = []
    for c, g in SEGMENTS:
        parts.append(
            f"INSERT INTO interval_segments SELECT id, '{c}_{g}', '{c}', '{g}', "
            f"visitors_{c}_{g}, NULL, NULL, NULL FROM intervals WHERE visitors_{c}_{g} > 0;"
        )
        parts.append(
            f"INSERT INTO play_segments SELECT id, '{c}_{g}', '{c}', '{g}', viewers_{c}_{g}, "
            f"NULL, watchers_{c}_{g}, NULL, NULL FROM plays WHERE viewers_{c}_{g} > 0;"
        )
    parts.append(
        f"INSERT INTO interval_segments SELECT id, '{UNCLASSIFIED}', 'unknown', 'unknown', "
        f"unclassified, NULL, NULL, NULL FROM intervals WHERE unclassified > 0;"
    )
    parts.append(
        f"INSERT INTO play_segments SELECT id, '{UNCLASSIFIED}', 'unknown', 'unknown', "
        f"unclassified, NULL, NULL, NULL, NULL FROM plays WHERE unclassified > 0;"
    )
    return "\n    ".join(parts)


# One entry per schema version: MIGRATIONS[n - 1] takes a store from version n - 1 to n.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE intervals (
        id TEXT PRIMARY KEY,              -- camera/start, as on MQTT
        camera TEXT NOT NULL,
        start_ts REAL NOT NULL,           -- epoch seconds
        end_ts REAL NOT NULL,
        {_segment_columns("visitors")},
        watchers INTEGER NOT NULL,
        unclassified INTEGER NOT NULL,
        dwell_s REAL NOT NULL,
        attention_s REAL NOT NULL
    );
    CREATE INDEX intervals_by_start ON intervals (start_ts);
    CREATE TABLE plays (
        id TEXT PRIMARY KEY,              -- display/start, as on MQTT
        display TEXT NOT NULL,
        camera TEXT NOT NULL,
        ad TEXT NOT NULL,
        title TEXT NOT NULL,
        rule TEXT NOT NULL,
        start_ts REAL NOT NULL,
        end_ts REAL NOT NULL,
        duration_s REAL NOT NULL,
        {_segment_columns("viewers")},
        {_segment_columns("watchers")},
        unclassified INTEGER NOT NULL,
        attention_s REAL NOT NULL
    );
    CREATE INDEX plays_by_start ON plays (start_ts);
    """,
    # 2: nobody dropped (gender unknown and unclassified are segments), reach, per-segment
    # figures, campaigns. Schema-1 records keep what they had: visitors per segment (and
    # watchers of plays); their other per-segment figures are NULL (not known).
    f"""
    ALTER TABLE plays ADD COLUMN campaign TEXT NOT NULL DEFAULT '';
    ALTER TABLE plays ADD COLUMN advertiser TEXT NOT NULL DEFAULT '';
    CREATE TABLE interval_segments (
        interval_id TEXT NOT NULL,        -- intervals.id
        segment TEXT NOT NULL,            -- records.SEGMENTS: <age class>_<gender>, unclassified
        age_class TEXT NOT NULL,          -- child, adult, old; unknown
        gender TEXT NOT NULL,             -- female, male, unknown
        visitors INTEGER NOT NULL,
        watchers INTEGER,
        dwell_s REAL,
        attention_s REAL,
        PRIMARY KEY (interval_id, segment)
    );
    CREATE TABLE play_segments (
        play_id TEXT NOT NULL,            -- plays.id
        segment TEXT NOT NULL,
        age_class TEXT NOT NULL,
        gender TEXT NOT NULL,
        impressions INTEGER NOT NULL,
        reach INTEGER,
        watchers INTEGER,
        attention_s REAL,
        dwell_s REAL,
        PRIMARY KEY (play_id, segment)
    );
    {_v1_segments()}
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(EdgeError):
    """The audience store cannot be opened or has a schema this version does not know."""

    exit_status = EX_CONFIG


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the store's settings; read-only ones for report and dashboard."""
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=5, check_same_thread=False, isolation_level=None
            )  # transactions are explicit
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT_BYTES}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"{path}: cannot open the audience store: {exc}") from exc


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: the audience store has schema version {found}, newer than "
            f"this edge knows ({SCHEMA_VERSION}); upgrade edge or move the file"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        try:
            conn.executescript(
                f"BEGIN;\n{MIGRATIONS[version - 1]}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(
                f"{path}: migrating the audience store to schema version {version} failed: {exc}"
            ) from exc
        log.info("audience store %s: schema version %d", path, version)
    return found


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _segments(counts: dict) -> list[int]:
    return [int(counts.get(c, {}).get(g, 0)) for c, g in SEGMENTS]


_INTERVAL_COLUMNS = (
    "id, camera, start_ts, end_ts, "
    + ", ".join(f"visitors_{c}_{g}" for c, g in SEGMENTS)
    + ", watchers, unclassified, dwell_s, attention_s"
)
_PLAY_COLUMNS = (
    "id, display, camera, ad, title, rule, start_ts, end_ts, duration_s, "
    + ", ".join(f"viewers_{c}_{g}" for c, g in SEGMENTS)
    + ", "
    + ", ".join(f"watchers_{c}_{g}" for c, g in SEGMENTS)
    + ", unclassified, attention_s, campaign, advertiser"
)
INTERVAL_FIGURES = ("visitors", "watchers", "dwell_s", "attention_s")
PLAY_FIGURES = ("impressions", "reach", "watchers", "attention_s", "dwell_s")


def interval_row(event: IntervalEvent) -> tuple:
    return (
        record_id(event),
        event.camera,
        epoch(event.start),
        epoch(event.end),
        *_segments(event.unique_visitors),
        int(event.watchers),
        int(event.unclassified),
        float(event.dwell_s),
        float(event.attention_s),
    )


def play_row(event: PlayEvent) -> tuple:
    return (
        event.id,
        event.display,
        event.camera,
        event.ad,
        event.title,
        event.rule,
        epoch(event.start),
        epoch(event.end),
        float(event.duration_s),
        *_segments(event.viewers),
        *_segments(event.watchers),
        int(event.unclassified),
        float(event.attention_s),
        str(event.campaign),
        str(event.advertiser),
    )


def interval_segments(event: IntervalEvent) -> dict[str, dict]:
    """The interval's figures per segment; from its counts when it has no `segments`
    (an event of an older producer: visitors only, the rest unknown)."""
    if event.segments:
        return event.segments
    derived: dict[str, dict] = {}
    for c, by_gender in event.unique_visitors.items():
        for g, n in by_gender.items():
            if n:
                derived[f"{c}_{g}"] = {"visitors": n}
    for c, n in (event.gender_unknown or {}).items():
        if n:
            derived[f"{c}_unknown"] = {"visitors": n}
    if event.unclassified:
        derived[UNCLASSIFIED] = {"visitors": event.unclassified}
    return derived


def play_segments(event: PlayEvent) -> dict[str, dict]:
    if event.segments:
        return event.segments
    derived: dict[str, dict] = {}
    for c, by_gender in event.viewers.items():
        for g, n in by_gender.items():
            if n:
                derived[f"{c}_{g}"] = {
                    "impressions": n,
                    "watchers": event.watchers.get(c, {}).get(g, 0),
                }
    if event.unclassified:
        derived[UNCLASSIFIED] = {"impressions": event.unclassified}
    return derived


def _segment_rows(record: str, segments: dict, figures: tuple[str, ...]) -> list[tuple]:
    rows = []
    for key, values in segments.items():
        age_class, gender = segment_parts(key)
        rows.append((record, key, age_class, gender, *(values.get(f) for f in figures)))
    return rows


def record_id(event: IntervalEvent | PlayEvent) -> str:
    return event.id if isinstance(event, PlayEvent) else f"{event.camera}/{event.start}"


def _insert(conn: sqlite3.Connection, event: IntervalEvent | PlayEvent) -> int:
    """Insert one record and its segment rows (in the caller's transaction); 0 when a
    record of that id is there already."""
    figures: tuple[str, ...]
    if isinstance(event, IntervalEvent):
        table, columns, row = "intervals", _INTERVAL_COLUMNS, interval_row(event)
        seg_table, figures = "interval_segments", INTERVAL_FIGURES
        segments = interval_segments(event)
    else:
        table, columns, row = "plays", _PLAY_COLUMNS, play_row(event)
        seg_table, figures = "play_segments", PLAY_FIGURES
        segments = play_segments(event)
    marks = ", ".join("?" * len(row))
    inserted = conn.execute(
        f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})", row
    ).rowcount
    if inserted:
        seg_marks = ", ".join("?" * (4 + len(figures)))
        conn.executemany(
            f"INSERT INTO {seg_table} VALUES ({seg_marks})",
            _segment_rows(row[0], segments, figures),
        )
    return inserted


class AudienceStore:
    """An event sink (outputs/sinks.py): interval and play events go to the store."""

    def __init__(
        self,
        path: Path,
        retention_days: float = 90,
        *,
        clock: Callable[[], float] = time.time,
        retry_max: int = RETRY_MAX,
    ):
        self.path = Path(path)
        self.retention_days = retention_days
        self.retry_max = retry_max
        self._clock = clock  # the wall clock, for pruning (tests inject a wrong one)
        self._queue: queue.Queue = queue.Queue()
        self._pending: collections.deque = collections.deque()  # failed, to retry in order
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[str, Event], None]] = []
        self.written = 0
        self.failed = 0  # records dropped: bad data, or the retry queue was full
        self.failures = 0  # failed write attempts (disk full, locked, I/O), retried

    @property
    def pending(self) -> int:
        """Records waiting for a retry."""
        return len(self._pending)

    def on_commit(self, listener: Callable[[str, Event], None]) -> None:
        """Call listener(kind, event) after each record is committed (writer thread)."""
        self._listeners.append(listener)

    def start(self) -> AudienceStore:
        """Open (and migrate) now, so a problem stops start-up with one clear line."""
        self._conn = connect(self.path)
        try:
            migrate(self._conn, self.path)
        except StoreError:
            self._conn.close()
            raise
        self.prune()
        self._thread = threading.Thread(target=self._write_loop, name="audience-store", daemon=True)
        self._thread.start()
        return self

    def emit(self, event: Event) -> None:
        if isinstance(event, (IntervalEvent, PlayEvent)) and self._thread is not None:
            self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "audience store: %d record(s) not written within %.0f s at stop",
                self._queue.qsize() + len(self._pending),
                timeout,
            )
        else:
            assert self._conn is not None  # opened by start(), which started the thread
            if self._pending:
                log.error(
                    "audience store %s: %d record(s) could not be written before stop "
                    "(the disk stayed full or the store locked)",
                    self.path,
                    len(self._pending),
                )
            self._conn.close()
        self._thread = None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written or waits for a retry (tests,
        report after a run)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def newest(self) -> float | None:
        """The end of the newest stored record (epoch seconds), None when empty."""
        conn = self._conn
        assert conn is not None, "newest() before start()"
        row = conn.execute(
            "SELECT MAX(t) FROM (SELECT MAX(end_ts) AS t FROM intervals "
            "UNION ALL SELECT MAX(end_ts) FROM plays)"
        ).fetchone()
        return row[0]

    def prune(self, now: float | None = None) -> int:
        """Delete records that ended more than retention_days before the wall clock, or
        before the newest stored record when the clock is ahead of it: a clock that
        jumped (or a box that was off for months) never empties the store at once;
        records age out as newer ones are written (writer thread or start)."""
        now = self._clock() if now is None else now
        conn = self._conn
        assert conn is not None, "prune() before start()"
        removed = 0
        try:
            newest = self.newest()
            if newest is None:
                return 0
            if now < newest - CLOCK_SLACK_S:
                log.warning(
                    "audience store %s: the clock (%s) is behind the newest record (%s); "
                    "pruning counts back from the clock",
                    self.path,
                    _when(now),
                    _when(newest),
                )
            elif now > newest + 2 * PRUNE_EVERY_S:
                log.warning(
                    "audience store %s: the clock (%s) is %.0f days ahead of the newest "
                    "record (%s); pruning counts back from that record instead",
                    self.path,
                    _when(now),
                    (now - newest) / 86400,
                    _when(newest),
                )
            cutoff = min(now, newest) - self.retention_days * 86400
            with _transaction(conn):
                for table, segments, key in (
                    ("intervals", "interval_segments", "interval_id"),
                    ("plays", "play_segments", "play_id"),
                ):
                    conn.execute(
                        f"DELETE FROM {segments} WHERE {key} IN "
                        f"(SELECT id FROM {table} WHERE end_ts < ?)",
                        (cutoff,),
                    )
                    removed += conn.execute(
                        f"DELETE FROM {table} WHERE end_ts < ?", (cutoff,)
                    ).rowcount
        except sqlite3.Error as exc:
            log.error("audience store %s: pruning failed: %s", self.path, exc)
        if removed:
            log.info(
                "audience store: %d record(s) older than %g days removed",
                removed,
                self.retention_days,
            )
        return removed

    def _write_loop(self) -> None:
        next_prune = time.monotonic() + PRUNE_EVERY_S
        retry_in = RETRY_FIRST_S
        retry_at = math.inf
        while True:
            wait = min(next_prune, retry_at) - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.05, min(wait, 60.0)))
            except queue.Empty:
                item = False
            if time.monotonic() >= next_prune:
                self.prune()
                next_prune = time.monotonic() + PRUNE_EVERY_S
            if item is None:
                self._retry()  # a last try at stop
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if item:
                self._keep(item)
            if self._pending and (item or time.monotonic() >= retry_at):
                if time.monotonic() >= retry_at or retry_at == math.inf:
                    if self._retry():
                        retry_in, retry_at = RETRY_FIRST_S, math.inf
                    else:
                        retry_at = time.monotonic() + retry_in
                        retry_in = min(retry_in * 2, RETRY_MAX_S)

    def _keep(self, event: IntervalEvent | PlayEvent) -> None:
        """Queue a record behind those waiting, so they are written in order."""
        if len(self._pending) >= self.retry_max:
            dropped = self._pending.popleft()
            self.failed += 1
            log.error(
                "audience store %s: retry queue full (%d); %s %s dropped",
                self.path,
                self.retry_max,
                dropped.type,
                record_id(dropped),
            )
        self._pending.append(event)

    def _retry(self) -> bool:
        """Write the waiting records, oldest first; False when the store still fails."""
        while self._pending:
            event = self._pending[0]
            if not self._write(event):
                return False
            self._pending.popleft()
        return True

    def _write(self, event: IntervalEvent | PlayEvent) -> bool:
        """True when the record is written or can never be (dropped); False to retry."""
        kind = event.type
        conn = self._conn
        assert conn is not None  # the writer thread runs only after start() opened it
        try:
            with _transaction(conn):
                inserted = _insert(conn, event)
        except sqlite3.OperationalError as exc:
            # Disk full, database locked, I/O error: it passes; the record waits.
            if conn.in_transaction:  # a failed COMMIT can leave it open
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.failures += 1
            if self.failures == 1 or len(self._pending) <= 1:
                log.error(
                    "audience store %s: %s %s not written yet: %s; kept (%d waiting) "
                    "and tried again",
                    self.path,
                    kind,
                    record_id(event),
                    exc,
                    len(self._pending),
                )
            return False
        except (sqlite3.Error, KeyError, TypeError, ValueError, AttributeError) as exc:
            # One bad record is logged and the rest still go in.
            self.failed += 1
            log.error(
                "audience store %s: %s %s not written: %s", self.path, kind, record_id(event), exc
            )
            return True
        self.written += inserted
        for listener in self._listeners:
            try:
                listener(kind, event)
            except Exception:  # a listener (the dashboard) must not stop the writer
                log.exception("audience store: listener failed")
        return True


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (autocommit connection)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back itself (disk full)
                pass
        return False
