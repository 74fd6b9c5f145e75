"""The display player's web server: shows each display its current ad.

A kiosk browser opens http://<edge>:<player.port>/display/<id> full screen. The
page (edge/outputs/player/index.html) gets its content over Server-Sent Events from this
server, which takes it from the MQTT bridge (edge/outputs/player_bridge.py: it follows the
displays' content topics on the broker). The server also serves the creatives the
catalog names, /healthz, and the dashboard (edge/outputs/dashboard.py) when one is plugged
in; its limits (request-head deadline and send timeout from edge/outputs/web.py,
the event-stream cap) keep one bad client from holding the rest up.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from edge.catalog import CREATIVE_TYPES, Catalog, creative_file, is_url
from edge.config import Config
from edge.errors import EdgeError
from edge.events import DecisionEvent, Event
from edge.outputs.access import HostCheck, Slots, authorized, is_loopback, load_secret
from edge.outputs.mqttclient import RepeatLimiter
from edge.outputs.player_bridge import PlayerBridge
from edge.outputs.topics import SCHEMA_VERSION
from edge.outputs.web import Handler, HttpServer, bind, close, serve, url
from edge.timefmt import iso, now

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # the page reopens its event stream after 45 s without a word
STREAM_RETRY_AFTER_S = 10  # told to a page turned away for too many streams
# The dashboard's key, off loopback: from the environment (edge.env) or a systemd
# credential (LoadCredential=dashboard-key:...), never from config.yaml or a URL.
DASHBOARD_KEY_ENV = "EDGE_DASHBOARD_KEY"
DASHBOARD_KEY_CREDENTIAL = "dashboard-key"
RETRY_MS = 3000  # how soon a page's EventSource reconnects after the stream ends
FILE_CHUNK = 1 << 16
_PAGE = re.compile(r"/display/([^/]+)/?")
_EVENTS = re.compile(r"/display/([^/]+)/events")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class DisplayServer:
    """Serves the player, its event streams and the creatives; its bridge follows the
    content topics.

    `port` overrides player.port, `dashboard_port` dashboard.port; 0 binds a free port
    (tests). player.port 0 in the config means the player is off, so the caller should
    not build one then. The dashboard (when `dashboard` is set and dashboard.enabled)
    is served by the player's server, or by one of its own where dashboard.port is set.
    """

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        *,
        port: int | None = None,
        dashboard_port: int | None = None,
    ):
        if port is None and config.player.port == 0:
            raise ValueError("the display player is off (player.port: 0)")
        self.config = config
        self.catalog = catalog
        self.displays = {d.id: d.name or d.id for d in config.displays}
        self.ads_dir = catalog.path.resolve().parent
        self._served = catalog.local_creatives()  # the only files /ads/ serves
        self._listen = (config.player.listen, config.player.port if port is None else port)
        self.player_page = (
            resources.files("edge.outputs").joinpath("player/index.html").read_bytes()
        )
        urls = [ad.creative for ad in catalog.ads.values() if is_url(ad.creative)]
        self.bridge = PlayerBridge(config, self.displays, self._served, urls)
        self._http: HttpServer | None = None
        self.hosts = HostCheck(config.host_names)
        self._streams = Slots(config.player.max_streams, config.player.max_streams_per_client)
        self._turned_away = RepeatLimiter()
        self.port = 0
        self.dashboard = None  # edge/outputs/dashboard.py's Dashboard serves /dashboard when set
        dash = config.dashboard
        if dashboard_port is None:
            dashboard_port = dash.port
        self._dashboard_listen = (dash.listen or config.player.listen, dashboard_port)
        self._dashboard_http: HttpServer | None = None
        self.dashboard_port = 0  # of its own server, once started
        self._dashboard_streams = Slots(dash.max_streams, dash.max_streams_per_client)
        self.dashboard_key = load_secret(DASHBOARD_KEY_ENV, DASHBOARD_KEY_CREDENTIAL)
        self.dashboard_needs_key = not is_loopback(self._dashboard_listen[0])

    @property
    def url(self) -> str:
        return url(self._listen[0], self.port)

    @property
    def mqtt_connected(self) -> bool:
        return self.bridge.mqtt_connected

    # -- lifecycle -------------------------------------------------------------

    @property
    def dashboard_url(self) -> str:
        if self._dashboard_listen[1] is None:
            return f"{self.url}/dashboard"
        return url(self._dashboard_listen[0], self.dashboard_port, "/dashboard")

    def start(self) -> DisplayServer:
        self._http = self._serve(self._listen, "display player", "player.listen and player.port")
        self.port = self._http.server_address[1]
        host, port = self._dashboard_listen
        if port is not None and self.config.dashboard.enabled:
            try:
                self._dashboard_http = self._serve(
                    (host, port), "dashboard", "dashboard.listen and dashboard.port"
                )
            except EdgeError:
                self.stop()
                raise
            self.dashboard_port = self._dashboard_http.server_address[1]
        if self.config.dashboard.enabled and self.dashboard_needs_key and not self.dashboard_key:
            log.error(
                "dashboard: it listens on %s, off this box, and no key is set: it answers "
                "403 until one is — fix: set %s (edge.env) or the credential %s, or "
                "dashboard.listen: 127.0.0.1",
                self._dashboard_listen[0],
                DASHBOARD_KEY_ENV,
                DASHBOARD_KEY_CREDENTIAL,
            )
        self.bridge.start()
        log.info(
            "display player: %s; dashboard: %s",
            ", ".join(f"{self.url}/display/{d.id}" for d in self.config.displays),
            self.dashboard_url
            if self.config.dashboard.enabled
            else "off (dashboard.enabled: false)",
        )
        return self

    def _serve(self, listen: tuple[str, int], name: str, keys: str) -> HttpServer:
        http = bind(HttpServer, listen, _Handler, keys, name=name, hosts=self.hosts)
        http.app = self
        serve(http, f"{name.replace(' ', '-')}-http")
        return http

    def stop(self) -> None:
        self.bridge.stop()  # closes its board first, which ends the event streams
        if self.dashboard is not None:
            self.dashboard.close()
        for http in (self._http, self._dashboard_http):
            if http is not None:
                close(http)
        self._http = self._dashboard_http = None

    def close(self) -> None:
        """As a sink of the service (outputs/sinks.py): stop."""
        self.stop()

    def __enter__(self) -> DisplayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """An event sink of the service (before the publisher, see cli): the pipeline's
        decisions, so that content it did not decide is shown as an override."""
        if isinstance(event, DecisionEvent):
            self.bridge.decided(event.display, event.ad, event.creative)

    def health(self) -> dict:
        ads = {d: (c or {}).get("ad") for d, c in self.bridge.board.snapshot().items()}
        servers = [h for h in (self._http, self._dashboard_http) if h is not None]
        return {
            **self.bridge.health(),
            "displays": ads,
            "http_wrong_host": sum(h.wrong_host for h in servers),
        }

    @property
    def healthy(self) -> bool:
        """False when the player should follow the broker and its network loop is gone."""
        return self.bridge.healthy

    def open_stream(self, client: str) -> str | None:
        """Takes an event stream slot for `client`; None when taken, else the key of the
        cap that turned it away (player.max_streams or player.max_streams_per_client)."""
        refused = self._streams.take(client)
        if refused is None:
            return None
        key = f"player.{'max_streams' if refused == 'total' else 'max_streams_per_client'}"
        show, left_out = self._turned_away.check(refused)
        if show:
            cap = self._streams.total if refused == "total" else self._streams.per_client
            log.warning(
                "display player: %d display pages are open already%s (%s); turned away %s%s",
                cap,
                "" if refused == "total" else f" from {client}",
                key,
                client,
                f" and {left_out} more since the last line" if left_out else "",
            )
        return key

    def close_stream(self, client: str) -> None:
        self._streams.give_back(client)

    def serve_dashboard(self, handler: _Handler, path: str) -> bool:
        """A /dashboard... request, behind its key where the dashboard listens off this
        box, its streams capped; False for other paths or with no dashboard."""
        dashboard = self.dashboard
        if dashboard is None or not self.config.dashboard.enabled:
            return False
        if path != "/dashboard" and not path.startswith("/dashboard/"):
            return False
        if self.dashboard_needs_key:
            if not self.dashboard_key:
                handler._send(
                    403,
                    f"the dashboard listens off this box and no key is set: set "
                    f"{DASHBOARD_KEY_ENV} or the credential {DASHBOARD_KEY_CREDENTIAL}\n".encode(),
                    "text/plain; charset=utf-8",
                )
                return True
            if not authorized(handler.headers.get("Authorization"), self.dashboard_key):
                handler._send(
                    401,
                    b"the dashboard needs its key (any user name, the key as password)\n",
                    "text/plain; charset=utf-8",
                    headers={"WWW-Authenticate": 'Basic realm="edge dashboard", charset="UTF-8"'},
                )
                return True
        if path != "/dashboard/events":
            return bool(dashboard.handle(handler, path))
        client = handler.client_address[0]
        refused = self._dashboard_streams.take(client)
        if refused is not None:
            key = "max_streams" if refused == "total" else "max_streams_per_client"
            handler._send(
                503,
                f"too many dashboard pages open (dashboard.{key}); retrying by itself\n".encode(),
                "text/plain; charset=utf-8",
                headers={"Retry-After": str(STREAM_RETRY_AFTER_S)},
            )
            return True
        try:
            return bool(dashboard.handle(handler, path))
        finally:
            self._dashboard_streams.give_back(client)

    def events(self, display: str) -> Iterator[bytes]:
        """The display's event stream: its content now, then every change, with heartbeats;
        ends when the server stops."""
        board = self.bridge.board
        version, content = board.get(display)
        yield sse("content", self._for_page(display, content))
        while (changed := board.wait(display, version, HEARTBEAT_S)) is not None:
            if changed[0] == version:
                yield sse("ping", {})
            else:
                version, content = changed
                yield sse("content", self._for_page(display, content))

    def _for_page(self, display: str, content: dict | None) -> dict:
        """Content with the `url` the page loads; the catalog's default until a message came."""
        if content is None:
            ad = self.catalog.ads[self.catalog.default]
            content = {
                "schema": SCHEMA_VERSION,
                "time": iso(now()),
                "display": display,
                "ad": ad.id,
                "title": ad.title,
                "creative": self.catalog.creative_ref(ad),
                "duration_s": ad.duration_s,
                "reason": {"rule": "default", "segment": None, "audience": None},
            }
        creative = content["creative"]
        url = (
            creative if creative.startswith(("http://", "https://")) else "/ads/" + quote(creative)
        )
        return {**content, "url": url}

    def ad_file(self, relative: str) -> Path | None:
        """The file of a creative the catalog names, checked again by the catalog's own
        rule (it may have changed on disk since); None for anything else."""
        if relative not in self._served:
            return None
        return creative_file(self.ads_dir, relative)[0]


class _Handler(Handler):
    server: HttpServer
    server_version = "edge-player"

    def do_GET(self) -> None:
        app = self.server.app
        path = unquote(urlsplit(self.path).path)
        if self.server is app._dashboard_http:  # the dashboard's own server: nothing else
            if not app.serve_dashboard(self, path):
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, _index(app.displays).encode(), "text/html; charset=utf-8")
        elif path == "/healthz":
            # 503 tells a monitor that the screens no longer follow the broker
            self._send(
                200 if app.healthy else 503, json.dumps(app.health()).encode(), "application/json"
            )
        elif path.startswith("/ads/"):
            self._send_file(app.ad_file(path.removeprefix("/ads/")))
        elif match := _EVENTS.fullmatch(path) or _PAGE.fullmatch(path):
            display = match[1]
            if display not in app.displays:
                self._send(
                    404,
                    f"no display {display!r}; configured displays: "
                    f"{', '.join(app.displays) or 'none'}\n".encode(),
                    "text/plain; charset=utf-8",
                )
            elif match.re is _EVENTS:
                self._send_events(display)
            else:
                self._send(200, app.player_page, "text/html; charset=utf-8", cache="no-cache")
        elif app._dashboard_http is None and app.serve_dashboard(self, path):
            pass
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        """For creatives only: the page asks whether one is there before framing it."""
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/ads/"):
            self._send_file(self.server.app.ad_file(path.removeprefix("/ads/")), body=False)
        else:
            self._send(405, b"", "text/plain; charset=utf-8")

    def _send_events(self, display: str) -> None:
        app = self.server.app
        client = self.client_address[0]
        refused = app.open_stream(client)
        if refused is not None:
            cap = getattr(app.config.player, refused.removeprefix("player."))
            body = (
                f"too many display pages open: the player serves {cap} at once "
                f"{'in all' if refused == 'player.max_streams' else 'to one address'} "
                f"({refused})\n"
            ).encode()
            self._send(
                503,
                body,
                "text/plain; charset=utf-8",
                headers={"Retry-After": str(STREAM_RETRY_AFTER_S)},
            )
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
            for event in app.events(display):
                self.wfile.write(event)
        finally:
            app.close_stream(client)

    def _send_file(self, path: Path | None, *, body: bool = True) -> None:
        if path is None:
            self._send(404, b"not found\n" if body else b"", "text/plain; charset=utf-8")
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        wanted = _byte_range(self.headers.get("Range"), size)
        if wanted is not None and wanted[0] > wanted[1]:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if wanted else 200)
        if wanted:
            start, end = wanted
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        content_type = CREATIVE_TYPES[path.suffix.lower()]
        self.send_header("Content-Type", content_type)
        if content_type.startswith("text/html"):
            # Opened on its own too, an HTML creative runs in an opaque origin: it cannot
            # script the player or read what the player serves (the page's iframe is
            # sandboxed the same way).
            self.send_header("Content-Security-Policy", "sandbox allow-scripts")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "max-age=60")  # catalog edits show within a minute
        self.end_headers()
        if not body:
            return
        with path.open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(FILE_CHUNK, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def log_message(self, format: str, *args) -> None:
        log.debug("display player: %s %s", self.address_string(), format % args)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, (first, last) inclusive; None for the whole file.
    Browsers ask for ranges to play and loop video (Safari plays none without them)."""
    match = _RANGE.fullmatch(header or "")
    if not match or not (match[1] or match[2]):
        return None
    if match[1]:
        first = int(match[1])
        return first, min(int(match[2]), size - 1) if match[2] else size - 1
    return max(0, size - int(match[2])), size - 1  # the last N bytes


def sse(event: str, data: dict) -> bytes:
    """One server-sent event (the page's and the dashboard's streams)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _index(displays: dict[str, str]) -> str:
    items = "\n".join(
        f'<li><a href="/display/{quote(d)}">{html.escape(name)}</a> ({html.escape(d)})</li>'
        for d, name in displays.items()
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Displays</title></head>\n<body><h1>Displays</h1>\n"
        f"<ul>\n{items or '<li>none configured</li>'}\n</ul></body></html>\n"
    )
