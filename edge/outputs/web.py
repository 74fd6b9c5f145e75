"""The pieces every web server of the box shares (display player, dashboard, metrics,
photo check API): a threading HTTP server with a deep listen backlog, an optional cap
on open connections and a Host allow-list, and a handler that reads the request head
against one deadline and stops waiting for a client that stops reading. So one bad
client cannot hold a thread for long, and a page elsewhere cannot read the box's pages
through a rebound name.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from edge.errors import EdgeError
from edge.outputs.access import HostCheck
from edge.outputs.mqttclient import RepeatLimiter

log = logging.getLogger(__name__)

REQUEST_HEAD_TIMEOUT_S = 10.0  # for the request line and headers, all of them together
SEND_TIMEOUT_S = 30.0  # a client that stops reading frees its thread after this
LISTEN_BACKLOG = socket.SOMAXCONN  # queued connections (the kernel caps it: net.core.somaxconn)


class HttpServer(ThreadingHTTPServer):
    """A thread per connection (daemon threads: a stop never waits on a client).

    `hosts`: the Host names it answers to (others get 421; None answers any);
    `max_connections`: more connections than this at once are closed as they come,
    before taking a thread. `name` names the server in its log lines."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    name = "http server"
    app: Any

    def __init__(
        self,
        address,
        handler,
        *,
        hosts: HostCheck | None = None,
        max_connections: int | None = None,
    ):
        self.hosts = hosts
        self.max_connections = max_connections
        self._connections = threading.BoundedSemaphore(max_connections or 1)
        self.turned_away = 0  # connections closed at once: over max_connections
        self.wrong_host = 0  # requests answered 421
        self._turned_away_log = RepeatLimiter(60.0)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if self.max_connections and not self._connections.acquire(blocking=False):
            self.turned_away += 1
            show, left_out = self._turned_away_log.check("connections")
            if show:
                log.warning(
                    "%s: %d connections open already; closed one from %s%s",
                    self.name,
                    self.max_connections,
                    client_address[0],
                    f" and {left_out} more since the last line" if left_out else "",
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self.max_connections:
                self._connections.release()

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            # a client went away mid-response, or stopped reading
            log.debug("%s: %s disconnected", self.name, client_address[0])
        else:
            log.exception("%s: error serving %s", self.name, client_address[0])


class HttpServer6(HttpServer):
    address_family = socket.AF_INET6


Server = TypeVar("Server", bound=HttpServer)


def bind(
    server_class: type[Server],
    listen: tuple[str, int],
    handler: type,
    keys: str,
    *,
    name: str | None = None,
    **options: Any,
) -> Server:
    """`server_class` (or its IPv6 twin, for an IPv6 address) listening on `listen`,
    built with `options` (hosts, max_connections); an EdgeError naming the address and
    the config `keys` that set it when it cannot."""
    if ":" in listen[0]:
        server_class = type(server_class.__name__ + "6", (server_class,), {})
        server_class.address_family = socket.AF_INET6
    label = name or server_class.name
    try:
        server = server_class(listen, handler, **options)
    except OSError as exc:
        host, port = listen
        raise EdgeError(
            f"{label}: cannot listen on {host}:{port}: {exc.strerror or exc} (check {keys})"
        ) from exc
    server.name = label
    return server


def serve(server: HttpServer, thread_name: str) -> int:
    """Serves on a daemon thread of its own; the port it listens on."""
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=thread_name,
        daemon=True,
    ).start()
    return server.server_address[1]


def close(server: HttpServer) -> None:
    """Stops serving and closes the listening socket (open connections end by themselves:
    their threads are daemons)."""
    server.shutdown()
    server.server_close()


def url(host: str, port: int, path: str = "") -> str:
    """The address to print for a server listening on `host`."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


class DeadlineReader(io.RawIOBase):
    """The socket's input, with one deadline for a stretch of reading (the request line
    and headers, a request body): the socket timeout alone restarts with every byte, so
    a client sending a byte every few seconds would hold its thread forever."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request took too long to arrive")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """The request head within REQUEST_HEAD_TIMEOUT_S, replies within SEND_TIMEOUT_S of
    the client's last read, the Host checked; `_send` for a whole reply, `nosniff` on
    every one."""

    server: HttpServer

    def setup(self) -> None:
        super().setup()
        # A reply goes out as two writes (head, then body): with Nagle's algorithm the
        # body waits for the client's delayed ACK of the head, 40 ms on Linux, on every
        # keep-alive request (measured on the photo API: 64 ms a one-face photo, 24 ms
        # of it the models).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # BaseHTTPRequestHandler answers a TimeoutError by closing the connection.
        self._reader.deadline = time.monotonic() + REQUEST_HEAD_TIMEOUT_S
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # has read the headers
        self._reader.deadline = None
        self.connection.settimeout(SEND_TIMEOUT_S)
        hosts = self.server.hosts
        if (
            ok
            and hosts is not None
            and not hosts.allows(self.headers.get("Host"), self.connection.getsockname()[0])
        ):
            # A page elsewhere whose name was rebound to this box's address (DNS
            # rebinding) sends its own name: it must not read what is served here.
            self.server.wrong_host += 1
            self._send(
                421,
                b"misdirected request: this server answers to the box's names and "
                b"addresses (add others to host_names)\n",
                "text/plain; charset=utf-8",
            )
            return False
        return ok

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        cache: str = "no-store",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the GET answer's headers only
            self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")  # a type is what it says
        super().end_headers()
