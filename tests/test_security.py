"""The store network is hostile (issue 25): each finding against real parts, a real
Mosquitto (with the shipped ACL), headless Chromium, real sockets and `edge run`."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import logging
import socket
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from edge import config as config_mod
from edge.errors import ConfigError
from edge.events import CameraEvent
from edge.outputs import web
from edge.outputs.access import HostCheck, Slots, authorized, is_loopback, load_secret
from edge.outputs.dashboard import Dashboard
from edge.outputs.metrics import Metrics
from edge.outputs.topics import Topics

from broker import Subscriber, free_port
from conftest import ROOT, run_edge
from test_display import (
    DISPLAY,
    GROOMING,
    SPRING,
    browser,  # noqa: F401  (a fixture)
    get,
    health,
    make_config,
    page,
    publish_content,
    publish_raw,
    start_server,
    visible_layer,
    wait_page,
    wait_until,
)

PHISH = "https://attacker.example/phish.html"


def content(creative: str, ad: str = "welcome") -> bytes:
    return json.dumps(
        {"schema": 1, "display": DISPLAY, "ad": ad, "title": "x", "creative": creative}
    ).encode()


# -- 1. screens show only the catalog ----------------------------------------------------


def test_a_foreign_creative_never_reaches_the_page(browser, broker, tmp_path):  # noqa: F811
    config = make_config(tmp_path, broker_port=broker.port)
    server = start_server(config)
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        publish_content(config, SPRING)
        wait_page(browser, ad="spring-collection", connection="open")
        foreign = [
            PHISH,
            f"http://127.0.0.1:{server.port}/healthz",  # the box's own pages
            "http://192.168.1.1/admin",  # a LAN admin page
            "http://169.254.169.254/latest/meta-data/",
            "http://2130706433/",  # 127.0.0.1, as browsers read it
        ]
        for creative in foreign:
            publish_raw(config, content(creative), retain=True)
        wait_until(
            lambda: health(server)["mqtt_rejected_creatives"] == len(foreign), 5, "the rejects"
        )
        time.sleep(0.5)
        assert page(browser)["ad"] == "spring-collection"
        assert visible_layer(browser).get_attribute("src").endswith("/women-adult.html")
        assert health(server)["displays"] == {DISPLAY: "spring-collection"}
    finally:
        server.stop()
    # A restart finds the foreign message retained: the page shows the catalog's default.
    server = start_server(config)
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="welcome", connection="open")
        wait_until(lambda: health(server)["mqtt_rejected_creatives"] == 1, 5, "the retained one")
        assert PHISH not in json.dumps(page(browser))
    finally:
        server.stop()


def test_allowed_hosts_are_exact_and_addresses_only_when_listed(broker, tmp_path):
    config = make_config(
        tmp_path,
        broker_port=broker.port,
        player={"allowed_hosts": [".hq.example.com", "10.0.0.7"]},
    )
    server = start_server(config)
    try:
        shown = []
        for creative in (
            "https://ads.hq.example.com/spring.html",  # a subdomain of a listed one
            "http://10.0.0.7/ad.html",  # an address listed as it is
            "https://hq.example.com.attacker.example/x.html",
            "https://attacker.example/?.hq.example.com",
            "https://ads.hq.example.com@attacker.example/x.html",
            "http://10.0.0.8/ad.html",
        ):
            publish_raw(config, content(creative), retain=False)
        wait_until(lambda: health(server)["mqtt_rejected_creatives"] == 4, 5, "four rejects")
        shown = server.bridge.board.get(DISPLAY)[1]
        assert shown is not None and shown["creative"] == "http://10.0.0.7/ad.html"
    finally:
        server.stop()


@pytest.mark.slow
def test_an_override_is_labelled_in_proof_of_play_and_dashboard(broker, tmp_path, group_photo):
    """`edge run`: the pipeline shows its ad; head office publishes another of the
    catalog's (allowed), an attacker a foreign one (rejected, counted in /metrics)."""
    from test_mqtt import start, stop, write_config

    port, metrics_port = free_port(), free_port()
    config, root = write_config(tmp_path, broker.port, source=group_photo, interval_s=60)
    config.write_text(
        config.read_text()
        .replace("player: {port: 0}", f"player: {{port: {port}}}")
        .replace("metrics: {port: 0}", f"metrics: {{port: {metrics_port}}}")
    )
    topic = f"{root}/displays/window/content"

    def state() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard/state.json") as r:
            return json.loads(r.read())["displays"]["window"]

    proc = start(config)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if state()["ad"] == "spring-collection":
                    break
            except OSError:
                pass
            time.sleep(0.3)
        hq = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        hq.connect("127.0.0.1", broker.port)
        hq.loop_start()
        hq.publish(topic, content(PHISH), qos=1, retain=True).wait_for_publish(5)
        override = {"schema": 1, "display": "window", **GROOMING, "reason": {"rule": "target"}}
        hq.publish(topic, json.dumps(override), qos=1, retain=True).wait_for_publish(5)
        hq.disconnect()
        hq.loop_stop()
        wait_until(lambda: state()["rule"] == "override", 10, "the dashboard saying override")
        assert state()["ad"] == "grooming-week"
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
        assert b'edge_display_rejected_messages_total{reason="creative"} 1.0' in scraped
        time.sleep(1.0)
        events, err = stop(proc)
    finally:
        proc.kill()
    plays = [e for e in events if e["type"] == "play"]
    assert [(p["ad"], p["rule"]) for p in plays][-2:] == [
        ("spring-collection", "targeting"),
        ("grooming-week", "override"),
    ], plays
    assert PHISH not in err  # the log says why, never the payload


# -- 2. a broker that checks who writes --------------------------------------------------


def test_the_shipped_acl_lets_only_the_service_write(make_broker, tmp_path, monkeypatch):
    port = free_port()
    config = make_config(tmp_path, broker_port=port)
    store = config.mqtt.store_id
    acl_file = tmp_path / "edge.acl"
    acl_file.write_text((ROOT / "mosquitto" / "edge.acl").read_text().replace("STORE", store))
    shipped = (ROOT / "mosquitto" / "edge-store.conf").read_text()
    assert "allow_anonymous false" in shipped and "acl_file" in shipped
    b = make_broker(
        "acl",
        port=port,
        users={"edge": "svc-pass", "homeassistant": "ha-pass", "hq": "hq-pass"},
        extra=f"acl_file {acl_file}\n",
    )
    topics = Topics("edge", store)
    watcher = Subscriber(b.port, "edge/#", username="edge", password="svc-pass")

    def publish(user: str | None, password: str | None, topic: str, payload: bytes) -> bool:
        """Whether the broker let the client in (the message may still be dropped)."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if user:
            client.username_pw_set(user, password)
        answers: list = []
        client.on_connect = lambda c, u, f, reason, p: answers.append(reason)
        client.connect("127.0.0.1", b.port)
        client.loop_start()
        try:
            wait_until(lambda: answers, 5, "the broker's answer")
            if answers[0].is_failure:
                return False
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
            return True
        finally:
            client.disconnect()
            client.loop_stop()

    monkeypatch.setenv("EDGE_MQTT_USERNAME", "edge")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "svc-pass")
    server = start_server(config)
    try:
        wait_until(lambda: server.mqtt_connected, 5, "the player connecting with its login")
        content_topic = topics.display_content(DISPLAY)
        groom = json.dumps({"schema": 1, "display": DISPLAY, **GROOMING}).encode()
        assert not publish(None, None, content_topic, groom)  # anonymous: refused
        assert publish("homeassistant", "ha-pass", content_topic, groom)
        assert publish("homeassistant", "ha-pass", topics.availability, b"offline")
        time.sleep(1.0)
        assert watcher.seen == [] and health(server)["mqtt_last_message"] is None
        assert health(server)["displays"] == {DISPLAY: None}
        # Head office may override content; the service writes everything of its store.
        assert publish("hq", "hq-pass", content_topic, groom)
        wait_until(lambda: health(server)["displays"][DISPLAY] == "grooming-week", 5, "HQ's ad")
        assert not publish("hq", "hq-pass", topics.availability, b"offline") or all(
            t != topics.availability for t, _, _ in watcher.seen
        )
        assert publish("edge", "svc-pass", topics.availability, b"online")
        watcher.wait_for(lambda t, p, r: t == topics.availability and p == b"online")
        assert all(p != b"offline" for t, p, _ in watcher.seen)
    finally:
        server.stop()
        watcher.close()


def test_a_client_id_takeover_is_named_in_one_log_line(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, broker_port=broker.port)
    server = start_server(config)
    try:
        wait_until(lambda: server.mqtt_connected, 5, "connecting")
        client_id = server.bridge._client_id
        # Another client with the same id, reconnecting as paho does: the two take turns.
        rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        rogue.reconnect_delay_set(1, 1)
        rogue.connect("127.0.0.1", broker.port)
        rogue.loop_start()
        time.sleep(6)
        rogue.disconnect()
        rogue.loop_stop()
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert f"another client connected as '{client_id}'" in lines[0]
    assert "mqtt.client_id" in lines[0]
    assert not any("Unspecified error" in r.getMessage() for r in caplog.records)


def test_edge_check_warns_about_anonymous_clients_and_readable_secrets(broker, tmp_path):
    from test_check import check, write_config

    path = write_config(tmp_path, source=ROOT / "README.md", broker_port=broker.port)
    data = path.read_text().replace(
        "mqtt: {enabled: true", 'mqtt: {password: "in-the-file", enabled: true'
    )
    path.write_text(data)
    path.chmod(0o644)
    _, lines, _ = check(path)
    assert lines["broker access"].startswith("WARN") and "anonymous" in lines["broker access"]
    assert lines["secrets"].startswith("WARN") and str(path) in lines["secrets"]
    path.chmod(0o600)
    _, lines, _ = check(path)
    assert lines["secrets"].startswith("OK")


def test_edge_check_warns_about_a_password_without_tls_off_the_box(make_broker, tmp_path):
    from test_check import check, write_config

    b = make_broker(users={"edge": "right"})
    path = write_config(tmp_path, source=ROOT / "README.md", broker_port=b.port)
    _, lines, _ = check(path, EDGE_MQTT_USERNAME="edge", EDGE_MQTT_PASSWORD="right")
    assert lines["broker access"].startswith("OK"), lines["broker access"]
    # The same login to a broker that is not on this box: the password would travel in
    # clear (said even where that broker cannot be reached).
    path.write_text(path.read_text().replace("host: 127.0.0.1", "host: broker.invalid"))
    _, lines, _ = check(path, EDGE_MQTT_USERNAME="edge", EDGE_MQTT_PASSWORD="right")
    assert lines["broker access"].startswith("WARN")
    assert "travels in clear to broker.invalid" in lines["broker access"]


# -- 3. web pages: key, caps, Host ---------------------------------------------------------


def request(port: int, path: str, *, host: str | None = None, source: str = "127.0.0.1", **hdr):
    """(status, headers, body) over a real socket, from `source` (any 127.x works)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    headers = dict(hdr)
    if host is not None:
        headers["Host"] = host
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read() if r.getheader("Content-Type", "").find("event-stream") < 0 else b""
    result = (r.status, dict(r.getheaders()), body)
    if not body:  # a stream stays open while its response (which owns the socket) lives
        result = (r.status, dict(r.getheaders()), r)
    return result


def with_dashboard(tmp_path, **dashboard):
    config = make_config(tmp_path, dashboard=dashboard) if dashboard else make_config(tmp_path)
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    return config, server


def test_dashboard_off_the_box_needs_its_key(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_DASHBOARD_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = make_config(tmp_path, player={"listen": "0.0.0.0"})
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    try:
        assert get(f"http://127.0.0.1:{server.port}/dashboard")[0] == 403  # no key set
        assert get(f"http://127.0.0.1:{server.port}/display/{DISPLAY}")[0] == 200
    finally:
        server.stop()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dashboard-key").write_text("k3y-from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    url = f"http://127.0.0.1:{server.port}/dashboard"
    try:
        status, headers, _ = get(url)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get(url, Authorization="Bearer wrong")[0] == 401
        assert get(url, Authorization="Bearer k3y-from-systemd")[0] == 200
        basic = base64.b64encode(b"anyone:k3y-from-systemd").decode()
        assert get(url, Authorization=f"Basic {basic}")[0] == 200
        assert get(url + "/state.json", Authorization=f"Basic {basic}")[0] == 200
        assert get(url + "/state.json?key=k3y-from-systemd")[0] == 401  # never in a URL
    finally:
        server.stop()


def test_edge_check_says_when_the_dashboard_is_off_the_box_without_a_key(tmp_path):
    from test_check import check, write_config

    path = write_config(tmp_path, source=ROOT / "README.md")
    path.write_text(path.read_text() + "player: {listen: 0.0.0.0}\n")
    _, lines, _ = check(path)
    assert lines["dashboard"].startswith("WARN") and "EDGE_DASHBOARD_KEY" in lines["dashboard"]
    _, lines, _ = check(path, EDGE_DASHBOARD_KEY="k")
    assert lines["dashboard"].startswith("OK") and "behind its key" in lines["dashboard"]


def test_dashboard_can_be_off_or_on_a_loopback_port_of_its_own(tmp_path):
    config = make_config(tmp_path, dashboard={"enabled": False})
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    try:
        assert get(f"{server.url}/dashboard")[0] == 404
    finally:
        server.stop()
    # Displays on the store network, the dashboard on this box only: no key needed.
    config = make_config(
        tmp_path,
        player={"listen": "0.0.0.0"},
        dashboard={"listen": "127.0.0.1", "port": free_port()},
    )
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    try:
        assert get(f"http://127.0.0.1:{server.port}/dashboard")[0] == 404  # not on the player's
        dash = f"http://127.0.0.1:{server.dashboard_port}"
        assert get(f"{dash}/dashboard")[0] == 200
        assert get(f"{dash}/display/{DISPLAY}")[0] == 404  # nothing else on the dashboard's
        assert server.dashboard_url == f"{dash}/dashboard"
    finally:
        server.stop()


def test_other_hosts_get_421(tmp_path):
    config = make_config(tmp_path, host_names=["screens.store.example"])
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    metrics = Metrics(dataclasses.replace(config, metrics=_metrics_on(config, 0)))
    assert metrics.serve()
    try:
        for port, path in (
            (server.port, "/healthz"),
            (server.port, "/dashboard/state.json"),
            (metrics.port, "/metrics"),
        ):
            assert request(port, path, host="rebound.attacker.example")[0] == 421
            assert request(port, path, host=f"127.0.0.1:{port}")[0] == 200
            assert request(port, path, host=f"localhost:{port}")[0] == 200
            assert request(port, path, host="screens.store.example")[0] == 200
        assert health(server)["http_wrong_host"] == 2
    finally:
        server.stop()
        metrics.stop()


def _metrics_on(config, port: int, **more):
    return dataclasses.replace(config.metrics, port=port, listen="127.0.0.1", **more)


def test_display_streams_are_capped_per_address(tmp_path):
    config = make_config(tmp_path, player={"max_streams": 10, "max_streams_per_client": 2})
    server = start_server(config)
    path = f"/display/{DISPLAY}/events"
    try:
        held = [request(server.port, path)[2] for _ in range(2)]
        status, _, body = request(server.port, path)
        assert status == 503 and b"player.max_streams_per_client" in body
        # Another display (another address) is still served.
        status, _, other = request(server.port, path, source="127.0.0.2")
        assert status == 200
        for conn in [*held, other]:
            conn.close()
    finally:
        server.stop()


def test_dashboard_streams_are_capped_in_all_and_per_address(tmp_path, monkeypatch):
    from edge.outputs import dashboard as dashboard_mod

    monkeypatch.setattr(dashboard_mod, "HEARTBEAT_S", 0.2)
    config, server = with_dashboard(tmp_path, max_streams=3, max_streams_per_client=2)
    path = "/dashboard/events"
    try:
        held = [request(server.port, path)[2] for _ in range(2)]
        status, headers, body = request(server.port, path)
        assert status == 503 and b"dashboard.max_streams_per_client" in body
        assert headers["Retry-After"]
        held.append(request(server.port, path, source="127.0.0.2")[2])
        status, _, body = request(server.port, path, source="127.0.0.3")
        assert status == 503 and b"dashboard.max_streams)" in body
        assert threading.active_count() < 40
        for conn in held:
            conn.close()
        wait_until(lambda: request(server.port, path)[0] == 200, 5, "slots freed")
    finally:
        server.stop()


def test_one_state_event_per_change_whatever_the_number_of_streams(tmp_path):
    config, server = with_dashboard(tmp_path, max_streams=20, max_streams_per_client=20)
    dashboard = server.dashboard
    try:
        streams = [
            urllib.request.urlopen(f"{server.url}/dashboard/events", timeout=5) for _ in range(8)
        ]
        for s in streams:
            assert s.readline().startswith(b"retry:")
            while not s.readline().startswith(b"event: state"):  # the picture at connect
                pass
        wait_until(lambda: dashboard.snapshots >= 1, 5, "the first picture")
        time.sleep(0.5)
        before = dashboard.snapshots
        assert before == 1, before  # 8 streams, one picture
        dashboard.emit(CameraEvent("door", "Door", False, "gone", 1))
        for s in streams:
            while not s.readline().startswith(b"event: state"):
                pass
        assert dashboard.snapshots == before + 1
        for s in streams:
            s.close()
    finally:
        server.stop()


def test_metrics_endpoint_has_a_head_deadline_and_a_connection_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(web, "REQUEST_HEAD_TIMEOUT_S", 0.5)
    config = make_config(tmp_path)
    config = dataclasses.replace(config, metrics=_metrics_on(config, 0, max_connections=4))
    metrics = Metrics(config)
    assert metrics.serve()
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", metrics.port)) for _ in range(30)]
        time.sleep(0.3)
        assert threading.active_count() <= before + 4  # not one thread per socket
        for s in idle:
            s.settimeout(3)
            assert s.recv(1) == b""  # closed: at once over the cap, else at the deadline
            s.close()
        wait_until(lambda: threading.active_count() <= before, 3, "the threads ending")
        assert request(metrics.port, "/metrics")[0] == 200
    finally:
        metrics.stop()


# -- 4. secrets out of config.yaml --------------------------------------------------------


def test_config_refers_to_secrets_in_the_environment_or_credentials(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(
        'cameras: [{id: entrance, source: "${EDGE_CAMERA_ENTRANCE_URL}"}]\n'
        'mqtt: {password: "${EDGE_MQTT_SECRET}"}\n'
    )
    monkeypatch.delenv("EDGE_CAMERA_ENTRANCE_URL", raising=False)
    monkeypatch.delenv("EDGE_MQTT_SECRET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as missing:
        config_mod.load(path)
    assert "'cameras[0].source' refers to ${EDGE_CAMERA_ENTRANCE_URL}, which is not set" in str(
        missing.value
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "EDGE_MQTT_SECRET").write_text("from-systemd-9\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("EDGE_CAMERA_ENTRANCE_URL", "rtsp://admin:Ent-Pw-77@10.0.0.5/stream")
    config = config_mod.load(path)
    assert config.cameras[0].source == "rtsp://admin:Ent-Pw-77@10.0.0.5/stream"
    assert config.mqtt.password == "from-systemd-9"
    # `edge check` names the camera without its password, from the real command line.
    result = run_edge("check", "--config", str(path), timeout=60)
    assert "Ent-Pw-77" not in result.stdout + result.stderr
    assert "from-systemd-9" not in result.stdout + result.stderr


# -- the small module every web endpoint shares ------------------------------------------


def test_access_helpers(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_TEST_KEY", " k ")
    assert load_secret("EDGE_TEST_KEY") == "k"
    monkeypatch.delenv("EDGE_TEST_KEY")
    assert load_secret("EDGE_TEST_KEY", "none-here") is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    assert authorized("Bearer s3", "s3") and not authorized("Bearer s4", "s3")
    assert not authorized("Basic !!notbase64", "s3") and not authorized(None, "s3")
    hosts = HostCheck(["display.example"])
    assert hosts.allows("[::1]:8080", "::1") and hosts.allows("10.1.2.3:80", "10.1.2.3")
    assert not hosts.allows("evil.example:8080", "127.0.0.1")
    slots = Slots(2, 1)
    assert slots.take("a") is None and slots.take("a") == "per_client"
    assert slots.take("b") is None and slots.take("c") == "total"
    slots.give_back("a")
    assert slots.take("c") is None


def test_a_browser_with_the_key_gets_the_live_dashboard(browser, tmp_path, monkeypatch):  # noqa: F811
    """Basic auth, asked once: the page and its event stream both pass (same origin)."""
    from test_dashboard import text

    monkeypatch.setenv("EDGE_DASHBOARD_KEY", "k3y")
    config = make_config(tmp_path, player={"listen": "0.0.0.0"})
    server = start_server(config)
    server.dashboard = Dashboard(config, live=False)
    try:
        browser.get(f"http://manager:k3y@127.0.0.1:{server.port}/dashboard")
        wait_until(lambda: text(browser, "#store") == config.mqtt.store_id, 10, "the page's state")
        # the stream is open ("connecting" else); no service feeds it, so not "live"
        wait_until(
            lambda: text(browser, "#conn") == "history only (no service)",
            10,
            "the event stream open",
        )
    finally:
        server.stop()
