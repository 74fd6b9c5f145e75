"""Who may use the box's web servers (display player, dashboard, metrics): one small
set of checks, kept general so every HTTP endpoint of the project uses the same ones.

- load_secret (edge/credentials.py, where config.py reaches it too): a key from the
  environment or a credentials file (systemd's LoadCredential= puts it in
  $CREDENTIALS_DIRECTORY), never from config.yaml, so it is in no file a support
  person copies and no URL a log line prints;
- is_loopback: whether a bind address keeps a server on the box (no key needed then);
- authorized: the request's Authorization header (Bearer KEY, or Basic with KEY as
  the password) against the key, in constant time;
- HostCheck: the Host header must name this box (its names, the address the
  connection arrived on, or configured names): a page on another site whose name
  was rebound to 127.0.0.1 or the box's address (DNS rebinding) gets 421;
- Slots: caps on long-lived streams, in all and per client address, so one client
  cannot take every slot.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket
import threading
from collections import Counter

from edge.credentials import load_secret  # noqa: F401 (the servers take it from here)

WILDCARDS = ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """Whether a bind address (or host name) keeps a server reachable from this box only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def authorized(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries `key`: `Bearer KEY`, or Basic auth with
    KEY as the password (any user name; a browser asks for it once). Compared in
    constant time, so the answer's timing tells nothing about the key."""
    if not header or not key:
        return False
    scheme, _, value = header.strip().partition(" ")
    given = b""
    if scheme.lower() == "bearer":
        given = value.strip().encode("utf-8", "replace")
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        given = decoded.partition(b":")[2]
    return hmac.compare_digest(given, key.encode("utf-8"))


def _host_only(host: str) -> str:
    """'name:port', '[::1]:port', 'name.' -> the host alone, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class HostCheck:
    """The Host names a server answers to: localhost and the loopback addresses, the
    box's host name (short, fully qualified and .local), the address each connection
    arrived on, and `extra` names (e.g. a DNS name the displays use)."""

    def __init__(self, extra=()):
        hostname = socket.gethostname().lower()
        names = {"localhost", "127.0.0.1", "::1", hostname, f"{hostname}.local"}
        try:
            names.add(socket.getfqdn().lower())
        except OSError:
            pass
        self.names = frozenset(_host_only(n) for n in (*names, *extra) if n)

    def allows(self, header: str | None, local_address: str) -> bool:
        """Whether the request's Host header names this box; a request without one (HTTP
        1.0, a monitor's probe) is answered, since no browser sends such a request."""
        if header is None:
            return True
        host = _host_only(header)
        local = local_address.lower().removeprefix("::ffff:")
        return host in self.names or host == local or host == local_address.lower()


class Slots:
    """At most `total` streams open, and at most `per_client` of them from one address."""

    def __init__(self, total: int, per_client: int):
        self.total = total
        self.per_client = per_client
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def take(self, client: str) -> str | None:
        """None when a slot was taken; else which cap turned the client away
        ('total' or 'per_client'). Every None must be followed by give_back()."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                return "total"
            if self._open[client] >= self.per_client:
                return "per_client"
            self._open[client] += 1
            return None

    def give_back(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def count(self) -> int:
        with self._lock:
            return sum(self._open.values())
