"""The fleet dashboard: head office's page over every store, read from its PostgreSQL
with edge/outputs/reporting.py (the definitions of docs/metrics.md, the same queries
as `edge report --db` and the box's own dashboard).

- stores: online or offline and when last seen (`stores`), cameras online
  (`camera_status`), and each store's totals over the range;
- visitors by segment per store and per day (each store's local days);
- top ads by reach and watch rate, per segment, over the stores shown (reach adds up
  across stores: it is per visit, docs/metrics.md);
- a range of days (from-to, the last 7 days by default) and a store filter, in the
  page's address, so a view can be bookmarked; /export.csv is `edge report --db
  --format csv` for the same view.

Built like the box's servers: edge/outputs/web.py (request-head deadline, Host check)
and edge/outputs/access.py (the key from the environment or a systemd credential).
Off loopback it answers only with the key (Bearer, or Basic with the key as password),
and it refuses to start there without one. `edge hq` starts it when its config has a
dashboard section; it holds no state of its own: every request reads the database.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import sqlalchemy as sa

from edge.errors import EX_CONFIG, EdgeError
from edge.outputs import reporting
from edge.outputs.access import HostCheck, authorized, is_loopback, load_secret
from edge.outputs.web import Handler, HttpServer, bind, close, serve, url

log = logging.getLogger(__name__)

# The key (token), off loopback: from the environment or the systemd credential of the
# same name (LoadCredential=EDGE_HQ_DASHBOARD_TOKEN:...), never from a config file or a
# URL; hq.yaml's dashboard.token_env names another where set.
KEY_ENV = "EDGE_HQ_DASHBOARD_TOKEN"
DEFAULT_PORT = 8088  # hq.yaml's dashboard.port
TOP_ADS = 5  # per segment
VENDOR = {"chart.umd.min.js": "text/javascript; charset=utf-8"}


class DashboardError(EdgeError):
    exit_status = EX_CONFIG


class BadQuery(ValueError):
    """A range or store filter the page cannot show: one line for the page."""


def _sum(into: dict, name: str, value) -> None:
    """Sum that keeps "not known" apart from 0, as the report does."""
    if value is None:
        into.setdefault(name, None)
    else:
        into[name] = (into.get(name) or 0) + value


def top_ads(report: dict, limit: int = TOP_ADS) -> dict[str, list[dict]]:
    """Per segment (and `all`), the ads with the most reach over the report's stores,
    then the best watch rate: {segment: [{ad, title, impressions, reach, watchers,
    watch_rate}]}; segments nobody of saw an ad are left out."""
    merged: dict[str, dict[str, dict]] = {}
    titles: dict[str, str] = {}
    for row in report["ads"]:
        titles.setdefault(row["ad"], row["title"])
        for segment, figures in [("all", row), *row["segments"].items()]:
            if not figures["impressions"]:
                continue
            mine = merged.setdefault(segment, {}).setdefault(row["ad"], {})
            for name in ("impressions", "reach", "watchers"):
                _sum(mine, name, figures[name])
    out = {}
    for segment in ("all", *reporting.SEGMENT_KEYS):
        if segment not in merged:
            continue
        rows = [
            {
                "ad": ad,
                "title": titles[ad],
                **figures,
                "watch_rate": reporting._rate(figures["watchers"], figures["impressions"]),
            }
            for ad, figures in merged[segment].items()
        ]
        rows.sort(key=lambda r: (-(r["reach"] or 0), -(r["watch_rate"] or 0), r["ad"]))
        out[segment] = rows[:limit]
    return out


class FleetDashboard:
    """Head office's dashboard over its PostgreSQL. `settings` is `edge hq`'s config
    (edge/hq/config.py: database.url, dashboard.listen, .port and .token_env), a
    postgresql:// URL, or a reporting.Source; `listen`, `port` (0: a free one, for
    tests) and `token` override what the config says. `host_names` are names it answers
    to beyond this machine's."""

    def __init__(
        self,
        settings: Any,
        *,
        listen: str | None = None,
        port: int | None = None,
        token: str | None = None,
        host_names: tuple[str, ...] | list[str] = (),
        clock: Callable[[], float] = time.time,
    ):
        section = getattr(settings, "dashboard", None)
        token_env = getattr(section, "token_env", None) or KEY_ENV
        if isinstance(settings, reporting.Source):
            self.source = settings
        elif isinstance(settings, str):
            self.source = reporting.fleet_source(settings)
        else:  # the config file's URL may hold a password (its own keys say better not)
            self.source = reporting.fleet_source(settings.database.url, password_allowed=True)
        listen = listen if listen is not None else getattr(section, "listen", "127.0.0.1")
        port = port if port is not None else getattr(section, "port", DEFAULT_PORT)
        self._listen = (listen, port)
        self._hosts = HostCheck(host_names)
        self._clock = clock
        self.key_env = token_env
        self.key = token or load_secret(token_env, token_env)
        self.needs_key = not is_loopback(listen)
        self._http: HttpServer | None = None
        self.port = 0
        self.page = resources.files("edge.hq").joinpath("dashboard.html").read_bytes()

    @property
    def url(self) -> str:
        return url(self._listen[0], self.port)

    def start(self) -> FleetDashboard:
        if self.needs_key and not self.key:
            raise DashboardError(
                f"fleet dashboard: it would listen on {self._listen[0]}, off this machine, "
                f"and no key is set: set {self.key_env} (in the environment, or as a systemd "
                "credential), or listen on 127.0.0.1"
            )
        self._http = bind(
            HttpServer,
            self._listen,
            _Handler,
            "dashboard.listen and dashboard.port",
            name="fleet dashboard",
            hosts=self._hosts,
        )
        self._http.app = self
        self.port = serve(self._http, "fleet-dashboard-http")
        log.info("fleet dashboard: %s", self.url)
        return self

    def close(self) -> None:
        if self._http is not None:
            close(self._http)
            self._http = None
        self.source.engine.dispose()

    def __enter__(self) -> FleetDashboard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- data ---------------------------------------------------------------------

    def statuses(self, conn: sa.Connection) -> dict[str, dict]:
        """Every store's status: zone, online, last seen, cameras online / known."""
        stores = reporting.STORES
        found: dict[str, dict] = {}
        for store_id, tz, last_seen, online in conn.execute(
            sa.select(stores.c.store, stores.c.tz, stores.c.last_seen, stores.c.online)
        ):
            found[store_id] = {
                "store": store_id,
                "tz": tz,
                "online": online,
                "last_seen": last_seen.isoformat(timespec="seconds") if last_seen else None,
                "cameras": 0,
                "cameras_online": 0,
            }
        cameras = sa.table("camera_status", sa.column("store"), sa.column("online"))
        query = sa.select(
            cameras.c.store,
            sa.func.count(),
            sa.func.count().filter(cameras.c.online.is_(True)),
        ).group_by(cameras.c.store)
        for store_id, total, online in conn.execute(query):
            if store_id in found:
                found[store_id].update(cameras=total, cameras_online=online)
        return found

    def _query(self, query: dict[str, list[str]]) -> tuple[reporting.Span, list[str] | None]:
        start = (query.get("from") or [""])[0]
        end = (query.get("to") or [""])[0]
        for text in (start, end):
            if text:
                try:
                    dt.date.fromisoformat(text)
                except ValueError:
                    raise BadQuery(f"{text!r} is not a date; write YYYY-MM-DD") from None
        span = (
            reporting.Span(start or end, end or start)
            if start or end
            else reporting.Span(name="7days", now=self._clock())
        )
        stores = [s for given in query.get("store", []) for s in given.split(",") if s]
        return span, stores or None

    def data(self, query: dict[str, list[str]]) -> dict:
        """The page's data for a query string ({from, to, store}): {stores (status and
        totals of each), selected, report (by day), top_ads}. BadQuery for a bad range
        or an unknown store."""
        span, selected = self._query(query)
        with self.source.engine.connect() as conn:
            statuses = self.statuses(conn)
            known = sorted(set(statuses) | set(self.source.zones(conn)))
        for store_id in selected or []:
            if store_id not in known:
                raise BadQuery(f"no store '{store_id}'; known: {', '.join(known) or 'none yet'}")
        report = reporting.summarize(self.source, span=span, by="day", stores=selected or known)
        totals = {row["store"]: row for row in report["stores"]}
        stores = []
        for store_id in selected or known:
            status = statuses.get(store_id, {"store": store_id, "online": None, "tz": None})
            stores.append({**status, "totals": totals.get(store_id)})
        first, last = span.bounds(dt.UTC)
        return {
            "time": self._clock(),
            "from": span.start or _day(first),
            "to": span.end or _day((last or self._clock()) - 1),
            "known": known,
            "selected": selected or known,
            "stores": stores,
            "report": report,
            "top_ads": top_ads(report),
        }

    def export_csv(self, query: dict[str, list[str]]) -> str:
        span, selected = self._query(query)
        with self.source.engine.connect() as conn:
            reporting.check_ids(self.source, conn, selected)
        report = reporting.summarize(self.source, span=span, by="day", stores=selected)
        return reporting.as_csv(report)


def _day(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


class _Handler(Handler):
    server: HttpServer
    server_version = "edge-hq-dashboard"

    def do_GET(self) -> None:
        app: FleetDashboard = self.server.app
        if app.needs_key and not authorized(self.headers.get("Authorization"), app.key or ""):
            self._send(
                401,
                b"the fleet dashboard needs its key (any user name, the key as password)\n",
                "text/plain; charset=utf-8",
                headers={"WWW-Authenticate": 'Basic realm="edge fleet", charset="UTF-8"'},
            )
            return
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        text = "text/plain; charset=utf-8"
        try:
            if path in ("/", "/index.html"):
                self._send(200, app.page, "text/html; charset=utf-8", cache="no-cache")
            elif path == "/data.json":
                body = json.dumps(app.data(query)).encode()
                self._send(200, body, "application/json")
            elif path == "/export.csv":
                self._send(
                    200,
                    app.export_csv(query).encode(),
                    "text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="fleet-report.csv"'},
                )
            elif path.startswith("/vendor/") and path.rsplit("/", 1)[1] in VENDOR:
                name = path.rsplit("/", 1)[1]
                body = (
                    resources.files("edge.outputs").joinpath(f"player/vendor/{name}").read_bytes()
                )
                self._send(200, body, VENDOR[name], cache="max-age=86400")
            else:
                self._send(404, b"not found\n", text)
        except (BadQuery, reporting.UnknownId) as exc:
            self._send(400, f"{exc}\n".encode(), text)
        except (sa.exc.DBAPIError, EdgeError) as exc:
            reason = reporting.why(exc) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
            log.warning("fleet dashboard: cannot read head office's database: %s", reason)
            self._send(503, f"cannot read head office's database: {reason}\n".encode(), text)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base's name)
        log.debug("fleet dashboard: %s", format % args)
