"""The head office's PostgreSQL schema (edge/hq/schema.py) against a real PostgreSQL,
and its contract: the box's SQLite store's columns, with `store` in front."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import psycopg
import pytest

from edge.hq import schema
from edge.outputs import store as box_store

pytestmark = pytest.mark.xdist_group("postgres")


def sqlite_columns(table: str) -> list[str]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    box_store.migrate(conn, Path(":memory:"))
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def pg_columns(conn, table: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()


@pytest.mark.parametrize("table", schema.PARTITIONED)
def test_the_tables_are_the_box_tables_with_store_in_front(pg_url, table):
    """The contract: the box's columns in its order, `store` first; epoch REALs become
    timestamptz; the segment tables end with their partition key."""
    assert list(schema.BOX_COLUMNS[table]) == sqlite_columns(table)
    with psycopg.connect(pg_url) as conn:
        schema.migrate(conn, pg_url)
        found = pg_columns(conn, table)
    assert [name for name, _ in found] == list(schema.columns(table))
    assert found[0] == ("store", "text")
    types = dict(found)
    assert types["start_ts"] == "timestamp with time zone"
    if "end_ts" in types:
        assert types["end_ts"] == "timestamp with time zone"


def test_migrations_run_once_and_a_newer_database_is_refused(pg_url):
    with psycopg.connect(pg_url) as conn:
        assert schema.migrate(conn, pg_url) == 0
        assert schema.migrate(conn, pg_url) == schema.SCHEMA_VERSION
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v in range(1, schema.SCHEMA_VERSION + 1)]
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (99,))
        conn.commit()
        with pytest.raises(schema.SchemaError, match="schema version 99, newer"):
            schema.migrate(conn, pg_url)


def test_partitions_are_created_ahead_and_dropped_whole(pg_url):
    months = {dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 3, 1)}
    with psycopg.connect(pg_url) as conn:
        schema.migrate(conn, pg_url)
        assert schema.ensure_partitions(conn, months) == months
        assert schema.ensure_partitions(conn, months) == set()  # idempotent
        assert schema.existing_months(conn) == months
        start = dt.datetime(2026, 1, 31, 23, 59, tzinfo=dt.UTC)
        conn.execute(
            "INSERT INTO interval_segments VALUES ('s1', 'c/x', 'adult_female', 'adult', "
            "'female', 1, NULL, NULL, NULL, %s)",
            (start,),
        )
        conn.commit()
        assert schema.drop_partitions_before(conn, dt.date(2026, 2, 1)) == [dt.date(2026, 1, 1)]
        assert schema.existing_months(conn) == months - {dt.date(2026, 1, 1)}
        assert conn.execute("SELECT count(*) FROM interval_segments").fetchone() == (0,)


def test_month_arithmetic():
    assert schema.add_months(dt.date(2026, 11, 1), 3) == dt.date(2027, 2, 1)
    assert schema.add_months(dt.date(2026, 1, 1), -1) == dt.date(2025, 12, 1)
    late = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert schema.month_start(late) == dt.date(2027, 1, 1)  # months are UTC
