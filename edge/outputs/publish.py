"""The MQTT publisher: the service's events and the displays' decisions, over MQTT.

Topics, payloads, QoS and retain flags are defined once, in topics.py. Three kinds of
message:
  - state (availability, camera status, audience, display content): retained; the
    latest value is kept here and sent again after every reconnect, so a broker
    that restarted without persistence still ends up with the current state;
  - interval counts: what a store is billed on, so none may be lost. They go
    through an Outbox: kept in order until the broker acknowledges them (QoS 1),
    handed to paho a window at a time, and saved in state_dir when the service
    stops (or the broker is away) so a restart delivers them too. Saving happens on
    the publisher's own thread, never in paho's callbacks or the pipeline's loop; a
    state_dir that cannot be written (disk full) is logged once, the reports stay in
    memory (up to outbox_max) and the save is retried;
  - stats: best effort (QoS 0), dropped while disconnected.
paho's network thread reconnects with backoff; the pipeline never waits for it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.config import Config
from edge.errors import tcp_problem
from edge.events import (
    AudienceEvent,
    CameraEvent,
    DecisionEvent,
    Event,
    IntervalEvent,
    PlayEvent,
    StatsEvent,
)
from edge.outputs import hass, mqttclient
from edge.outputs.topics import SCHEMA_VERSION, Topics
from edge.timefmt import iso, now, zone_name

log = logging.getLogger(__name__)

WINDOW = 20  # interval reports handed to paho at once (paho's own in-flight default)
SAVE_RETRY_S = 5.0  # a failed outbox save is tried again this often


@dataclass
class Report:
    topic: str
    payload: str
    mid: int | None = None  # paho's message id once handed over; -1 while being handed


class Outbox:
    """Interval reports not yet acknowledged, oldest first, bounded, saved to disk."""

    def __init__(self, path: Path, limit: int):
        self.path = path
        self.limit = limit
        self.reports: collections.deque[Report] = collections.deque()
        self.dropped = 0

    def load(self) -> int:
        try:
            if not self.path.exists():
                return 0
            text = self.path.read_text(errors="replace")
        except OSError as exc:
            log.error(
                "mqtt outbox %s cannot be read (%s): reports saved by the last run are not sent",
                self.path,
                exc.strerror or exc,
            )
            return 0
        loaded = 0
        for n, line in enumerate(text.splitlines(), 1):
            try:
                item = json.loads(line)
                self.reports.append(Report(item["topic"], item["payload"]))
                loaded += 1
            except (ValueError, KeyError, TypeError):
                log.error("%s line %d: not an outbox entry, skipped", self.path, n)
        return loaded

    def add(self, report: Report) -> None:
        if len(self.reports) >= self.limit:
            waiting = next((r for r in self.reports if r.mid is None), None)
            if waiting is not None:  # handed ones are paho's already; drop the oldest other
                self.reports.remove(waiting)
                self.dropped += 1
                log.error(
                    "mqtt outbox full (%d reports, mqtt.outbox_max): dropped the oldest, %s",
                    self.limit,
                    waiting.payload[:120],
                )
        self.reports.append(report)

    def lines(self) -> list[str]:
        """The reports as the file holds them (taken under the publisher's lock, written
        without it)."""
        return [json.dumps({"topic": r.topic, "payload": r.payload}) + "\n" for r in self.reports]

    def save(self, lines: list[str] | None = None) -> None:
        """Write the unacknowledged reports (atomically), or remove the file if none.
        OSError (disk full, read-only or missing folder) is the caller's to handle."""
        lines = self.lines() if lines is None else lines
        if not lines:
            try:
                self.path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                pass  # no file, or no folder: nothing to remove
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a half-written file must not fill the disk more
            raise


@dataclass(frozen=True)
class PublisherStatus:
    """The publisher's state, as the stats payload's `mqtt` object (topics.STATS) and the
    Prometheus gauges show it: one record, read under the publisher's lock."""

    connected: bool  # to the broker now
    outbox: int  # reports waiting for the broker's acknowledgement
    dropped: int  # reports dropped because the outbox was full (mqtt.outbox_max)
    outbox_saved: bool  # False while the outbox cannot be written to the state folder


class MqttPublisher:
    """An event sink (outputs/sinks.py) that publishes to the configured broker."""

    def __init__(self, config: Config):
        cfg = config.mqtt
        self.config = config
        self.topics = Topics(cfg.topic_prefix, cfg.store_id)
        self.client_id = mqttclient.service_client_id(config)
        self.where = f"{cfg.host}:{cfg.port}"
        self.client = mqttclient.make_client(config, self.client_id)
        will = self.topics.availability
        self.client.will_set(will, "offline", **self._flags(will))
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.zone = zone_name()  # the head office keeps each store's zone (edge hq)
        self.discovery = hass.Discovery(config)  # Home Assistant's configs for this box
        self.discovery.attach(self.client)
        self.outbox = Outbox(
            config.state_path() / f"mqtt-outbox-{cfg.store_id}.jsonl", cfg.outbox_max
        )
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}  # retained topic -> latest payload
        self._early_acks: set[int] = set()
        self._connected = False
        self._closing = False
        self._problems = mqttclient.ProblemLog(f"mqtt {self.where}")
        self._save_wanted = threading.Event()
        self._save_failing = ""  # why the last save failed; "" while saves work
        self._saver = threading.Thread(target=self._save_loop, name="mqtt-outbox", daemon=True)
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        loaded = self.outbox.load()
        if loaded:
            log.info(
                "mqtt: %d interval report(s) from the last run still to deliver (%s)",
                loaded,
                self.outbox.path,
            )
        self._saver.start()
        self.client.connect_async(**mqttclient.connect_kwargs(self.config))
        self.client.loop_start()

    def close(self, timeout: float = 2.0) -> None:
        """Say offline, give waiting reports a moment to go out, save what is left."""
        if self._connected:
            deadline = time.monotonic() + timeout
            while self._unacked() and time.monotonic() < deadline and self._connected:
                time.sleep(0.02)
            info = self._publish(self.client, self.topics.availability, "offline")
            try:
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        self._stopping.set()
        self._save_wanted.set()
        if self._saver.is_alive():
            self._saver.join(timeout=5)
        with self._lock:
            lines = self.outbox.lines()
        try:
            self.outbox.save(lines)
        except OSError as exc:
            log.error(
                "mqtt: %d interval report(s) not yet delivered could not be saved to "
                "%s (%s): they are lost",
                len(lines),
                self.outbox.path,
                exc.strerror or exc,
            )
            return
        if lines:
            log.warning(
                "mqtt: %d interval report(s) not yet delivered, kept in %s for the next start",
                len(lines),
                self.outbox.path,
            )

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> PublisherStatus:
        with self._lock:
            return PublisherStatus(
                connected=self._connected,
                outbox=len(self.outbox.reports),
                dropped=self.outbox.dropped,
                outbox_saved=not self._save_failing,
            )

    # -- events in -----------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Each payload as topics.py documents it: `schema`, the keys added here (`time`
        when the event has none, `id`, `mqtt`), then the event's own fields."""
        stamp = iso(now())
        match event:
            case CameraEvent():
                self._set_state(
                    self.topics.camera_status(event.camera), {"time": stamp, **_fields(event)}
                )
            case AudienceEvent():
                self._set_state(
                    self.topics.camera_audience(event.camera), event.counts_only().to_json()
                )
            case DecisionEvent(reason=reason) if reason.rule != "override":
                # an override came from the broker: publishing it again would put our
                # copy in place of its sender's
                self._set_state(self.topics.display_content(event.display), _fields(event))
            case IntervalEvent() | PlayEvent():
                self._add_report(*report_message(self.topics, event, stamp))
            case StatsEvent():
                if self._connected:
                    payload = {
                        **_fields(event),
                        "mqtt": asdict(self.status()),
                        "timezone": self.zone,
                    }
                    self._publish(self.client, self.topics.stats, _json(payload))
        # SummaryEvent and ErrorEvent end an offline file analysis, which never publishes

    def _set_state(self, topic: str, payload: dict) -> None:
        text = _json(payload)
        with self._lock:
            self._state[topic] = text
            connected = self._connected
        if connected:  # otherwise sent on (re)connect: only the latest value matters
            self._publish(self.client, topic, text)

    def _flags(self, topic: str) -> dict:
        """QoS and retain flag of a topic, as topics.py declares them."""
        spec = self.topics.spec(topic)
        return {"qos": spec.qos, "retain": spec.retain}

    def _publish(self, client: mqtt.Client, topic: str, payload: str) -> mqtt.MQTTMessageInfo:
        return client.publish(topic, payload, **self._flags(topic))

    def _add_report(self, topic: str, payload: str) -> None:
        with self._lock:
            self.outbox.add(Report(topic, payload))
            if not self._connected:
                self._save_wanted.set()  # survives a crash while the broker is away
        self._hand_over()

    # -- the outbox window ---------------------------------------------------------

    def _unacked(self) -> int:
        with self._lock:
            return len(self.outbox.reports)

    def _hand_over(self) -> None:
        """Give paho the oldest reports, up to WINDOW in flight. paho keeps handed
        reports across reconnects and resends them first, so order is kept."""
        with self._lock:
            if not self._connected:
                return
            in_flight = sum(r.mid is not None for r in self.outbox.reports)
            batch = [r for r in self.outbox.reports if r.mid is None][: max(0, WINDOW - in_flight)]
            for r in batch:
                r.mid = -1
        for r in batch:  # never publish holding our lock: paho calls on_publish holding its own
            info = self._publish(self.client, r.topic, r.payload)
            with self._lock:
                r.mid = info.mid
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    self._remove(r)
        with self._lock:
            if not any(r.mid == -1 for r in self.outbox.reports):
                self._early_acks.clear()  # acks of state messages, not of reports

    def _remove(self, report: Report) -> None:
        try:
            self.outbox.reports.remove(report)
        except ValueError:
            pass
        if not self.outbox.reports:
            self._save_wanted.set()  # nothing waits any more: drop the file

    # -- saving the outbox (own thread) -------------------------------------------------

    def _save_loop(self) -> None:
        """Save when asked, and again every SAVE_RETRY_S while saving fails. Disk I/O
        lives here: paho's network thread must keep serving the broker, and the
        pipeline must keep counting, however slow or broken the disk is."""
        while not self._stopping.is_set():
            self._save_wanted.wait(SAVE_RETRY_S if self._save_failing else None)
            if self._stopping.is_set():
                return  # close() saves the last state itself
            if not self._save_wanted.is_set() and not self._save_failing:
                continue
            self._save_wanted.clear()
            self._save_now()

    def _save_now(self) -> None:
        with self._lock:
            lines = self.outbox.lines()
        try:
            self.outbox.save(lines)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if reason != self._save_failing:  # once, and when the cause changes
                log.error(
                    "mqtt outbox %s cannot be saved (%s): %d interval report(s) kept "
                    "in memory (up to mqtt.outbox_max) and saving retried every %g s",
                    self.outbox.path,
                    reason,
                    len(lines),
                    SAVE_RETRY_S,
                )
            self._save_failing = reason
            return
        if self._save_failing:
            log.info(
                "mqtt outbox %s saved again (%d report(s)); was: %s",
                self.outbox.path,
                len(lines),
                self._save_failing,
            )
        self._save_failing = ""

    # -- paho callbacks (network thread) ---------------------------------------------

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._problems.problem(
                f"broker refused the connection as '{self.client_id}': {mqttclient.explain(reason)}"
            )
            return
        self._problems.ok(f"connected as '{self.client_id}'")
        self.discovery.on_connect(client)  # before "online": Home Assistant's recommended order
        self._publish(client, self.topics.availability, "online")
        with self._lock:
            self._connected = True
            state = list(self._state.items())
            handed = any(r.mid is not None for r in self.outbox.reports)
        for topic, text in state:
            self._publish(client, topic, text)
        if not handed:  # handed reports are resent by paho right after this callback
            self._hand_over()

    def _on_connect_fail(self, client, userdata) -> None:
        self._problems.problem(
            f"cannot connect: {_probe(self.config.mqtt.host, self.config.mqtt.port)}"
        )

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._lock:
            was, self._connected = self._connected, False
            if self.outbox.reports:
                self._save_wanted.set()
        if was and not self._closing:
            self._problems.lost(
                reason, self.client_id, (self.config.mqtt.host, self.config.mqtt.port)
            )

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._lock:
            report = next((r for r in self.outbox.reports if r.mid == mid), None)
            if report is None:
                if any(r.mid == -1 for r in self.outbox.reports):
                    self._early_acks.add(mid)  # acked before publish() returned its mid
                return
            self._remove(report)
        self._hand_over()


def report_message(topics: Topics, event: IntervalEvent | PlayEvent, stamp: str) -> tuple[str, str]:
    """An interval or play report as it goes out: (topic, JSON payload), `stamp` its
    `time`. An interval's id is camera/start; a play has its own (display/start).
    tools/fleet_sim.py builds its load for head office with this too."""
    if isinstance(event, IntervalEvent):
        payload = {"time": stamp, "id": f"{event.camera}/{event.start}", **_fields(event)}
        return topics.camera_counts(event.camera), _json(payload)
    return topics.display_plays(event.display), _json({"time": stamp, **_fields(event)})


def _fields(event: Event) -> dict:
    """The event's JSON object without its "type" (the topic says what it is)."""
    payload = event.to_json()
    del payload["type"]
    return payload


def _json(payload: dict) -> str:
    return json.dumps({"schema": SCHEMA_VERSION, **payload}, separators=(",", ":"))


def _probe(host: str, port: int) -> str:
    """Why connecting fails: the TCP connection's problem, or the MQTT handshake."""
    problem = tcp_problem(host, port, timeout_s=3)
    if problem is None:
        return f"{host}:{port} accepts TCP but the MQTT handshake failed (TLS or protocol?)"
    return f"{host}:{port}: {problem}"
