"""The fleet dashboard (edge/hq/dashboard.py) in headless Chromium, over a real
PostgreSQL holding three stores' rows: what the page shows equals the query layer's
figures, the store filter and the range change them, the CSV export is `edge report
--db`'s, and off loopback nobody gets in without the key."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from test_dashboard import fits

from edge.hq.dashboard import KEY_ENV, DashboardError, FleetDashboard, top_ads
from edge.outputs import reporting

from broker import free_port
from fleet_records import STORES, fleet
from test_display import browser, get  # noqa: F401  (browser is a fixture)

pytestmark = pytest.mark.xdist_group("postgres")

RANGE = "from=2026-10-24&to=2026-10-25"


@pytest.fixture(scope="module")
def fleet_db(postgres, tmp_path_factory):
    """The URL of a database with STORES' rows (nyc-3 offline, one of its two cameras too)."""
    url = postgres.create_database()
    fleet(tmp_path_factory.mktemp("fleet"), url)
    return url


def cells(driver, selector: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector
    )


def wait_ready(driver, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while driver.execute_script("return document.body.dataset.state") != "ready":
        assert time.monotonic() < deadline, driver.execute_script(
            "return document.getElementById('error').textContent"
        )
        time.sleep(0.05)


def test_the_page_shows_the_query_layers_figures(browser, fleet_db, tmp_path):  # noqa: F811
    source = reporting.fleet_source(fleet_db)
    expected = reporting.summarize(
        source, span=reporting.Span("2026-10-24", "2026-10-25"), by="day", stores=sorted(STORES)
    )
    assert expected["totals"]["visitors"] == 23  # the records of tests/fleet_records.py
    dashboard = FleetDashboard(fleet_db, port=0).start()
    try:
        browser.set_window_size(1600, 1000)
        browser.get(f"{dashboard.url}/?{RANGE}")
        wait_ready(browser)
        # Stores: one row each, online or not, and their totals.
        assert cells(browser, "#stores tbody tr td:first-child") == sorted(STORES)
        assert cells(browser, "#stores tr[data-store=nyc-3] .status") == ["offline"]
        assert cells(browser, "#stores tr[data-store=nyc-3] .cameras") == ["1/2"]
        assert cells(browser, "#stores tr[data-store=berlin-7] .status") == ["online"]
        for row in expected["stores"]:
            shown = {
                k: cells(browser, f"#stores tr[data-store={row['store']}] .{k}")[0]
                for k in ("visitors", "watchers", "plays", "impressions", "reach")
            }
            assert shown == {k: str(row[k]) for k in shown}, row["store"]
            where = f"#segments tr[data-store={row['store']}]"
            segments = {
                k: int(cells(browser, f"{where} [data-segment={k}]")[0])
                for k in reporting.SEGMENT_KEYS
            }
            assert segments == {k: v["visitors"] for k, v in row["segments"].items()}
        # Per store and local day: Kathmandu's midnight splits its visitors over two days.
        days = browser.execute_script(
            "return [...document.querySelectorAll('#days tbody tr')]"
            ".map(r => [r.dataset.store, r.dataset.day, r.querySelector('.visitors').textContent])"
        )
        assert days == [[p["store"], p["period"], str(p["visitors"])] for p in expected["periods"]]
        assert ["kathmandu-1", "2026-10-24", "2"] in days
        chart = browser.execute_script(
            "return Chart.getChart('days-chart').data.datasets"
            ".map(d => d.data.reduce((a, b) => a + b, 0)).reduce((a, b) => a + b, 0)"
        )
        assert chart == expected["totals"]["visitors"]
        # Top ads per segment, over the fleet: spring-dress and grooming both reach four
        # adult women; spring-dress's better watch rate (3 of 4, not 3 of 6) comes first.
        top = top_ads(expected)
        shown_top = browser.execute_script(
            "return [...document.querySelectorAll("
            "'#top-ads [data-segment=adult_female] tr[data-ad]')]"
            ".map(r => [r.dataset.ad, r.querySelector('.reach').textContent,"
            " r.querySelector('.watch-rate').textContent])"
        )
        assert shown_top == [
            [a["ad"], str(a["reach"]), f"{round(a['watch_rate'] * 100)}%"]
            for a in top["adult_female"]
        ]
        assert shown_top[:2] == [["spring-dress", "4", "75%"], ["grooming", "4", "50%"]]
        shot = tmp_path / "fleet-dashboard-1600x1000.png"
        browser.save_screenshot(str(shot))
        browser.set_window_size(390, 844)  # a phone: wide tables scroll in their box
        time.sleep(0.3)
        assert fits(browser), browser.execute_script(
            "return [document.documentElement.scrollWidth, innerWidth]"
        )
        phone = tmp_path / "fleet-dashboard-phone.png"
        browser.save_screenshot(str(phone))
        print(f"screenshots: {shot} {phone}")
        browser.set_window_size(1600, 1000)

        # The filter: two stores, one day; the page's figures follow, and its export
        # link gives edge report --db's CSV for the same view.
        browser.execute_script("""
            for (const box of document.querySelectorAll('#store-filter input'))
              box.checked = ['berlin-7', 'kathmandu-1'].includes(box.value);
            document.getElementById('from').value = '2026-10-25';
            document.getElementById('to').value = '2026-10-25';
            document.body.dataset.state = 'submitted';
            document.getElementById('apply').click();""")
        wait_ready(browser)
        assert "store=berlin-7%2Ckathmandu-1" in browser.current_url
        assert cells(browser, "#stores tbody tr td:first-child") == ["berlin-7", "kathmandu-1"]
        assert cells(browser, "#stores tr[data-store=berlin-7] .visitors") == ["7"]
        assert cells(browser, "#stores tr[data-store=kathmandu-1] .visitors") == ["5"]
        assert {d for d in cells(browser, "#days tbody tr td:nth-child(2)")} == {"2026-10-25"}
        href = browser.execute_script("return document.getElementById('export').href")
        status, headers, body = get(href)
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        filtered = reporting.summarize(
            source,
            span=reporting.Span("2026-10-25", "2026-10-25"),
            by="day",
            stores=["berlin-7", "kathmandu-1"],
        )
        assert body.decode() == reporting.as_csv(filtered)
        rows = list(csv.DictReader(io.StringIO(body.decode().split("\n\n")[0])))
        assert sum(int(r["visitors"]) for r in rows if r["segment"] == "all") == 12

        # An unknown store is one line naming the known ones.
        status, _, body = get(f"{dashboard.url}/data.json?store=paris-2")
        assert status == 400
        assert body.decode().strip() == "no store 'paris-2'; known: berlin-7, kathmandu-1, nyc-3"
    finally:
        browser.set_window_size(1280, 720)
        dashboard.close()
        source.engine.dispose()


def test_off_loopback_it_needs_the_key_and_will_not_start_without_one(fleet_db, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(DashboardError) as refused:
        FleetDashboard(fleet_db, listen="0.0.0.0", port=0).start()
    assert KEY_ENV in str(refused.value) and "\n" not in str(refused.value)
    monkeypatch.setenv(KEY_ENV, "fleet-key-42")
    with FleetDashboard(fleet_db, listen="0.0.0.0", port=0) as dashboard:
        base = f"http://127.0.0.1:{dashboard.port}"
        for path in ("/", "/data.json", "/export.csv", "/vendor/chart.umd.min.js"):
            status, headers, body = get(base + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Basic")
            assert b"store" not in body or b"key" in body
        assert get(base + "/data.json", Authorization="Bearer wrong")[0] == 401
        status, _, body = get(base + "/data.json?" + RANGE, Authorization="Bearer fleet-key-42")
        assert status == 200 and json.loads(body)["report"]["totals"]["visitors"] == 23
        basic = "Basic " + base64.b64encode(b"anyone:fleet-key-42").decode()
        assert get(base + "/", Authorization=basic)[0] == 200
        # A page elsewhere whose name was rebound to this address gets nothing.
        request = urllib.request.Request(
            base + "/data.json",
            headers={"Host": "evil.example", "Authorization": "Bearer fleet-key-42"},
        )
        with pytest.raises(urllib.error.HTTPError) as foreign:
            urllib.request.urlopen(request, timeout=5)
        assert foreign.value.code == 421
    # Started by `edge hq` from its config: the key's variable is the one it names.
    hq = SimpleNamespace(
        database=SimpleNamespace(url=fleet_db),
        dashboard=SimpleNamespace(listen="0.0.0.0", port=0, token_env="FLEET_TOKEN"),
    )
    with pytest.raises(DashboardError, match="set FLEET_TOKEN"):
        FleetDashboard(hq).start()
    monkeypatch.setenv("FLEET_TOKEN", "other-key")
    with FleetDashboard(hq) as dashboard:
        base = f"http://127.0.0.1:{dashboard.port}"
        assert get(base + "/", Authorization="Bearer fleet-key-42")[0] == 401
        assert get(base + "/", Authorization="Bearer other-key")[0] == 200


def test_edge_hq_starts_it_from_its_config(fleet_db):
    from edge.hq.config import HqConfig
    from edge.hq.service import start_dashboard

    defaults = HqConfig()
    port = free_port()
    config = dataclasses.replace(
        defaults,
        database=dataclasses.replace(defaults.database, url=fleet_db),
        dashboard=dataclasses.replace(defaults.dashboard, enabled=True, port=port),
    )
    dashboard = start_dashboard(config)
    assert dashboard is not None
    try:
        status, _, body = get(f"http://127.0.0.1:{port}/data.json?{RANGE}")
        assert status == 200 and json.loads(body)["report"]["totals"]["visitors"] == 23
    finally:
        dashboard.close()
