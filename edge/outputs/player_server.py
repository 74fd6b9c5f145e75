"""The display player's web server: shows each display its current ad.

A kiosk browser opens http://<edge>:<player.port>/display/<id> full screen. The
page (edge/outputs/player/index.html) gets its content over Server-Sent Events from this
server, which takes it from the MQTT bridge (edge/outputs/player_bridge.py: it follows the
displays' content topics on the broker). The server also serves the creatives the
catalog names, /healthz, and the dashboard (edge/outputs/dashboard.py) when one is plugged
in; its limits (request-head deadline, send timeout, event-stream cap) keep one bad
client from holding the rest up.
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from edge.config import Config
from edge.errors import EdgeError
from edge.outputs.mqttclient import RepeatLimiter
from edge.outputs.player_bridge import PlayerBridge
from edge.outputs.topics import SCHEMA_VERSION
from edge.pipeline.catalog import CREATIVE_TYPES, Catalog, creative_file
from edge.timefmt import iso, now

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # the page reopens its event stream after 45 s without a word
REQUEST_HEAD_TIMEOUT_S = 10.0  # for the request line and headers, all of them together
SEND_TIMEOUT_S = 30.0  # a client that stops reading frees its thread after this
LISTEN_BACKLOG = socket.SOMAXCONN  # queued connections (the kernel caps it: net.core.somaxconn)
STREAM_RETRY_AFTER_S = 10  # told to a page turned away for too many streams
RETRY_MS = 3000  # how soon a page's EventSource reconnects after the stream ends
FILE_CHUNK = 1 << 16
_PAGE = re.compile(r"/display/([^/]+)/?")
_EVENTS = re.compile(r"/display/([^/]+)/events")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class DisplayServer:
    """Serves the player, its event streams and the creatives; its bridge follows the
    content topics.

    `port` overrides player.port; 0 binds a free port (tests). player.port 0 in the
    config means the player is off, so the caller should not build one then.
    """

    def __init__(self, config: Config, catalog: Catalog, *, port: int | None = None):
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
        self.bridge = PlayerBridge(config, self.displays, self._served)
        self._http: _HttpServer | None = None
        self._streams = threading.BoundedSemaphore(config.player.max_streams)
        self._turned_away = RepeatLimiter()
        self.port = 0
        self.dashboard = None  # edge/outputs/dashboard.py's Dashboard serves /dashboard when set

    @property
    def url(self) -> str:
        host = self._listen[0]
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def mqtt_connected(self) -> bool:
        return self.bridge.mqtt_connected

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> DisplayServer:
        server_class = _HttpServer6 if ":" in self._listen[0] else _HttpServer
        try:
            self._http = server_class(self._listen, _Handler)
        except OSError as exc:
            host, port = self._listen
            raise EdgeError(
                f"display player: cannot listen on {host}:{port}: "
                f"{exc.strerror or exc} (check player.listen and player.port)"
            ) from exc
        self._http.app = self
        self.port = self._http.server_address[1]
        threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="display-http",
            daemon=True,
        ).start()
        self.bridge.start()
        return self

    def stop(self) -> None:
        self.bridge.stop()  # closes its board first, which ends the event streams
        if self.dashboard is not None:
            self.dashboard.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> DisplayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------

    def health(self) -> dict:
        ads = {d: (c or {}).get("ad") for d, c in self.bridge.board.snapshot().items()}
        return {**self.bridge.health(), "displays": ads}

    @property
    def healthy(self) -> bool:
        """False when the player should follow the broker and its network loop is gone."""
        return self.bridge.healthy

    def open_stream(self, client: str) -> bool:
        """Takes one of the player.max_streams event stream slots; False when none is free."""
        if self._streams.acquire(blocking=False):
            return True
        show, left_out = self._turned_away.check("streams")
        if show:
            log.warning(
                "display player: %d display pages are open already "
                "(player.max_streams); turned away %s%s",
                self.config.player.max_streams,
                client,
                f" and {left_out} more since the last line" if left_out else "",
            )
        return False

    def close_stream(self) -> None:
        self._streams.release()

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


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    app: DisplayServer

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            # a display went away mid-response, or stopped reading
            log.debug("display player: %s disconnected", client_address[0])
        else:
            log.exception("display player: error serving %s", client_address[0])


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _DeadlineReader(io.RawIOBase):
    """The socket's input, with one deadline for a stretch of reading (the request line
    and headers): the socket timeout alone restarts with every byte, so a client sending
    a byte every few seconds would hold its thread forever."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request line and headers took too long")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = "edge-player"

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The whole request head within REQUEST_HEAD_TIMEOUT_S; BaseHTTPRequestHandler
        # answers a TimeoutError by closing the connection.
        self._reader.deadline = time.monotonic() + REQUEST_HEAD_TIMEOUT_S
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # has read the headers
        self._reader.deadline = None
        self.connection.settimeout(SEND_TIMEOUT_S)
        return ok

    def do_GET(self) -> None:
        app = self.server.app
        path = unquote(urlsplit(self.path).path)
        if path == "/":
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
        elif app.dashboard is not None and app.dashboard.handle(self, path):
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

    def _send(
        self, status: int, body: bytes, content_type: str, *, cache: str = "no-store"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")  # a type is what it says
        super().end_headers()

    def _send_events(self, display: str) -> None:
        app = self.server.app
        if not app.open_stream(self.client_address[0]):
            self.send_response(503)
            self.send_header("Retry-After", str(STREAM_RETRY_AFTER_S))
            body = (
                f"too many display pages open: the player serves "
                f"{app.config.player.max_streams} at once (player.max_streams)\n"
            ).encode()
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
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
            app.close_stream()

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
