"""`edge report`: the audience store summed up per hour or day, and per ad.

--camera limits both to one camera; --display limits the plays to one display and the
visitors to the camera(s) that display followed.

Visitors (by age class x gender), watchers and dwell per period come from the interval
counts, each interval in the period in which it started; per ad: plays, screen time,
viewers and watchers by segment and the watch rate (watchers / viewers) from the plays,
each play in the period in which it started. Dates are the box's local time.
The dashboard's "today" uses the same summary (summarize).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path

from edge.errors import EX_NOINPUT
from edge.outputs.store import SEGMENTS, StoreError, connect

SEGMENT_KEYS = tuple(f"{c}_{g}" for c, g in SEGMENTS)
BY = ("hour", "day")


class NoStore(StoreError):
    exit_status = EX_NOINPUT


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


def today(now: float | None = None) -> tuple[float, float]:
    """Local midnight to the next one, as epoch seconds."""
    local = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp())
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone()
    return midnight.timestamp(), (midnight + dt.timedelta(days=1)).timestamp()


def period_of(ts: float, by: str) -> str:
    local = dt.datetime.fromtimestamp(ts).astimezone()
    return local.strftime("%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d")


def _where(start: float | None, end: float | None, **equal: str | None) -> tuple[str, list]:
    clauses: list[str] = []
    args: list[float | str] = []
    if start is not None:
        clauses.append("start_ts >= ?")
        args.append(start)
    if end is not None:
        clauses.append("start_ts < ?")
        args.append(end)
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def summarize(
    conn: sqlite3.Connection,
    *,
    start: float | None = None,
    end: float | None = None,
    by: str = "day",
    camera: str | None = None,
    display: str | None = None,
) -> dict:
    """{periods: [...], ads: [...], totals: {...}} for the records that start in [start, end)."""
    where, args = _where(start, end, camera=camera)
    if display is not None and camera is None:
        # A display's visitors are those of the camera(s) it followed.
        cameras = [
            r[0]
            for r in conn.execute("SELECT DISTINCT camera FROM plays WHERE display = ?", (display,))
        ]
        where += (
            " AND " if where else " WHERE "
        ) + f"camera IN ({', '.join('?' * len(cameras)) or 'NULL'})"
        args += cameras
    visitors = ", ".join(f"visitors_{k}" for k in SEGMENT_KEYS)
    periods: dict[str, dict] = {}
    for row in conn.execute(
        f"SELECT start_ts, {visitors}, watchers, unclassified, dwell_s "
        f"FROM intervals{where} ORDER BY start_ts",
        args,
    ):
        p = periods.setdefault(period_of(row[0], by), _empty_period())
        for key, n in zip(SEGMENT_KEYS, row[1:7], strict=False):
            p["visitors"][key] += n
        p["watchers"] += row[7]
        p["unclassified"] += row[8]
        p["dwell_s"] += row[9]
    where, args = _where(start, end, camera=camera, display=display)
    viewers = ", ".join(f"viewers_{k}" for k in SEGMENT_KEYS)
    watchers = ", ".join(f"watchers_{k}" for k in SEGMENT_KEYS)
    ads: dict[str, dict] = {}
    for row in conn.execute(
        f"SELECT ad, title, duration_s, {viewers}, {watchers} FROM plays{where} ORDER BY start_ts",
        args,
    ):
        a = ads.setdefault(
            row[0],
            {
                "ad": row[0],
                "title": row[1],
                "plays": 0,
                "screen_time_s": 0.0,
                "viewers": _segments(),
                "watchers": _segments(),
            },
        )
        a["title"] = row[1]  # the latest title
        a["plays"] += 1
        a["screen_time_s"] += row[2]
        for key, n, w in zip(SEGMENT_KEYS, row[3:9], row[9:15], strict=False):
            a["viewers"][key] += n
            a["watchers"][key] += w
    period_list = [{"period": k, **_finish_period(v)} for k, v in periods.items()]
    ad_list = sorted((_finish_ad(a) for a in ads.values()), key=lambda a: (-a["plays"], a["ad"]))
    totals = _empty_period()
    for p in period_list:
        for key in SEGMENT_KEYS:
            totals["visitors"][key] += p["visitors"][key]
        totals["watchers"] += p["watchers"]
        totals["unclassified"] += p["unclassified"]
        totals["dwell_s"] += p["dwell_s"]
    return {
        "by": by,
        "periods": period_list,
        "ads": ad_list,
        "totals": {
            **_finish_period(totals),
            "plays": sum(a["plays"] for a in ad_list),
            "screen_time_s": round(sum(a["screen_time_s"] for a in ad_list), 1),
        },
    }


def _segments() -> dict:
    return dict.fromkeys(SEGMENT_KEYS, 0)


def _empty_period() -> dict:
    return {"visitors": _segments(), "watchers": 0, "unclassified": 0, "dwell_s": 0.0}


def _finish_period(p: dict) -> dict:
    total = sum(p["visitors"].values())
    return {
        "visitors": p["visitors"],
        "visitors_total": total,
        "unclassified": p["unclassified"],
        "watchers": p["watchers"],
        "dwell_s": round(p["dwell_s"], 1),
        "mean_dwell_s": round(p["dwell_s"] / total, 1) if total else None,
    }


def _finish_ad(a: dict) -> dict:
    viewers, watchers = sum(a["viewers"].values()), sum(a["watchers"].values())
    return {
        **a,
        "screen_time_s": round(a["screen_time_s"], 1),
        "viewers_total": viewers,
        "watchers_total": watchers,
        "watch_rate": round(watchers / viewers, 3) if viewers else None,
    }


# -- output ------------------------------------------------------------------------


def _label(key: str) -> str:
    age, gender = key.split("_")
    return f"{age} {'F' if gender == 'female' else 'M'}"


def _compact(segments: dict) -> str:
    return ", ".join(f"{n} {_label(k)}" for k, n in segments.items() if n) or "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def as_table(report: dict) -> str:
    rows = [
        [
            "period",
            *map(_label, SEGMENT_KEYS),
            "visitors",
            "unclassified",
            "watchers",
            "mean dwell s",
        ]
    ]
    for p in [*report["periods"], {"period": "total", **report["totals"]}]:
        rows.append(
            [
                p["period"],
                *(str(p["visitors"][k]) for k in SEGMENT_KEYS),
                str(p["visitors_total"]),
                str(p["unclassified"]),
                str(p["watchers"]),
                "-" if p["mean_dwell_s"] is None else f"{p['mean_dwell_s']:.1f}",
            ]
        )
    out = ["Visitors per " + report["by"], _grid(rows), ""]
    rows = [
        [
            "ad",
            "title",
            "plays",
            "screen time",
            "viewers",
            "watchers",
            "watch rate",
            "viewers by segment",
            "watchers by segment",
        ]
    ]
    for a in report["ads"]:
        rows.append(
            [
                a["ad"],
                a["title"],
                str(a["plays"]),
                _duration(a["screen_time_s"]),
                str(a["viewers_total"]),
                str(a["watchers_total"]),
                _rate(a["watch_rate"]),
                _compact(a["viewers"]),
                _compact(a["watchers"]),
            ]
        )
    out += ["Ads", _grid(rows, 2) if report["ads"] else "(no plays)"]
    return "\n".join(out)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _grid(rows: list[list[str]], text_columns: int = 1) -> str:
    """Aligned columns: the first `text_columns` to the left, numbers to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w)
            if i < text_columns or n == 0 or not c[:1].isdigit() and c != "-"
            else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def as_csv(report: dict) -> str:
    """Two CSV tables, visitors per period then ads, separated by one empty line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "period",
            *(f"visitors_{k}" for k in SEGMENT_KEYS),
            "visitors",
            "unclassified",
            "watchers",
            "dwell_s",
            "mean_dwell_s",
        ]
    )
    for p in report["periods"]:
        writer.writerow(
            [
                p["period"],
                *(p["visitors"][k] for k in SEGMENT_KEYS),
                p["visitors_total"],
                p["unclassified"],
                p["watchers"],
                p["dwell_s"],
                p["mean_dwell_s"] if p["mean_dwell_s"] is not None else "",
            ]
        )
    buffer.write("\n")
    writer.writerow(
        [
            "ad",
            "title",
            "plays",
            "screen_time_s",
            "viewers",
            "watchers",
            "watch_rate",
            *(f"viewers_{k}" for k in SEGMENT_KEYS),
            *(f"watchers_{k}" for k in SEGMENT_KEYS),
        ]
    )
    for a in report["ads"]:
        writer.writerow(
            [
                a["ad"],
                a["title"],
                a["plays"],
                a["screen_time_s"],
                a["viewers_total"],
                a["watchers_total"],
                a["watch_rate"] if a["watch_rate"] is not None else "",
                *(a["viewers"][k] for k in SEGMENT_KEYS),
                *(a["watchers"][k] for k in SEGMENT_KEYS),
            ]
        )
    return buffer.getvalue().rstrip("\n")


def main(
    path: Path,
    *,
    start: float | None,
    end: float | None,
    by: str,
    camera: str | None,
    display: str | None,
    fmt: str,
) -> int:
    if not path.is_file():
        raise NoStore(
            f"{path}: no audience store yet; `edge run` writes it "
            f"(store.enabled) once the first interval or play ends"
        )
    conn = connect(path, readonly=True)
    try:
        try:
            report = summarize(conn, start=start, end=end, by=by, camera=camera, display=display)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot read the audience store: {exc}") from exc
    finally:
        conn.close()
    if not report["periods"] and not report["ads"]:
        what = " and ".join(f"{k} {v}" for k, v in (("camera", camera), ("display", display)) if v)
        span = "" if start is None and end is None else f" from {_when(start)} until {_when(end)}"
        print(f"{path}: no counts or plays{' for ' + what if what else ''}{span}")
        return 0
    if fmt == "json":
        print(json.dumps(report, indent=2))
    elif fmt == "csv":
        print(as_csv(report))
    else:
        print(as_table(report))
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "any time"
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="minutes")
