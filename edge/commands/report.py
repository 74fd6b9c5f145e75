"""`edge report`: the audience report (edge/outputs/reporting.py computes it, with the
definitions of docs/metrics.md) printed as a table, CSV or JSON."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from edge.outputs.reporting import SEGMENT_KEYS, as_csv, read

# -- output ------------------------------------------------------------------------


def _label(key: str) -> str:
    if key == "unclassified":
        return "unclass."
    age, gender = key.split("_")
    return f"{age} {gender[0].upper() if gender != 'unknown' else '?'}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def as_table(report: dict) -> str:
    by = report["by"]
    rows = [
        ["period", "offset", *map(_label, SEGMENT_KEYS), "visitors", "watchers", "mean dwell s"]
    ]
    for p in [*report["periods"], {"period": "total", "utc_offset": "", **report["totals"]}]:
        rows.append(
            [
                p["period"],
                p["utc_offset"],
                *(str(p["segments"][k]["visitors"]) for k in SEGMENT_KEYS),
                str(p["visitors"]),
                _num(p["watchers"]),
                _num(p["mean_dwell_s"]),
            ]
        )
    out = [
        f"Store {report['store']}: visitors per {'day' if by == 'campaign' else by}",
        _grid(rows, 2),
        "",
    ]
    group = "campaign" if by == "campaign" else "ad"
    head = ["ad", "title"] if group == "ad" else ["campaign", "advertiser"]
    rows = [
        [
            *head,
            "plays",
            "screen time",
            "impressions",
            "reach",
            "watchers",
            "watch rate",
            "attention s",
            "mean dwell s",
        ]
    ]
    for a in report["ads"]:
        rows.append(
            [
                a[group] or "(none)",
                a["title"] if group == "ad" else a["advertiser"] or "-",
                str(a["plays"]),
                _duration(a["screen_time_s"]),
                str(a["impressions"]),
                _num(a["reach"]),
                _num(a["watchers"]),
                _pct(a["watch_rate"]),
                _num(a["attention_s"]),
                _num(a["mean_dwell_s"]),
            ]
        )
    out += ["Campaigns" if group == "campaign" else "Ads"]
    out += [_grid(rows, 2) if report["ads"] else "(no plays)"]
    segment_rows = [
        [group, "segment", "impressions", "reach", "watchers", "watch rate", "attention s"]
    ]
    for a in report["ads"]:
        for key, s in a["segments"].items():
            if s["impressions"]:
                segment_rows.append(
                    [
                        a[group] or "(none)",
                        _label(key),
                        str(s["impressions"]),
                        _num(s["reach"]),
                        _num(s["watchers"]),
                        _pct(s["watch_rate"]),
                        _num(s["attention_s"]),
                    ]
                )
    if len(segment_rows) > 1:
        out += ["", f"{group.capitalize()}s by segment", _grid(segment_rows, 2)]
    period_rows = [
        ["period", "offset", group, "plays", "impressions", "reach", "watchers", "watch rate"]
    ]
    for a in report["ad_periods"]:
        period_rows.append(
            [
                a["period"],
                a["utc_offset"],
                a[group] or "(none)",
                str(a["plays"]),
                str(a["impressions"]),
                _num(a["reach"]),
                _num(a["watchers"]),
                _pct(a["watch_rate"]),
            ]
        )
    if len(period_rows) > 1:
        per = "day" if by == "campaign" else by
        out += ["", f"{group.capitalize()}s per {per}", _grid(period_rows, 3)]
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


def main(
    path: Path,
    *,
    start: float | None,
    end: float | None,
    by: str,
    camera: str | None,
    display: str | None,
    fmt: str,
    ad: str | None = None,
    store: str = "",
) -> int:
    report = read(
        path, start=start, end=end, by=by, camera=camera, display=display, ad=ad, store=store
    )
    if not report["periods"] and not report["ads"]:
        what = " and ".join(
            f"{k} {v}" for k, v in (("camera", camera), ("display", display), ("ad", ad)) if v
        )
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
