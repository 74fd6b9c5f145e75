"""Shared fixtures. Data under ../shared is required in CI (CI=true): missing
data fails there instead of skipping, so a broken checkout cannot pass."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def need(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        message = f"test data {path} is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: data must be present)")
        pytest.skip(message)
    return path


def clip_frames(relative: str) -> list:
    """Every frame of a clip under ../shared, decoded (BGR)."""
    from edge.commands.bench import load_frames

    return load_frames(str(need(relative)), None)


@pytest.fixture(scope="session")
def config():
    from edge import config as config_mod

    return config_mod.load(ROOT / "config.yaml")


@pytest.fixture(scope="session")
def analyzer(config):
    from edge.pipeline.analyze import FaceAnalyzer

    return FaceAnalyzer(config)


@pytest.fixture(scope="session")
def group_photo() -> Path:
    from edge.samples import group_photo

    return group_photo()


def total(counts: dict) -> int:
    """Everyone in an age class x gender table (an event's counts, visitors, viewers)."""
    return sum(n for by_g in counts.values() for n in by_g.values())


def visitors(summary: dict) -> dict:
    """A summary's or interval's unique visitors as {(age class, gender): n}, nonzero only."""
    return {
        (c, g): n for c, by_g in summary["unique_visitors"].items() for g, n in by_g.items() if n
    }


# The time `edge` writes in front of each log line when journald is not the reader.
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def unstamped(line: str) -> str:
    """A log line of `edge` without its time."""
    return LOG_TIME.sub("", line)


EDGE = [sys.executable, "-m", "edge"]  # the real command line, as an operator runs it


def run_edge(
    *args: str, cwd: Path = ROOT, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """`edge ARGS` to its end: its output and exit status."""
    return subprocess.run(
        [*EDGE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def edge_process(*args: str, **kwargs) -> subprocess.Popen:
    """`edge ARGS` started from the repository, with text pipes for stdout and stderr
    unless `kwargs` say otherwise."""
    options = {"cwd": ROOT, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen([*EDGE, *args], **{**options, **kwargs})


def notify_socket(folder) -> tuple[str, socket.socket]:
    """A unix datagram socket in `folder` standing in for systemd's NOTIFY_SOCKET:
    (its path, the socket)."""
    path = os.path.join(str(folder), "notify.sock")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    manager.settimeout(0.2)
    return path, manager


def run_service(
    *args: str, seconds: float, env: dict | None = None, ready_timeout: float = 120.0
) -> tuple[str, str, int | None]:
    """`python -m edge ARGS` run for `seconds` once it is up, then stopped with SIGTERM:
    (stdout, stderr, exit status).

    "Up" is its READY=1 on a notify socket of our own, as systemd would see it. Loading
    the models takes seconds and many more on a machine busy with other tests: a fixed
    sleep from the start let that eat the time a test meant the service to run (or
    sent SIGTERM before the service had its handler)."""
    folder = tempfile.mkdtemp(prefix="edge-notify-")  # short: socket paths are limited
    path, manager = notify_socket(folder)
    ready, done = threading.Event(), threading.Event()

    def read_notifications():  # all of them, so the service never blocks on a full queue
        while not done.is_set():
            try:
                if b"READY=1" in manager.recv(4096).split(b"\n"):
                    ready.set()
            except OSError:  # timeout, or closed at the end
                continue

    reader = threading.Thread(target=read_notifications, daemon=True)
    reader.start()
    proc = edge_process(*args, env={**os.environ, **(env or {}), "NOTIFY_SOCKET": path})
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
            pass
        if proc.poll() is None:  # an offline run may have ended by itself
            time.sleep(seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        done.set()
        reader.join(timeout=2)
        manager.close()
        shutil.rmtree(folder, ignore_errors=True)
    return out, err, proc.returncode


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A private Mosquitto for the whole test session, on a free loopback port."""
    from broker import Broker

    with Broker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture()
def make_broker(tmp_path):
    """Brokers of a test's own (outages, passwords), stopped at the end of the test."""
    from broker import Broker

    brokers = []

    def make(name: str = "broker", **kwargs) -> Broker:
        b = Broker(tmp_path / name, **kwargs)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL 15 cluster for the whole test session (of one xdist worker),
    on a free loopback port (tests/postgres.py). Tests that share it should share an
    xdist group too (`@pytest.mark.xdist_group("postgres")`), so one worker starts it."""
    from postgres import Postgres

    with Postgres() as pg:
        yield pg


@pytest.fixture()
def pg_url(postgres) -> str:
    """A fresh, empty database in the session's cluster, for this test alone: its URL
    (postgresql://postgres@127.0.0.1:PORT/DB)."""
    return postgres.create_database()


# Markers for a fast inner loop (`make test-fast` leaves these out). `broker` and
# `browser` follow from the fixtures a test asks for, so a new test is marked without
# anyone remembering to; `slow` (a whole clip through the service, the dev set) is set
# on the test itself.
BROKER_FIXTURES = {"broker", "make_broker"}
BROWSER_FIXTURES = {"browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        # `make test` runs the suite on several pytest-xdist workers (most tests wait on
        # brokers, outages and timeouts, not the CPU). The few that keep the cores busy
        # share one worker (--dist loadgroup), so at most one of them at a time takes
        # CPU from the tests that time a reconnect or a watchdog.
        if item.get_closest_marker("cpu"):
            item.add_marker(pytest.mark.xdist_group("cpu"))
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & BROKER_FIXTURES:
            item.add_marker(pytest.mark.broker)
        if fixtures & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
