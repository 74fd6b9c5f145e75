"""`edge hq`: the head office's ingest service, start to stop.

Start: the database (connected, migrated, partitions made ahead, old months dropped),
the metrics endpoint, the fleet dashboard if configured, then the broker; READY=1 to
systemd. Stop (SIGTERM, SIGINT): what is in hand is written and acknowledged first.
"""

from __future__ import annotations

import logging
import signal
import threading

from edge.errors import EX_SOFTWARE
from edge.hq.config import HqConfig
from edge.hq.ingest import Ingest, Stopping
from edge.hq.metrics import HqMetrics
from edge.outputs.access import is_loopback, load_secret
from edge.outputs.notify import Notifier

log = logging.getLogger(__name__)


def run(config: HqConfig) -> int:
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    notifier = Notifier()
    metrics = HqMetrics()
    ingest = Ingest(config, metrics)
    metrics.watch(ingest)
    dashboard = None
    try:
        if config.metrics.port:
            metrics.serve(
                config.metrics.listen, config.metrics.port, config.metrics.max_connections
            )
        try:
            ingest.start(ready=stop.is_set)
        except Stopping:
            log.info("hq: stopped before the database could be reached")
            return 0
        dashboard = start_dashboard(config)
        notifier.ready(f"ingesting from {ingest.where} as {config.client_id}")
        log.info(
            "hq: ingesting %s/+/... from %s (share group %s) as %s",
            config.broker.topic_prefix,
            ingest.where,
            config.broker.share_group,
            config.client_id,
        )
        while not stop.wait(1.0):
            if ingest.fatal is not None:
                break
            notifier.status(
                f"mqtt {'up' if ingest.mqtt_connected else 'down'}, database "
                f"{'up' if ingest.db_connected else 'down'}, {ingest.pending} pending"
            )
        notifier.stopping()
        ingest.stop()
        return EX_SOFTWARE if ingest.fatal is not None else 0
    finally:
        if dashboard is not None:
            dashboard.close()
        metrics.stop()
        notifier.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def start_dashboard(config: HqConfig):
    """The fleet dashboard (edge/hq/dashboard.py), when configured."""
    cfg = config.dashboard
    if not cfg.enabled:
        return None
    token = load_secret(cfg.token_env, cfg.token_env)
    if token is None and not is_loopback(cfg.listen):
        log.error(
            "hq: dashboard.listen %s is off the loopback interface and %s is not set: "
            "the fleet dashboard is not started",
            cfg.listen,
            cfg.token_env,
        )
        return None
    from edge.hq.dashboard import FleetDashboard  # SQLAlchemy and the page: only when used

    dashboard = FleetDashboard(config, token=token)
    dashboard.start()
    return dashboard
