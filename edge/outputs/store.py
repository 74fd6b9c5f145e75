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
- The schema is versioned (PRAGMA user_version); MIGRATIONS are applied in order, each
  in one transaction, and a store written by a newer version is refused, not guessed at.
- Aggregates only, like MQTT: counts per segment, times, ids of cameras, displays, ads.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import EX_CONFIG, EdgeError
from edge.events import Event, IntervalEvent, PlayEvent
from edge.records import AGE_CLASSES, GENDERS

log = logging.getLogger(__name__)

FILENAME = "audience.db"
SEGMENTS = tuple((c, g) for c in AGE_CLASSES for g in GENDERS)
PRUNE_EVERY_S = 86400.0


def _segment_columns(prefix: str) -> str:
    return ", ".join(f"{prefix}_{c}_{g} INTEGER NOT NULL DEFAULT 0" for c, g in SEGMENTS)


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
    )


def record_id(event: IntervalEvent | PlayEvent) -> str:
    return event.id if isinstance(event, PlayEvent) else f"{event.camera}/{event.start}"


_INSERT = {
    IntervalEvent: f"INSERT OR IGNORE INTO intervals VALUES ({', '.join(['?'] * 14)})",
    PlayEvent: f"INSERT OR IGNORE INTO plays VALUES ({', '.join(['?'] * 23)})",
}
_ROW: dict[type, Callable[[Any], tuple]] = {IntervalEvent: interval_row, PlayEvent: play_row}


class AudienceStore:
    """An event sink (service.EventSink): interval and play events go to the store."""

    def __init__(self, path: Path, retention_days: float = 90):
        self.path = Path(path)
        self.retention_days = retention_days
        self._queue: queue.Queue = queue.Queue()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[str, Event], None]] = []
        self.written = 0
        self.failed = 0

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
        if type(event) in _INSERT and self._thread is not None:
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
                self._queue.qsize(),
                timeout,
            )
        else:
            assert self._conn is not None  # opened by start(), which started the thread
            self._conn.close()
        self._thread = None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, report after a run)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def prune(self, now: float | None = None) -> int:
        """Delete records that ended more than retention_days ago (writer thread or start)."""
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        removed = 0
        conn = self._conn
        assert conn is not None, "prune() before start()"
        try:
            with _transaction(conn):
                for table in ("intervals", "plays"):
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
        while True:
            try:
                item = self._queue.get(timeout=max(1.0, next_prune - time.monotonic()))
            except queue.Empty:
                item = False
            if time.monotonic() >= next_prune:
                self.prune()
                next_prune = time.monotonic() + PRUNE_EVERY_S
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif item:
                self._write(item)

    def _write(self, event: IntervalEvent | PlayEvent) -> None:
        kind = event.type
        conn = self._conn
        assert conn is not None  # the writer thread runs only after start() opened it
        try:
            row = _ROW[type(event)](event)
            with _transaction(conn):
                inserted = conn.execute(_INSERT[type(event)], row).rowcount
        except (sqlite3.Error, KeyError, TypeError, ValueError) as exc:
            # One bad record (or a full disk) is logged and the rest still go in.
            self.failed += 1
            log.error(
                "audience store %s: %s %s not written: %s", self.path, kind, record_id(event), exc
            )
            return
        self.written += inserted
        for listener in self._listeners:
            try:
                listener(kind, event)
            except Exception:  # a listener (the dashboard) must not stop the writer
                log.exception("audience store: listener failed")


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (autocommit connection)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
