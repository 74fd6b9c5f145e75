"""Loopback load test of the display player's web server (docs/reliability.md).

    .venv/bin/python tools/player_load.py [--idle 300] [--streams 200] [--max-streams 32]
                                          [--requests 200] [--json FILE]

Starts the player in this process on a free 127.0.0.1 port (no broker: the pages get
the catalog's default ad) and, from one thread with non-blocking sockets so that every
thread counted is the server's:

  1. idle: opens --idle connections that never send a byte; reports the server's
     threads a second later and how long until the server has closed them all
     (the request-head timeout, web.REQUEST_HEAD_TIMEOUT_S);
  2. streams: opens --streams event streams at once, as that many display pages
     would; reports how many were served and how many turned away with 503
     (player.max_streams), and the time to the first event / to the 503;
  3. requests: with those streams still open, --requests page and /healthz requests,
     10 at a time; their latency.

Bounded: at most 2,000 connections per phase, nothing leaves the loopback interface,
about 15 s in all with the default 10 s head timeout. Prints one line per figure and,
with --json, writes them to FILE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import selectors
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge import config as config_mod  # noqa: E402
from edge.catalog import load_catalog  # noqa: E402
from edge.outputs import player_server, web  # noqa: E402

DISPLAY = "window"
MAX_CONNECTIONS = 2000


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def connect_many(port: int, n: int, request: bytes | None) -> dict[socket.socket, float]:
    """n connections, each with the time its request went out (or it connected)."""
    socks = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if request:
            s.sendall(request)
        s.setblocking(False)
        socks[s] = time.monotonic()
    return socks


def phase_idle(port: int, n: int, baseline: int, limit_s: float) -> dict:
    socks = connect_many(port, n, None)
    time.sleep(1.0)
    threads = threading.active_count() - baseline
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed: list[float] = []
    deadline = time.monotonic() + limit_s
    while len(closed) < n and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                closed.append(time.monotonic() - socks[key.fileobj])
                sel.unregister(key.fileobj)
                key.fileobj.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    time.sleep(0.3)
    return {
        "idle_connections": n,
        "idle_server_threads_after_1s": threads,
        "idle_closed": len(closed),
        "idle_closed_after_min_s": pct(closed, 0.0),
        "idle_closed_after_max_s": pct(closed, 1.0),
        "idle_server_threads_after": threading.active_count() - baseline,
    }


def phase_streams(port: int, n: int, baseline: int) -> tuple[dict, list[socket.socket]]:
    request = (
        f"GET /display/{DISPLAY}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Accept: text/event-stream\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    sent: dict[socket.socket, float] = {}
    buffers: dict[socket.socket, bytes] = {}
    first_event: list[float] = []
    turned_away: list[float] = []
    open_streams = []

    def read_ready(timeout: float) -> None:
        # Answers are read while the other pages still connect, as real displays would.
        for key, _ in sel.select(timeout=timeout):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b""
            buffers[s] += data
            if buffers[s].startswith(b"HTTP/1.0 503") or not data:
                turned_away.append(time.monotonic() - sent[s])
                sel.unregister(s)
                s.close()
            elif b"event: content" in buffers[s]:
                first_event.append(time.monotonic() - sent[s])
                sel.unregister(s)
                open_streams.append(s)

    started = time.monotonic()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(request)
        s.setblocking(False)
        sent[s], buffers[s] = time.monotonic(), b""
        sel.register(s, selectors.EVENT_READ)
        read_ready(0)
    connecting_s = time.monotonic() - started
    deadline = time.monotonic() + 30
    while len(first_event) + len(turned_away) < n and time.monotonic() < deadline:
        read_ready(0.2)
    threads = threading.active_count() - baseline
    return (
        {
            "streams_asked": n,
            "streams_all_sent_after_s": connecting_s,
            "streams_served": len(first_event),
            "streams_turned_away_503": len(turned_away),
            "first_event_p50_s": pct(first_event, 0.5),
            "first_event_p95_s": pct(first_event, 0.95),
            "first_event_max_s": pct(first_event, 1.0),
            "turned_away_p50_s": pct(turned_away, 0.5),
            "turned_away_max_s": pct(turned_away, 1.0),
            "server_threads_with_streams": threads,
        },
        open_streams,
    )


def phase_requests(port: int, n: int) -> dict:
    paths = [f"/display/{DISPLAY}", "/healthz"]
    latencies: list[float] = []
    failures = 0
    for batch in range(0, n, 10):
        socks = []
        for i in range(batch, min(n, batch + 10)):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"GET {paths[i % 2]} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            socks.append((s, time.monotonic()))
        for s, sent in socks:
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
            if data.startswith(b"HTTP/1.0 200"):
                latencies.append(time.monotonic() - sent)
            else:
                failures += 1
            s.close()
    return {
        "requests": n,
        "request_failures": failures,
        "request_p50_s": pct(latencies, 0.5),
        "request_p95_s": pct(latencies, 0.95),
        "request_max_s": pct(latencies, 1.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument(
        "--max-streams",
        type=int,
        default=None,
        help="player.max_streams (default: the config default)",
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for name in ("idle", "streams", "requests"):
        if not 0 <= getattr(args, name) <= MAX_CONNECTIONS:
            parser.error(f"--{name} must be 0-{MAX_CONNECTIONS}")
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(
            json.dumps(
                {
                    "cameras": [{"id": "door", "source": "/dev/null"}],
                    "displays": [{"id": DISPLAY, "camera": "door"}],
                    "selector": {"catalog": str(ROOT / "ads" / "catalog.yaml")},
                }
            )
        )
        config = config_mod.load(path)
        if args.max_streams is not None:
            # all streams come from one address here: the per-address cap follows
            player = dataclasses.replace(
                config.player,
                max_streams=args.max_streams,
                max_streams_per_client=args.max_streams,
            )
            config = dataclasses.replace(config, player=player)
        server = player_server.DisplayServer(
            config, load_catalog(ROOT / "ads" / "catalog.yaml"), port=0
        ).start()
        streams: list[socket.socket] = []
        try:
            baseline = threading.active_count()
            # getattr: the same tool measures a player from before these limits existed
            head_timeout = getattr(web, "REQUEST_HEAD_TIMEOUT_S", None)
            figures = {
                "head_timeout_s": head_timeout,
                "max_streams": getattr(config.player, "max_streams", None),
                "max_streams_per_client": getattr(config.player, "max_streams_per_client", None),
                "listen_backlog": getattr(web, "LISTEN_BACKLOG", 5),
            }
            figures |= phase_idle(server.port, args.idle, baseline, (head_timeout or 5) + 5)
            result, streams = phase_streams(server.port, args.streams, baseline)
            figures |= result
            figures |= phase_requests(server.port, args.requests)
        finally:
            for s in streams:
                s.close()
            server.stop()
    for key, value in figures.items():
        shown = ms(value) if key.endswith("_s") and key != "head_timeout_s" else value
        print(f"{key:32} {shown}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
