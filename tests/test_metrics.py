"""The Prometheus endpoint (edge/outputs/metrics.py): scraped over real HTTP while the service
runs on the shared clips and publishes to a real Mosquitto, parsed with
prometheus_client's own parser."""

import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_mqtt import start, stop, store_id

from broker import free_port
from conftest import ROOT, need, run_edge


def scrape(port) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def wait_for_port(port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_scrape_during_a_run(broker, tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    port = free_port()
    config = tmp_path / "config.yaml"
    # "walk" plays the clip once (its visits are counted when it ends); "door" loops it
    # and keeps the service running.
    config.write_text(f"""
models: {{dir: {ROOT / "models"}}}
cameras:
  - {{id: walk, source: "{clip}"}}
  - {{id: door, source: "{clip}", loop: true}}
mqtt: {{enabled: true, host: 127.0.0.1, port: {broker.port}, store_id: {store_id(tmp_path)}}}
metrics: {{port: {port}}}
player: {{port: 0}}
state_dir: {tmp_path / "state"}
""")
    proc = start(config)
    try:
        wait_for_port(port)
        time.sleep(2)
        first = scrape(port)
        time.sleep(5)  # the walk clip (3.3 s) has ended, the door keeps running
        second = scrape(port)
        # edge check run beside the service: the port is taken, by the service itself
        checked = run_edge("check", "--config", str(config))
        events, err = stop(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err

    for counter in ("edge_camera_captured_frames_total", "edge_camera_processed_frames_total"):
        assert value(second, counter, camera="door") > value(first, counter, camera="door") > 0
        assert value(second, counter, camera="walk") > 0
    assert value(second, "edge_camera_skipped_frames_total", camera="door") >= 0
    assert value(second, "edge_camera_passed_over_frames_total", camera="door") >= 0
    assert value(second, "edge_camera_online", camera="door") == 1
    assert value(second, "edge_camera_online", camera="walk") == 0  # the clip has ended
    assert value(second, "edge_camera_reconnects_total", camera="door") == 0

    for name, labels in (
        ("edge_detector_seconds", {"camera": "door"}),
        ("edge_latency_seconds", {"camera": "door"}),
        ("edge_classifier_seconds", {}),
        ("edge_classifier_batch_size", {}),
    ):
        count = value(second, f"{name}_count", **labels)
        assert count > 0 and value(second, f"{name}_sum", **labels) > 0, name
        buckets = {
            dict(k)["le"]: v
            for k, v in second[f"{name}_bucket"].items()
            if all(dict(k).get(label) == v2 for label, v2 in labels.items())
        }
        assert buckets["+Inf"] == count
        ordered = sorted(buckets.values())
        assert list(buckets.values()) == ordered  # cumulative
    assert value(second, "edge_detector_seconds_count", camera="door") > value(
        first, "edge_detector_seconds_count", camera="door"
    )
    assert {"0.001", "0.2"} <= {dict(k)["le"] for k in second["edge_latency_seconds_bucket"]}

    # The walk clip's three visitors, counted when it ended, as every interval event says:
    # everyone (docs/metrics.md), gender unknown (a loaded machine samples fewer frames)
    # and unclassified included.
    produced = {}
    unclassified = 0
    for e in events:
        if e["type"] == "interval" and e["camera"] == "walk":
            for c, by_g in e["unique_visitors"].items():
                for g, n in by_g.items():
                    produced[c, g] = produced.get((c, g), 0) + n
            for c, n in e["gender_unknown"].items():
                produced[c, "unknown"] = produced.get((c, "unknown"), 0) + n
            unclassified += e["unclassified"]
    for (age_class, gender), n in produced.items():
        assert (
            value(second, "edge_visitors_total", camera="walk", age_class=age_class, gender=gender)
            == n
        )
        assert (
            value(first, "edge_visitors_total", camera="walk", age_class=age_class, gender=gender)
            <= n
        )
    assert sum(produced.values()) + unclassified == 3
    assert value(second, "edge_unclassified_visitors_total", camera="walk") == unclassified

    assert value(second, "edge_mqtt_connected") == 1
    assert value(second, "edge_mqtt_outbox_reports") >= 0
    assert value(second, "edge_mqtt_dropped_reports_total") == 0
    assert value(second, "process_cpu_seconds_total") > value(first, "process_cpu_seconds_total")
    assert value(second, "process_resident_memory_bytes") > 0
    assert "python_info" in second and "python_gc_collections_total" in second
    assert value(second, "edge_build_info", version="0.1.0") == 1
    assert f"metrics: http://127.0.0.1:{port}/metrics" in err
    assert (
        f"OK    metrics: http://127.0.0.1:{port}/metrics is served by a running edge "
        f"service" in checked.stdout
    )


def test_own_registry_per_service_and_the_plays_hook(tmp_path):
    from prometheus_client import generate_latest

    from edge import config as config_mod
    from edge.outputs.metrics import Metrics

    config = tmp_path / "config.yaml"
    config.write_text("cameras:\n  - {id: door, source: /dev/video0}\n")
    cfg = config_mod.load(config)
    one, two = Metrics(cfg), Metrics(cfg)  # the default registry would refuse the second
    from edge.events import CameraEvent, IntervalEvent, PlayEvent
    from edge.records import empty_counts

    for women, men in ((2, 1), (0, 2)):  # two plays events, as edge/pipeline/plays.py emits them
        viewers = empty_counts()
        viewers["adult"].update(female=women, male=men)
        one.emit(
            PlayEvent(
                f"window/{women}",
                "window",
                "door",
                "spring-collection",
                "Spring",
                "targeting",
                "s",
                "e",
                10.0,
                viewers,
                empty_counts(),
                0,
                0.0,
            )
        )
    unsure = {"child": 0, "adult": 1, "old": 0}
    one.emit(
        IntervalEvent(
            "door",
            "s",
            "e",
            empty_counts(),
            unsure,
            watchers=0,
            unclassified=0,
            dwell_s=0.0,
            attention_s=0.0,
        )
    )
    for online in (True, False, True):
        one.emit(CameraEvent("door", "", online, None, 0))
    samples = {}
    for family in text_string_to_metric_families(generate_latest(one.registry).decode()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    play = (("ad", "spring-collection"), ("display", "window"))
    assert samples["edge_plays_total", play] == 2
    assert samples["edge_play_viewers_total", play] == 5
    # docs/metrics.md's names: impressions as many as viewers; reach not known here
    assert samples["edge_impressions_total", play] == 5
    assert samples["edge_play_watchers_total", play] == 0
    assert samples["edge_reach_total", play] == 0
    assert samples["edge_camera_reconnects_total", (("camera", "door"),)] == 1
    unknown = (("age_class", "adult"), ("camera", "door"), ("gender", "unknown"))
    assert samples["edge_visitors_total", unknown] == 1
    assert b"edge_plays_total{" not in generate_latest(two.registry)


@pytest.mark.slow
def test_check_says_when_the_port_is_taken(tmp_path, group_photo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(
            f"models: {{dir: {ROOT / 'models'}}}\n"
            f'cameras:\n  - {{id: door, source: "{group_photo}"}}\n'
            f"metrics: {{port: {port}}}\n"
        )
        result = run_edge("check", "--config", str(config))
    line = next(out for out in result.stdout.splitlines() if "metrics:" in out)
    assert line.startswith("FAIL  metrics: port 127.0.0.1:") and "in use by another program" in line
    assert "metrics.port" in line and result.returncode == 1
    config.write_text(config.read_text().replace(f"port: {port}", f"port: {free_port()}"))
    result = run_edge("check", "--config", str(config))
    line = next(out for out in result.stdout.splitlines() if "metrics:" in out)
    assert line.startswith("OK    metrics: port 127.0.0.1:") and "is free" in line
