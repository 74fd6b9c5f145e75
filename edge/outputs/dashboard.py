"""The store dashboard at http://<box>:<player.port>/dashboard, served by the player's
web server (player_server.py routes /dashboard... here).

- now: per camera who is in view (counts by segment) and watching now, online or not
  (an offline camera shows nobody in view, and its current error), fps; per display
  the ad on screen and why. Fed by the service itself (the Dashboard is an event sink),
  so it works whether or not the broker is up.
- history: for a range of days (today, yesterday, the last 7 days, or from-to):
  visitors per hour (one day) or per day by segment, and per ad and segment the plays,
  impressions, reach, watchers, watch rate and attention, read from the audience store
  with edge/outputs/reporting.py's summarize (the definitions of docs/metrics.md); today's
  is in every state event and re-read whenever the store commits a record, other ranges
  are asked for (/dashboard/history.json?range=...); /dashboard/export.csv?range=...
  is the same as `edge report --format csv`.
- health: latency p95, skipped frames, MQTT connected and outbox depth.

The page (edge/outputs/player/dashboard.html) gets all of it over one Server-Sent Events stream:
a `state` event with the whole picture at connect and after every change (at most a few
per second), and pings while nothing changes. Counts only: no track id reaches the page.
The chart library (Chart.js) is vendored under edge/outputs/player/vendor/ and served from here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edge.config import Config
from edge.errors import EdgeError
from edge.events import AudienceEvent, CameraEvent, DecisionEvent, Event, StatsEvent
from edge.outputs import reporting as report
from edge.outputs.player_server import sse
from edge.outputs.publish import PublisherStatus
from edge.records import empty_counts

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
MIN_GAP_S = 0.25  # between two state events of one stream: a busy entrance
RETRY_MS = 3000
VENDOR = {"chart.umd.min.js": "text/javascript; charset=utf-8"}


def nobody() -> dict[str, Any]:
    """A camera's "now" with no one in view."""
    return {"present": 0, "watching": 0, "unclassified": 0, "counts": empty_counts()}


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


def _bars(periods: list[dict], start: float, end: float, now: float, by_hour: bool) -> list:
    """The chart's bars: every hour of one day from opening (8:00, or the first visitor)
    to now or the last visitor, or every day of a longer range; each with its
    visitors by segment. The two 02:00 hours of an autumn change stay two bars."""
    bars: list[dict] = []
    if by_hour:
        found = {(p["period"][-5:], p["utc_offset"]): p for p in periods}
        hours = [int(h[:2]) for h, _ in found]
        last_ts = min(now, end - 1)
        first = min([8, *hours])
        last = max([*hours, dt.datetime.fromtimestamp(max(start, last_ts)).hour])
        seen = set()
        for h in range(first, last + 1):
            matches = [k for k in found if k[0] == f"{h:02d}:00"] or [(f"{h:02d}:00", "")]
            for key in matches:
                if key not in seen:
                    seen.add(key)
                    bars.append(_bar(key[0], found.get(key)))
        return bars
    found_days = {p["period"]: p for p in periods}
    day = dt.date.fromisoformat(_date(start))
    while report.day_start(day) < end:
        bars.append(_bar(day.isoformat(), found_days.get(day.isoformat())))
        day += dt.timedelta(days=1)
    return bars


def _bar(label: str, period: dict | None) -> dict:
    segments = period["segments"] if period else {}
    return {
        "label": label,
        "visitors": {k: segments.get(k, {}).get("visitors", 0) for k in report.SEGMENT_KEYS},
        "watchers": period["watchers"] if period else 0,
    }


class Dashboard:
    """Live state and today's history for the dashboard page; an event sink of the service.

    `live` False: no service feeds it (`edge display` alone), the page says so and shows
    the history only. `mqtt_status` returns the publisher's status (publish.PublisherStatus).
    """

    def __init__(
        self,
        config: Config,
        *,
        live: bool = True,
        mqtt_status: Callable[[], PublisherStatus] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        from edge.outputs.store import FILENAME

        self.store_path: Path = config.state_path() / FILENAME
        self.store_enabled = config.store.enabled
        self.mqtt_status = mqtt_status
        self.mqtt_enabled = config.mqtt.enabled
        self.store_id = config.mqtt.store_id
        self.live = live
        self._clock = clock
        self._changed = threading.Condition()
        self._version = 0
        self._closed = False
        self._cameras: dict[str, dict[str, Any]] = {
            c.id: {
                "name": c.name or c.id,
                "online": None,
                "error": "",
                "present": 0,
                "watching": 0,
                "unclassified": 0,
                "counts": empty_counts(),
                "fps": None,
                "skipped_fps": None,
            }
            for c in config.cameras
        }
        self._displays: dict[str, dict[str, Any]] = {
            d.id: {
                "name": d.name or d.id,
                "camera": d.camera,
                "ad": None,
                "title": None,
                "rule": None,
                "segment": None,
                "since": None,
                "people": None,
            }
            for d in config.displays
        }
        self._health: dict[str, Any] = {
            "latency_p95_ms": None,
            "latency_p50_ms": None,
            "time": None,
        }
        self._serialise = threading.Lock()
        self._serialised: tuple[int, bytes] | None = None  # (version, its state event)
        self.snapshots = 0  # pictures built (one per change, whatever the streams)
        self._today: dict | None = None
        self._today_key: tuple | None = None
        self._history_version = 0
        self.page = resources.files("edge.outputs").joinpath("player/dashboard.html").read_bytes()

    # -- events in (service thread) -----------------------------------------------

    def emit(self, event: Event) -> None:
        with self._changed:
            match event:
                case CameraEvent(camera=cid) if cid in self._cameras:
                    self._cameras[cid].update(online=event.online, error=event.error or "")
                    if not event.online:  # nobody is in view of a camera that sees nothing
                        self._cameras[cid].update(nobody())
                case AudienceEvent(camera=cid) if cid in self._cameras:
                    now = event.counts_only()
                    self._cameras[cid].update(
                        present=now.present,
                        counts=now.counts,
                        watching=now.watching,
                        unclassified=now.unclassified,
                    )
                case DecisionEvent(display=display, reason=reason) if display in self._displays:
                    self._displays[display].update(
                        ad=event.ad,
                        title=event.title,
                        rule=reason.rule,
                        segment=reason.segment,
                        since=event.time,
                        people=(reason.audience or {}).get("people"),
                    )
                case StatsEvent():
                    for cid, stats in event.cameras.items():
                        if cid in self._cameras:
                            self._cameras[cid].update(
                                fps=stats.processed_fps, skipped_fps=stats.skipped_fps
                            )
                            if stats.online is False and stats.error:  # the current one
                                self._cameras[cid]["error"] = stats.error
                    self._health.update(
                        latency_p95_ms=event.latency_p95_ms,
                        latency_p50_ms=event.latency_p50_ms,
                        time=event.time,
                    )
                case _:
                    return
            self._bump()

    def history_changed(self, *_args) -> None:
        """The store committed a record (store.on_commit): today's figures are stale."""
        with self._changed:
            self._history_version += 1
            self._bump()

    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def start(self) -> None:
        """A sink of the service (outputs/sinks.py); the display player serves it."""

    def close(self) -> None:
        """End every event stream (the server stops)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # -- the picture ------------------------------------------------------------------

    def snapshot(self) -> dict:
        self.snapshots += 1
        with self._changed:
            cameras = json.loads(json.dumps(self._cameras))
            displays = json.loads(json.dumps(self._displays))
            health = dict(self._health)
            history_version = self._history_version
        mqtt = {"enabled": self.mqtt_enabled, "connected": None, "outbox": None, "dropped": None}
        if self.mqtt_status is not None:
            try:
                mqtt.update(asdict(self.mqtt_status()))
            except Exception:  # the dashboard shows what it can
                log.exception("dashboard: mqtt status failed")
        health["mqtt"] = mqtt
        health["skipped_fps"] = {cid: c["skipped_fps"] for cid, c in cameras.items()}
        return {
            "time": self._clock(),
            "store": self.store_id,
            "live": self.live,
            "cameras": cameras,
            "displays": displays,
            "health": health,
            "history_version": history_version,
            "today": self.today(history_version),
        }

    def today(self, history_version: int | None = None) -> dict:
        """Today's history, from the store; cached until it commits again (or the day
        or hour turns)."""
        now = self._clock()
        key = (history_version, report.today(now)[0], int(now // 3600))
        if self._today is not None and key == self._today_key and history_version is not None:
            return self._today
        self._today = self.history("today")
        self._today_key = key
        return self._today

    def history(self, name: str = "today", start: str = "", end: str = "") -> dict:
        """The history of a range: `name` today, yesterday or 7days, or `start`..`end`
        (YYYY-MM-DD, inclusive). {range, from, to, periods (hours of one day, or days),
        totals, ads} or {error}."""
        summary, bounds = self._summary(name, start, end)
        if "error" in summary:
            return summary
        start_ts, end_ts = bounds
        one_day = end_ts - start_ts <= 25 * 3600
        periods = _bars(summary["periods"], start_ts, end_ts, self._clock(), one_day)
        return {
            "range": name if not start else "custom",
            "from": _date(start_ts),
            "to": _date(end_ts - 1),
            "by": "hour" if one_day else "day",
            "periods": periods,
            "totals": summary["totals"],
            "ads": summary["ads"],
        }

    def export_csv(self, name: str = "today", start: str = "", end: str = "") -> str | None:
        """`edge report --format csv` for a range (None with an error to show instead)."""
        summary, _ = self._summary(name, start, end, by="hour")
        return None if "error" in summary else report.as_csv(summary)

    def _summary(
        self, name: str, start: str, end: str, by: str | None = None
    ) -> tuple[dict, tuple[float, float]]:
        now = self._clock()
        try:
            if start or end:
                bounds = (
                    report.parse_date(start or end),
                    report.parse_date(end or start, end=True),
                )
            else:
                bounds = report.day_range(name, now)
        except ValueError as exc:
            return {"error": str(exc)}, (0.0, 0.0)
        if not self.store_enabled:
            return {"error": "the audience store is off (store.enabled: false)"}, bounds
        if not self.store_path.is_file():
            return {
                "error": "no history yet: the audience store is written when the first "
                "interval or play ends"
            }, bounds
        one_day = bounds[1] - bounds[0] <= 25 * 3600
        try:
            summary = report.read(
                self.store_path,
                start=bounds[0],
                end=bounds[1],
                by=by or ("hour" if one_day else "day"),
                store=self.store_id,
            )
        except (EdgeError, sqlite3.Error) as exc:
            log.warning("dashboard: cannot read %s: %s", self.store_path, exc)
            return {"error": f"cannot read the audience store: {exc}"}, bounds
        return summary, bounds

    def _state_event(self, version: int) -> bytes:
        """The `state` event for a version of the picture, built once however many
        pages stream it (each snapshot reads the store and serialises everything)."""
        with self._serialise:
            if self._serialised is None or self._serialised[0] != version:
                self._serialised = (version, sse("state", self.snapshot()))
            return self._serialised[1]

    def events(self) -> Iterator[bytes]:
        """The page's stream: the picture now, then after each change; pings meanwhile."""
        with self._changed:
            version = self._version
        yield self._state_event(version)
        while True:
            with self._changed:
                seen = version

                def moved_on(seen: int = seen) -> bool:
                    return self._closed or self._version != seen

                self._changed.wait_for(moved_on, HEARTBEAT_S)
                if self._closed:
                    return
                changed, version = self._version != seen, self._version
            yield self._state_event(version) if changed else sse("ping", {})
            time.sleep(MIN_GAP_S)  # several changes in a burst become one event

    # -- HTTP (called from the player's handler) ------------------------------------

    def handle(self, handler, path: str) -> bool:
        """Serve a /dashboard... path; False when the path is not the dashboard's."""
        if path in ("/dashboard", "/dashboard/"):
            handler._send(200, self.page, "text/html; charset=utf-8", cache="no-cache")
        elif path == "/dashboard/state.json":
            handler._send(200, json.dumps(self.snapshot()).encode(), "application/json")
        elif path in ("/dashboard/history.json", "/dashboard/export.csv"):
            query = parse_qs(urlsplit(handler.path).query)
            args = [query.get(k, [""])[0] for k in ("range", "from", "to")]
            args[0] = args[0] or "today"
            if path.endswith(".json"):
                body = json.dumps(self.history(*args)).encode()
                handler._send(200, body, "application/json")
            elif (text := self.export_csv(*args)) is None:
                handler._send(
                    404, (self.history(*args)["error"] + "\n").encode(), "text/plain; charset=utf-8"
                )
            else:
                handler._send(200, text.encode(), "text/csv; charset=utf-8")
        elif path == "/dashboard/events":
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
            handler.send_header("Cache-Control", "no-cache")
            handler.end_headers()
            handler.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
            for event in self.events():
                handler.wfile.write(event)
        elif path.startswith("/dashboard/vendor/") and path.rsplit("/", 1)[1] in VENDOR:
            name = path.rsplit("/", 1)[1]
            body = resources.files("edge.outputs").joinpath(f"player/vendor/{name}").read_bytes()
            handler._send(200, body, VENDOR[name], cache="max-age=86400")
        else:
            return False
        return True
