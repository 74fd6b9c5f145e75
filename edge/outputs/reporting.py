"""`edge report`: the audience store summed up per hour or day, per ad (or campaign) and
per segment, with the definitions of docs/metrics.md. The one place those figures are
computed: the dashboard reads them through `summarize` too.

- Visitors, watchers, dwell and attention come from the interval counts, each interval
  in the period in which it started; per segment from interval_segments.
- Per ad: plays, screen time, impressions, reach, watchers, watch rate, attention time
  and mean dwell, from the plays and play_segments, each play in the period in which it
  started. Reach adds up over plays and periods because the service counts a visit in
  the reach of an ad once, at its first play of that ad (docs/metrics.md).
- Periods are the box's local time and carry their UTC offset, so the two 02:00 hours
  of an autumn night are two rows; every row carries the store id, so files of many
  boxes can be merged.

--camera limits everything to one camera; --display limits the plays to one display and
the visitors to the camera(s) that display followed; --ad limits the plays to one ad.

The SQL is plain (no SQLite-only functions): head office runs the same definitions on
PostgreSQL. Periods are assigned here, in Python, from the records' epoch times.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
from pathlib import Path

from edge.errors import EX_NOINPUT, EX_USAGE, EdgeError
from edge.outputs.store import SCHEMA_VERSION, StoreError, connect
from edge.records import SEGMENTS

SEGMENT_KEYS = SEGMENTS
BY = ("hour", "day", "campaign")
# The figures per segment, as docs/metrics.md names them.
VISITOR_FIGURES = ("visitors", "watchers", "dwell_s", "attention_s")
AD_FIGURES = ("impressions", "reach", "watchers", "attention_s", "dwell_s")


class NoStore(StoreError):
    exit_status = EX_NOINPUT


class UnknownId(EdgeError):
    exit_status = EX_USAGE


def parse_date(text: str, *, end: bool = False) -> float:
    """A date (YYYY-MM-DD: the whole day) or date and time, in the box's time zone, as
    epoch seconds. `end` makes a bare date mean the end of that day."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"{text!r} is not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM") from err
    if when.tzinfo is None:
        when = when.astimezone()  # local time of the box
    if end and len(text) == 10:
        when += dt.timedelta(days=1)
    return when.timestamp()


def day_start(day: dt.date) -> float:
    """Local midnight at the start of `day`, as epoch seconds (DST-safe)."""
    return dt.datetime.combine(day, dt.time()).astimezone().timestamp()


def today(now: float | None = None) -> tuple[float, float]:
    """Local midnight to the next one, as epoch seconds."""
    return day_range("today", now)


RANGES = ("today", "yesterday", "7days")


def day_range(name: str, now: float | None = None) -> tuple[float, float]:
    """(start, end) epoch seconds of a named range of whole local days: today,
    yesterday, 7days (today and the six days before)."""
    date = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp())
    day = date.date()
    if name == "today":
        return day_start(day), day_start(day + dt.timedelta(days=1))
    if name == "yesterday":
        return day_start(day - dt.timedelta(days=1)), day_start(day)
    if name == "7days":
        return day_start(day - dt.timedelta(days=6)), day_start(day + dt.timedelta(days=1))
    raise ValueError(f"{name!r} is not a range; use {', '.join(RANGES)}")


def period_of(ts: float, by: str) -> tuple[str, str]:
    """(period label, UTC offset) in the box's local time: "2026-10-25 02:00", "+02:00".
    A day's offset is that of its midnight (a day with a change has 23 or 25 hours)."""
    local = dt.datetime.fromtimestamp(ts).astimezone()
    label = local.strftime("%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d")
    if by != "hour":
        local = dt.datetime.fromtimestamp(day_start(local.date())).astimezone()
    offset = local.strftime("%z")
    return label, f"{offset[:3]}:{offset[3:]}"


def _where(
    start: float | None, end: float | None, alias: str, **equal: str | list[str] | None
) -> tuple[str, list]:
    clauses: list[str] = []
    args: list[float | str] = []
    if start is not None:
        clauses.append(f"{alias}.start_ts >= ?")
        args.append(start)
    if end is not None:
        clauses.append(f"{alias}.start_ts < ?")
        args.append(end)
    for column, value in equal.items():
        if isinstance(value, list):
            clauses.append(f"{alias}.{column} IN ({', '.join('?' * len(value)) or 'NULL'})")
            args += value
        elif value is not None:
            clauses.append(f"{alias}.{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def known_ids(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """The cameras, displays and ads the store has records of."""
    query = {
        "camera": "SELECT camera FROM intervals UNION SELECT camera FROM plays",
        "display": "SELECT DISTINCT display FROM plays",
        "ad": "SELECT DISTINCT ad FROM plays",
    }
    return {kind: sorted(r[0] for r in conn.execute(sql)) for kind, sql in query.items()}


def check_ids(conn: sqlite3.Connection, path: Path, **given: str | None) -> None:
    """UnknownId, naming the ids the store knows, for an id it has no record of."""
    known = known_ids(conn)
    for kind, value in given.items():
        if value is not None and value not in known[kind]:
            names = ", ".join(known[kind]) or "none yet"
            raise UnknownId(f"{path}: no {kind} '{value}' in the audience store; known: {names}")


# -- summing -------------------------------------------------------------------------


def _add(row: dict, name: str, value) -> None:
    """Sum that keeps "not known" apart from 0: None + None is None, None + 3 is 3."""
    if value is None:
        row.setdefault(name, None)
    else:
        row[name] = (row.get(name) or 0) + value


def _rate(part, whole) -> float | None:
    return round(part / whole, 3) if part is not None and whole else None


def _round(value, digits: int = 1):
    return None if value is None else round(value, digits)


class _Visitors:
    """Visitor figures of a period (or the total)."""

    def __init__(self) -> None:
        self.intervals: set[str] = set()
        self.totals: dict = {}
        self.segments: dict[str, dict] = {}

    def add(self, record: str, scalars: tuple, segment: str | None, figures: tuple) -> None:
        if record not in self.intervals:  # a record's scalars once, whatever its segments
            self.intervals.add(record)
            for name, value in zip(("watchers", "dwell_s", "attention_s"), scalars, strict=True):
                _add(self.totals, name, value)
        if segment is None:
            return
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
    """Play figures of an ad, campaign or total: plays and screen time per play record,
    the rest per segment."""

    def __init__(self) -> None:
        self.plays: set[str] = set()
        self.screen_time_s = 0.0
        self.segments: dict[str, dict] = {}

    def add(self, record: str, duration: float, segment: str | None, figures: tuple) -> None:
        if record not in self.plays:
            self.plays.add(record)
            self.screen_time_s += duration
        if segment is None:
            return
        row = self.segments.setdefault(segment, {})
        for name, value in zip(AD_FIGURES, figures, strict=True):
            _add(row, name, value)
        if figures[-1] is not None:  # impressions whose dwell is known, for the mean
            _add(row, "timed", figures[0])

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
            "plays": len(self.plays),
            "screen_time_s": round(self.screen_time_s, 1),
            **self._figures(total),
            "segments": {key: self._figures(self.segments.get(key, {})) for key in SEGMENT_KEYS},
        }


def summarize(
    conn: sqlite3.Connection,
    *,
    start: float | None = None,
    end: float | None = None,
    by: str = "day",
    camera: str | None = None,
    display: str | None = None,
    ad: str | None = None,
    store: str = "",
) -> dict:
    """The report for the records that start in [start, end): {store, by, periods,
    ads, ad_periods, totals}; field names as docs/metrics.md defines them."""
    period_by = "hour" if by == "hour" else "day"
    group = "campaign" if by == "campaign" else "ad"
    cameras: str | list[str] | None = camera
    if display is not None and camera is None:
        # A display's visitors are those of the camera(s) it followed.
        cameras = [
            r[0]
            for r in conn.execute("SELECT DISTINCT camera FROM plays WHERE display = ?", (display,))
        ]
    periods: dict[tuple[str, str], _Visitors] = {}
    totals = _Visitors()
    where, args = _where(start, end, "i", camera=cameras)
    for row in conn.execute(
        "SELECT i.id, i.start_ts, i.watchers, i.dwell_s, i.attention_s, s.segment, "
        "s.visitors, s.watchers, s.dwell_s, s.attention_s FROM intervals i "
        f"LEFT JOIN interval_segments s ON s.interval_id = i.id{where} ORDER BY i.start_ts",
        args,
    ):
        for bucket in (periods.setdefault(period_of(row[1], period_by), _Visitors()), totals):
            bucket.add(row[0], row[2:5], row[5], row[6:10])
    ads: dict[str, _Ads] = {}
    names: dict[str, dict] = {}
    ad_periods: dict[tuple[str, str, str], _Ads] = {}
    plays = _Ads()
    where, args = _where(start, end, "p", camera=camera, display=display, ad=ad)
    for row in conn.execute(
        "SELECT p.id, p.start_ts, p.ad, p.title, p.campaign, p.advertiser, p.duration_s, "
        "s.segment, s.impressions, s.reach, s.watchers, s.attention_s, s.dwell_s FROM plays p "
        f"LEFT JOIN play_segments s ON s.play_id = p.id{where} ORDER BY p.start_ts",
        args,
    ):
        key = row[2] if group == "ad" else row[4]
        info = names.setdefault(key, {"ads": set()})
        info.update(title=row[3], campaign=row[4], advertiser=row[5])  # the latest
        info["ads"].add(row[2])
        period = period_of(row[1], period_by)
        for figures in (
            ads.setdefault(key, _Ads()),
            ad_periods.setdefault((*period, key), _Ads()),
            plays,
        ):
            figures.add(row[0], row[6], row[7], row[8:13])

    def label(key: str) -> dict:
        info = names[key]
        if group == "ad":
            return {
                "ad": key,
                "title": info["title"],
                "campaign": info["campaign"],
                "advertiser": info["advertiser"],
            }
        return {"campaign": key, "advertiser": info["advertiser"], "ads": sorted(info["ads"])}

    ad_list = sorted(
        ({"store": store, **label(k), **v.finish()} for k, v in ads.items()),
        key=lambda a: (-a["plays"], a[group]),
    )
    played = plays.finish()
    return {
        "store": store,
        "by": by,
        "periods": [
            {"store": store, "period": p, "utc_offset": off, **v.finish()}
            for (p, off), v in periods.items()
        ],
        "ads": ad_list,
        "ad_periods": [
            {"store": store, "period": p, "utc_offset": off, **label(k), **v.finish()}
            for (p, off, k), v in ad_periods.items()
        ],
        "totals": {
            "store": store,
            **totals.finish(),
            **{k: played[k] for k in ("plays", "screen_time_s", "impressions", "reach")},
        },
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
    return {
        "visitors": (["store", "period", "utc_offset", "segment", *visitors], periods),
        "ads": (["store", *names, "segment", *plays, *ad_figures], ads),
        "ad_periods": (
            ["store", "period", "utc_offset", *names, "segment", *plays, *ad_figures],
            ad_periods,
        ),
    }


def as_csv(report: dict, tables: tuple[str, ...] = ("visitors", "ads", "ad_periods")) -> str:
    """CSV tables (visitors per period, ads, ads per period), each row one segment or
    "all", separated by one empty line."""
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
    """summarize() on the store at `path`, read-only; ids checked first (UnknownId)."""
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
            check_ids(
                conn,
                path,
                camera=query.get("camera"),
                display=query.get("display"),
                ad=query.get("ad"),
            )
            return summarize(conn, **query)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot read the audience store: {exc}") from exc
    finally:
        conn.close()
