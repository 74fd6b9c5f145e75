"""`edge report`: the audience report (edge/outputs/reporting.py computes it, with the
definitions of docs/metrics.md) printed as a table, CSV or JSON: of the box's own
store, or with --db of head office's PostgreSQL, every store or those of --store."""

from __future__ import annotations

import json
from pathlib import Path

from edge.outputs.reporting import (
    SEGMENT_KEYS,
    Span,
    UnknownId,
    as_csv,
    fleet_source,
    read,
    read_db,
)

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
    many = len(report.get("stores", [])) > 1  # head office: a store column
    lead = ["store"] if many else []
    per = by if by == "hour" else "day"
    if by == "store":
        rows = [
            [
                "store",
                *map(_label, SEGMENT_KEYS),
                "visitors",
                "watchers",
                "mean dwell s",
                "plays",
                "impressions",
                "reach",
            ]
        ]
        for s in [*report["stores"], {**report["totals"], "store": "total"}]:
            rows.append(
                [
                    s["store"],
                    *(str(s["segments"][k]["visitors"]) for k in SEGMENT_KEYS),
                    str(s["visitors"]),
                    _num(s["watchers"]),
                    _num(s["mean_dwell_s"]),
                    str(s["plays"]),
                    str(s["impressions"]),
                    _num(s["reach"]),
                ]
            )
        out = [f"Stores {report['store']}: visitors per store", _grid(rows, 1), ""]
    else:
        rows = [
            [
                *lead,
                "period",
                "offset",
                *map(_label, SEGMENT_KEYS),
                "visitors",
                "watchers",
                "mean dwell s",
            ]
        ]
        total = {"store": "", "period": "total", "utc_offset": "", **report["totals"]}
        for p in [*report["periods"], total]:
            rows.append(
                [
                    *([p["store"] if p is not total else ""] if many else []),
                    p["period"],
                    p["utc_offset"],
                    *(str(p["segments"][k]["visitors"]) for k in SEGMENT_KEYS),
                    str(p["visitors"]),
                    _num(p["watchers"]),
                    _num(p["mean_dwell_s"]),
                ]
            )
        out = [
            f"{'Stores' if many else 'Store'} {report['store']}: visitors per {per}",
            _grid(rows, 2 + len(lead)),
            "",
        ]
    group = "campaign" if by == "campaign" else "ad"
    head = [*lead, *(["ad", "title"] if group == "ad" else ["campaign", "advertiser"])]
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
                *([a["store"]] if many else []),
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
    out += [_grid(rows, 2 + len(lead)) if report["ads"] else "(no plays)"]
    segment_rows = [
        [*lead, group, "segment", "impressions", "reach", "watchers", "watch rate", "attention s"]
    ]
    for a in report["ads"]:
        for key, s in a["segments"].items():
            if s["impressions"]:
                segment_rows.append(
                    [
                        *([a["store"]] if many else []),
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
        out += ["", f"{group.capitalize()}s by segment", _grid(segment_rows, 2 + len(lead))]
    period_rows = [
        [
            *lead,
            "period",
            "offset",
            group,
            "plays",
            "impressions",
            "reach",
            "watchers",
            "watch rate",
        ]
    ]
    for a in report["ad_periods"]:
        period_rows.append(
            [
                *([a["store"]] if many else []),
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
        out += ["", f"{group.capitalize()}s per {per}", _grid(period_rows, 3 + len(lead))]
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
    path: Path | None,
    *,
    span: Span,
    by: str,
    camera: str | None,
    display: str | None,
    fmt: str,
    ad: str | None = None,
    store: str = "",
    db: str | None = None,
    stores: list[str] | None = None,
) -> int:
    """The box's report (`path`, its store id `store`), or head office's (`db`, a
    postgresql:// URL; `stores` limits it to some stores)."""
    query = {"span": span, "by": by, "camera": camera, "display": display, "ad": ad}
    if db is not None:
        source = fleet_source(db)
        try:
            report = read_db(source, stores=stores, **query)
        finally:
            source.engine.dispose()
        where = source.where
    else:
        assert path is not None
        for other in stores or []:
            if other != store:
                raise UnknownId(f"{path}: no store '{other}' on this box; known: {store}")
        report = read(path, store=store, **query)
        where = str(path)
    if not report["periods"] and not report["ads"]:
        what = " and ".join(
            f"{k} {v}"
            for k, v in (
                ("store", ",".join(stores or [])),
                ("camera", camera),
                ("display", display),
                ("ad", ad),
            )
            if v
        )
        bounded = span.start is not None or span.end is not None
        until = f" until {span.end or 'now'}" if bounded else ""
        since = f" from {span.start or 'the first record'}{until}" if bounded else ""
        print(f"{where}: no counts or plays{' for ' + what if what else ''}{since}")
        return 0
    if fmt == "json":
        print(json.dumps(report, indent=2))
    elif fmt == "csv":
        print(as_csv(report))
    else:
        print(as_table(report))
    return 0
