"""Small helpers for programs started on loopback: a free port, waiting for one to
listen, and stopping a child process. Shared by the tools (tools/fleet_sim.py) and the
tests (tests/broker.py, tests/fleet.py), so both start and stop their brokers alike.
"""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, and SIGKILL when it has not ended within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
