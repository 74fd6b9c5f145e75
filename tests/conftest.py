"""Shared fixtures. Data under ../shared is required in CI (CI=true): missing
data fails there instead of skipping, so a broken checkout cannot pass."""

from __future__ import annotations

import os
import subprocess
import sys
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


def run_edge(*args: str, cwd: Path = ROOT, **kwargs) -> subprocess.CompletedProcess:
    """The real command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


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


# Markers for a fast inner loop (`make test-fast` leaves these out). `broker` and
# `browser` follow from the fixtures a test asks for, so a new test is marked without
# anyone remembering to; `slow` (a whole clip through the service, the dev set) is set
# on the test itself.
BROKER_FIXTURES = {"broker", "make_broker"}
BROWSER_FIXTURES = {"browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & BROKER_FIXTURES:
            item.add_marker(pytest.mark.broker)
        if fixtures & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
