"""systemd notify protocol, read from a real unix datagram socket."""

import os
import socket

import pytest

from edge.outputs.notify import Notifier, watchdog_interval_s

from conftest import notify_socket


@pytest.fixture()
def manager_socket(tmp_path):
    path, sock = notify_socket(tmp_path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_as_systemd_expects(manager_socket):
    path, sock = manager_socket
    notifier = Notifier(path)
    notifier.ready("running 1 camera(s)")
    notifier.watchdog()
    notifier.status("door: 15 fps")
    notifier.stopping()
    got = [sock.recv(4096).decode() for _ in range(4)]
    assert got == [
        "READY=1\nSTATUS=running 1 camera(s)",
        "WATCHDOG=1",
        "STATUS=door: 15 fps",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_abstract_namespace_address():
    name = f"edge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        Notifier("@" + name).ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")  # no error, no socket


def test_a_vanished_manager_does_not_stop_the_service(tmp_path):
    Notifier(str(tmp_path / "gone.sock")).watchdog()  # logged at debug, not raised


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval_s() is None
