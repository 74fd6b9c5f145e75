"""Loopback load test of the photo check API (docs/benchmarks.md, "Photo check API").

    .venv/bin/python tools/photo_load.py [--requests 200] [--clients 1,8] [--json FILE]
                                         [--url http://127.0.0.1:8090] [--config FILE]

Starts `edge serve` on a free 127.0.0.1 port (unless --url names a running one), with
serve.max_requests raised to the largest client count so that no request is turned
away, and posts a one-face photo (the far-left woman of insightface's t1.jpg, 260x300,
as the tests use it) as the request body, from N client threads at once, each on its own
keep-alive connection, for each N of --clients. A few requests warm the models up
first. For each N: requests/s, p50 and p95 latency, and the answers other than 200.

Bounded: --requests requests per client count (at most 5,000), nothing leaves the
loopback interface.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.samples import group_photo  # noqa: E402

MAX_REQUESTS = 5000
WARMUP = 5


def one_face_photo() -> bytes:
    return cv2.imencode(".jpg", cv2.imread(str(group_photo()))[180:480, 0:260])[1].tobytes()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_service(clients: int, config: str | None, folder: str) -> tuple[subprocess.Popen, str]:
    """`edge serve --port 0` with serve.max_requests at least `clients`, its config and
    state in `folder`; its URL."""
    settings: dict = {"models": {"dir": str(ROOT / "models")}, "state_dir": folder}
    if config:
        import yaml

        settings = {**settings, **(yaml.safe_load(Path(config).read_text()) or {})}
    serve = settings.setdefault("serve", {})
    serve["max_requests"] = max(serve.get("max_requests", 4), clients)
    path = Path(folder) / "config.yaml"
    path.write_text(json.dumps(settings))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(path), "serve", "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if match := re.search(r"photo check API: (http://127\.0\.0\.1:\d+)/", line):
            # keep reading its log so that it never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, match[1]
    raise SystemExit(f"edge serve did not start (exit {proc.wait()})")


def run(url: str, photo: bytes, clients: int, requests: int) -> dict:
    """`requests` posts from `clients` threads at once; the figures."""
    parts = urlsplit(url)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    left = [requests]

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        headers = {"Content-Type": "image/jpeg"}
        if key := os.environ.get("EDGE_API_KEY"):
            headers["X-API-Key"] = key
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            started = time.perf_counter()
            conn.request("POST", "/api/v1/analyze", body=photo, headers=headers)
            response = conn.getresponse()
            response.read()
            took = time.perf_counter() - started
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append(took)
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": requests,
        "ok": statuses.get(200, 0),
        "other_statuses": {str(k): v for k, v in statuses.items() if k != 200},
        "requests_per_s": round(statuses.get(200, 0) / wall, 2),
        "p50_ms": round(pct(latencies, 0.50) * 1000, 1) if latencies else None,
        "p95_ms": round(pct(latencies, 0.95) * 1000, 1) if latencies else None,
        "wall_s": round(wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per client count (200)")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated (1,8)")
    parser.add_argument("--url", help="a running `edge serve` (default: start one here)")
    parser.add_argument("--config", help="config file for the service started here")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    if not 1 <= args.requests <= MAX_REQUESTS or min(counts) < 1 or max(counts) > 64:
        parser.error(f"--requests 1 to {MAX_REQUESTS}, --clients 1 to 64 each")
    photo = one_face_photo()
    proc = None
    url = args.url
    folder = tempfile.mkdtemp(prefix="photo-load-")
    if url is None:
        proc, url = start_service(max(counts), args.config, folder)
    try:
        run(url, photo, 1, WARMUP)
        figures = {
            "photo_bytes": len(photo),
            "cpu_count": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "runs": [run(url, photo, n, args.requests) for n in counts],
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"one-face JPEG of {len(photo)} bytes, {args.requests} requests per run, {url}")
    for r in figures["runs"]:
        print(
            f"{r['clients']} client(s): {r['requests_per_s']} requests/s, p50 {r['p50_ms']} ms, "
            f"p95 {r['p95_ms']} ms; {r['ok']} ok, other answers {r['other_statuses'] or 'none'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
