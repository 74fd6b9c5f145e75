"""One place that turns the `mqtt:` config into a connected paho client.

The publisher (publish.py), the display player's bridge (player_bridge.py) and `edge check`
connect through here, so credentials, TLS, protocol version, reconnect backoff, the
wording of connection problems and the guard on callbacks are the same everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import Config, MqttConfig
from edge.errors import ConfigError

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60


def credentials(cfg: MqttConfig) -> tuple[str | None, str | None]:
    """User name and password; the environment wins so secrets stay out of config.yaml."""
    return (
        os.environ.get("EDGE_MQTT_USERNAME") or cfg.username,
        os.environ.get("EDGE_MQTT_PASSWORD") or cfg.password,
    )


def service_client_id(config: Config) -> str:
    """The service's MQTT client id; its helpers (player, check) add a suffix to it, so
    none of them takes the service's place on the broker."""
    return config.mqtt.client_id or f"edge-{config.mqtt.store_id}"


class RepeatLimiter:
    """Says whether to log something seen under a key: the first time, then at most every
    REPEAT_S (10 minutes unless given) with the number of repeats left out, so a flood
    is one line per period."""

    REPEAT_S = 600.0

    def __init__(self, repeat_s: float | None = None):
        if repeat_s is not None:
            self.REPEAT_S = repeat_s
        self._lock = threading.Lock()
        self._seen: dict[object, tuple[float, int]] = {}  # key -> (last logged, left out)

    def check(self, key) -> tuple[bool, int]:
        """(log it now?, repeats left out since the last line)."""
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(key)
            if last is None or now - last[0] >= self.REPEAT_S:
                self._seen[key] = (now, 0)
                return True, 0 if last is None else last[1]
            self._seen[key] = (last[0], last[1] + 1)
            return False, 0


class GuardedClient(mqtt.Client):
    """A paho client whose callbacks cannot end its network loop.

    paho re-raises an exception from a callback in its network thread, which ends the
    thread for good: no more messages, no reconnects, and nothing says so. Every
    callback assigned to this client (on_message, on_connect, ..., the decorator forms
    and message_callback_add too) is wrapped: an exception is logged (once per callback
    and exception type, then every 10 minutes) and the loop goes on. One mechanism for
    every client the project makes, so a callback added later is covered as well.
    """

    _CALLBACKS = frozenset(
        name
        for name in dir(mqtt.Client)
        if name.startswith("on_") and isinstance(getattr(mqtt.Client, name), property)
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._guard_repeats = RepeatLimiter()
        self.callback_errors = 0
        self.suppress_exceptions = True  # second net: paho's own wrappers swallow too

    def __setattr__(self, name: str, value) -> None:
        if name in self._CALLBACKS and value is not None:
            value = self._guarded(name, value)
        super().__setattr__(name, value)

    def message_callback_add(self, sub: str, callback: Callable) -> None:
        super().message_callback_add(sub, self._guarded(f"callback for {sub}", callback))

    @property
    def loop_alive(self) -> bool:
        """Whether the network thread started by loop_start() is running. paho keeps it in
        a private attribute; tests/test_mqtt.py checks this still reads it."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _guarded(self, name: str, callback: Callable) -> Callable:
        if getattr(callback, "_edge_guarded", False):
            return callback

        def guarded(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the loop must survive any of them
                self.callback_errors += 1
                try:
                    show, left_out = self._guard_repeats.check((name, type(exc)))
                    if show:
                        log.error(
                            "mqtt client '%s': %s failed (%s: %s)%s; the message is "
                            "dropped and the client carries on",
                            self._client_id.decode(),
                            name,
                            type(exc).__name__,
                            str(exc)[:200],
                            f" ({left_out} more since the last report)" if left_out else "",
                            exc_info=not left_out,
                        )
                except Exception:  # noqa: BLE001 - an unprintable exception: still go on
                    pass
                return None

        # mypy does not model attributes set on a function
        guarded._edge_guarded = True  # type: ignore[attr-defined]
        guarded.__name__ = getattr(callback, "__name__", name)
        return guarded


def make_client(config: Config, client_id: str) -> GuardedClient:
    """A paho client set up from config (not yet connected), its callbacks guarded."""
    cfg = config.mqtt
    if cfg.protocol == "5":
        client = GuardedClient(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
    else:
        client = GuardedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
    username, password = credentials(cfg)
    if username or password:
        client.username_pw_set(username, password)
    if cfg.tls.enabled:
        tls = cfg.tls
        try:
            client.tls_set(
                ca_certs=str(config.resolve(tls.ca_file)) if tls.ca_file else None,
                certfile=str(config.resolve(tls.cert_file)) if tls.cert_file else None,
                keyfile=str(config.resolve(tls.key_file)) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            # A file that is not a certificate or key, or a key that does not match:
            # a restart cannot fix it, so it is a config error (exit 78).
            files = ", ".join(f for f in (tls.ca_file, tls.cert_file, tls.key_file) if f)
            raise ConfigError(
                f"'mqtt.tls' files cannot be used ({files}): {getattr(exc, 'reason', None) or exc}"
            ) from None
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def connect_kwargs(config: Config) -> dict:
    kwargs = {
        "host": config.mqtt.host,
        "port": config.mqtt.port,
        "keepalive": config.mqtt.keepalive_s,
    }
    if config.mqtt.protocol == "5":
        kwargs["clean_start"] = True
    return kwargs


def explain(reason) -> str:
    """A connection failure in words an operator can act on."""
    text = str(reason)
    if isinstance(reason, ReasonCode):
        # Mosquitto answers a wrong password with "not authorised" (5, v5: 135).
        if reason.value in (4, 5, 134, 135):
            return (
                f"{text}: check the user name (EDGE_MQTT_USERNAME or mqtt.username) and "
                f"the password (EDGE_MQTT_PASSWORD or mqtt.password)"
            )
        if reason.value in (2, 133):
            return f"{text}: another client may use the same mqtt.client_id"
    return text


def _accepts(address: tuple[str, int], timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at (host, port) now."""
    try:
        socket.create_connection(address, timeout=timeout_s).close()
    except OSError:
        return False
    return True


class ProblemLog:
    """Logs a connection problem once when it starts or changes, then every 10 minutes:
    an operator reading journald sees the cause without a line per retry.

    A client-id takeover (another client connecting with our id: the broker closes the
    older connection, both reconnect, and they take turns) is named once, and neither it
    nor the reconnects that follow are logged again for 10 minutes."""

    REPEAT_S = 600.0
    TAKEOVER_S = 2.0  # closed this soon after connecting: another client took our id

    def __init__(self, what: str):
        self.what = what
        self._last: tuple[str, float] | None = None
        self._connected_at: float | None = None
        self._taken_over: float | None = None  # when a takeover was last logged

    def problem(self, message: str) -> None:
        now = time.monotonic()
        if self._last is None or self._last[0] != message or now - self._last[1] >= self.REPEAT_S:
            log.warning(
                "%s: %s; retrying with backoff (%d-%d s)",
                self.what,
                message,
                RECONNECT_MIN_S,
                RECONNECT_MAX_S,
            )
            self._last = (message, now)

    def lost(self, reason, client_id: str, address: tuple[str, int]) -> None:
        """The connection was lost (on_disconnect): a takeover when the broker says so
        (MQTT 5: 142), or closed it within TAKEOVER_S of connecting while it still
        accepts connections (MQTT 3.1.1 says nothing: a broker that stops looks the
        same, except that its port is closed then)."""
        now = time.monotonic()
        quick = self._connected_at is not None and now - self._connected_at < self.TAKEOVER_S
        self._connected_at = None
        if getattr(reason, "value", None) != 142 and not (quick and _accepts(address)):
            self.problem(f"connection lost ({explain(reason)})")
            return
        if self._taken_over is None or now - self._taken_over >= self.REPEAT_S:
            log.warning(
                "%s: another client connected as '%s', so the broker closed our connection "
                "(the two take turns while both run) — fix: give each client its own "
                "mqtt.client_id (two boxes or two services with one config?), or stop the "
                "other; logged again in 10 minutes at the earliest",
                self.what,
                client_id,
            )
            self._taken_over = now

    def ok(self, message: str) -> None:
        now = time.monotonic()
        self._connected_at = now
        if self._taken_over is not None and now - self._taken_over < self.REPEAT_S:
            self._last = None  # reconnected after a takeover: already said
            return
        if self._last is not None:
            log.info("%s: %s (was: %s)", self.what, message, self._last[0])
        else:
            log.info("%s: %s", self.what, message)
        self._last = None
