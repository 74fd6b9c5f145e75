"""The one way out of the main loop: event sinks.

Every output is a `Sink`: the service starts them in order when it runs, hands each
event to each (`emit`, on the loop's thread), and closes them in reverse order when it
stops. `assemble` builds the list from the configuration, so `edge run` wires no output
by hand; a new output is a class with these three methods and a line in `assemble`
(docs/architecture.md, "How to add a sink").

The console sinks are here too: audience changes as log lines (the default), or every
published event as a JSON line (`edge run --jsonl`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

from edge.events import (
    AudienceEvent,
    DecisionEvent,
    Event,
    IntervalEvent,
    PlayEvent,
    SummaryEvent,
)

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger(__name__)


class Sink(Protocol):
    """An output of the main loop. `start` before the first event (open a port, a
    connection, a file; raise an EdgeError when it cannot), `emit` for every event,
    picking those it wants by class (it must not block the loop), `close` after the last."""

    def start(self) -> object: ...

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonLines:
    """Events as JSON lines on a stream (stdout for `edge run --jsonl`); the loop's own
    signals (events.TickEvent, HealthEvent) are not among them."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream or sys.stdout

    def start(self) -> None:
        pass

    def emit(self, event: Event) -> None:
        if event.internal:
            return
        self._stream.write(json.dumps(event.to_json()) + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


class LogSink:
    """Audience changes as one log line each (the default without --jsonl)."""

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def emit(self, event: Event) -> None:
        match event:
            case AudienceEvent(camera=camera, present=present):
                people = ", ".join(f"{p['age_class']} {p['gender']}" for p in present)
                log_event.info(
                    "camera %s: %d present%s",
                    camera,
                    len(present),
                    f" ({people})" if people else "",
                )
            case DecisionEvent(reason=reason):
                segment = reason.segment
                why = reason.rule + (
                    f" {segment['age_class']} {segment['gender']}" if segment else ""
                )
                log_event.info(
                    "display %s: showing '%s' (%s; %d people, %d watching)",
                    event.display,
                    event.ad,
                    why,
                    reason.audience.get("people", 0),
                    reason.audience.get("watchers", 0),
                )
            case PlayEvent():
                log_event.info(
                    "display %s: '%s' played %.1f s to %s, %d watched",
                    event.display,
                    event.ad,
                    event.duration_s,
                    visitor_line(event.viewers),
                    sum(n for by_g in event.viewers.values() for n in by_g.values()),
                )
            case IntervalEvent() | SummaryEvent():  # ErrorEvent: the camera logged it already
                log_event.info(
                    "camera %s %s: visitors %s, watchers %d",
                    event.camera,
                    event.type,
                    visitor_line(event.unique_visitors, event.gender_unknown),
                    event.watchers,
                )


# The event lines keep the logger name they always had (operators filter on it).
log_event = logging.getLogger("edge.service")


def visitor_line(
    counts: dict[str, dict[str, int]], gender_unknown: dict[str, int] | None = None
) -> str:
    parts = [f"{n} {c} {g}" for c, by_g in counts.items() for g, n in by_g.items() if n]
    parts += [f"{n} {c} (gender unsure)" for c, n in (gender_unknown or {}).items() if n]
    return ", ".join(parts) or "none"


class UnlessUnavailable:
    """A sink the service runs without when it cannot start (the audience store on a
    disk it cannot open: the displays and MQTT carry on without a history). One log
    line says so; its emit and close are then no-ops."""

    def __init__(self, sink: Sink, errors: tuple[type[Exception], ...]):
        self.sink = sink
        self._errors = errors
        self._running = False

    def start(self) -> None:
        try:
            self.sink.start()
        except self._errors as exc:
            log.error("%s; running without it", exc)
            return
        self._running = True

    def emit(self, event: Event) -> None:
        if self._running:
            self.sink.emit(event)

    def close(self) -> None:
        if self._running:
            self._running = False
            self.sink.close()


def assemble(
    cfg: Config,
    *,
    jsonl: bool = False,
    offline: bool = False,
    keep_history: bool = False,
    on_override: Callable[[str, dict], None] | None = None,
) -> list[Sink]:
    """The sinks of `edge run` for this configuration, in the order each event reaches
    them (and they start; they close in reverse). `offline`: a file analysed as fast as
    it reads, which publishes nothing and serves nothing; `keep_history`: it goes into
    the audience store all the same (`--store`). `on_override(display, content)`: what
    the display player calls when the broker shows an allowed override."""
    from edge.outputs.notify import Notifier

    console: Sink = JsonLines() if jsonl else LogSink()
    publisher = player = store = None
    if cfg.store.enabled and (not offline or keep_history):
        from edge.outputs.store import FILENAME, AudienceStore, StoreError

        store = AudienceStore(cfg.state_path() / FILENAME, cfg.store.retention_days)
    if cfg.mqtt.enabled and not offline:
        from edge.outputs.publish import MqttPublisher

        publisher = MqttPublisher(cfg)
        if cfg.player.port and cfg.displays:
            player = display_player(cfg)
            player.bridge.on_override = on_override
    # The player first: it learns each decision before the publisher sends it.
    sinks: list[Sink] = [player] if player is not None else []
    sinks.append(console)
    if cfg.metrics.port and not offline:
        from edge.outputs.metrics import Metrics

        sinks.append(Metrics(cfg, publisher=publisher, store=store, player=player))
    if store is not None:
        sinks.append(UnlessUnavailable(store, (StoreError,)))
    if publisher is not None:
        sinks.append(publisher)
    if player is not None and cfg.dashboard.enabled:
        from edge.outputs.dashboard import Dashboard

        dashboard = Dashboard(cfg, mqtt_status=publisher.status if publisher else None)
        if store is not None:
            store.on_commit(dashboard.history_changed)
        player.dashboard = dashboard
        sinks.append(dashboard)
    sinks.append(Notifier())  # systemd's notify socket; a no-op outside systemd
    return sinks


def display_player(cfg: Config, port: int | None = None):  # -> DisplayServer
    """The display player's server for this configuration, not yet started."""
    from edge.catalog import load_catalog
    from edge.outputs.player_server import DisplayServer

    return DisplayServer(cfg, load_catalog(cfg.resolve(cfg.selector.catalog)), port=port)
