"""systemd's notify protocol (sd_notify), without libsystemd.

When systemd starts a Type=notify service it sets NOTIFY_SOCKET to a unix
datagram socket (a path, or '@name' for the abstract namespace). We send
READY=1 once models and cameras are up, WATCHDOG=1 while frames are being
processed, STATUS=<one line> for `systemctl status`, STOPPING=1 on shutdown.
Without NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

from edge.events import Event, HealthEvent

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = ("\0" + address[1:]) if address.startswith("@") else address
        self._sock = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            # Never waits: as a sink it runs on the main loop's thread, and a datagram
            # socket whose reader has fallen behind (a queue of net.unix.max_dgram_qlen,
            # 10 on some boxes) would block the send, and the loop, until it reads.
            # A message that does not fit is dropped; the next one says the same again.
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:  # the manager went away, or is behind; the service carries on
            log.debug("notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, line: str) -> None:
        self.send(f"STATUS={line}")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    # -- as a sink of the service (outputs/sinks.py) ---------------------------------

    def start(self) -> None:
        pass

    def emit(self, event: Event) -> None:
        """The loop's health (events.HealthEvent) as the notify protocol's messages."""
        if not isinstance(event, HealthEvent):
            return
        match event.state:
            case "ready":
                self.ready(event.status)
            case "alive":
                self.watchdog()
            case "status":
                self.status(event.status)
            case "stopping":
                self.stopping()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), if this process is the one watched."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
