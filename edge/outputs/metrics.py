"""Prometheus metrics on http://<metrics.listen>:<metrics.port>/metrics (docs/reference.md
"Prometheus metrics"), with prometheus_client.

Everything comes from the service's events: Metrics is an event sink like the log and
the MQTT publisher (outputs/sinks.py), so nothing is counted twice and the scrape
thread never reads the main loop's state:
  - each tick's event (events.TickEvent) carries its timings (detector, classifier,
    capture to decision) and the classifier's batch size, observed into histograms,
    and every camera's counters (frames captured, skipped, processed; online), kept
    as the snapshot a scrape serves;
  - visitors, plays and camera reconnects come from their events;
  - the other sinks' own counters (the MQTT outbox, the audience store, the display
    player) are read at scrape time from those sinks, never copied.
Each Metrics has its own CollectorRegistry: several services in one process (tests,
`edge bench --cameras`) never share or clash over metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edge import __version__
from edge.config import Config
from edge.errors import EdgeError
from edge.events import CameraCounters, CameraEvent, Event, IntervalEvent, PlayEvent, TickEvent
from edge.outputs.access import HostCheck
from edge.outputs.store import play_segments
from edge.outputs.web import Handler, HttpServer, bind, close, serve, url
from edge.records import AGE_CLASSES, SEGMENT_GENDERS

if TYPE_CHECKING:
    from edge.outputs.player_server import DisplayServer
    from edge.outputs.publish import MqttPublisher
    from edge.outputs.store import AudienceStore

log = logging.getLogger(__name__)

# 1 ms to 200 ms, the range a frame's stages and its whole path take (docs/benchmarks.md),
# in seconds; slower ones land in the +Inf bucket.
TIME_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The service's metrics, an event sink (outputs/sinks.py). `publisher`, `store`,
    `player`: the other sinks whose own counters a scrape reads."""

    def __init__(
        self,
        config: Config,
        *,
        publisher: MqttPublisher | None = None,
        store: AudienceStore | None = None,
        player: DisplayServer | None = None,
    ):
        self.config = config
        self.registry = registry = new_registry("edge_build", "Version of the edge service.")
        self.detector_seconds = Histogram(
            "edge_detector_seconds",
            "Face detector time per frame (a camera's share when "
            "frames of several cameras are detected in one run).",
            ["camera"],
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.classifier_seconds = Histogram(
            "edge_classifier_seconds",
            "Age and gender classifier time per batch (all "
            "cameras' faces that need it, classified together).",
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.classifier_batch = Histogram(
            "edge_classifier_batch_size",
            "Faces per classifier batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.latency_seconds = Histogram(
            "edge_latency_seconds",
            "Capture to decision: from a frame's capture to the "
            "audience and the displays' choice being updated from it.",
            ["camera"],
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.reconnects = Counter(
            "edge_camera_reconnects",
            "Times a camera came back online after going offline.",
            ["camera"],
            registry=registry,
        )
        self.visitors = Counter(
            "edge_visitors",
            "Visitors counted, by age class and gender (each visit once, when it ends).",
            ["camera", "age_class", "gender"],
            registry=registry,
        )
        self.unclassified = Counter(
            "edge_unclassified_visitors",
            "Visits counted as unclassified (too short, or age class never confident enough).",
            ["camera"],
            registry=registry,
        )
        self.watchers = Counter(
            "edge_watchers",
            "Visitors who looked at the display for at least audience.min_attention_s.",
            ["camera"],
            registry=registry,
        )
        self.plays = Counter(
            "edge_plays", "Ads played, by display and ad.", ["display", "ad"], registry=registry
        )
        self.play_viewers = Counter(
            "edge_play_viewers",
            "People who watched an ad while it played, by display and ad.",
            ["display", "ad"],
            registry=registry,
        )
        # docs/metrics.md's names: impressions (a viewer of one play; the same count as
        # edge_play_viewers, kept for dashboards built on it), reach, watchers of plays.
        self.impressions = Counter(
            "edge_impressions",
            "Impressions: viewers of each play (docs/metrics.md), by display and ad.",
            ["display", "ad"],
            registry=registry,
        )
        self.reach = Counter(
            "edge_reach",
            "Reach: viewers of an ad not counted for it before in their visit.",
            ["display", "ad"],
            registry=registry,
        )
        self.play_watchers = Counter(
            "edge_play_watchers",
            "Watchers of plays: viewers who looked for audience.min_attention_s.",
            ["display", "ad"],
            registry=registry,
        )
        # Every camera's series from the start, at 0: rate() and increase() need the 0.
        for cam in config.cameras:
            self.reconnects.labels(cam.id)
            self.unclassified.labels(cam.id)
            self.watchers.labels(cam.id)
            for age_class in AGE_CLASSES:
                for gender in SEGMENT_GENDERS:  # "unknown": gender unsure (docs/metrics.md)
                    self.visitors.labels(cam.id, age_class, gender)
        self._was_online: dict[str, bool] = {}
        self._server: HttpServer | None = None
        # The cameras' counters as of the latest tick, replaced whole by the loop's
        # thread and read whole by the scrape's: every camera at 0 until its first frame.
        zero = CameraCounters(online=False, captured=0, processed=0, skipped=0, passed_over=0)
        self.cameras: dict[str, CameraCounters] = {cam.id: zero for cam in config.cameras}
        registry.register(_StateCollector(self, publisher, store, player))

    def count_play(self, display: str, ad: str, viewers: int) -> None:
        """For the plays feature: one play of `ad` on `display`, watched by `viewers`."""
        self.plays.labels(display, ad).inc()
        self.play_viewers.labels(display, ad).inc(viewers)

    # -- events --------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        match event:
            case TickEvent():
                self._tick(event)
            case IntervalEvent():
                self._interval(event)
            case PlayEvent():
                self._play(event)
            case CameraEvent(camera=cam, online=online):
                if online and self._was_online.get(cam) is False:
                    self.reconnects.labels(cam).inc()
                self._was_online[cam] = online
                if cam in self.cameras:  # offline at once, though no frame ticks meanwhile
                    changed = dataclasses.replace(self.cameras[cam], online=online)
                    self.cameras = {**self.cameras, cam: changed}

    def _tick(self, event: TickEvent) -> None:
        for camera, seconds in event.detect_s.items():
            self.detector_seconds.labels(camera).observe(seconds)
        if event.classify_s is not None:
            self.classifier_seconds.observe(event.classify_s)
            self.classifier_batch.observe(event.classified)
        for camera, seconds in event.latency_s.items():
            self.latency_seconds.labels(camera).observe(seconds)
        self.cameras = {**self.cameras, **event.cameras}

    def _interval(self, event: IntervalEvent) -> None:
        cam = event.camera
        for age_class, by_gender in event.unique_visitors.items():
            for gender, n in by_gender.items():
                if n:
                    self.visitors.labels(cam, age_class, gender).inc(n)
        for age_class, n in event.gender_unknown.items():
            if n:  # counted, but their gender stayed a coin toss (audience.gender_margin)
                self.visitors.labels(cam, age_class, "unknown").inc(n)
        self.unclassified.labels(cam).inc(event.unclassified)
        self.watchers.labels(cam).inc(event.watchers)

    def _play(self, event: PlayEvent) -> None:
        self.count_play(
            event.display,
            event.ad,
            sum(n for by_g in event.viewers.values() for n in by_g.values()),
        )
        labels = (event.display, event.ad)
        segments = play_segments(event)  # derived when an older producer sent none
        for counter, figure in (
            (self.impressions, "impressions"),
            (self.reach, "reach"),
            (self.play_watchers, "watchers"),
        ):
            counter.labels(*labels).inc(sum(f.get(figure) or 0 for f in segments.values()))

    # -- the endpoint --------------------------------------------------------------

    def start(self) -> None:
        """As a sink of the service: serve the endpoint (see serve)."""
        self.serve()

    def close(self) -> None:
        self.stop()

    def serve(self) -> bool:
        """Start the endpoint; False, with one log line, when the port cannot be had
        (the service runs on without metrics). Served by the box's own HTTP server
        (edge/outputs/web.py), not prometheus_client's: the request head has a deadline,
        connections are capped (metrics.max_connections) and the Host header must name
        this box, so idle sockets cannot pile up threads and a rebound name cannot read it."""
        cfg = self.config.metrics
        try:
            server = serve_metrics(
                self,
                cfg.listen,
                cfg.port,
                cfg.max_connections,
                self.config.host_names,
                "metrics-http",
            )
        except EdgeError as exc:
            log.error(
                "%s; the service runs without /metrics — fix: set metrics.port to a free "
                "port (or 0 to turn it off)",
                exc,
            )
            return False
        self._server = server
        log.info("metrics: %s", url(cfg.listen, server.server_address[1], "/metrics"))
        return True

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            close_in_background(server)


# -- what the box's metrics and head office's (edge/hq/metrics.py) share -----------------


def new_registry(build: str, help: str) -> CollectorRegistry:
    """A registry of its own (several in one process never clash) with the library's
    default collectors: process CPU, memory, open files, start time; Python version;
    garbage collections; and an Info metric `build` with the version."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info(build, help, registry=registry).info({"version": __version__})
    return registry


def serve_metrics(
    app, listen: str, port: int, max_connections: int, host_names, thread: str
) -> HttpServer:
    """Serve app.registry on /metrics from a thread named `thread`; raises EdgeError
    (naming metrics.listen and metrics.port) when the port cannot be had. The box's own
    HTTP server (edge/outputs/web.py), not prometheus_client's: the request head has a
    deadline, connections are capped and the Host header must name this machine."""
    server = bind(
        HttpServer,
        (listen, port),
        _MetricsHandler,
        "metrics.listen and metrics.port",
        name="metrics",
        hosts=HostCheck(host_names),
        max_connections=max_connections,
    )
    server.app = app
    serve(server, thread)
    return server


def close_in_background(server: HttpServer) -> None:
    # shutdown() waits for serve_forever to notice (up to 0.5 s); off this thread so
    # neither that nor a stuck scrape holds up the caller's stop.
    threading.Thread(target=close, args=(server,), name="metrics-stop", daemon=True).start()


class _MetricsHandler(Handler):
    server_version = "edge-metrics"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/metrics", "/"):
            self._send(404, b"not found: /metrics\n", "text/plain; charset=utf-8")
            return
        self._send(200, generate_latest(self.server.app.registry), CONTENT_TYPE_LATEST)

    def log_message(self, format: str, *args) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class _StateCollector:
    """Counters and gauges the service keeps anyway, read when Prometheus scrapes."""

    def __init__(self, metrics: Metrics, publisher, store=None, player=None):
        self.metrics = metrics
        self.publisher = publisher
        self.store = store
        self.player = player

    def collect(self):
        captured = CounterMetricFamily(
            "edge_camera_captured_frames", "Frames delivered by the camera.", labels=["camera"]
        )
        processed = CounterMetricFamily(
            "edge_camera_processed_frames", "Frames run through the pipeline.", labels=["camera"]
        )
        skipped = CounterMetricFamily(
            "edge_camera_skipped_frames",
            "Frames lost because processing fell behind (a "
            "newer one replaced them before they were taken).",
            labels=["camera"],
        )
        passed_over = CounterMetricFamily(
            "edge_camera_passed_over_frames",
            "Frames left on purpose: newer than the camera's fps allows.",
            labels=["camera"],
        )
        online = GaugeMetricFamily(
            "edge_camera_online", "1 while the camera delivers frames, else 0.", labels=["camera"]
        )
        for cid, cam in self.metrics.cameras.items():  # one snapshot: the loop replaces it
            captured.add_metric([cid], cam.captured)
            processed.add_metric([cid], cam.processed)
            skipped.add_metric([cid], cam.skipped)
            passed_over.add_metric([cid], cam.passed_over)
            online.add_metric([cid], 1.0 if cam.online else 0.0)
        yield from (captured, processed, skipped, passed_over, online)
        if self.store is not None:
            yield CounterMetricFamily(
                "edge_store_write_failures",
                "Failed writes to the audience store (disk full, locked, I/O error); "
                "the record is kept and tried again.",
                value=self.store.failures,
            )
            yield GaugeMetricFamily(
                "edge_store_pending_records",
                "Records waiting to be written to the audience store after a failed write.",
                value=self.store.pending,
            )
            yield CounterMetricFamily(
                "edge_store_dropped_records",
                "Records the audience store could never write (bad data, or the retry "
                "queue was full).",
                value=self.store.failed,
            )
        if self.player is not None:
            bridge = self.player.bridge
            rejected = CounterMetricFamily(
                "edge_display_rejected_messages",
                "Content messages the display player did not show, by reason: invalid "
                "(not a well-formed decision) or creative (one the ad catalog and "
                "player.allowed_hosts do not allow).",
                labels=["reason"],
            )
            rejected.add_metric(["invalid"], bridge.rejected - bridge.rejected_creatives)
            rejected.add_metric(["creative"], bridge.rejected_creatives)
            yield rejected
            yield CounterMetricFamily(
                "edge_http_wrong_host_requests",
                "Requests to the player or dashboard naming a host that is not this box "
                "(answered 421: DNS rebinding, or a name missing from host_names).",
                value=self.player.health()["http_wrong_host"],
            )
        if self.publisher is None:
            return
        mqtt = self.publisher.status()
        yield GaugeMetricFamily(
            "edge_mqtt_connected",
            "1 while connected to the broker.",
            value=1.0 if mqtt.connected else 0.0,
        )
        yield GaugeMetricFamily(
            "edge_mqtt_outbox_reports",
            "Interval reports waiting for the broker's acknowledgement.",
            value=mqtt.outbox,
        )
        yield CounterMetricFamily(
            "edge_mqtt_dropped_reports",
            "Interval reports dropped because the outbox was full (mqtt.outbox_max).",
            value=mqtt.dropped,
        )
