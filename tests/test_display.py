"""The display player end to end: a real Mosquitto, the bridge, and headless Chromium
showing the page the way a kiosk does (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge import config as config_mod
from edge.catalog import load_catalog
from edge.errors import EdgeError
from edge.outputs.player_server import DisplayServer
from edge.outputs.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "ads" / "catalog.yaml"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DISPLAY = "window"
SPRING = {
    "ad": "spring-collection",
    "title": "Spring collection",
    "creative": "creatives/women-adult.html",
    "duration_s": 12,
}
GROOMING = {
    "ad": "grooming-week",
    "title": "Grooming week",
    "creative": "creatives/men-adult.html",
    "duration_s": 12,
}


def need_browser() -> None:
    """Like conftest.need: skip where the browser is missing, fail in CI."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (requirements/dev.txt)")
    if missing:
        message = f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the browser must be present)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path: selenium-manager stays idle
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,720",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def make_config(
    tmp_path: Path,
    *,
    broker_port: int | None = None,
    catalog: Path = CATALOG,
    **sections: dict,
) -> config_mod.Config:
    """A config as an operator writes it; a fresh store id keeps retained topics apart.
    `sections` add top-level keys (player={...}, dashboard={...})."""
    mqtt = (
        {"enabled": True, "host": "127.0.0.1", "port": broker_port}
        if broker_port
        else {"enabled": False}
    )
    mqtt["store_id"] = f"s{uuid.uuid4().hex[:8]}"
    path = tmp_path / "config.yaml"
    path.write_text(
        json.dumps(
            {  # JSON is YAML
                "mqtt": mqtt,
                "cameras": [{"id": "door", "source": "/dev/null"}],
                "displays": [{"id": DISPLAY, "name": "Window screen", "camera": "door"}],
                "selector": {"catalog": str(catalog)},
                **sections,
            }
        )
    )
    return config_mod.load(path)


def start_server(config: config_mod.Config, port: int = 0) -> DisplayServer:
    return DisplayServer(
        config, load_catalog(config.resolve(config.selector.catalog)), port=port
    ).start()


def publish_content(config: config_mod.Config, content: dict | None) -> None:
    """Publishes as the service does (retained, QoS 1); None clears the retained message."""
    payload = (
        b""
        if content is None
        else json.dumps(
            {
                "schema": 1,
                "time": "2026-03-02T10:00:00+01:00",
                "display": DISPLAY,
                **content,
                "reason": {"rule": "target", "segment": None, "audience": {}},
            }
        ).encode()
    )
    publish_raw(config, payload, retain=True)


def publish_raw(config: config_mod.Config, payload: bytes, *, retain: bool) -> None:
    """Any bytes on the display's content topic, as anyone on the broker could send them."""
    topic = Topics(config.mqtt.topic_prefix, config.mqtt.store_id).display_content(DISPLAY)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", config.mqtt.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def page(driver) -> dict:
    return driver.execute_script("return {...document.body.dataset}")


def wait_page(driver, timeout: float = 10.0, **expected: str) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: all(page(d).get(k) == v for k, v in expected.items()),
        f"page never showed {expected}",
    )
    return page(driver)


def visible_layer(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#stage .layer.visible")[-1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


def get(url: str, **headers: str):
    """(status, headers, body) without raising on 4xx."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def health(server: DisplayServer) -> dict:
    return json.loads(get(f"{server.url}/healthz")[2])


def test_page_shows_the_catalog_default_before_any_message(browser, broker, tmp_path):
    server = start_server(make_config(tmp_path, broker_port=broker.port))
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        state = wait_page(browser, ad="welcome", connection="open")
        assert state["url"] == "/ads/creatives/welcome.html"
        assert health(server) == {
            "mqtt_connected": True,
            "mqtt_loop_alive": True,
            "mqtt_last_message": None,
            "mqtt_rejected": 0,
            "mqtt_rejected_creatives": 0,
            "displays": {DISPLAY: None},
            "http_wrong_host": 0,
        }
    finally:
        server.stop()


def test_page_shows_published_content(browser, broker, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    config = make_config(tmp_path, broker_port=broker.port)
    server = start_server(config)
    try:
        browser.get(f"{server.url}/display/{DISPLAY}/")  # trailing slash works too
        wait_page(browser, ad="welcome")
        publish_content(config, SPRING)
        wait_page(browser, ad="spring-collection")
        frame = visible_layer(browser)
        assert frame.tag_name == "iframe"
        assert frame.get_attribute("src").endswith("/ads/creatives/women-adult.html")
        browser.switch_to.frame(frame)
        try:  # the creative really rendered, not just an element pointing at it
            WebDriverWait(browser, 5).until(
                lambda d: "spring collection" in d.find_element(By.TAG_NAME, "body").text
            )
        finally:
            browser.switch_to.default_content()
        time.sleep(0.6)  # let the cross-fade finish for the screenshot
        assert len(browser.find_elements(By.CSS_SELECTOR, "#stage .layer")) == 1
        assert browser.execute_script(
            "const e = document.documentElement;"
            "return e.scrollWidth <= innerWidth && e.scrollHeight <= innerHeight"
        )
        browser.save_screenshot("/tmp/player.png")
        assert health(server)["displays"] == {DISPLAY: "spring-collection"}
    finally:
        server.stop()


def test_bridge_rides_out_a_broker_outage(browser, make_broker, tmp_path):
    b = make_broker()
    config = make_config(tmp_path, broker_port=b.port)
    server = start_server(config)
    try:
        publish_content(config, SPRING)
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="spring-collection")

        b.stop()
        wait_until(lambda: not health(server)["mqtt_connected"], 5, "bridge noticing the outage")
        time.sleep(0.5)
        assert page(browser)["ad"] == "spring-collection"  # never blank meanwhile
        assert visible_layer(browser).get_attribute("src").endswith("/women-adult.html")

        b.start()  # same port; the bridge reconnects with backoff and subscribes again
        publish_content(config, GROOMING)
        wait_page(browser, timeout=15, ad="grooming-week", url="/ads/creatives/men-adult.html")
        state = health(server)
        assert state["mqtt_connected"] and state["mqtt_loop_alive"]
        assert state["displays"] == {DISPLAY: "grooming-week"}
    finally:
        server.stop()


def test_page_reconnects_to_a_restarted_server(browser, broker, tmp_path):
    config = make_config(tmp_path, broker_port=broker.port)
    server = start_server(config)
    port = server.port
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="welcome", connection="open")
        started = time.monotonic()
        server.stop()  # ends the page's event stream
        assert time.monotonic() - started < 1.0
        wait_page(browser, timeout=5, connection="reconnecting")
        assert page(browser)["ad"] == "welcome"

        server = start_server(config, port=port)
        publish_content(config, SPRING)
        wait_page(browser, timeout=15, ad="spring-collection", connection="open")
    finally:
        server.stop()


def test_image_creatives_show_as_images(browser, tmp_path):
    import cv2
    import numpy as np

    folder = tmp_path / "ads"
    (folder / "creatives").mkdir(parents=True)
    ok, png = cv2.imencode(".png", np.full((90, 160, 3), (40, 40, 200), np.uint8))
    (folder / "creatives" / "still.png").write_bytes(png.tobytes())
    (folder / "catalog.yaml").write_text(
        "default: still\nfamily_safe: still\n"
        "ads: [{id: still, title: Still, creative: creatives/still.png, duration_s: 5}]\n"
    )
    server = start_server(make_config(tmp_path, catalog=folder / "catalog.yaml"))
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="still", url="/ads/creatives/still.png")
        image = visible_layer(browser)
        assert image.tag_name == "img"
        assert browser.execute_script("return arguments[0].naturalWidth", image) == 160

        status, headers, body = get(f"{server.url}/ads/creatives/still.png")
        assert (status, headers["Content-Type"], body) == (200, "image/png", png.tobytes())
        status, headers, body = get(f"{server.url}/ads/creatives/still.png", Range="bytes=0-9")
        assert (status, body) == (206, png.tobytes()[:10])
        assert headers["Content-Range"] == f"bytes 0-9/{len(png)}"
        assert health(server) == {
            "mqtt_connected": False,
            "mqtt_loop_alive": False,
            "mqtt_last_message": None,
            "mqtt_rejected": 0,
            "mqtt_rejected_creatives": 0,
            "displays": {DISPLAY: None},
            "http_wrong_host": 0,
        }
    finally:
        server.stop()


def test_http_routes(tmp_path):
    # A secret beside the catalog's folder, which traversal must not reach.
    ads = tmp_path / "ads"
    shutil.copytree(CATALOG.parent, ads)
    (tmp_path / "secret.yaml").write_text("password: x\n")
    # Files the catalog does not name are not served, whatever they are.
    shutil.copy(ads / "creatives" / "welcome.html", ads / "creatives" / "unlisted.html")
    (ads / "creatives" / "style.css").write_text("body{}")
    server = start_server(make_config(tmp_path, catalog=ads / "catalog.yaml"))
    try:
        for path in (
            "/ads/../secret.yaml",
            "/ads/%2e%2e/secret.yaml",
            "/ads/..%2fsecret.yaml",
            "/ads/catalog.yaml",
            "/ads/creatives/",
            "/ads/creatives/nothing.png",
            "/ads/%00",
            "/ads/creatives/unlisted.html",
            "/ads/creatives/style.css",
            "/nothing",
        ):
            assert get(server.url + path)[0] == 404, path

        status, headers, body = get(f"{server.url}/ads/creatives/welcome.html")
        assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        assert b"Welcome!" in body and "max-age" in headers["Cache-Control"]
        # Even opened on its own, an HTML creative runs in an opaque origin, not the player's.
        assert "sandbox allow-scripts" in headers["Content-Security-Policy"]
        assert "allow-same-origin" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"

        status, _, body = get(f"{server.url}/display/lobby")
        assert status == 404 and b"lobby" in body and DISPLAY.encode() in body
        assert get(f"{server.url}/display/lobby/events")[0] == 404

        status, headers, body = get(f"{server.url}/")
        assert status == 200 and f'href="/display/{DISPLAY}"'.encode() in body
        assert b"Window screen" in body
        status, headers, _ = get(f"{server.url}/display/{DISPLAY}")
        assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")

        status, headers, body = get(f"{server.url}/healthz")
        assert (status, headers["Content-Type"]) == (200, "application/json")
        assert json.loads(body) == {
            "mqtt_connected": False,
            "mqtt_loop_alive": False,
            "mqtt_last_message": None,
            "mqtt_rejected": 0,
            "mqtt_rejected_creatives": 0,
            "displays": {DISPLAY: None},
            "http_wrong_host": 0,
        }
    finally:
        server.stop()


def read_event(stream) -> tuple[str, dict]:
    """The next Server-Sent Event as (event, data), skipping `retry:` lines."""
    fields = {}
    while (line := stream.readline().decode()) != "\n":
        assert line, "the stream ended"
        name, _, value = line.rstrip("\n").partition(": ")
        fields[name] = value
    return (
        (fields["event"], json.loads(fields["data"])) if "event" in fields else read_event(stream)
    )


def next_content(stream) -> dict:
    while (event := read_event(stream))[0] == "ping":
        pass
    assert event[0] == "content"
    return event[1]


def test_event_stream_follows_the_topic(broker, tmp_path, monkeypatch):
    from edge.outputs import player_server

    monkeypatch.setattr(player_server, "HEARTBEAT_S", 0.3)
    config = make_config(tmp_path, broker_port=broker.port)
    server = start_server(config)
    try:
        wait_until(lambda: server.mqtt_connected, 5, "connecting to the broker")
        with urllib.request.urlopen(f"{server.url}/display/{DISPLAY}/events", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["Cache-Control"] == "no-cache"
            content = next_content(r)
            assert (content["ad"], content["display"]) == ("welcome", DISPLAY)
            assert content["reason"]["rule"] == "default"
            assert content["url"] == "/ads/creatives/welcome.html"

            publish_content(config, SPRING)
            content = next_content(r)
            assert content["ad"] == "spring-collection"
            assert content["url"] == "/ads/creatives/women-adult.html"

            publish_content(config, None)  # retained message cleared: the default again
            assert next_content(r)["ad"] == "welcome"
            assert read_event(r) == ("ping", {})  # the heartbeat the page watches for
    finally:
        server.stop()


def test_player_off_in_config_needs_an_explicit_port(tmp_path):
    config = make_config(tmp_path)
    config = dataclasses.replace(config, player=dataclasses.replace(config.player, port=0))
    with pytest.raises(ValueError, match="player.port"):
        DisplayServer(config, load_catalog(CATALOG))


def test_a_port_in_use_is_one_clear_error(tmp_path):
    config = make_config(tmp_path)
    server = start_server(config)
    try:
        with pytest.raises(EdgeError, match=f"cannot listen on 127.0.0.1:{server.port}"):
            start_server(config, port=server.port)
    finally:
        server.stop()


def hostile_payloads() -> list[bytes]:
    """Shapes and sizes a broken or hostile publisher sends: none may stop the bridge."""

    def content(**fields) -> bytes:
        return json.dumps({"schema": 1, "display": DISPLAY, **SPRING, **fields}).encode()

    return [
        b"[" * 200_000,  # over the size cap
        b"[" * 60_000,  # deep nesting under the cap
        b'{"a":' * 20_000 + b"1" + b"}" * 20_000,  # nested objects
        b"\xff\xfe\x00\x81 not utf-8",  # binary, not UTF-8
        bytes(range(256)) * 16,
        b"\x00",
        b"null",
        b"42",
        b"[]",
        b'"a string"',
        b"1e999",
        b"9" * 5000,
        b'{"ad": NaN, "creative": "creatives/women-adult.html"}',
        content(duration_s=float("nan")).replace(b"NaN", b"NaN"),
        content(duration_s=1e999).replace(b"Infinity", b"1e999"),
        content(duration_s="12"),
        content(duration_s=True),
        content(duration_s=-1),
        content(ad=5),
        content(ad=None),
        content(ad=["spring"]),
        content(ad={"id": 1}),
        content(ad="x" * 70_000),
        content(title="t" * 60_000),
        content(title={"t": 1}),
        content(creative=7),
        content(creative="x" * 60_000),
        content(creative="../secret.yaml"),
        content(creative="/etc/passwd"),
        content(creative="catalog.yaml"),
        content(creative="creatives/.hidden.html"),
        content(creative="javascript:alert(1)"),
        content(creative="file:///etc/passwd"),
        content(creative="creatives/not-in-catalog.html"),
        content(creative=""),
        content(reason="because"),
        content(reason={"rule": ["x"]}),
        content(reason={"rule": "target", "segment": "adult"}),
        content(schema=99),
        content(schema="1"),
        content(time=12),
        content(extra={"deep": [[[[1]]]]}, ad="ok-but-" + "\u202e" * 10),
    ]


def test_hostile_messages_never_stop_the_bridge_and_the_screen_keeps_its_ad(
    browser, broker, tmp_path, caplog
):
    caplog.set_level("INFO")
    config = make_config(tmp_path, broker_port=broker.port)
    # Retained garbage is there before the player starts, as after a bad publish and a restart.
    publish_raw(config, b"[" * 60_000, retain=True)
    server = start_server(config)
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="welcome", connection="open")
        wait_until(
            lambda: health(server)["mqtt_last_message"] is not None,
            5,
            "the retained message arriving",
        )
        publish_content(config, SPRING)
        wait_page(browser, ad="spring-collection")
        for i, payload in enumerate(hostile_payloads()):
            publish_raw(config, payload, retain=i % 2 == 0)
        publish_content(config, GROOMING)  # the first good message after all of them
        wait_page(browser, ad="grooming-week", url="/ads/creatives/men-adult.html")
        state = health(server)
        assert state["mqtt_connected"] and state["mqtt_loop_alive"]
        assert state["displays"] == {DISPLAY: "grooming-week"}

        # Garbage after the good message leaves the good ad on screen, retained or not.
        for i, payload in enumerate(hostile_payloads()):
            publish_raw(config, payload, retain=i % 2 == 1)
        publish_raw(config, b"{}", retain=True)
        wait_until(
            lambda: health(server)["mqtt_rejected"] >= 2 * len(hostile_payloads()),
            10,
            "every hostile message being seen",
        )
        assert page(browser)["ad"] == "grooming-week"
        assert health(server)["displays"] == {DISPLAY: "grooming-week"}
        publish_content(config, SPRING)
        wait_page(browser, ad="spring-collection")
    finally:
        server.stop()
    # Logged once, with the topic and why (never the payload); not once per message.
    ignored = [r.getMessage() for r in caplog.records if "ignored a message" in r.getMessage()]
    assert len(ignored) == 1 and f"/displays/{DISPLAY}/content: " in ignored[0], ignored
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)


def test_wrong_broker_password_is_logged_once(make_broker, tmp_path, caplog, monkeypatch):
    """README: a refused login is logged once (again only when the cause changes)."""
    b = make_broker(users={"edge": "right"})
    monkeypatch.setenv("EDGE_MQTT_USERNAME", "edge")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "wrong")
    caplog.set_level("INFO")
    server = start_server(make_config(tmp_path, broker_port=b.port))
    try:
        # paho retries after 1, 2 and 4 s: three refusals in 4.5 s
        wait_until(lambda: b.log.read_text().count("not authorised") >= 3, 10, "three refusals")
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1, lines
    assert "EDGE_MQTT_PASSWORD" in lines[0] and "wrong" not in lines[0]


def test_healthz_says_when_the_mqtt_loop_is_gone(broker, tmp_path):
    config = make_config(tmp_path, broker_port=broker.port)
    server = start_server(config)
    try:
        wait_until(lambda: server.mqtt_connected, 5, "connecting to the broker")
        publish_content(config, SPRING)
        wait_until(lambda: health(server)["mqtt_last_message"] is not None, 5, "a message")
        status, _, body = get(f"{server.url}/healthz")
        assert status == 200 and json.loads(body)["mqtt_loop_alive"] is True
        server.bridge._client.loop_stop()  # the network thread ends, as an uncaught error ended it
        status, _, body = get(f"{server.url}/healthz")
        assert status == 503 and json.loads(body)["mqtt_loop_alive"] is False
    finally:
        server.stop()


def catalog_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """An ad folder with the shipped creatives plus `files`, each an ad named after it."""
    ads = tmp_path / "ads"
    shutil.copytree(CATALOG.parent, ads)
    catalog = (ads / "catalog.yaml").read_text()
    for name, data in files.items():
        (ads / "creatives" / name).write_bytes(data)
        catalog += (
            f"\n  - {{id: {name.replace('.', '-')}, title: {name}, "
            f"creative: creatives/{name}, duration_s: 5}}"
        )
    (ads / "catalog.yaml").write_text(catalog + "\n")
    return ads / "catalog.yaml"


def test_page_swaps_only_to_a_creative_that_loaded(browser, broker, tmp_path):
    from broker import free_port

    catalog = catalog_with(
        tmp_path,
        {"broken.png": b"\x89PNG not really an image", "broken.mp4": b"not a video at all"},
    )
    # A loopback address is allowed only when listed as it is (player.allowed_hosts).
    config = make_config(
        tmp_path,
        broker_port=broker.port,
        catalog=catalog,
        player={"allowed_hosts": ["127.0.0.1"]},
    )
    server = start_server(config)
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="welcome", connection="open")
        publish_content(config, SPRING)
        wait_page(browser, ad="spring-collection")
        unreachable = f"http://127.0.0.1:{free_port()}/ad.html"  # nothing listens there
        for ad, creative, url in (
            ("broken-png", "creatives/broken.png", None),
            ("broken-mp4", "creatives/broken.mp4", None),
            ("remote", unreachable, unreachable),
        ):
            publish_content(config, {"ad": ad, "title": ad, "creative": creative, "duration_s": 5})
            wait_page(browser, failed=url or f"/ads/{creative}")
            assert page(browser)["ad"] == "spring-collection"
            assert visible_layer(browser).get_attribute("src").endswith("/women-adult.html")
        publish_content(config, GROOMING)
        wait_page(browser, ad="grooming-week")
    finally:
        server.stop()


def test_html_creatives_cannot_script_the_player_page(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    probe = b"""<!doctype html><html><body><p>probe</p><script>
    let result = "blocked";
    try { parent.document.body.dataset.ad = "hijacked"; result = "reached the page"; }
    catch (e) {}
    try { localStorage.setItem("x", "1"); result += ", storage"; } catch (e) {}
    document.body.dataset.result = result;
    </script></body></html>"""
    catalog = catalog_with(tmp_path, {"probe.html": probe})
    text = catalog.read_text().replace("default: welcome", "default: probe-html")
    catalog.write_text(text)
    server = start_server(make_config(tmp_path, catalog=catalog))
    try:
        browser.get(f"{server.url}/display/{DISPLAY}")
        wait_page(browser, ad="probe-html")
        frame = visible_layer(browser)
        browser.switch_to.frame(frame)
        try:
            WebDriverWait(browser, 5).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-result")
            )
            result = browser.find_element(By.TAG_NAME, "body").get_attribute("data-result")
        finally:
            browser.switch_to.default_content()
        assert result == "blocked"
        assert page(browser)["ad"] == "probe-html"
        assert frame.get_attribute("sandbox") == "allow-scripts"
    finally:
        server.stop()


@pytest.mark.slow
def test_idle_and_slow_connections_are_closed_after_the_header_timeout(tmp_path, monkeypatch):
    """An idle socket, or one that sends its request head a byte at a time (slowloris),
    must not hold a server thread for longer than the header timeout."""
    import socket
    import threading

    from edge.outputs import web

    monkeypatch.setattr(web, "REQUEST_HEAD_TIMEOUT_S", 0.6)
    server = start_server(make_config(tmp_path))
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        wait_until(lambda: threading.active_count() >= before + 21, 5, "the connections taken")
        slow.settimeout(0.15)
        closed_after = None
        while time.monotonic() - started < 4:  # a header byte every 0.15 s, never finishing
            try:
                slow.sendall(b"X")
                if slow.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 2.0, closed_after
        for s in idle:
            s.settimeout(3)
            assert s.recv(1) == b""  # closed by the server, not left waiting
            s.close()
        wait_until(lambda: threading.active_count() <= before, 3, "the threads ending")
        assert get(f"{server.url}/healthz")[0] == 200  # and the server still serves
    finally:
        server.stop()


def test_listen_backlog_is_not_five(tmp_path):
    import subprocess

    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is missing")
    server = start_server(make_config(tmp_path))
    try:
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{server.port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[0] == "LISTEN" and int(out[2]) >= 128, out  # Send-Q: the backlog
    finally:
        server.stop()


def stream_status(url: str):
    """(status, headers, body) of an event stream request; the body only of an error,
    since a stream that was accepted never ends."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers, b""
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_event_streams_are_capped_with_a_clear_503(tmp_path, monkeypatch):
    from edge.outputs import player_server

    monkeypatch.setattr(player_server, "HEARTBEAT_S", 0.2)  # a closed stream is noticed fast
    config = make_config(tmp_path)
    config = dataclasses.replace(config, player=dataclasses.replace(config.player, max_streams=2))
    server = start_server(config)
    url = f"{server.url}/display/{DISPLAY}/events"
    try:
        first = urllib.request.urlopen(url, timeout=5)
        second = urllib.request.urlopen(url, timeout=5)
        assert next_content(first)["ad"] == next_content(second)["ad"] == "welcome"
        status, headers, body = stream_status(url)
        assert status == 503 and headers["Retry-After"]
        assert b"player.max_streams" in body and b"2" in body
        assert get(f"{server.url}/display/{DISPLAY}")[0] == 200  # the page itself still loads
        first.close()
        wait_until(lambda: stream_status(url)[0] == 200, 5, "the closed stream's slot freed")
        second.close()
    finally:
        server.stop()
