"""The one way out of the main loop (edge/outputs/sinks.py): a sink added through the
Sink protocol alone is started, fed and closed by the service, in order, with no wiring
of its own; `assemble` builds `edge run`'s sinks from the config."""

import dataclasses

import pytest

from edge import config as config_mod
from edge.errors import EdgeError
from edge.events import HealthEvent, StatsEvent, SummaryEvent, TickEvent
from edge.outputs.sinks import JsonLines, LogSink, UnlessUnavailable, assemble

from conftest import ROOT


class Counting:
    """A new output, written against the protocol only: start, emit, close."""

    def __init__(self, name: str, journal: list[str]):
        self.name, self.journal = name, journal
        self.events: list = []

    def start(self) -> None:
        self.journal.append(f"start {self.name}")

    def emit(self, event) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.journal.append(f"close {self.name}")


class WontStart(Counting):
    def start(self) -> None:
        raise EdgeError(f"{self.name}: port taken")


def photo_config(tmp_path, group_photo):
    path = tmp_path / "config.yaml"
    path.write_text(
        f"models:\n  dir: {ROOT / 'models'}\ncameras:\n  - {{id: door, source: '{group_photo}'}}\n"
    )
    return config_mod.load(path)


@pytest.mark.slow
def test_a_sink_added_through_the_protocol_alone(tmp_path, group_photo):
    from edge.service import Service

    journal: list[str] = []
    first, second = Counting("first", journal), Counting("second", journal)
    service = Service(photo_config(tmp_path, group_photo), [first, second], offline=True)
    assert service.run(duration_s=30) == 0
    assert journal == ["start first", "start second", "close second", "close first"]
    # every event reached both, in the same order, ending with the photo's summary
    assert [type(e) for e in first.events] == [type(e) for e in second.events]
    summary = [e for e in first.events if isinstance(e, SummaryEvent)]
    assert len(summary) == 1 and summary[0].frames == 1
    # the loop's measurements and health come the same way, not through calls of their own
    ticks = [e for e in first.events if isinstance(e, TickEvent)]
    assert ticks and ticks[-1].cameras["door"].processed == 1 and "door" in ticks[0].detect_s
    assert all((t.classify_s is None) == (t.classified == 0) for t in ticks)
    health = [e.state for e in first.events if isinstance(e, HealthEvent)]
    assert health[0] == "ready" and health[-1] == "stopping"


@pytest.mark.slow
def test_a_sink_that_cannot_start_closes_those_started(tmp_path, group_photo):
    from edge.service import Service

    journal: list[str] = []
    sinks = [Counting("a", journal), Counting("b", journal), WontStart("c", journal)]
    service = Service(photo_config(tmp_path, group_photo), sinks, offline=True)
    with pytest.raises(EdgeError, match="c: port taken"):
        service.run(duration_s=30)
    assert journal == ["start a", "start b", "close b", "close a"]
    assert sinks[0].events == []  # nothing was emitted: the loop never ran


def test_assemble_builds_the_configured_outputs(tmp_path):
    from edge.outputs.dashboard import Dashboard
    from edge.outputs.metrics import Metrics
    from edge.outputs.notify import Notifier
    from edge.outputs.player_server import DisplayServer
    from edge.outputs.publish import MqttPublisher

    path = tmp_path / "config.yaml"
    path.write_text(
        "cameras:\n  - {id: door, source: /dev/video0}\n"
        "displays:\n  - {id: window, camera: door}\n"
        f"selector: {{catalog: {ROOT / 'ads' / 'catalog.yaml'}}}\n"
        "mqtt: {enabled: true, host: 127.0.0.1, port: 1, store_id: s1}\n"
        "metrics: {port: 9999}\nplayer: {port: 8999}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    cfg = config_mod.load(path)
    kinds = [type(s) for s in assemble(cfg)]
    # the player first (it learns a decision before the publisher sends it), the
    # notify socket last; the store is run without when its disk cannot be opened
    assert kinds == [
        DisplayServer,
        LogSink,
        Metrics,
        UnlessUnavailable,
        MqttPublisher,
        Dashboard,
        Notifier,
    ]
    assert [type(s) for s in assemble(cfg, jsonl=True, offline=True)] == [JsonLines, Notifier]
    quiet = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, enabled=False))
    assert UnlessUnavailable not in [type(s) for s in assemble(quiet, offline=True)]


def test_json_lines_leave_out_the_loops_own_signals():
    import io

    stream = io.StringIO()
    sink = JsonLines(stream)
    sink.emit(HealthEvent("alive", ""))
    sink.emit(StatsEvent("t", {}, None, None, None, None))
    assert [line[:16] for line in stream.getvalue().splitlines()] == ['{"type": "stats"']
