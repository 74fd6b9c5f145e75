"""The MQTT contract against a real Mosquitto: availability and last will, retained
audience, interval counts (none lost across broker outages or restarts), decisions
and their reasons, stats, and clear connection errors."""

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import time

import pytest

from edge.events import IntervalEvent

from broker import Subscriber
from conftest import ROOT, edge_process, need, run_service, total


def store_id(tmp_path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", tmp_path.name)[-60:]


def write_config(
    tmp_path,
    port,
    *,
    source,
    extra="",
    loop=False,
    interval_s=60,
    catalog=None,
    displays=True,
    keepalive=5,
    audience="",
):
    """A config for one test, and the root of its topics (a store of its own, so
    retained messages of other tests on the session broker don't interfere).
    `audience`: more audience keys, e.g. ", gender_margin: 0.4"."""
    store = store_id(tmp_path)
    catalog = catalog or ROOT / "ads" / "catalog.yaml"
    text = (
        f"""
models: {{dir: {ROOT / "models"}}}
cameras:
  - {{id: door, name: Door, source: "{source}", loop: {str(loop).lower()}}}
audience: {{interval_s: {interval_s}{audience}}}
stats: {{interval_s: 1}}
mqtt:
  enabled: true
  host: 127.0.0.1
  port: {port}
  keepalive_s: {keepalive}
  topic_prefix: edge
  store_id: {store}
selector: {{catalog: "{catalog}"}}
player: {{port: 0}}
metrics: {{port: 0}}
state_dir: {tmp_path / "state"}
"""
        + ("displays:\n  - {id: window, camera: door}\n" if displays else "")
        + extra
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path, f"edge/{store}"


def start(config, *args, env=None):
    return edge_process(
        "--config", str(config), "run", "--jsonl", *args, env={**os.environ, **(env or {})}
    )


def stop(proc, timeout=15):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return [json.loads(line) for line in out.splitlines()], err


def run_for(config, seconds, env=None):
    """Run the service for `seconds` once it is up, stop it with SIGTERM: (events, stderr)."""
    out, err, status = run_service(
        "--config", str(config), "run", "--jsonl", seconds=seconds, env=env
    )
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()], err


def run_to_end(config) -> tuple[str, str]:
    """Run the service until its file ends and it stops by itself: (stdout, stderr)."""
    proc = start(config)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    return out, err


def test_availability_retained_audience_stats_and_last_will(broker, tmp_path, group_photo):
    config, root = write_config(tmp_path, broker.port, source=group_photo)
    sub = Subscriber(broker.port, f"{root}/#")
    proc = start(config)
    try:
        sub.wait_for(lambda t, p, r: t == f"{root}/availability" and p == b"online")
        _, payload, _ = sub.wait_for(
            lambda t, p, r: t == f"{root}/cameras/door/audience" and json.loads(p)["present"] == 6
        )
        audience = json.loads(payload)
        assert audience["schema"] == 1 and "T" in audience["time"] and audience["time"][-6] in "+-"
        assert total(audience["counts"]) + audience["unclassified"] == 6
        assert "track" not in payload.decode()  # counts only, no per-person ids
        _, payload, _ = sub.wait_for(lambda t, p, r: t == f"{root}/stats")
        stats = json.loads(payload)
        assert stats["cameras"]["door"]["processed_fps"] > 0 and stats["mqtt"]["connected"]
        status = sub.json("/cameras/door/status")[-1]
        assert status["online"] is True and status["camera"] == "door"
        # A dashboard connecting later gets the current state at once (retained).
        late = Subscriber(broker.port, f"{root}/cameras/door/audience")
        _, payload, retained = late.wait_for(lambda t, p, r: True, timeout=5)
        assert retained and json.loads(payload)["present"] == 6
        late.close()
        # Killed hard: the broker publishes the last will.
        proc.kill()
        proc.wait()
        sub.wait_for(lambda t, p, r: t == f"{root}/availability" and p == b"offline", timeout=15)
    finally:
        proc.kill()
        sub.close()


def test_clean_stop_says_offline_and_delivers_the_last_interval(broker, tmp_path, group_photo):
    config, root = write_config(tmp_path, broker.port, source=group_photo)
    sub = Subscriber(broker.port, f"{root}/#")
    proc = start(config)
    try:
        sub.wait_for(lambda t, p, r: t.endswith("/audience") and json.loads(p)["present"] == 6)
        time.sleep(1.0)  # past audience.min_visit_s
        events, err = stop(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    produced = [e for e in events if e["type"] == "interval"]
    _, payload, _ = sub.wait_for(lambda t, p, r: t.endswith("/cameras/door/counts"), timeout=5)
    counts = json.loads(payload)

    # all six delivered, with a gender or without one (a gender-unsure face is a visitor)
    def everyone(c):
        return total(c["unique_visitors"]) + sum(c["gender_unknown"].values())

    assert everyone(counts) == 6 == everyone(produced[-1])
    assert counts["id"] == f"door/{counts['start']}"
    sub.wait_for(lambda t, p, r: t == f"{root}/availability" and p == b"offline", timeout=5)
    assert not (tmp_path / "state" / f"mqtt-outbox-{root[5:]}.jsonl").exists()
    sub.close()


def received_intervals(sub):
    return [
        {k: v for k, v in m.items() if k not in ("schema", "time", "id")}
        for m in sub.reports("/cameras/door/counts")
    ]


def produced_intervals(events):
    return [{k: v for k, v in e.items() if k != "type"} for e in events if e["type"] == "interval"]


def wait_received(read, sub, count: int, timeout_s: float) -> list:
    """read(sub) once it holds `count` reports, or when timeout_s have passed (the
    caller's comparison then shows what is missing)."""
    deadline = time.monotonic() + timeout_s
    while len(read(sub)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return read(sub)


@contextlib.contextmanager
def reporting(broker, config, topic: str, client_id: str):
    """The service started on `config`, and a subscriber to `topic` that has had its
    first report: (subscriber, process), both ended on the way out. A persistent
    session: the broker keeps our messages while this test client is away too (the
    broker restarts with its persistence file)."""
    sub = Subscriber(broker.port, topic, client_id=client_id, persistent=True)
    proc = start(config)
    try:
        sub.wait_for(lambda t, p, r: True, timeout=30)
        yield sub, proc
    finally:
        proc.kill()
        sub.close()


def outage(broker, proc) -> list:
    """The broker away for 4 s, back for 3 s, then the service stopped with SIGTERM:
    its events, once it has exited cleanly and said it lost the connection."""
    broker.stop()
    time.sleep(4)
    broker.start()
    time.sleep(3)
    events, err = stop(proc)
    assert proc.returncode == 0, err
    assert "connection lost" in err
    return events


def test_broker_outage_loses_no_interval_and_keeps_their_order(make_broker, tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    broker = make_broker()
    config, root = write_config(
        tmp_path, broker.port, source=clip, loop=True, interval_s=1, displays=False
    )
    topic = f"{root}/cameras/door/counts"
    with reporting(broker, config, topic, "outage-test") as (sub, proc):
        produced = produced_intervals(outage(broker, proc))  # about four while it was away
        assert len(produced) >= 7
        # every one, in order (repeats dropped by id)
        assert wait_received(received_intervals, sub, len(produced), 15) == produced


def test_reports_waiting_when_stopped_are_saved_and_sent_after_restart(make_broker, tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    broker = make_broker()
    port = broker.port
    broker.stop()  # the broker is away for the whole first run
    config, root = write_config(
        tmp_path, port, source=clip, loop=True, interval_s=1, displays=False
    )
    first, err = run_for(config, 8)
    assert f"127.0.0.1:{port}: Connection refused" in err  # said once, not per retry
    assert err.count("Connection refused") <= 2
    outbox = tmp_path / "state" / f"mqtt-outbox-{root[5:]}.jsonl"
    assert "kept in" in err and outbox.exists()
    saved = produced_intervals(first)
    assert len(outbox.read_text().splitlines()) == len(saved) >= 2

    broker.start()
    sub = Subscriber(port, f"{root}/cameras/door/counts")
    second, err = run_for(config, 3)
    produced = saved + produced_intervals(second)
    assert wait_received(received_intervals, sub, len(produced), 10) == produced
    assert not outbox.exists()
    sub.close()


def test_wrong_password_is_reported_clearly_and_the_pipeline_keeps_running(
    make_broker, tmp_path, group_photo
):
    broker = make_broker(users={"edge": "right"})
    config, root = write_config(tmp_path, broker.port, source=group_photo, displays=False)
    events, err = run_for(
        config, 6, env={"EDGE_MQTT_USERNAME": "edge", "EDGE_MQTT_PASSWORD": "wrong"}
    )
    assert "broker refused the connection" in err and "EDGE_MQTT_PASSWORD" in err
    assert err.count("broker refused") == 1  # once, not once per retry
    assert any(e["type"] == "audience" and len(e["present"]) == 6 for e in events)
    log = broker.log.read_text()
    attempts = max(log.count("not authorised"), log.count(f"Client edge-{root[5:]} disconnected"))
    assert attempts >= 2  # retried


def test_right_password_from_the_environment_connects(make_broker, tmp_path, group_photo):
    broker = make_broker(users={"edge": "s3cret"})
    config, root = write_config(tmp_path, broker.port, source=group_photo, displays=False)
    _, err = run_for(config, 4, env={"EDGE_MQTT_USERNAME": "edge", "EDGE_MQTT_PASSWORD": "s3cret"})
    assert f"connected as 'edge-{root[5:]}'" in err and "broker refused" not in err
    assert "s3cret" not in err  # never logged


def test_walking_clip_end_to_end_counts_and_the_ad_for_adult_women(broker, tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    ads = tmp_path / "ads"
    (ads / "creatives").mkdir(parents=True)
    for name in ("welcome", "family", "women", "men"):
        (ads / "creatives" / f"{name}.html").write_text(f"<h1>{name}</h1>")
    (ads / "catalog.yaml").write_text("""
default: welcome
family_safe: family
ads:
  - {id: welcome, title: Welcome, creative: creatives/welcome.html, duration_s: 1}
  - {id: family, title: Family, creative: creatives/family.html, duration_s: 5}
  - {id: women-ad, title: For her, creative: creatives/women.html, duration_s: 5,
     targeting: {age_classes: [adult], genders: [female]}}
  - {id: men-ad, title: For him, creative: creatives/men.html, duration_s: 5,
     targeting: {age_classes: [adult], genders: [male]}}
""")
    config, root = write_config(tmp_path, broker.port, source=clip, catalog=ads / "catalog.yaml")
    sub = Subscriber(broker.port, f"{root}/#")
    run_to_end(config)
    sub.wait_for(lambda t, p, r: t.endswith("/counts"), timeout=5)
    counts = sub.json("/cameras/door/counts")
    visitors = {
        (c, g): n
        for m in counts
        for c, by_g in m["unique_visitors"].items()
        for g, n in by_g.items()
        if n
    }
    assert visitors == {("adult", "female"): 2, ("adult", "male"): 1}
    decisions = sub.json("/displays/window/content")
    assert decisions[0]["ad"] == "welcome" and decisions[0]["reason"]["rule"] == "nobody"
    women = [d for d in decisions if d["ad"] == "women-ad"]
    assert women, [d["ad"] for d in decisions]
    reason = women[0]["reason"]
    assert reason["rule"] == "targeting"
    assert reason["segment"] == {"age_class": "adult", "gender": "female"}
    assert reason["audience"]["people"] >= 1
    assert women[0]["creative"] == "creatives/women.html" and women[0]["schema"] == 1
    retained = Subscriber(broker.port, f"{root}/displays/window/content")
    _, payload, was_retained = retained.wait_for(lambda t, p, r: True, timeout=5)
    assert was_retained and json.loads(payload)["ad"] == decisions[-1]["ad"]
    retained.close()
    sub.close()


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("displays:\n  - {id: lobby, camera: till}\n", "'displays[0].camera' is 'till'"),
        ("mqtt: {store_id: 'a/b'}\n", "'mqtt.store_id' is 'a/b'"),
    ],
)
def test_mqtt_and_display_config_errors(tmp_path, extra, needle):
    from edge.errors import EX_CONFIG

    from conftest import run_edge

    config = tmp_path / "config.yaml"
    config.write_text("cameras:\n  - {id: door, source: /dev/video0}\n" + extra)
    result = run_edge("--config", str(config), "run")
    assert result.returncode == EX_CONFIG and needle in result.stderr


@pytest.mark.slow
def test_catalog_error_stops_start_up_with_the_ad_and_field(tmp_path, group_photo):
    import shutil

    from edge.errors import EX_CONFIG

    from conftest import run_edge

    shutil.copytree(ROOT / "ads", tmp_path / "ads")
    catalog = tmp_path / "ads" / "catalog.yaml"
    catalog.write_text(catalog.read_text().replace("creatives/men-adult.html", "creatives/men.mp4"))
    config, root = write_config(tmp_path, 1, source=group_photo, catalog=catalog)
    result = run_edge("--config", str(config), "run", "--duration", "1")
    assert result.returncode == EX_CONFIG
    assert "ad 'grooming-week': field 'creative'" in result.stderr and str(catalog) in result.stderr


def test_state_is_published_again_after_a_broker_restart_without_persistence(
    make_broker, tmp_path, group_photo
):
    broker = make_broker(persistence=False)  # forgets every retained message when stopped
    config, root = write_config(tmp_path, broker.port, source=group_photo)
    proc = start(config)
    try:
        sub = Subscriber(broker.port, f"{root}/#")
        sub.wait_for(lambda t, p, r: t.endswith("/audience") and json.loads(p)["present"] == 6)
        sub.wait_for(lambda t, p, r: t.endswith("/displays/window/content"))
        sub.close()
        broker.stop()
        broker.start()
        time.sleep(3)  # the service reconnects (backoff starts at 1 s)
        late = Subscriber(broker.port, f"{root}/#")
        retained = {}
        deadline = time.monotonic() + 10
        while len(retained) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            retained = {t[len(root) + 1 :]: p for t, p, r in late.seen if r}
        late.close()
        stop(proc)
    finally:
        proc.kill()
    assert retained["availability"] == b"online"
    assert json.loads(retained["cameras/door/audience"])["present"] == 6
    assert json.loads(retained["cameras/door/status"])["online"] is True
    assert json.loads(retained["displays/window/content"])["ad"] == "spring-collection"


def test_mqtt_v5(broker, tmp_path, group_photo):
    config, root = write_config(tmp_path, broker.port, source=group_photo)
    config.write_text(
        config.read_text().replace("  enabled: true\n", "  enabled: true\n  protocol: '5'\n")
    )
    sub = Subscriber(broker.port, f"{root}/#")
    proc = start(config)
    try:
        sub.wait_for(lambda t, p, r: t == f"{root}/availability" and p == b"online")
        sub.wait_for(lambda t, p, r: t.endswith("/audience") and json.loads(p)["present"] == 6)
        _, err = stop(proc)
    finally:
        proc.kill()
        sub.close()
    assert "connected as" in err
    sub.wait_for(lambda t, p, r: t == f"{root}/availability" and p == b"offline", timeout=5)


def make_certificates(folder):
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, with openssl."""

    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("client", [])):
        ssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            *extra,
        )
        ssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            f"{name}.crt",
        )
    return folder


def test_tls_with_a_ca_file_and_a_client_certificate(make_broker, tmp_path, group_photo):
    certs = make_certificates(tmp_path)
    broker = make_broker(
        extra=f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\nrequire_certificate true\n"
    )
    config, root = write_config(tmp_path, broker.port, source=group_photo, displays=False)
    tls = (
        f"  tls: {{enabled: true, ca_file: {certs / 'ca.crt'}, "
        f"cert_file: {certs / 'client.crt'}, key_file: {certs / 'client.key'}}}\n"
    )
    config.write_text(config.read_text().replace("  enabled: true\n", "  enabled: true\n" + tls))
    _, err = run_for(config, 4)
    assert f"connected as 'edge-{root[5:]}'" in err, err
    assert f"as edge-{root[5:]}" in broker.log.read_text()  # the broker saw it over TLS


def test_tls_with_the_wrong_ca_is_reported(make_broker, tmp_path, group_photo):
    certs = make_certificates(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_certificates(tmp_path / "other")  # a CA that did not sign the broker
    broker = make_broker(
        extra=f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\n"
    )
    config, root = write_config(tmp_path, broker.port, source=group_photo, displays=False)
    config.write_text(
        config.read_text().replace(
            "  enabled: true\n",
            f"  enabled: true\n  tls: {{enabled: true, ca_file: {other / 'ca.crt'}}}\n",
        )
    )
    events, err = run_for(config, 4)
    assert "cannot connect" in err and "TLS" in err, err
    assert any(e["type"] == "audience" and len(e["present"]) == 6 for e in events)


def test_outbox_bound_drops_the_oldest_waiting_report(tmp_path):
    from edge.outputs.publish import Outbox, Report

    outbox = Outbox(tmp_path / "outbox.jsonl", limit=3)
    for i in range(5):
        outbox.add(Report("t", json.dumps({"n": i})))
    assert [json.loads(r.payload)["n"] for r in outbox.reports] == [2, 3, 4]
    assert outbox.dropped == 2
    outbox.save()
    again = Outbox(tmp_path / "outbox.jsonl", limit=3)
    assert again.load() == 3 and [r.payload for r in again.reports] == [
        r.payload for r in outbox.reports
    ]
    outbox.reports.clear()
    outbox.save()
    assert not (tmp_path / "outbox.jsonl").exists()


def test_unwritable_state_dir_during_an_outage_loses_nothing(make_broker, tmp_path):
    """Disk trouble while the broker is away (issue 12 item 6): the service keeps counting,
    says so once, keeps the reports in memory, and saves them once it can. The state
    folder's parent is a file, which stops root too (chmod would not)."""
    clip = need("media/face-demographics-walking-and-pause.gif")
    broker = make_broker()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state folder's parent should be\n")
    config, root = write_config(
        tmp_path, broker.port, source=clip, loop=True, interval_s=1, displays=False
    )
    config.write_text(
        config.read_text().replace(
            f"state_dir: {tmp_path / 'state'}", f"state_dir: {blocker / 'state'}"
        )
    )
    outbox = blocker / "state" / f"mqtt-outbox-{root[5:]}.jsonl"
    with reporting(broker, config, f"{root}/cameras/door/counts", "disk-test") as (sub, proc):
        broker.stop()
        time.sleep(7)  # several intervals, and more than one save retry, with no disk
        assert proc.poll() is None, proc.communicate()[1]  # still running
        blocker.unlink()
        blocker.mkdir()  # the disk is back: the next retry saves
        deadline = time.monotonic() + 10
        while not outbox.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.exists() and len(outbox.read_text().splitlines()) >= 5
        before = len(received_intervals(sub))
        broker.start()
        # The service reconnects with backoff (up to 16 s after this outage): wait until
        # the reports held through it arrive, then stop.
        wait_received(received_intervals, sub, before + 5, 40)
        time.sleep(2)
        events, err = stop(proc)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert err.count("cannot be saved (Not a directory)") == 1, err  # once, not per try
        assert "saved again" in err
        produced = produced_intervals(events)
        assert len(produced) >= 10
        # every one, in order
        assert wait_received(received_intervals, sub, len(produced), 15) == produced


@pytest.mark.slow
def test_outbox_save_is_never_done_on_pahos_thread(tmp_path, monkeypatch):
    """Disk I/O in a paho callback would stall (or, failing, kill) the network thread:
    the callbacks only ask the publisher's own thread to save."""
    import threading

    from edge import config as config_mod
    from edge.outputs.publish import MqttPublisher, Outbox

    from broker import free_port

    threads = []
    real_save = Outbox.save

    def save(self, *args):
        threads.append(threading.current_thread().name)
        return real_save(self, *args)

    monkeypatch.setattr(Outbox, "save", save)
    defaults = config_mod.Config()
    config = dataclasses.replace(
        defaults,
        state_dir=str(tmp_path / "state"),
        mqtt=dataclasses.replace(defaults.mqtt, host="127.0.0.1", port=free_port()),  # nobody there
    )
    publisher = MqttPublisher(config)
    publisher.start()
    try:
        publisher.emit(IntervalEvent("door", "t0", "t1", {}, {}, 0, 0, 0.0, 0.0))
        callback = threading.Thread(
            target=publisher._on_disconnect,
            name="paho-callback",
            args=(publisher.client, None, None, "test", None),
        )
        callback.start()
        callback.join()
        deadline = time.monotonic() + 5
        while len(threads) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        publisher.close(timeout=0.1)
    assert "paho-callback" not in threads and "mqtt-outbox" in threads, threads
    assert len((tmp_path / "state" / "mqtt-outbox-store1.jsonl").read_text().splitlines()) == 1


def in_process_config(tmp_path, port):
    from edge import config as config_mod

    path, root = write_config(tmp_path, port, source="/dev/null", displays=True)
    return config_mod.load(path), root


def test_a_raising_callback_never_ends_the_network_loop(broker, tmp_path, caplog):
    """Whatever a callback raises, paho's network thread goes on (mqttclient.GuardedClient)."""
    from edge.outputs import mqttclient

    config, root = in_process_config(tmp_path, broker.port)
    client = mqttclient.make_client(config, f"guard-{root[5:]}")
    errors = [
        RecursionError("deep"),
        TypeError("type"),
        KeyError("key"),
        MemoryError(),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
        RuntimeError("x"),
    ]
    got = []
    subscribed = []

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        raise errors[len(got) - 1]

    client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{root}/guard", qos=1)
    client.on_subscribe = lambda *args: subscribed.append(True)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + 5
        while not subscribed and time.monotonic() < deadline:
            time.sleep(0.02)
        for i in range(len(errors)):
            client.publish(f"{root}/guard", str(i), qos=1)
        deadline = time.monotonic() + 10
        while len(got) < len(errors) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [str(i).encode() for i in range(len(errors))]
        assert client.loop_alive and client.callback_errors == len(errors)
        # each failure once, naming the callback; then the loop goes on
        lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(lines) == len(errors) and all("on_message failed" in m for m in lines)
    finally:
        client.disconnect()
        client.loop_stop()
    assert not client.loop_alive


def test_publisher_reconnects_after_a_callback_raised(make_broker, tmp_path, monkeypatch):
    """An exception in the publisher's on_disconnect (a full disk while saving the
    outbox, say) must not leave it disconnected for good."""
    from edge.outputs import publish

    broker = make_broker()
    config, root = in_process_config(tmp_path, broker.port)
    original = publish.MqttPublisher._on_disconnect

    def on_disconnect(self, *args):
        original(self, *args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish.MqttPublisher, "_on_disconnect", on_disconnect)
    publisher = publish.MqttPublisher(config)
    publisher.start()
    try:
        deadline = time.monotonic() + 10
        while not publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.connected
        broker.stop()
        while publisher.connected and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        broker.start()
        sub = Subscriber(broker.port, f"{root}/cameras/door/counts")
        try:
            publisher.emit(IntervalEvent("door", "s", "e", {}, {}, 0, 0, 0.0, 0.0))
            sub.wait_for(lambda t, p, r: True, timeout=15)
            assert publisher.connected and publisher.client.loop_alive
        finally:
            sub.close()
    finally:
        publisher.close()


def test_every_mqtt_client_the_project_makes_is_guarded(broker, tmp_path, monkeypatch):
    """The publisher, the display player and `edge check` all get their client from
    mqttclient.make_client, so all their callbacks are guarded."""
    import paho.mqtt.client as mqtt

    from edge.catalog import load_catalog
    from edge.commands import check
    from edge.outputs import mqttclient, publish
    from edge.outputs.player_server import DisplayServer

    made = []
    original = mqtt.Client.__init__

    def init(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(mqtt.Client, "__init__", init)
    config, _ = in_process_config(tmp_path, broker.port)
    # the connection, and a warning: this broker lets anonymous clients in
    assert [r.status for r in check.check_broker(config)] == ["OK", "WARN"]
    publisher = publish.MqttPublisher(config)
    publisher.start()
    publisher.close()
    player = DisplayServer(config, load_catalog(ROOT / "ads" / "catalog.yaml"), port=0).start()
    player.stop()
    assert len(made) == 3
    for client in made:
        assert isinstance(client, mqttclient.GuardedClient)
        callbacks = [getattr(client, name) for name in mqttclient.GuardedClient._CALLBACKS]
        assert all(getattr(cb, "_edge_guarded", False) for cb in callbacks if cb), client
