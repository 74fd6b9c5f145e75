"""Prometheus metrics of `edge hq` (docs/hq.md), served like the box's own
(edge/outputs/metrics.py's handler on edge/outputs/web.py's server)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from edge.errors import EdgeError
from edge.outputs.metrics import close_in_background, new_registry, serve_metrics
from edge.outputs.web import HttpServer, url

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)


class HqMetrics:
    def __init__(self):
        self.registry = registry = new_registry("edge_hq_build", "Version of edge hq.")
        self.messages = Counter(
            "edge_hq_messages",
            "Messages ingested: committed to the database and then acknowledged, by kind "
            "(counts, plays, status, availability, stats, bridge); rate() is messages/s.",
            ["kind"],
            registry=registry,
        )
        self.rejected = Counter(
            "edge_hq_rejected_messages",
            "Messages written to the rejected table instead, by reason; acknowledged too.",
            ["reason"],
            registry=registry,
        )
        self.database_errors = Counter(
            "edge_hq_database_errors",
            "Failed database connections and transactions (the batch is kept and retried; "
            "its messages stay unacknowledged at the broker meanwhile).",
            registry=registry,
        )
        self.batch_size = Histogram(
            "edge_hq_batch_size",
            "Messages per committed transaction.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "edge_hq_lag_seconds",
            "Commit time minus the time in the message (the box's publishing time): how "
            "far the ingest is behind the stores, queues at the bridges and broker included.",
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self._server: HttpServer | None = None

    def watch(self, ingest) -> None:
        registry = self.registry

        class State:
            def collect(self):
                yield GaugeMetricFamily(
                    "edge_hq_mqtt_connected",
                    "1 while connected to the broker.",
                    value=1.0 if ingest.mqtt_connected else 0.0,
                )
                yield GaugeMetricFamily(
                    "edge_hq_database_connected",
                    "1 while the database connection works.",
                    value=1.0 if ingest.db_connected else 0.0,
                )
                yield GaugeMetricFamily(
                    "edge_hq_pending_messages",
                    "Messages received and not yet committed (at most broker.receive_maximum).",
                    value=ingest.pending,
                )
                yield GaugeMetricFamily(
                    "edge_hq_lag_latest_seconds",
                    "The lag (edge_hq_lag_seconds) of the latest committed message.",
                    value=ingest.last_lag_s,
                )

        registry.register(State())

    def serve(self, listen: str, port: int, max_connections: int, host_names=()) -> int | None:
        """The endpoint's port; None with one log line when the port cannot be had."""
        try:
            server = serve_metrics(
                self, listen, port, max_connections, host_names, "hq-metrics-http"
            )
        except EdgeError as exc:
            log.error("%s; edge hq runs without /metrics", exc)
            return None
        self._server = server
        log.info("metrics: %s", url(listen, server.server_address[1], "/metrics"))
        return server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            close_in_background(server)
