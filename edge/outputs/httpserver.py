"""What the box's HTTP servers share (the display player, the photo check API): a
threading server with a deep listen backlog, and a request handler whose request head
must arrive within one deadline and whose replies stop waiting on a client that no
longer reads. Both limits keep one bad client from holding a thread for good.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from edge.errors import EdgeError

log = logging.getLogger(__name__)

REQUEST_HEAD_TIMEOUT_S = 10.0  # for the request line and headers, all of them together
SEND_TIMEOUT_S = 30.0  # a client that stops reading frees its thread after this
LISTEN_BACKLOG = socket.SOMAXCONN  # queued connections (the kernel caps it: net.core.somaxconn)


class HardenedServer(ThreadingHTTPServer):
    """A thread per connection (daemon threads: a stop never waits on a client);
    `label` names the server in its log lines."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    label = "http server"

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            # a client went away mid-response, or stopped reading
            log.debug("%s: %s disconnected", self.label, client_address[0])
        else:
            log.exception("%s: error serving %s", self.label, client_address[0])


Server = TypeVar("Server", bound=HardenedServer)


def bind(server_class: type[Server], listen: tuple[str, int], handler: type, keys: str) -> Server:
    """`server_class` (or its IPv6 twin, for an IPv6 address) listening on `listen`; an
    EdgeError naming the address and the config `keys` that set it when it cannot."""
    if ":" in listen[0]:
        server_class = type(server_class.__name__ + "6", (server_class,), {})
        server_class.address_family = socket.AF_INET6
    try:
        return server_class(listen, handler)
    except OSError as exc:
        host, port = listen
        raise EdgeError(
            f"{server_class.label}: cannot listen on {host}:{port}: "
            f"{exc.strerror or exc} (check {keys})"
        ) from exc


def serve(server: HardenedServer, thread_name: str) -> int:
    """Serves on a daemon thread of its own; the port it listens on."""
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=thread_name,
        daemon=True,
    ).start()
    return server.server_address[1]


def close(server: HardenedServer) -> None:
    """Stops serving and closes the listening socket (open connections end by themselves:
    their threads are daemons)."""
    server.shutdown()
    server.server_close()


def url(host: str, port: int) -> str:
    """The address to print for a server listening on `host`."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


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


class HardenedHandler(BaseHTTPRequestHandler):
    """The request head within REQUEST_HEAD_TIMEOUT_S, replies within SEND_TIMEOUT_S of
    the client's last read; `_send` for a whole reply, `nosniff` on every one."""

    server: HardenedServer

    def setup(self) -> None:
        super().setup()
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
        return ok

    def _send(
        self, status: int, body: bytes, content_type: str, *, cache: str = "no-store"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the GET answer's headers only
            self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")  # a type is what it says
        super().end_headers()
