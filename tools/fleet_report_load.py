"""How long head office's report takes over a fleet's worth of rows: fills a PostgreSQL
database (edge hq's schema, edge/hq/schema.py) with synthetic stores, then times
edge/outputs/reporting.py's summarize for the ranges the fleet dashboard asks for.

  .venv/bin/python tools/fleet_report_load.py postgresql://user@host/empty_db \\
      [--stores 50] [--days 30] [--cameras 2] [--interval-s 60] [--plays-per-hour 30]

The database must be empty (a fresh one: the tool creates the schema and its month
partitions). Each store gets a zone of its own (a few real IANA zones and a +05:45),
an interval per camera every --interval-s with two or three segments, and plays with
one or two segments. Rows go in with COPY. Prints the rows written and, per query,
the seconds it took (the best of three) and the rows it returned.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kathmandu", "Australia/Adelaide", "+01:00")
SEGMENTS = ("adult_female", "adult_male", "old_female", "child_male", "unclassified")


def _parts(segment: str) -> tuple[str, str]:
    """(age class, gender) of a segment key, as the box's store writes them."""
    if segment == "unclassified":
        return "unknown", "unknown"
    age, _, gender = segment.partition("_")
    return age, gender


def fill(url: str, stores: int, days: int, cameras: int, interval_s: int, plays_per_hour: int):
    import psycopg

    from edge.hq import schema

    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start = end - dt.timedelta(days=days)
    rng = random.Random(7)
    written = {"intervals": 0, "interval_segments": 0, "plays": 0, "play_segments": 0}
    with psycopg.connect(url) as conn:
        schema.migrate(conn, url)
        months = set()
        month = schema.month_start(start)
        while month <= schema.month_start(end):
            months.add(month)
            month = schema.add_months(month, 1)
        schema.ensure_partitions(conn, months)
        wide = len(schema.columns("intervals")) - 9  # the schema-1 per-segment counts
        play_wide = len(schema.columns("plays")) - 14
        for n in range(stores):
            store = f"store-{n:04d}"
            rows: dict[str, list[tuple]] = {table: [] for table in written}
            t = start
            while t < end:
                for c in range(cameras):
                    record = f"cam{c}/{t.isoformat()}"
                    chosen = rng.sample(SEGMENTS, rng.randint(2, 3))
                    visitors = [rng.randint(0, 4) for _ in chosen]
                    rows["intervals"].append(
                        (store, record, f"cam{c}", t, t + dt.timedelta(seconds=interval_s),
                         *([0] * wide), sum(visitors) // 2, 0, 3.5 * sum(visitors),
                         1.5 * sum(visitors))
                    )  # fmt: skip
                    for segment, v in zip(chosen, visitors, strict=True):
                        rows["interval_segments"].append(
                            (store, record, segment, *_parts(segment), v, v // 2, 3.5 * v,
                             1.5 * v, t)
                        )  # fmt: skip
                t += dt.timedelta(seconds=interval_s)
            t = start
            while t < end:
                ad = f"ad-{rng.randint(0, 19)}"
                record = f"window/{t.isoformat()}"
                rows["plays"].append(
                    (store, record, "window", "cam0", ad, ad.title(), "targeting", t,
                     t + dt.timedelta(seconds=12), 12.0, *([0] * play_wide), 0, 4.0,
                     f"campaign-{ad[-1]}", "Acme")
                )  # fmt: skip
                for segment in rng.sample(SEGMENTS, rng.randint(1, 2)):
                    seen = rng.randint(1, 3)
                    rows["play_segments"].append(
                        (store, record, segment, *_parts(segment), seen, rng.randint(0, seen),
                         rng.randint(0, seen), 2.0, 6.0, t)
                    )  # fmt: skip
                t += dt.timedelta(seconds=3600 / plays_per_hour)
            with conn.transaction():
                conn.execute(
                    "INSERT INTO stores (store, tz, last_seen, online) VALUES (%s, %s, now(), %s)",
                    (store, ZONES[n % len(ZONES)], n % 7 != 0),
                )
                for table, table_rows in rows.items():
                    columns = ", ".join(schema.columns(table))
                    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in table_rows:
                            copy.write_row(row)
                    written[table] += len(table_rows)
        conn.execute("ANALYZE")
    return written


def timed(what: str, run) -> None:
    best, rows = float("inf"), 0
    for _ in range(3):
        began = time.perf_counter()
        report = run()
        best = min(best, time.perf_counter() - began)
        rows = len(report["periods"]) + len(report["ads"]) + len(report["ad_periods"])
    print(f"{what:<44} {best:7.3f} s  {rows:6d} report rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--stores", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--interval-s", type=int, default=60)
    parser.add_argument("--plays-per-hour", type=int, default=30)
    args = parser.parse_args(argv)
    from edge.outputs import reporting

    began = time.perf_counter()
    written = fill(
        args.url, args.stores, args.days, args.cameras, args.interval_s, args.plays_per_hour
    )
    print(
        "written in {:.1f} s: {}".format(
            time.perf_counter() - began, ", ".join(f"{v} {k}" for k, v in written.items())
        )
    )
    source = reporting.fleet_source(args.url)
    last = reporting.Span(name="7days")
    everything = reporting.Span()
    one = ["store-0001"]
    timed("fleet, last 7 days, by day", lambda: reporting.summarize(source, span=last))
    timed(
        f"fleet, all {args.days} days, by day", lambda: reporting.summarize(source, span=everything)
    )
    timed(
        "fleet, last 7 days, by hour",
        lambda: reporting.summarize(source, span=last, by="hour"),
    )
    timed(
        "one store, last 7 days, by hour",
        lambda: reporting.summarize(source, span=last, by="hour", stores=one),
    )
    source.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
