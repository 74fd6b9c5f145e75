"""The head office's PostgreSQL schema: versioned migrations, applied at `edge hq` start.

The contract other code (the fleet report, the dashboard) is written against:

- `intervals`, `plays`, `interval_segments`, `play_segments` have exactly the columns of
  the box's SQLite store (edge/outputs/store.py, its MIGRATIONS 1 and 2), in its order,
  with a leading `store text not null`; the box's `start_ts`/`end_ts` (REAL epoch
  seconds) are `timestamptz` here. The segment tables end with one more column,
  `start_ts` (their interval's or play's), because they are partitioned like them.
  A query written for one store's SQLite file runs here with `store` added to its
  WHERE and GROUP BY (and epoch arithmetic as timestamptz arithmetic).
- All four are partitioned by month on `start_ts` (declarative RANGE partitioning, in
  UTC): retention drops whole months (DROP TABLE of a partition: no vacuum, no bloat),
  and partitions are created ahead of time (`ensure_partitions`). A primary key of a
  partitioned table must hold the partition key, hence (store, id, start_ts) and
  (store, interval_id|play_id, segment, start_ts). Inserts are idempotent
  (ON CONFLICT DO NOTHING): a box's QoS 1 redelivery, a replay, or a batch retried
  after a lost commit acknowledgement changes nothing.
- `stores`: one row per store seen: its time zone (`tz`, an IANA name or a UTC offset
  as the box says it), `last_seen`, `online`, its latest availability payload and
  stats. `camera_status`: one row per camera. `rejected`: the latest messages that
  could not be ingested (topic, reason, an excerpt), at most hq.rejected_max_rows.
- `schema_version` holds the version; a database of a newer version is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from edge.errors import EX_CONFIG, EdgeError
from edge.outputs.store import SEGMENTS

log = logging.getLogger(__name__)

# Every `edge hq` takes this transaction-scoped advisory lock around migrations and
# partition changes: two processes of one share group start together, and CREATE
# TABLE ... PARTITION OF racing itself fails on the catalog's unique indexes.
LOCK_KEY = 0x6564_6765_6871  # "edgehq"

PARTITIONED = ("intervals", "plays", "interval_segments", "play_segments")


def _wide(prefix: str) -> str:
    return ",\n        ".join(f"{prefix}_{c}_{g} integer not null default 0" for c, g in SEGMENTS)


# One entry per schema version: MIGRATIONS[n - 1] takes the database from n - 1 to n.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE intervals (
        store text not null,
        id text not null,                  -- camera/start, as on MQTT
        camera text not null,
        start_ts timestamptz not null,
        end_ts timestamptz not null,
        {_wide("visitors")},
        watchers integer not null,
        unclassified integer not null,
        dwell_s double precision not null,
        attention_s double precision not null,
        PRIMARY KEY (store, id, start_ts)
    ) PARTITION BY RANGE (start_ts);
    CREATE INDEX intervals_by_start ON intervals (start_ts, store);

    CREATE TABLE plays (
        store text not null,
        id text not null,                  -- display/start, as on MQTT
        display text not null,
        camera text not null,
        ad text not null,
        title text not null,
        rule text not null,
        start_ts timestamptz not null,
        end_ts timestamptz not null,
        duration_s double precision not null,
        {_wide("viewers")},
        {_wide("watchers")},
        unclassified integer not null,
        attention_s double precision not null,
        campaign text not null default '',
        advertiser text not null default '',
        PRIMARY KEY (store, id, start_ts)
    ) PARTITION BY RANGE (start_ts);
    CREATE INDEX plays_by_start ON plays (start_ts, store);

    CREATE TABLE interval_segments (
        store text not null,
        interval_id text not null,         -- intervals.id
        segment text not null,             -- records.SEGMENTS
        age_class text not null,
        gender text not null,
        visitors integer not null,
        watchers integer,
        dwell_s double precision,
        attention_s double precision,
        start_ts timestamptz not null,     -- the interval's: the partition key
        PRIMARY KEY (store, interval_id, segment, start_ts)
    ) PARTITION BY RANGE (start_ts);

    CREATE TABLE play_segments (
        store text not null,
        play_id text not null,             -- plays.id
        segment text not null,
        age_class text not null,
        gender text not null,
        impressions integer not null,
        reach integer,
        watchers integer,
        attention_s double precision,
        dwell_s double precision,
        start_ts timestamptz not null,     -- the play's: the partition key
        PRIMARY KEY (store, play_id, segment, start_ts)
    ) PARTITION BY RANGE (start_ts);

    CREATE TABLE stores (
        store text primary key,
        tz text,                           -- IANA name or UTC offset, as the box says it
        last_seen timestamptz,             -- the latest message from the store (received)
        online boolean,                    -- its availability (and bridge link)
        availability text,                 -- the latest availability payload
        stats jsonb,                       -- the latest stats payload
        stats_at timestamptz
    );

    CREATE TABLE camera_status (
        store text not null,
        camera text not null,
        name text,
        online boolean not null,
        state text not null,               -- online | offline
        error text,
        reconnects_last_hour integer,
        since timestamptz not null,        -- when the camera entered this state (box time)
        updated timestamptz not null,      -- when HQ received the latest status
        PRIMARY KEY (store, camera)
    );

    CREATE TABLE rejected (
        id bigint generated always as identity primary key,
        received timestamptz not null default now(),
        topic text not null,
        store text,
        reason text not null,
        payload text not null              -- an excerpt, for the operator
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(EdgeError):
    """The database has a schema this `edge hq` does not know, or a migration failed."""

    exit_status = EX_CONFIG


def columns(table: str) -> tuple[str, ...]:
    """The columns of a partitioned table, in order, as the ingest writes them."""
    tail = ("start_ts",) if table.endswith("_segments") else ()
    return ("store", *BOX_COLUMNS[table], *tail)


# The box's columns (edge/outputs/store.py after its migration 2), for the ingest's
# INSERTs; tests/test_hq.py checks them against a real SQLite store.
BOX_COLUMNS: dict[str, tuple[str, ...]] = {
    "intervals": (
        "id",
        "camera",
        "start_ts",
        "end_ts",
        *(f"visitors_{c}_{g}" for c, g in SEGMENTS),
        "watchers",
        "unclassified",
        "dwell_s",
        "attention_s",
    ),
    "plays": (
        "id",
        "display",
        "camera",
        "ad",
        "title",
        "rule",
        "start_ts",
        "end_ts",
        "duration_s",
        *(f"viewers_{c}_{g}" for c, g in SEGMENTS),
        *(f"watchers_{c}_{g}" for c, g in SEGMENTS),
        "unclassified",
        "attention_s",
        "campaign",
        "advertiser",
    ),
    "interval_segments": (
        "interval_id",
        "segment",
        "age_class",
        "gender",
        "visitors",
        "watchers",
        "dwell_s",
        "attention_s",
    ),
    "play_segments": (
        "play_id",
        "segment",
        "age_class",
        "gender",
        "impressions",
        "reach",
        "watchers",
        "attention_s",
        "dwell_s",
    ),
}


def migrate(conn: Any, where: str) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found. Each migration
    is one transaction (`conn`: a psycopg connection; `edge hq`'s are autocommit, so
    each conn.transaction() block is a transaction of its own)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version integer not null, applied timestamptz not null default now())"
        )
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    found = row[0] or 0
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: the database has schema version {found}, newer than this edge "
            f"knows ({SCHEMA_VERSION}); upgrade edge"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                done = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
                if (done or 0) >= version:
                    continue  # another `edge hq` of the group migrated meanwhile
                conn.execute(MIGRATIONS[version - 1])
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        except Exception as exc:  # psycopg.Error, kept import-free here
            raise SchemaError(
                f"{where}: migrating the database to schema version {version} failed: {exc}"
            ) from exc
        log.info("hq database %s: schema version %d", where, version)
    return found


# -- partitions ------------------------------------------------------------------------


def month_start(t: dt.datetime) -> dt.date:
    t = t.astimezone(dt.UTC)
    return dt.date(t.year, t.month, 1)


def add_months(month: dt.date, n: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + n
    return dt.date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: dt.date) -> str:
    return f"{table}_{month.year:04d}_{month.month:02d}"


def _bound(month: dt.date) -> str:
    return f"{month.isoformat()} 00:00:00+00"


def existing_months(conn: Any, *, every: bool = True) -> set[dt.date]:
    """Months that have a partition of every partitioned table (every=False: of any)."""
    rows = conn.execute(
        "SELECT parent.relname, child.relname FROM pg_inherits "
        "JOIN pg_class parent ON parent.oid = pg_inherits.inhparent "
        "JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
        "WHERE parent.relname = ANY(%s)",
        (list(PARTITIONED),),
    ).fetchall()
    by_table: dict[str, set[dt.date]] = {t: set() for t in PARTITIONED}
    for parent, child in rows:
        suffix = child[len(parent) + 1 :]
        try:
            year, month = suffix.split("_")
            by_table[parent].add(dt.date(int(year), int(month), 1))
        except ValueError:
            continue  # a partition someone added by hand: not ours to manage
    combine = set.intersection if every else set.union
    return combine(*by_table.values())


def ensure_partitions(conn: Any, months: set[dt.date]) -> set[dt.date]:
    """Create the month partitions of every partitioned table that are missing (one
    transaction, under the advisory lock); returns the months created."""
    created = set()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        have = existing_months(conn)
        for month in sorted(months - have):
            for table in PARTITIONED:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {partition_name(table, month)} "
                    f"PARTITION OF {table} FOR VALUES FROM ('{_bound(month)}') "
                    f"TO ('{_bound(add_months(month, 1))}')"
                )
            created.add(month)
    for month in sorted(created):
        log.info("hq database: partitions for %s created", month.strftime("%Y-%m"))
    return created


def drop_partitions_before(conn: Any, first_kept: dt.date) -> list[dt.date]:
    """Drop every month partition that ends on or before `first_kept` (retention): whole
    tables, so no row-by-row DELETE and nothing left for vacuum. Returns the months."""
    dropped = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        for month in sorted(existing_months(conn, every=False)):
            if month >= first_kept:
                continue
            for table in PARTITIONED:
                conn.execute(f"DROP TABLE IF EXISTS {partition_name(table, month)}")
            dropped.append(month)
    for month in dropped:
        log.info("hq database: partitions for %s dropped (retention)", month.strftime("%Y-%m"))
    return dropped
