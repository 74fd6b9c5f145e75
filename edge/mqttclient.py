"""One place that turns the `mqtt:` config into a connected paho client.

Both the publisher (publish.py) and the display player's bridge (display.py)
connect through here, so credentials, TLS, protocol version, reconnect backoff
and the wording of connection problems are the same everywhere.
"""

from __future__ import annotations

import logging
import os
import ssl
import time

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import Config, MqttConfig
from edge.errors import ConfigError

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60


def credentials(cfg: MqttConfig) -> tuple[str | None, str | None]:
    """User name and password; the environment wins so secrets stay out of config.yaml."""
    return (os.environ.get("EDGE_MQTT_USERNAME") or cfg.username,
            os.environ.get("EDGE_MQTT_PASSWORD") or cfg.password)


def service_client_id(config: Config) -> str:
    """The service's MQTT client id; its helpers (player, check) add a suffix to it, so
    none of them takes the service's place on the broker."""
    return config.mqtt.client_id or f"edge-{config.mqtt.store_id}"


def make_client(config: Config, client_id: str) -> mqtt.Client:
    """A paho client set up from config (not yet connected)."""
    cfg = config.mqtt
    if cfg.protocol == "5":
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
    username, password = credentials(cfg)
    if username or password:
        client.username_pw_set(username, password)
    if cfg.tls.enabled:
        tls = cfg.tls
        try:
            client.tls_set(ca_certs=str(config.resolve(tls.ca_file)) if tls.ca_file else None,
                           certfile=str(config.resolve(tls.cert_file)) if tls.cert_file
                           else None,
                           keyfile=str(config.resolve(tls.key_file)) if tls.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            # A file that is not a certificate or key, or a key that does not match:
            # a restart cannot fix it, so it is a config error (exit 78).
            files = ", ".join(f for f in (tls.ca_file, tls.cert_file, tls.key_file) if f)
            raise ConfigError(f"'mqtt.tls' files cannot be used ({files}): "
                              f"{getattr(exc, 'reason', None) or exc}") from None
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def connect_kwargs(config: Config) -> dict:
    kwargs = {"host": config.mqtt.host, "port": config.mqtt.port,
              "keepalive": config.mqtt.keepalive_s}
    if config.mqtt.protocol == "5":
        kwargs["clean_start"] = True
    return kwargs


def explain(reason) -> str:
    """A connection failure in words an operator can act on."""
    text = str(reason)
    if isinstance(reason, ReasonCode):
        # Mosquitto answers a wrong password with "not authorised" (5, v5: 135).
        if reason.value in (4, 5, 134, 135):
            return (f"{text}: check the user name (EDGE_MQTT_USERNAME or mqtt.username) and "
                    f"the password (EDGE_MQTT_PASSWORD or mqtt.password)")
        if reason.value in (2, 133):
            return f"{text}: another client may use the same mqtt.client_id"
    return text


class ProblemLog:
    """Logs a connection problem once when it starts or changes, then every 10 minutes:
    an operator reading journald sees the cause without a line per retry."""

    REPEAT_S = 600.0

    def __init__(self, what: str):
        self.what = what
        self._last: tuple[str, float] | None = None

    def problem(self, message: str) -> None:
        now = time.monotonic()
        if self._last is None or self._last[0] != message or now - self._last[1] >= self.REPEAT_S:
            log.warning("%s: %s; retrying with backoff (%d-%d s)", self.what, message,
                        RECONNECT_MIN_S, RECONNECT_MAX_S)
            self._last = (message, now)

    def ok(self, message: str) -> None:
        if self._last is not None:
            log.info("%s: %s (was: %s)", self.what, message, self._last[0])
        else:
            log.info("%s: %s", self.what, message)
        self._last = None
