"""The audience report: the records of an audience store summed up per hour or day, per
ad (or campaign) and per segment, with the definitions of docs/metrics.md. The one
place those figures are computed, for the box's SQLite store (`edge report`, the
store dashboard) and for head office's PostgreSQL (`edge report --db`, the fleet
dashboard, edge/hq/dashboard.py) alike.

- Visitors, watchers, dwell and attention come from the interval counts, each interval
  in the period in which it started; per segment from interval_segments.
- Per ad: plays, screen time, impressions, reach, watchers, watch rate, attention time
  and mean dwell, from the plays and play_segments, each play in the period in which it
  started. Reach adds up over plays and periods because the service counts a visit in
  the reach of an ad once, at its first play of that ad (docs/metrics.md).
- Periods are each store's local time and carry their UTC offset, so the two 02:00
  hours of an autumn night are two rows; every row carries the store id, so files of
  many boxes can be merged. The box's zone is its own (TZ, /etc/localtime); head
  office's is each store's `stores.tz` (an IANA name or a fixed offset).

--camera limits everything to one camera; --display limits the plays to one display and
the visitors to the camera(s) that display followed; --ad limits the plays to one ad;
--store (head office) to some stores.

One set of SQLAlchemy Core expressions, compiled for SQLite and for PostgreSQL (no
ORM): the only difference between the two is how a start time is stored (REAL epoch
seconds on the box, timestamptz at head office), which `Source` and `local_period`
hide. The database does the summing, per store and local hour or day: Python works
out, for each store and the range asked for, the stretches of time in which its zone's
UTC offset stays the same (zoneinfo knows every daylight saving change; a range has one
stretch, or two or three across a change), and hands them to the query as a small
table; a record's local period is then plain arithmetic on its start time and the
offset of its stretch. So a day with a change has 23 or 25 hours, the repeated autumn
hour is two rows (two offsets), any offset works (+05:45 too), and only report rows,
not records, come back from the database.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import sqlite3
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool

from edge.errors import EX_NOINPUT, EX_USAGE, EdgeError
from edge.outputs.store import SCHEMA_VERSION, StoreError, connect
from edge.records import SEGMENTS

SEGMENT_KEYS = SEGMENTS
BY = ("hour", "day", "campaign", "ad", "store")
# The figures per segment, as docs/metrics.md names them.
VISITOR_FIGURES = ("visitors", "watchers", "dwell_s", "attention_s")
AD_FIGURES = ("impressions", "reach", "watchers", "attention_s", "dwell_s")
PERIOD_S = {"hour": 3600, "day": 86400}  # lengths of a local hour and day on the local clock
# Head office's database password, where the URL has none: from the environment or a
# systemd credential (edge/outputs/access.py), never the command line. libpq's own
# PGPASSWORD and ~/.pgpass work too.
# The same variable as `edge hq`'s (edge/hq/config.py): one database, one password.
DB_PASSWORD_ENV = "EDGE_HQ_DB_PASSWORD"
DB_PASSWORD_CREDENTIAL = "hq-db-password"

Tz = dt.tzinfo | None  # None: the box's own zone


class NoStore(StoreError):
    exit_status = EX_NOINPUT


class UnknownId(EdgeError):
    exit_status = EX_USAGE


class BadDatabase(EdgeError):
    """A --db URL that is not head office's PostgreSQL, or that carries a password."""

    exit_status = EX_USAGE


# -- time ---------------------------------------------------------------------------


def zone(name: str | None) -> Tz:
    """A store's time zone from `stores.tz`: an IANA name (Europe/Berlin) or a fixed
    offset (+01:00, -0330, UTC); ValueError naming the value when it is neither."""
    if not name:
        return dt.UTC
    text = name.strip()
    if text[:1] in "+-" and text[1:].replace(":", "").isdigit():
        digits = text[1:].replace(":", "").zfill(4)
        minutes = int(digits[:-2]) * 60 + int(digits[-2:])
        return dt.timezone(dt.timedelta(minutes=minutes if text[0] == "+" else -minutes))
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{text!r} is not a time zone: write an IANA name (Europe/Berlin) or an offset (+01:00)"
        ) from exc


def _local(ts: float, tz: Tz) -> dt.datetime:
    return (
        dt.datetime.fromtimestamp(ts, tz)
        if tz is not None
        else dt.datetime.fromtimestamp(ts).astimezone()
    )


def parse_date(text: str, *, end: bool = False, tz: Tz = None) -> float:
    """A date (YYYY-MM-DD: the whole day) or date and time, in the time zone `tz` (the
    box's by default), as epoch seconds. `end` makes a bare date mean the end of that
    day."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"{text!r} is not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM") from err
    if end and len(text) == 10:
        when += dt.timedelta(days=1)
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
    return when.timestamp()


def day_start(day: dt.date, tz: Tz = None) -> float:
    """Local midnight at the start of `day`, as epoch seconds (DST-safe)."""
    if tz is not None:
        return dt.datetime.combine(day, dt.time(), tzinfo=tz).timestamp()
    return dt.datetime.combine(day, dt.time()).astimezone().timestamp()


def today(now: float | None = None, tz: Tz = None) -> tuple[float, float]:
    """Local midnight to the next one, as epoch seconds."""
    return day_range("today", now, tz)


RANGES = ("today", "yesterday", "7days")


def day_range(name: str, now: float | None = None, tz: Tz = None) -> tuple[float, float]:
    """(start, end) epoch seconds of a named range of whole local days: today,
    yesterday, 7days (today and the six days before)."""
    day = _local(now if now is not None else dt.datetime.now().timestamp(), tz).date()
    if name == "today":
        return day_start(day, tz), day_start(day + dt.timedelta(days=1), tz)
    if name == "yesterday":
        return day_start(day - dt.timedelta(days=1), tz), day_start(day, tz)
    if name == "7days":
        return day_start(day - dt.timedelta(days=6), tz), day_start(day + dt.timedelta(days=1), tz)
    raise ValueError(f"{name!r} is not a range; use {', '.join(RANGES)}")


@dataclass(frozen=True)
class Span:
    """A range of local days or times, read in each store's own zone: `start` and `end`
    as given on the command line or the dashboard (YYYY-MM-DD, inclusive; or with a
    time, end exclusive), or a named range (`name`: today, yesterday, 7days)."""

    start: str | None = None
    end: str | None = None
    name: str | None = None
    now: float | None = None

    def bounds(self, tz: Tz) -> tuple[float | None, float | None]:
        if self.name:
            return day_range(self.name, self.now, tz)
        return (
            None if self.start is None else parse_date(self.start, tz=tz),
            None if self.end is None else parse_date(self.end, end=True, tz=tz),
        )


def period_of(ts: float, by: str, tz: Tz = None) -> tuple[str, str]:
    """(period label, UTC offset) in local time: "2026-10-25 02:00", "+02:00". A day's
    offset is that of its midnight (a day with a change has 23 or 25 hours)."""
    local = _local(ts, tz)
    label = local.strftime("%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d")
    if by != "hour":
        local = _local(day_start(local.date(), tz), tz)
    offset = local.strftime("%z")
    return label, f"{offset[:3]}:{offset[3:]}"


# -- the two databases ----------------------------------------------------------------


class local_period(sa.sql.functions.FunctionElement):  # noqa: N801  (an SQL function)
    """local_period(start_ts, offset_s, length): the number of the local hour or day
    (`length` 3600 or 86400) in which a start time lies on a clock `offset_s` seconds
    ahead of UTC: floor((epoch seconds + offset_s) / length). Compiled per dialect,
    since the box stores epoch seconds and PostgreSQL a timestamptz. `length` is
    written into the SQL, not bound: the same expression in SELECT and GROUP BY must
    read the same to PostgreSQL."""

    type = sa.BigInteger()
    name = "local_period"
    inherit_cache = False

    def __init__(self, ts: sa.ColumnElement, offset: sa.ColumnElement, length: int):
        self.length = int(length)
        super().__init__(ts, offset)


@compiles(local_period, "sqlite")
def _period_sqlite(element, compiler, **kw) -> str:
    ts, offset = (compiler.process(c, **kw) for c in element.clauses)
    # epoch seconds are positive, so truncation is floor
    return f"CAST(({ts} + {offset}) / {element.length}.0 AS INTEGER)"


@compiles(local_period, "postgresql")
def _period_postgresql(element, compiler, **kw) -> str:
    ts, offset = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(floor((extract(epoch FROM {ts}) + {offset}) / {element.length}) AS BIGINT)"


def _offset(ts: float, tz: Tz) -> int:
    delta = _local(ts, tz).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def offset_stretches(tz: Tz, first: float, last: float) -> list[tuple[float, float, int]]:
    """[(since, until, UTC offset in seconds)] covering [first, last] in which the zone's
    offset does not change; the changes found a day at a time, then to the second (no
    zone changes twice within a day)."""
    out: list[tuple[float, float, int]] = []
    first, last = math.floor(first), math.ceil(last)  # changes fall on whole seconds
    since, offset = first, _offset(first, tz)
    step = 86400
    at = first
    while at < last:
        ahead = min(at + step, last)
        if _offset(ahead, tz) != offset:
            low, high = at, ahead  # offset(low) == offset, offset(high) differs
            while high - low > 1:
                middle = (low + high) // 2
                if _offset(middle, tz) == offset:
                    low = middle
                else:
                    high = middle
            out.append((since, high, offset))
            since, offset = high, _offset(high, tz)
            at = high
        else:
            at = ahead
    out.append((since, last + 1, offset))
    return out


def _tables(metadata: sa.MetaData, *, store: bool, ts: sa.types.TypeEngine) -> dict:
    """The columns the report reads, of edge/outputs/store.py's schema (head office's
    has a leading `store` and timestamptz start times: edge/hq/schema.py)."""
    lead = [sa.Column("store", sa.Text)] if store else []
    return {
        "intervals": sa.Table(
            "intervals",
            metadata,
            *lead,
            sa.Column("id", sa.Text),
            sa.Column("camera", sa.Text),
            sa.Column("start_ts", ts),
            sa.Column("watchers", sa.Integer),
            sa.Column("dwell_s", sa.Double),
            sa.Column("attention_s", sa.Double),
        ),
        "interval_segments": sa.Table(
            "interval_segments",
            metadata,
            *[sa.Column("store", sa.Text)] * store,
            sa.Column("interval_id", sa.Text),
            sa.Column("segment", sa.Text),
            *(sa.Column(f, sa.Double if f.endswith("_s") else sa.Integer) for f in VISITOR_FIGURES),
            *[sa.Column("start_ts", ts)] * store,  # head office's: its record's
        ),
        "plays": sa.Table(
            "plays",
            metadata,
            *[sa.Column("store", sa.Text)] * store,
            sa.Column("id", sa.Text),
            sa.Column("display", sa.Text),
            sa.Column("camera", sa.Text),
            sa.Column("ad", sa.Text),
            sa.Column("title", sa.Text),
            sa.Column("campaign", sa.Text),
            sa.Column("advertiser", sa.Text),
            sa.Column("start_ts", ts),
            sa.Column("duration_s", sa.Double),
        ),
        "play_segments": sa.Table(
            "play_segments",
            metadata,
            *[sa.Column("store", sa.Text)] * store,
            sa.Column("play_id", sa.Text),
            sa.Column("segment", sa.Text),
            *(sa.Column(f, sa.Double if f.endswith("_s") else sa.Integer) for f in AD_FIGURES),
            *[sa.Column("start_ts", ts)] * store,
        ),
    }


_BOX = _tables(sa.MetaData(), store=False, ts=sa.Double())
_HQ_METADATA = sa.MetaData()
_HQ = _tables(_HQ_METADATA, store=True, ts=sa.DateTime(timezone=True))
STORES = sa.Table(
    "stores",
    _HQ_METADATA,
    sa.Column("store", sa.Text),
    sa.Column("tz", sa.Text),
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sa.Column("online", sa.Boolean),
)


@dataclass
class Source:
    """A database to report on: the box's SQLite store (one store, `store_id`, in the
    box's own zone) or head office's PostgreSQL (every store, each in its `stores.tz`)."""

    engine: sa.Engine
    store_id: str = ""  # the box's; "" at head office
    fleet: bool = False
    tables: dict = field(default_factory=dict)
    where: str = ""  # names the database in error lines

    def __post_init__(self) -> None:
        self.tables = _HQ if self.fleet else _BOX

    def store(self, table: sa.Table) -> sa.ColumnElement:
        return table.c.store if self.fleet else sa.literal(self.store_id, sa.Text)

    def group_store(self, table: sa.Table) -> list:
        return [table.c.store] if self.fleet else []

    def ts(self, epoch: float) -> Any:
        """A bind value for a start time."""
        return dt.datetime.fromtimestamp(epoch, dt.UTC) if self.fleet else epoch

    def epoch(self, value: Any) -> float:
        """A start time read from the database, as epoch seconds."""
        return value.timestamp() if isinstance(value, dt.datetime) else float(value)

    def ts_type(self) -> sa.types.TypeEngine:
        return sa.DateTime(timezone=True) if self.fleet else sa.Double()

    def zones(self, conn: sa.Connection) -> dict[str, Tz]:
        """Each store's time zone: the box's own; head office's from `stores.tz`, UTC
        for a store with rows but no entry there."""
        if not self.fleet:
            return {self.store_id: None}
        found: dict[str, Tz] = {}
        for store_id, tz in conn.execute(sa.select(STORES.c.store, STORES.c.tz)):
            try:
                found[store_id] = zone(tz)
            except ValueError as exc:
                raise StoreError(f"{self.where}: stores.tz of store '{store_id}': {exc}") from exc
        for name in ("intervals", "plays"):
            for (store_id,) in conn.execute(sa.select(self.tables[name].c.store).distinct()):
                found.setdefault(store_id, dt.UTC)
        return found


def box_source(conn: sqlite3.Connection, store_id: str = "", where: str = "") -> Source:
    """A Source on an open connection to the box's store (the caller closes it)."""
    engine = sa.create_engine("sqlite://", creator=lambda: conn, poolclass=StaticPool)
    return Source(engine, store_id=store_id, where=where)


def db_url(url: str, *, password_allowed: bool = False) -> sa.URL:
    """Head office's database URL for SQLAlchemy, with psycopg 3 as the driver and the
    password from EDGE_HQ_DB_PASSWORD (or the credential hq-db-password) in place of the
    URL's; with neither, libpq's PGPASSWORD or ~/.pgpass. A password in a URL given on
    the command line is refused (`password_allowed` False): the command line shows in
    the process list and the shell's history."""
    from edge.outputs.access import load_secret

    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise BadDatabase(f"{url!r} is not a database URL (postgresql://user@host/db)") from exc
    if parsed.get_backend_name() != "postgresql":
        shown = parsed.render_as_string(hide_password=True)
        raise BadDatabase(f"{shown!r}: head office's database is PostgreSQL (postgresql://...)")
    if parsed.password and not password_allowed:
        raise BadDatabase(
            f"the database URL carries a password: leave it out and set {DB_PASSWORD_ENV} "
            f"(or PGPASSWORD, ~/.pgpass, the credential {DB_PASSWORD_CREDENTIAL})"
        )
    parsed = parsed.set(drivername="postgresql+psycopg")
    secret = load_secret(DB_PASSWORD_ENV, DB_PASSWORD_CREDENTIAL)
    return parsed.set(password=secret) if secret else parsed


def fleet_source(url: str, *, password_allowed: bool = False, **engine_options) -> Source:
    """A Source on head office's PostgreSQL."""
    parsed = db_url(url, password_allowed=password_allowed)
    engine = sa.create_engine(parsed, pool_pre_ping=True, **engine_options)
    shown = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
    return Source(engine, fleet=True, where=shown)


# -- ids -------------------------------------------------------------------------------


def known_ids(source: Source, conn: sa.Connection, stores: list[str] | None = None) -> dict:
    """The stores, cameras, displays and ads the database has records of (of `stores`)."""
    t = source.tables

    def only(table: sa.Table, query: sa.Select) -> sa.Select:
        return query.where(table.c.store.in_(stores)) if source.fleet and stores else query

    i, p = t["intervals"], t["plays"]
    cameras = sa.union(
        only(i, sa.select(i.c.camera)), only(p, sa.select(p.c.camera.label("camera")))
    )
    known = {
        "camera": sorted(r[0] for r in conn.execute(cameras)),
        "display": sorted(r[0] for r in conn.execute(only(p, sa.select(p.c.display).distinct()))),
        "ad": sorted(r[0] for r in conn.execute(only(p, sa.select(p.c.ad).distinct()))),
    }
    return known


def check_ids(
    source: Source, conn: sa.Connection, stores: list[str] | None = None, **given: str | None
) -> None:
    """UnknownId, naming the ids the database knows, for an id it has no record of."""
    if source.fleet and stores:
        known_stores = sorted(source.zones(conn))
        for store_id in stores:
            if store_id not in known_stores:
                names = ", ".join(known_stores) or "none yet"
                raise UnknownId(f"{source.where}: no store '{store_id}'; known: {names}")
    known = known_ids(source, conn, stores)
    for kind, value in given.items():
        if value is not None and value not in known[kind]:
            names = ", ".join(known[kind]) or "none yet"
            where = (
                source.where
                if not source.fleet
                else f"{source.where} ({', '.join(stores or ['all stores'])})"
            )
            raise UnknownId(f"{where}: no {kind} '{value}' in the audience store; known: {names}")


# -- summing -------------------------------------------------------------------------


def _add(row: dict, name: str, value) -> None:
    """Sum that keeps "not known" apart from 0: None + None is None, None + 3 is 3 (as
    SQL's SUM, so sums of sums keep it too)."""
    if value is None:
        row.setdefault(name, None)
    else:
        row[name] = (row.get(name) or 0) + value


def _rate(part, whole) -> float | None:
    return round(part / whole, 3) if part is not None and whole else None


def _round(value, digits: int = 1):
    return None if value is None else round(value, digits)


class _Visitors:
    """Visitor figures of a period (or a store's, or the total), from the database's
    sums per local period: the intervals' own figures, and the figures per segment."""

    def __init__(self) -> None:
        self.totals: dict = {}
        self.segments: dict[str, dict] = {}

    def add_intervals(self, scalars: Iterable) -> None:
        for name, value in zip(("watchers", "dwell_s", "attention_s"), scalars, strict=True):
            _add(self.totals, name, value)

    def add_segment(self, segment: str, figures: Iterable) -> None:
        row = self.segments.setdefault(segment, {})
        for name, value in zip(VISITOR_FIGURES, figures, strict=True):
            _add(row, name, value)

    def finish(self) -> dict:
        visitors = sum(s.get("visitors") or 0 for s in self.segments.values())
        segments = {}
        for key in SEGMENT_KEYS:
            s = self.segments.get(key, {})
            n = s.get("visitors") or 0
            segments[key] = {
                "visitors": n,
                "watchers": s.get("watchers", 0 if not s else None),
                "dwell_s": _round(s.get("dwell_s", 0.0 if not s else None)),
                "mean_dwell_s": _rate(s.get("dwell_s"), n) if n else None,
                "attention_s": _round(s.get("attention_s", 0.0 if not s else None)),
            }
        dwell = self.totals.get("dwell_s", 0.0)
        return {
            "visitors": visitors,
            "watchers": self.totals.get("watchers", 0),
            "dwell_s": _round(dwell),
            "mean_dwell_s": _round(dwell / visitors) if visitors and dwell is not None else None,
            "attention_s": _round(self.totals.get("attention_s", 0.0)),
            "segments": segments,
        }


class _Ads:
    """Play figures of an ad, campaign or total: plays and screen time from the plays,
    the rest per segment."""

    def __init__(self) -> None:
        self.plays = 0
        self.screen_time_s = 0.0
        self.segments: dict[str, dict] = {}

    def add_plays(self, plays: int, screen_time_s: float | None) -> None:
        self.plays += plays
        self.screen_time_s += screen_time_s or 0.0

    def add_segment(self, segment: str, figures: tuple) -> None:
        """`figures`: AD_FIGURES, then the impressions whose dwell is known (for the mean)."""
        row = self.segments.setdefault(segment, {})
        for name, value in zip((*AD_FIGURES, "timed"), figures, strict=True):
            _add(row, name, value)

    @staticmethod
    def _figures(s: dict) -> dict:
        impressions = s.get("impressions") or 0
        return {
            "impressions": impressions,
            "reach": s.get("reach", 0 if not s else None),
            "watchers": s.get("watchers", 0 if not s else None),
            "watch_rate": _rate(s.get("watchers"), impressions),
            "attention_s": _round(s.get("attention_s", 0.0 if not s else None)),
            "mean_dwell_s": _round(_rate(s.get("dwell_s"), s.get("timed"))),
        }

    def finish(self) -> dict:
        total: dict = {}
        for s in self.segments.values():
            for name in (*AD_FIGURES, "timed"):
                if name in s:
                    _add(total, name, s[name])
        return {
            "plays": self.plays,
            "screen_time_s": round(self.screen_time_s, 1),
            **self._figures(total),
            "segments": {key: self._figures(self.segments.get(key, {})) for key in SEGMENT_KEYS},
        }


def _sum(column: sa.ColumnElement, kind: type[sa.types.TypeEngine]) -> sa.ColumnElement:
    """SUM, NULL when every value is NULL (a figure not recorded then), as an integer or
    a double on both databases (PostgreSQL's SUM of a bigint is a numeric)."""
    inner = sa.cast(column, sa.Double) if kind is sa.Double else column
    return sa.cast(sa.func.sum(inner), kind())


def _int(column: sa.ColumnElement) -> sa.ColumnElement:
    return _sum(column, sa.BigInteger)


def _float(column: sa.ColumnElement) -> sa.ColumnElement:
    return _sum(column, sa.Double)


@dataclass
class _Filter:
    """Which records count: per store (its zone's bounds, the cameras its display
    followed) and by camera, display and ad."""

    source: Source
    bounds: dict[str, tuple[float | None, float | None]]  # store -> (start, end)
    cameras: dict[str, list[str] | None]  # store -> cameras (None: all)
    camera: str | None = None
    display: str | None = None
    ad: str | None = None

    def times(self, table: sa.Table) -> sa.ColumnElement:
        """The stores and bounds alone, for head office's segment tables (they carry
        their record's store and start): PostgreSQL then reads only the range's month
        partitions of them, and only its rows."""
        groups: dict[tuple, list[str]] = {}
        for store_id, (start, end) in self.bounds.items():
            groups.setdefault((start, end), []).append(store_id)
        ors = []
        for (start, end), store_ids in groups.items():
            parts = [table.c.store.in_(store_ids)]
            if start is not None:
                parts.append(table.c.start_ts >= self.source.ts(start))
            if end is not None:
                parts.append(table.c.start_ts < self.source.ts(end))
            ors.append(sa.and_(*parts))
        return sa.or_(*ors) if ors else sa.false()

    def clause(self, table: sa.Table, *, visitors: bool) -> sa.ColumnElement:
        # Stores with the same bounds and cameras share one condition.
        groups: dict[tuple, list[str]] = {}
        for store_id, (start, end) in self.bounds.items():
            cams = self.cameras.get(store_id) if visitors else None
            groups.setdefault((start, end, tuple(cams) if cams is not None else None), []).append(
                store_id
            )
        ors = []
        for (start, end, cams), store_ids in groups.items():
            parts = []
            if self.source.fleet:
                parts.append(table.c.store.in_(store_ids))
            if start is not None:
                parts.append(table.c.start_ts >= self.source.ts(start))
            if end is not None:
                parts.append(table.c.start_ts < self.source.ts(end))
            if cams is not None:
                parts.append(table.c.camera.in_(cams))
            ors.append(sa.and_(sa.true(), *parts))
        clauses = [sa.or_(*ors) if ors else sa.false()]
        if self.camera is not None:
            clauses.append(table.c.camera == self.camera)
        if not visitors:
            if self.display is not None:
                clauses.append(table.c.display == self.display)
            if self.ad is not None:
                clauses.append(table.c.ad == self.ad)
        return sa.and_(*clauses)


def summarize(
    source: Source | sqlite3.Connection,
    *,
    start: float | None = None,
    end: float | None = None,
    span: Span | None = None,
    by: str = "day",
    camera: str | None = None,
    display: str | None = None,
    ad: str | None = None,
    store: str = "",
    stores: list[str] | None = None,
) -> dict:
    """The report for the records that start in [start, end) (or in `span`, read in
    each store's zone): {store, by, stores, periods, ads, ad_periods, totals}; field
    names as docs/metrics.md defines them. `stores` limits head office's to some stores
    (all by default); `store` names the box's."""
    if isinstance(source, sqlite3.Connection):
        source = box_source(source, store)
    with source.engine.connect() as conn:
        return _summarize(source, conn, start, end, span, by, camera, display, ad, stores)


def _summarize(
    source: Source,
    conn: sa.Connection,
    start: float | None,
    end: float | None,
    span: Span | None,
    by: str,
    camera: str | None,
    display: str | None,
    ad: str | None,
    stores: list[str] | None,
) -> dict:
    # The steps in the order each needs the one before: which stores and records
    # count, the offset stretches the local periods are worked out from (the zone
    # table), then the database's sums (visitors, then plays: the two share the
    # clock's period names) and the report made of them.
    zones = _zones_asked(source, conn, stores)

    def bounds(tz: Tz) -> tuple[float | None, float | None]:
        return span.bounds(tz) if span is not None else (start, end)

    cameras = _cameras_followed(source, conn, zones, camera, display)
    where = _Filter(
        source, {s: bounds(tz) for s, tz in zones.items()}, cameras, camera, display, ad
    )
    clock = _Clock(
        source,
        zones,
        "hour" if by == "hour" else "day",
        _zone_table(source, _stretches(where, zones, _records_range(source, conn, where, zones))),
    )
    visitors = _sum_visitors(source, conn, where, clock)
    played = _sum_ads(source, conn, where, clock, "campaign" if by == "campaign" else "ad")
    return _report(by, zones, stores, visitors, played)


def _zones_asked(source: Source, conn: sa.Connection, stores: list[str] | None) -> dict[str, Tz]:
    """Each store's zone: every store the database knows, or the ones asked for (in the
    order asked; one it has no zone for reads in UTC). The report shows the stores
    asked for even where they have no records."""
    zones = source.zones(conn)
    if stores is not None:
        zones = {s: zones.get(s, dt.UTC) for s in stores}
    return zones


def _cameras_followed(
    source: Source,
    conn: sa.Connection,
    zones: dict[str, Tz],
    camera: str | None,
    display: str | None,
) -> dict[str, list[str] | None]:
    """Per store, the cameras whose visitors count (None: all). A display's visitors are
    those of the camera(s) it followed (in its store), unless --camera names one."""
    if display is None or camera is not None:
        return dict.fromkeys(zones)
    p = source.tables["plays"]
    followed: dict[str, list[str]] = {s: [] for s in zones}
    query = sa.select(source.store(p), p.c.camera).where(p.c.display == display).distinct()
    for store_id, cam in conn.execute(query):
        if store_id in followed:
            followed[store_id].append(cam)
    return {s: sorted(c) for s, c in followed.items()}


def _records_range(
    source: Source, conn: sa.Connection, where: _Filter, zones: dict[str, Tz]
) -> dict[str, tuple[float, float]]:
    """Each store's first and last record start (intervals and plays), as epoch
    seconds: where a range is open at one end, its stretches end at the records. Only
    read then, as it is one more pass over the tables."""
    seen: dict[str, tuple[float, float]] = {}
    if not any(None in b for b in where.bounds.values()):
        return seen
    for table in (source.tables["intervals"], source.tables["plays"]):
        query = sa.select(
            source.store(table), sa.func.min(table.c.start_ts), sa.func.max(table.c.start_ts)
        ).group_by(*source.group_store(table))
        for store_id, low, high in conn.execute(query):
            if low is not None and store_id in zones:
                low, high = source.epoch(low), source.epoch(high)
                old = seen.get(store_id, (low, high))
                seen[store_id] = (min(old[0], low), max(old[1], high))
    return seen


def _stretches(
    where: _Filter, zones: dict[str, Tz], seen: dict[str, tuple[float, float]]
) -> list[tuple[str, float, float, int]]:
    """(store, since, until, UTC offset): each store's offset stretches over the range
    asked for, or over its records where the range is open; a store with nothing to
    read has none."""
    stretches = []
    for store_id, (first, last) in where.bounds.items():
        data = seen.get(store_id)
        first = first if first is not None else data[0] if data else None
        last = last if last is not None else data[1] if data else None
        if first is None or last is None or first >= last + 1:
            continue  # nothing to read there
        stretches += [
            (store_id, since, until, offset)
            for since, until, offset in offset_stretches(zones[store_id], first, last)
        ]
    return stretches


def _zone_table(source: Source, stretches: list[tuple[str, float, float, int]]) -> sa.CTE:
    """The stretches as a small table (CTE "zones": store, since, until, offset_s) the
    queries join their records to; with none, a table of the same columns and no rows,
    so the queries stay the same and return nothing."""
    if not stretches:
        return (
            sa.select(
                sa.literal("", sa.Text).label("store"),
                sa.literal(source.ts(0), source.ts_type()).label("since"),
                sa.literal(source.ts(0), source.ts_type()).label("until"),
                sa.literal(0, sa.Integer).label("offset_s"),
            )
            .where(sa.false())
            .cte("zones")
        )
    return sa.union_all(
        *(
            sa.select(
                sa.literal(store_id, sa.Text).label("store"),
                sa.literal(source.ts(since), source.ts_type()).label("since"),
                sa.literal(source.ts(until), source.ts_type()).label("until"),
                sa.literal(offset, sa.Integer).label("offset_s"),
            )
            for store_id, since, until, offset in stretches
        )
    ).cte("zones")


@dataclass
class _Clock:
    """The local periods of one report: the zone table a record is joined to, its
    period number in SQL, and that number named in Python (store, label, UTC offset),
    the same for the visitor and the play queries."""

    source: Source
    zones: dict[str, Tz]
    by: str  # "hour" or "day"
    table: sa.CTE
    keys: dict[tuple[str, int, int], tuple[str, str, str]] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return PERIOD_S[self.by]

    def in_zone(self, table: sa.Table) -> sa.ColumnElement:
        """A record of `table` joined to its store's stretch of one offset."""
        z = self.table.c
        return sa.and_(
            *([z.store == table.c.store] if self.source.fleet else []),
            table.c.start_ts >= z.since,
            table.c.start_ts < z.until,
        )

    def period(self, table: sa.Table | sa.CTE) -> sa.ColumnElement:
        """The local period number of a record of `table`, from its stretch's offset."""
        return local_period(table.c.start_ts, self.table.c.offset_s, self.length)

    def key(self, store_id: str, offset: int, number: int) -> tuple[str, str, str]:
        """(store, label, UTC offset) of local period `number` on a clock `offset` ahead:
        its middle as epoch seconds, named by period_of (each worked out once)."""
        key = self.keys.get((store_id, offset, number))
        if key is None:
            middle = number * self.length + self.length // 2 - offset
            key = (store_id, *period_of(middle, self.by, self.zones[store_id]))
            self.keys[(store_id, offset, number)] = key
        return key


@dataclass
class _VisitorSums:
    """Visitor figures per local period, per store and in total."""

    periods: dict[tuple[str, str, str], _Visitors] = field(default_factory=dict)
    stores: dict[str, _Visitors] = field(default_factory=dict)
    totals: _Visitors = field(default_factory=_Visitors)

    def buckets(self, clock: _Clock, store_id: str, offset: int, number: int) -> tuple:
        """The figures a database row adds to: its period's, its store's, the total."""
        return (
            self.periods.setdefault(clock.key(store_id, offset, number), _Visitors()),
            self.stores.setdefault(store_id, _Visitors()),
            self.totals,
        )


def _sum_visitors(
    source: Source, conn: sa.Connection, where: _Filter, clock: _Clock
) -> _VisitorSums:
    """Visitors, watchers, dwell and attention: the intervals' own sums, then the
    sums per segment, each interval in the period in which it started."""
    sums = _VisitorSums()
    i = source.tables["intervals"]
    z = clock.table.c
    period = clock.period(i)
    query = (
        sa.select(
            source.store(i),
            z.offset_s,
            period,
            _int(i.c.watchers),
            _float(i.c.dwell_s),
            _float(i.c.attention_s),
        )
        .select_from(i.join(clock.table, clock.in_zone(i)))
        .where(where.clause(i, visitors=True))
        .group_by(*source.group_store(i), z.offset_s, period)
        .order_by(*source.group_store(i), sa.func.min(i.c.start_ts))
    )
    for store_id, offset, number, *scalars in conn.execute(query):
        for visitors in sums.buckets(clock, store_id, offset, number):
            visitors.add_intervals(scalars)
    query = _interval_segments_query(source, where, clock)
    for store_id, offset, number, segment, *figures in conn.execute(query):
        for visitors in sums.buckets(clock, store_id, offset, number):
            visitors.add_segment(segment, figures)
    return sums


def _interval_segments_query(source: Source, where: _Filter, clock: _Clock) -> sa.Select:
    """The interval segments' sums per store, offset, period and segment."""
    i, iseg = source.tables["intervals"], source.tables["interval_segments"]
    z = clock.table.c
    if source.fleet and where.camera is None and where.display is None:
        # Head office's segment rows carry their interval's store and start: with no
        # camera to check, they are summed without reading the intervals again.
        records: sa.Table = iseg
        join = iseg.join(clock.table, clock.in_zone(iseg))
        condition = where.times(iseg)
    else:
        records = i
        join = iseg.join(
            i,
            sa.and_(
                iseg.c.interval_id == i.c.id,
                # head office's segment rows carry their record's store and start (the
                # partition key, so a range reads only its months' partitions)
                *(
                    [iseg.c.store == i.c.store, iseg.c.start_ts == i.c.start_ts]
                    if source.fleet
                    else []
                ),
            ),
        ).join(clock.table, clock.in_zone(i))
        condition = where.clause(i, visitors=True)
    period = clock.period(records)
    return (
        sa.select(
            source.store(records),
            z.offset_s,
            period,
            iseg.c.segment,
            _int(iseg.c.visitors),
            _int(iseg.c.watchers),
            _float(iseg.c.dwell_s),
            _float(iseg.c.attention_s),
        )
        .select_from(join)
        .where(condition)
        .group_by(*source.group_store(records), z.offset_s, period, iseg.c.segment)
    )


@dataclass
class _AdSums:
    """Play figures per ad (or campaign), per ad and local period, per store and in
    total, and each ad's labels, in the order they first played."""

    group: str  # "ad" or "campaign"
    ads: dict[tuple[str, str], _Ads] = field(default_factory=dict)
    names: dict[tuple[str, str], dict] = field(default_factory=dict)
    ad_periods: dict[tuple[str, str, str, str], _Ads] = field(default_factory=dict)
    stores: dict[str, _Ads] = field(default_factory=dict)
    totals: _Ads = field(default_factory=_Ads)

    def buckets(self, clock: _Clock, store_id: str, offset: int, number: int, key: str) -> tuple:
        """The figures a database row adds to: its ad's, its ad's in its period, its
        store's, the total."""
        return (
            self.ads.setdefault((store_id, key), _Ads()),
            self.ad_periods.setdefault((*clock.key(store_id, offset, number), key), _Ads()),
            self.stores.setdefault(store_id, _Ads()),
            self.totals,
        )

    def name(self, store_id: str, key: str, ad: str, latest: Any, **labels: str) -> None:
        """Remember an ad of `key` (itself, or its campaign) and the labels (title,
        campaign, advertiser) of its latest play: those the report shows."""
        info = self.names.setdefault((store_id, key), {"ads": set(), "latest": latest})
        if latest >= info["latest"]:
            info.update(labels, latest=latest)
        info["ads"].add(ad)

    def label(self, store_id: str, key: str) -> dict:
        """An ad's labels (ad, title, campaign, advertiser), or a campaign's (campaign,
        advertiser, its ads)."""
        info = self.names[(store_id, key)]
        if self.group == "ad":
            return {
                "ad": key,
                "title": info["title"],
                "campaign": info["campaign"],
                "advertiser": info["advertiser"],
            }
        return {"campaign": key, "advertiser": info["advertiser"], "ads": sorted(info["ads"])}


def _sum_ads(
    source: Source, conn: sa.Connection, where: _Filter, clock: _Clock, group: str
) -> _AdSums:
    """Plays and screen time from the plays, the audience figures from the play
    segments, each play in the period in which it started."""
    sums = _AdSums(group)
    p, pseg = source.tables["plays"], source.tables["play_segments"]
    z = clock.table.c
    period = clock.period(p)
    labels = (p.c.ad, p.c.title, p.c.campaign, p.c.advertiser)
    query = (
        sa.select(
            source.store(p),
            z.offset_s,
            period,
            *labels,
            sa.func.count(),
            _float(p.c.duration_s),
            sa.func.max(p.c.start_ts),
        )
        .select_from(p.join(clock.table, clock.in_zone(p)))
        .where(where.clause(p, visitors=False))
        .group_by(*source.group_store(p), z.offset_s, period, *labels)
        .order_by(*source.group_store(p), sa.func.min(p.c.start_ts))
    )
    for row in conn.execute(query):
        store_id, offset, number, ad_id, title, campaign, advertiser, n, screen, latest = row
        key = ad_id if group == "ad" else campaign
        sums.name(
            store_id, key, ad_id, latest, title=title, campaign=campaign, advertiser=advertiser
        )
        for played in sums.buckets(clock, store_id, offset, number, key):
            played.add_plays(n, screen)
    join = pseg.join(
        p,
        sa.and_(
            pseg.c.play_id == p.c.id,
            *([pseg.c.store == p.c.store, pseg.c.start_ts == p.c.start_ts] if source.fleet else []),
        ),
    ).join(clock.table, clock.in_zone(p))
    grouping = p.c.ad if group == "ad" else p.c.campaign
    timed = sa.case((pseg.c.dwell_s.is_not(None), pseg.c.impressions))
    query = (
        sa.select(
            source.store(p),
            z.offset_s,
            period,
            grouping,
            pseg.c.segment,
            *(_float(pseg.c[f]) if f.endswith("_s") else _int(pseg.c[f]) for f in AD_FIGURES),
            _int(timed),
        )
        .select_from(join)
        .where(where.clause(p, visitors=False), *([where.times(pseg)] if source.fleet else []))
        .group_by(*source.group_store(p), z.offset_s, period, grouping, pseg.c.segment)
    )
    for store_id, offset, number, key, segment, *figures in conn.execute(query):
        for played in sums.buckets(clock, store_id, offset, number, key):
            played.add_segment(segment, tuple(figures))
    return sums


def _store_totals(visitors: _Visitors, played: dict) -> dict:
    """A store's (or the total's) visitor figures and its play figures."""
    return {
        **visitors.finish(),
        **{k: played[k] for k in ("plays", "screen_time_s", "impressions", "reach")},
    }


def _report(
    by: str,
    zones: dict[str, Tz],
    stores: list[str] | None,
    visitors: _VisitorSums,
    played: _AdSums,
) -> dict:
    """The report's fields (docs/metrics.md) from the sums."""
    ad_list = sorted(
        ({"store": s, **played.label(s, k), **v.finish()} for (s, k), v in played.ads.items()),
        key=lambda a: (a["store"], -a["plays"], a[played.group]),
    )
    # Head office names the stores asked for, or else those with records in the range.
    shown = [s for s in zones if stores is not None or s in visitors.stores or s in played.stores]
    name = ",".join(shown)
    return {
        "store": name,
        "by": by,
        "stores": [
            {
                "store": s,
                **_store_totals(
                    visitors.stores.get(s, _Visitors()), played.stores.get(s, _Ads()).finish()
                ),
            }
            for s in sorted(shown)
        ],
        "periods": [
            {"store": s, "period": p, "utc_offset": off, **v.finish()}
            for (s, p, off), v in visitors.periods.items()
        ],
        "ads": ad_list,
        "ad_periods": [
            {"store": s, "period": p, "utc_offset": off, **played.label(s, k), **v.finish()}
            for (s, p, off, k), v in played.ad_periods.items()
        ],
        "totals": {"store": name, **_store_totals(visitors.totals, played.totals.finish())},
    }


def csv_tables(report: dict) -> dict[str, tuple[list[str], list[list]]]:
    """The report as flat tables (name -> (header, rows)), one row per period, ad or
    ad x period and segment: what CSV and the dashboard's export write."""
    group = "campaign" if report["by"] == "campaign" else "ad"
    names = (
        ["ad", "title", "campaign", "advertiser"] if group == "ad" else ["campaign", "advertiser"]
    )
    visitors = ["visitors", "watchers", "dwell_s", "mean_dwell_s", "attention_s"]
    ad_figures = [
        "impressions",
        "reach",
        "watchers",
        "watch_rate",
        "attention_s",
        "mean_dwell_s",
    ]

    def cell(value):
        return "" if value is None else value

    def segment_rows(row: dict, lead: list, figures: list[str], plays: bool) -> list[list]:
        top = [*lead, "all", *(([row["plays"], row["screen_time_s"]]) if plays else [])]
        out = [top + [cell(row[f]) for f in figures]]
        for key, s in row["segments"].items():
            if s.get("impressions" if plays else "visitors"):
                blank = ["", ""] if plays else []
                out.append([*lead, key, *blank, *(cell(s[f]) for f in figures)])
        return out

    periods = [
        r
        for p in report["periods"]
        for r in segment_rows(p, [p["store"], p["period"], p["utc_offset"]], visitors, False)
    ]
    ads = [
        r
        for a in report["ads"]
        for r in segment_rows(a, [a["store"], *(a[n] for n in names)], ad_figures, True)
    ]
    ad_periods = [
        r
        for a in report["ad_periods"]
        for r in segment_rows(
            a,
            [a["store"], a["period"], a["utc_offset"], *(a[n] for n in names)],
            ad_figures,
            True,
        )
    ]
    plays = ["plays", "screen_time_s"]
    store_figures = [*plays, "impressions", "reach"]
    stores = []
    for s in report.get("stores", []):
        stores.append([s["store"], "all", *(cell(s[f]) for f in visitors + store_figures)])
        for key, seg in s["segments"].items():
            if seg["visitors"]:
                stores.append([s["store"], key, *(cell(seg[f]) for f in visitors)] + [""] * 4)
    return {
        "stores": (["store", "segment", *visitors, *store_figures], stores),
        "visitors": (["store", "period", "utc_offset", "segment", *visitors], periods),
        "ads": (["store", *names, "segment", *plays, *ad_figures], ads),
        "ad_periods": (
            ["store", "period", "utc_offset", *names, "segment", *plays, *ad_figures],
            ad_periods,
        ),
    }


def as_csv(report: dict, tables: tuple[str, ...] | None = None) -> str:
    """CSV tables (visitors per period, or per store with --by store; ads; ads per
    period), each row one segment or "all", separated by one empty line."""
    if tables is None:
        first = "stores" if report["by"] == "store" else "visitors"
        tables = (first, "ads", "ad_periods")
    parts = []
    for name, (header, rows) in csv_tables(report).items():
        if name not in tables:
            continue
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        parts.append(buffer.getvalue())
    return "\n".join(parts).rstrip("\n")


def read(path: Path, **query) -> dict:
    """summarize() on the box's store at `path`, read-only; ids checked first (UnknownId)."""
    if not path.is_file():
        raise NoStore(
            f"{path}: no audience store yet; `edge run` writes it "
            f"(store.enabled) once the first interval or play ends"
        )
    conn = connect(path, readonly=True)
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: the audience store has schema version {version}; this edge "
                    f"reads version {SCHEMA_VERSION}: start `edge run` once (it migrates the "
                    f"store at start) and report again"
                )
            source = box_source(conn, query.pop("store", ""), str(path))
            with source.engine.connect() as sa_conn:
                check_ids(
                    source,
                    sa_conn,
                    camera=query.get("camera"),
                    display=query.get("display"),
                    ad=query.get("ad"),
                )
            return summarize(source, **query)
        except (sqlite3.Error, sa.exc.DBAPIError) as exc:
            raise StoreError(f"{path}: cannot read the audience store: {exc}") from exc
    finally:
        conn.close()


def read_db(source: Source, **query) -> dict:
    """summarize() on head office's database; store and other ids checked first
    (UnknownId); a database that cannot be reached is one StoreError line."""
    try:
        with source.engine.connect() as conn:
            check_ids(
                source,
                conn,
                query.get("stores"),
                camera=query.get("camera"),
                display=query.get("display"),
                ad=query.get("ad"),
            )
        return summarize(source, **query)
    except sa.exc.DBAPIError as exc:
        raise StoreError(f"{source.where}: cannot read head office's database: {why(exc)}") from exc


def why(exc: sa.exc.DBAPIError) -> str:
    """The database's own first line, and what to do where the tables are missing."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    if getattr(exc.orig, "sqlstate", None) == "42P01":  # undefined_table
        reason += " (not edge hq's database yet? `edge hq` creates its tables at start)"
    return reason
