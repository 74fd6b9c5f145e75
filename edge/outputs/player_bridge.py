"""The display player's MQTT bridge: follows the displays' retained content topics on
the broker, checks every content message, and keeps each display's latest content
for the player's web server (edge/outputs/player_server.py) to stream to its page.

Why a bridge here rather than Mosquitto's websockets listener on the store
network: displays need one plain-HTTP endpoint that also serves the player and
the creatives; the broker can stay on localhost (who may write there is its ACL's
business: mosquitto/edge.acl); and no MQTT client has to be written or vendored in
JavaScript. Because the bridge follows the retained content topics (it does not
take decisions from the pipeline directly), the broker stays the source of
truth: an override published there, e.g. by HQ, reaches the screens too.

What a screen may show is the catalog's business, not the broker's: a content
message is shown only when its creative is one the catalog names, or an http(s)
URL on a host in player.allowed_hosts (empty by default; loopback, private and
link-local addresses only when listed one by one). Anything else is rejected,
counted (/healthz, /metrics) and logged at most once a minute. Shown content the
pipeline did not decide (an allowed override) is labelled rule `override`, and the
service is told, so proof of play and the dashboard say what was really on screen.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from edge.catalog import AD_ID, TITLE_MAX_CHARS, is_url, url_problem
from edge.config import Config
from edge.outputs.mqttclient import (
    GuardedClient,
    ProblemLog,
    RepeatLimiter,
    connect_kwargs,
    explain,
    make_client,
    service_client_id,
)
from edge.outputs.topics import SCHEMA_VERSION, Topics
from edge.records import AGE_CLASSES, GENDERS
from edge.timefmt import iso, now

log = logging.getLogger(__name__)

MAX_CONTENT_BYTES = 64 * 1024  # a decision is a few hundred bytes; larger is not one
REJECT_LOG_S = 60.0  # rejected messages: one log line per topic and minute at most
OVERRIDE = "override"  # the rule of shown content that the pipeline did not decide
_RULE = re.compile(r"[a-z_-]{1,32}")


class PlayerBridge:
    """Follows the content topics of the configured displays; `board` holds what each
    display should show (None until a valid message came).

    served: the catalog's local creatives (creative_ref -> file); catalog_urls: its
    http(s) creatives. A content message may name these, or a URL on one of
    player.allowed_hosts. `on_override(display, content)` hears of content shown that
    the pipeline did not decide (see decided()).
    """

    def __init__(
        self,
        config: Config,
        displays,
        served: dict[str, Path],
        catalog_urls: Collection[str] = (),
    ):
        self.config = config
        self.displays = displays
        self.served = served
        self.allowed = Creatives(served, catalog_urls, config.player.allowed_hosts)
        self.on_override: Callable[[str, dict], None] | None = None
        self._decided: dict[str, tuple[str, str]] = {}  # display -> the pipeline's (ad, creative)
        self.board = Board(displays)
        self._topic = Topics(config.mqtt.topic_prefix, config.mqtt.store_id).display_content("+")
        self._problems = ProblemLog(
            f"display player: MQTT broker {config.mqtt.host}:{config.mqtt.port}"
        )
        self._client: GuardedClient | None = None
        self._client_id = ""
        self._stopping = False
        self._rejects = RepeatLimiter(REJECT_LOG_S)
        self.mqtt_connected = False
        self.last_message: float | None = None  # epoch seconds of the last content message
        self.rejected = 0  # content messages dropped as invalid (foreign creatives included)
        self.rejected_creatives = 0  # of those, naming a creative the catalog does not allow

    def start(self) -> None:
        if self.config.mqtt.enabled:
            self._start_mqtt()
        else:
            log.info("display player: mqtt.enabled is false; displays show the default ad")

    def stop(self) -> None:
        self._stopping = True
        self.board.close()  # ends the event streams, so their threads finish
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.mqtt_connected = False

    def health(self) -> dict:
        client = self._client
        return {
            "mqtt_connected": self.mqtt_connected,
            "mqtt_loop_alive": client is not None and client.loop_alive,
            "mqtt_last_message": None if self.last_message is None else iso(self.last_message),
            "mqtt_rejected": self.rejected,
            "mqtt_rejected_creatives": self.rejected_creatives,
        }

    def decided(self, display: str, ad: str, creative: str) -> None:
        """What the pipeline decided for a display (the service's decision events, before
        the publisher sends them): content that differs from it is an override."""
        self._decided[display] = (ad, creative)

    @property
    def healthy(self) -> bool:
        """False when the player should follow the broker and its network loop is gone."""
        return not self.config.mqtt.enabled or (
            self._client is not None and self._client.loop_alive
        )

    def _start_mqtt(self) -> None:
        self._client_id = f"{service_client_id(self.config)}-player"
        client = make_client(self.config, client_id=self._client_id)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(**connect_kwargs(self.config))
        client.loop_start()
        self._client = client

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._problems.problem(explain(reason))
            return
        # A clean session forgets subscriptions: subscribe after every (re)connect;
        # the broker then sends the retained content again.
        client.subscribe(self._topic, qos=1)
        self.mqtt_connected = True
        self._problems.ok(f"connected, following {self._topic}")

    def _on_connect_fail(self, client, userdata) -> None:
        self._problems.problem(
            "cannot connect (is the broker running? check mqtt.host and mqtt.port)"
        )

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        was, self.mqtt_connected = self.mqtt_connected, False
        # A refused login ends in a disconnect too: that is the same problem, already
        # logged, not a lost connection (README promises it once).
        if was and not self._stopping:
            self._problems.lost(
                reason, self._client_id, (self.config.mqtt.host, self.config.mqtt.port)
            )

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.last_message = now()
        display = msg.topic.split("/")[-2]
        if display not in self.displays:
            log.debug("display player: %s is not a configured display", msg.topic)
            return
        if not msg.payload:  # retained message cleared: back to the default
            self.board.set(display, None)
            return
        try:
            content = parse_content(msg.payload, display, self.allowed)
        except BadContent as exc:
            self.rejected += 1
            if isinstance(exc, ForeignCreative):
                self.rejected_creatives += 1
            show, left_out = self._rejects.check(msg.topic)
            if show:
                log.warning(
                    "display player: ignored a message on %s: %s; the display keeps "
                    "what it shows (bad messages on this topic are logged again in "
                    "a minute at the earliest)%s",
                    msg.topic,
                    exc,
                    f"; {left_out} more were ignored since the last line" if left_out else "",
                )
            return
        decided = self._decided.get(display)
        if decided is not None and decided != (content["ad"], content["creative"]):
            # Not what the pipeline decided (it has decided once at least: before that,
            # the retained message is the last run's decision).
            content["reason"] = {"rule": OVERRIDE, "segment": None}
            self._decided[display] = (content["ad"], content["creative"])
            if self.on_override is not None:
                self.on_override(display, content)
        self.board.set(display, content)


class BadContent(ValueError):
    """A content message the player does not show; the text says why (never the payload)."""


class ForeignCreative(BadContent):
    """A content message naming a creative the catalog does not allow."""


class Creatives:
    """The creatives a content message may name: the catalog's files and URLs, and URLs
    on player.allowed_hosts (an exact host, or '.example.com' for its subdomains)."""

    def __init__(self, served: Collection[str], urls: Collection[str], hosts: Collection[str]):
        self.served = served
        self.urls = frozenset(urls)
        entries = [h.lower().rstrip(".") for h in hosts]
        self.exact = frozenset(h for h in entries if not h.startswith("."))
        self.suffixes = tuple(h for h in entries if h.startswith("."))

    def problem(self, creative: str) -> str | None:
        """Why the creative may not be shown; None when it may."""
        if not is_url(creative):
            if creative in self.served:
                return None
            return "neither a creative the ad catalog names nor an http(s) URL"
        if problem := url_problem(creative):
            return problem
        if creative in self.urls:
            return None
        try:
            host = (urlsplit(creative).hostname or "").rstrip(".")
        except ValueError:
            return "the URL cannot be parsed"
        if host in self.exact:
            return None
        # A subdomain rule never covers an address: loopback, private and link-local
        # ones (the box's own /metrics, a router's admin page) only when listed as such.
        if not _is_address(host) and any(host.endswith(s) for s in self.suffixes):
            return None
        return (
            f"a URL on {host or 'no host'}, which neither the ad catalog nor "
            f"player.allowed_hosts allows"
        )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # what browsers also read as an IPv4 address: 2130706433, 0x7f.1, 127.1
        return bool(re.fullmatch(r"[0-9a-fx.]+", host)) and any(c.isdigit() for c in host)
    return True


def _reject_constant(name: str):
    raise BadContent(f"{name} is not a number JSON allows")


def parse_content(  # noqa: C901 (one check per field of the message, each its own reason)
    payload: bytes | bytearray, display: str, allowed: Creatives
) -> dict:
    """The fields of a content message the page uses, checked and typed; BadContent for
    anything else. Unknown fields are left out, so nothing unchecked reaches the page."""
    if len(payload) > MAX_CONTENT_BYTES:
        raise BadContent(
            f"{len(payload)} bytes, more than the {MAX_CONTENT_BYTES} a decision may have"
        )
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadContent("not UTF-8 text") from None
    except RecursionError:
        raise BadContent("JSON nested too deeply") from None
    except ValueError as exc:  # BadContent is one too
        raise BadContent(f"not valid JSON ({str(exc)[:100]})") from None
    if not isinstance(data, dict):
        raise BadContent(f"a JSON {type(data).__name__}, not an object")
    schema = data.get("schema", SCHEMA_VERSION)
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise BadContent(f"field 'schema' must be {SCHEMA_VERSION}")
    ad = data.get("ad")
    if not isinstance(ad, str) or not AD_ID.fullmatch(ad):
        raise BadContent("field 'ad' must be an ad id (1-64 letters, digits, '.', '-', '_')")
    title = data.get("title", "")
    if not isinstance(title, str) or len(title) > TITLE_MAX_CHARS:
        raise BadContent(f"field 'title' must be text of at most {TITLE_MAX_CHARS} characters")
    creative = data.get("creative")
    if not isinstance(creative, str):
        raise BadContent("field 'creative' must be text")
    if problem := allowed.problem(creative):
        raise ForeignCreative(f"field 'creative': {problem}")
    duration = data.get("duration_s")
    if duration is not None and (
        type(duration) not in (int, float) or not math.isfinite(duration) or duration <= 0
    ):
        raise BadContent("field 'duration_s' must be a number of seconds above 0")
    when = data.get("time")
    if when is not None and (not isinstance(when, str) or len(when) > 64):
        raise BadContent("field 'time' must be an ISO 8601 time")
    reason = data.get("reason", {})
    if not isinstance(reason, dict):
        raise BadContent("field 'reason' must be an object")
    rule = reason.get("rule")
    if rule is not None and (not isinstance(rule, str) or not _RULE.fullmatch(rule)):
        raise BadContent("field 'reason.rule' must be a rule name")
    segment = reason.get("segment")
    if segment is not None and not (
        isinstance(segment, dict)
        and segment.get("age_class") in AGE_CLASSES
        and segment.get("gender") in GENDERS
    ):
        raise BadContent("field 'reason.segment' must be null or {age_class, gender}")
    if segment is not None:
        segment = {"age_class": segment["age_class"], "gender": segment["gender"]}
    return {
        "schema": SCHEMA_VERSION,
        "time": when,
        "display": display,
        "ad": ad,
        "title": title,
        "creative": creative,
        "duration_s": duration,
        "reason": {"rule": rule, "segment": segment},
    }


class Board:
    """The latest content per display (None: nothing received); event streams wait on it."""

    def __init__(self, displays):
        self._changed = threading.Condition()
        self._content: dict[str, dict | None] = dict.fromkeys(displays)
        self._version = dict.fromkeys(displays, 0)
        self._closed = False

    def set(self, display: str, content: dict | None) -> None:
        with self._changed:
            if self._content[display] != content:  # retained redelivery after a reconnect
                self._content[display] = content
                self._version[display] += 1
                self._changed.notify_all()

    def get(self, display: str) -> tuple[int, dict | None]:
        with self._changed:
            return self._version[display], self._content[display]

    def snapshot(self) -> dict[str, dict | None]:
        with self._changed:
            return dict(self._content)

    def wait(self, display: str, version: int, timeout: float) -> tuple[int, dict | None] | None:
        """(version, content) after a change or the timeout; None once closed."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._closed or self._version[display] != version, timeout
            )
            return None if self._closed else (self._version[display], self._content[display])

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
