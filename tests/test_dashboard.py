"""The store dashboard in headless Chromium: after a real run on the walking clip it
shows the clip's counts from the audience store, the chart has drawn, and a live
audience change from the real pipeline reaches the page within 2 s."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import urllib.request

from test_plays import one_ad_config

from edge import config as config_mod
from edge.catalog import load_catalog
from edge.outputs.dashboard import Dashboard
from edge.outputs.player_server import DisplayServer
from edge.outputs.store import FILENAME, AudienceStore

from conftest import ROOT, need, run_edge
from test_display import browser, get  # noqa: F401  (browser is a fixture)

CHART_SHA256 = "48444a82d4edcb5bec0f1965faacdde18d9c17db3063d042abada2f705c9f54a"


def text(driver, selector: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null", selector
    )


def wait_text(driver, selector: str, expected: str, timeout: float = 10.0) -> float:
    """Waits until the element shows `expected`; returns when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while (seen := text(driver, selector)) != expected:
        assert time.monotonic() < deadline, f"{selector} shows {seen!r}, not {expected!r}"
        time.sleep(0.05)
    return time.monotonic()


def painted_pixels(driver) -> int:
    return driver.execute_script("""
        const c = document.getElementById('hours');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
        return n;""")


def fits(driver) -> bool:
    """Nothing wider than the window (no sideways scrolling)."""
    return (
        driver.execute_script(
            "return document.documentElement.scrollWidth <= innerWidth "
            "|| [document.documentElement.scrollWidth, innerWidth]"
        )
        is True
    )


class Recorder:
    """An event sink noting when the service emitted what."""

    def __init__(self):
        self.events: list[tuple[float, dict]] = []

    def start(self) -> None:
        pass

    def emit(self, event) -> None:
        self.events.append((time.monotonic(), event.to_json()))

    def close(self) -> None:
        pass


class Lent(Recorder):
    """A sink the test started and closes itself (the store, the dashboard its page
    is open on), lent to a service: the service's start and close leave it alone."""

    def __init__(self, sink):
        self.sink = sink

    def emit(self, event) -> None:
        self.sink.emit(event)


def test_vendored_chart_library_is_the_pinned_file():
    data = (ROOT / "edge" / "outputs" / "player" / "vendor" / "chart.umd.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == CHART_SHA256
    assert b"Chart.js v4.5.1" in data[:200]
    assert (ROOT / "edge" / "outputs" / "player" / "vendor" / "chart.js-LICENSE.md").exists()


def test_dashboard_after_the_walking_clip_and_live(browser, tmp_path, group_photo):  # noqa: F811
    clip = need("media/face-demographics-walking-and-pause.gif")
    config_path = one_ad_config(tmp_path)  # camera door, display window, one ad
    result = run_edge(
        "--config", str(config_path), "run", "--source", str(clip), "--jsonl", "--store"
    )
    assert result.returncode == 0, result.stderr
    config = config_mod.load(config_path)
    dashboard = Dashboard(config)
    server = DisplayServer(config, load_catalog(config.resolve(config.selector.catalog)), port=0)
    server.dashboard = dashboard
    server.start()
    store = AudienceStore(config.state_path() / FILENAME).start()
    store.on_commit(dashboard.history_changed)
    try:
        # Served from the box: the page, its script and the stream.
        status, _, body = get(f"{server.url}/dashboard/vendor/chart.umd.min.js")
        assert status == 200 and hashlib.sha256(body).hexdigest() == CHART_SHA256
        assert get(f"{server.url}/dashboard/vendor/../../config.yaml")[0] == 404
        state = json.loads(
            urllib.request.urlopen(f"{server.url}/dashboard/state.json", timeout=5).read()
        )
        assert "track" not in json.dumps(state)

        browser.set_window_size(1920, 1080)  # the kiosk
        browser.get(f"{server.url}/dashboard")
        wait_text(browser, "#today-total", "3")
        assert text(browser, "#today-segments [data-segment=adult_female] .n") == "2"
        assert text(browser, "#today-segments [data-segment=adult_male] .n") == "1"
        assert text(browser, "#today-watchers") == "3" and text(browser, "#today-plays") == "1"
        row = browser.execute_script(
            "return [...document.querySelectorAll('#ads tr[data-ad=only] td')]"
            ".map(td => td.textContent)"
        )
        # title, plays, screen time, impressions, reach, watchers, watch rate, attention
        assert row[0] == "Only ad" and row[1] == "1" and row[3:7] == ["3", "3", "3", "100%"]
        segment = browser.execute_script(
            "return [...document.querySelectorAll("
            "'#ads tr[data-ad=only][data-segment=adult_female] td')].map(td => td.textContent)"
        )
        assert segment[0] == "adult F" and segment[3:7] == ["2", "2", "2", "100%"]
        assert painted_pixels(browser) > 1000  # the stacked bars and axes were drawn
        assert browser.execute_script(
            "return Chart.getChart('hours').data.datasets"
            ".map(d => d.data.reduce((a, b) => a + b, 0))"
        ) == [0, 0, 0, 2, 1, 0, 0, 0, 0, 0]  # every segment of docs/metrics.md
        assert fits(browser)
        # A page that no service feeds (edge display) is open, but not live: not green.
        assert browser.execute_script("return document.body.dataset.connection") == "live"

        # Live: the real pipeline on the group photo (six adults) as the door camera.
        door = dataclasses.replace(config.cameras[0], source=str(group_photo))
        from edge.service import Service

        recorder = Recorder()
        service = Service(
            dataclasses.replace(config, cameras=[door]), [recorder, Lent(store), Lent(dashboard)]
        )
        runner = threading.Thread(target=service.run, kwargs={"duration_s": 8}, daemon=True)
        runner.start()
        deadline = time.monotonic() + 60
        while not any(
            e["type"] == "audience" and len(e["present"]) == 6 for _, e in recorder.events
        ):
            assert time.monotonic() < deadline, "the pipeline never saw the six"
            time.sleep(0.02)
        emitted = next(
            t for t, e in recorder.events if e["type"] == "audience" and len(e["present"]) == 6
        )
        shown = wait_text(browser, "[data-camera=door] .present", "6", timeout=5)
        print(f"live audience change on the page {shown - emitted:.2f} s after the event")
        assert shown - emitted <= 2.0
        wait_text(browser, "[data-display=window] .ad", "Only ad")
        assert "online" in text(browser, "[data-camera=door] .badge")
        runner.join(30)
        assert not runner.is_alive()
        # The run's last interval reaches the store, and the page's history, by itself.
        wait_text(browser, "#today-total", "9", timeout=10)
        shot = tmp_path / "dashboard-1920x1080.png"
        browser.save_screenshot(str(shot))
        browser.set_window_size(390, 844)  # a phone
        time.sleep(0.5)
        assert fits(browser), browser.execute_script(
            "return [document.documentElement.scrollWidth, innerWidth]"
        )
        assert painted_pixels(browser) > 1000
        phone = tmp_path / "dashboard-phone.png"
        browser.save_screenshot(str(phone))
        print(f"screenshots: {shot} {phone}")
    finally:
        browser.set_window_size(1280, 720)
        server.stop()
        store.close()


def test_dashboard_without_a_store_says_so(tmp_path):
    config_path = one_ad_config(tmp_path)
    config = config_mod.load(config_path)
    server = DisplayServer(config, load_catalog(config.resolve(config.selector.catalog)), port=0)
    server.dashboard = Dashboard(config, live=False)
    server.start()
    try:
        state = json.loads(get(f"{server.url}/dashboard/state.json")[2])
        assert state["today"] == {
            "error": "no history yet: the audience store is written when "
            "the first interval or play ends"
        }
        assert state["live"] is False and state["cameras"]["door"]["online"] is None
        status, headers, body = get(f"{server.url}/dashboard")
        assert status == 200 and b"<canvas" in body
        assert headers["Content-Type"] == "text/html; charset=utf-8"
    finally:
        server.stop()


def test_edge_run_serves_the_dashboard_with_mqtt_health(broker, tmp_path, group_photo):
    """The wiring in `edge run`: the service feeds the dashboard, the store its history."""
    import socket

    from test_mqtt import start, stop, write_config

    with socket.socket() as s:  # a free port for player.port (0 would turn it off)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config, _ = write_config(tmp_path, broker.port, source=group_photo, interval_s=2)
    config.write_text(config.read_text().replace("player: {port: 0}", f"player: {{port: {port}}}"))
    proc = start(config)
    try:
        deadline = time.monotonic() + 60
        state = {}
        while time.monotonic() < deadline:
            try:
                state = json.loads(
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/dashboard/state.json", timeout=2
                    ).read()
                )
                if (
                    state["cameras"]["door"]["present"] == 6
                    and state["health"]["mqtt"]["connected"]
                    and state["health"]["latency_p95_ms"] is not None
                    and "periods" in state["today"]
                    and state["displays"]["window"]["ad"] != "welcome"
                ):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        _, err = stop(proc)
    finally:
        proc.kill()
    assert state["cameras"]["door"]["present"] == 6, state
    assert state["cameras"]["door"]["online"] is True and state["cameras"]["door"]["fps"]
    assert state["health"]["mqtt"] == {
        "enabled": True,
        "connected": True,
        "outbox": state["health"]["mqtt"]["outbox"],
        "dropped": 0,
        "outbox_saved": True,
    }
    assert state["displays"]["window"]["ad"] == "spring-collection"  # six adults, women first
    assert "/dashboard" in err
    # Visits end at stop: the last interval went into the store on the way out.
    result = run_edge("--config", str(config), "report", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["visitors"] == 6


def test_ranges_export_and_states_that_agree(browser, tmp_path):  # noqa: F811
    """A range read from the store (yesterday, the last 7 days, from-to), its CSV export
    equal to `edge report --format csv` for the same days, and a camera that goes offline
    showing nobody in view and its latest error, not the first."""
    import csv
    import datetime as dt
    import io

    from test_report import play_event, store_config

    from edge.events import AudienceEvent, CameraEvent, CameraStats, StatsEvent
    from edge.outputs.reporting import day_range

    from test_store import interval

    today_start, _ = day_range("today")
    yesterday_start, _ = day_range("yesterday")
    config_path = store_config(
        tmp_path,
        [
            interval("door", yesterday_start + 10 * 3600, women=4),
            play_event("spring", yesterday_start + 10 * 3600 + 60, campaign="spring-26"),
            interval("door", today_start + 60, women=1),
        ],
    )
    config = config_mod.load(config_path)
    config = dataclasses.replace(
        config, cameras=[config_mod.CameraConfig(id="door", source="/dev/video0")]
    )
    dashboard = Dashboard(config)
    server = DisplayServer(config, load_catalog(ROOT / "ads" / "catalog.yaml"), port=0)
    server.dashboard = dashboard
    server.start()
    try:
        browser.get(f"{server.url}/dashboard")
        wait_text(browser, "#today-total", "1")
        assert text(browser, "#today-watchers + .dim") == "watchers today"
        assert browser.execute_script("return document.body.dataset.connection") == "live"

        browser.execute_script(
            "const r = document.getElementById('range'); r.value = 'yesterday';"
            "r.dispatchEvent(new Event('change'))"
        )
        wait_text(browser, "#today-total", "4")
        assert text(browser, "#today-watchers + .dim") == "watchers yesterday"
        assert text(browser, "#today-plays") == "1" and text(browser, "#today-reach") == "1"
        row = browser.execute_script(
            "return [...document.querySelectorAll('#ads tr[data-ad=spring]:not(.seg) td')]"
            ".map(td => td.textContent)"
        )
        assert row[0] == "Spring" and row[3:7] == ["1", "1", "1", "100%"]
        # The chart of one day has the hour of yesterday's visitors.
        assert browser.execute_script(
            "return Chart.getChart('hours').data.labels.includes('10:00')"
        )
        href = browser.execute_script("return document.getElementById('export').href")
        assert href.endswith("/dashboard/export.csv?range=yesterday")
        status, headers, body = get(href)
        assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
        day = dt.date.fromtimestamp(yesterday_start).isoformat()
        result = run_edge(
            "--config", str(config_path), "report", "--format", "csv", "--by", "hour",
            "--from", day, "--to", day,
        )  # fmt: skip
        assert result.returncode == 0 and body.decode() == result.stdout.rstrip("\n")
        visitors = list(csv.DictReader(io.StringIO(body.decode().split("\n\n")[0])))
        assert [r["visitors"] for r in visitors if r["segment"] == "all"] == ["4"]

        browser.execute_script(
            "const r = document.getElementById('range'); r.value = '7days';"
            "r.dispatchEvent(new Event('change'))"
        )
        wait_text(browser, "#today-total", "5")
        assert browser.execute_script("return Chart.getChart('hours').data.labels.length") == 7
        history = json.loads(get(f"{server.url}/dashboard/history.json?range=custom&from={day}")[2])
        assert history["totals"]["visitors"] == 4 and history["from"] == history["to"] == day

        # Now: three people in view, then the camera fails twice with different errors.
        counts = {"child": {"female": 0, "male": 0}, "adult": {"female": 3, "male": 0},
                  "old": {"female": 0, "male": 0}}  # fmt: skip
        present = [{"watching": True}] * 3
        dashboard.emit(CameraEvent("door", "Door", True, None, 0))
        dashboard.emit(AudienceEvent("door", "t", present=present, counts=counts))
        wait_text(browser, "[data-camera=door] .present", "3")
        assert "3 watching now" in text(browser, "[data-camera=door] .dim")
        dashboard.emit(CameraEvent("door", "Door", False, "connection refused", 0))
        wait_text(browser, "[data-camera=door] .present", "0")
        assert text(browser, "[data-camera=door] .error") == "connection refused"
        stats = CameraStats(False, 0, 0, 0, 0, None, None, 0, 1, error="no route to host")
        dashboard.emit(StatsEvent("t", {"door": stats}, None, None, None, None))
        wait_text(browser, "[data-camera=door] .error", "no route to host")
        assert "offline" in text(browser, "[data-camera=door] .badge")
    finally:
        server.stop()
