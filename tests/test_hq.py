"""`edge hq` as a real process, between a real Mosquitto (MQTT 5 shared subscriptions)
and a real PostgreSQL (tests/postgres.py). Messages come from the box's own publisher
(edge/outputs/publish.py, MqttPublisher) with the box's event classes, so what is
ingested is what a store sends."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from edge import config as config_mod
from edge.events import CameraEvent, IntervalEvent, PlayEvent, StatsEvent
from edge.hq import schema
from edge.outputs.publish import MqttPublisher
from edge.timefmt import zone_name

from broker import free_port
from conftest import edge_process, run_edge

pytestmark = pytest.mark.xdist_group("postgres")

START = dt.datetime.now().astimezone().replace(microsecond=0) - dt.timedelta(days=1)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def interval(camera: str, n: int, visitors: int = 3) -> IntervalEvent:
    """The n-th minute's interval of a camera, `visitors` adult women among others."""
    start = START + dt.timedelta(minutes=n)
    return IntervalEvent(
        camera,
        iso(start),
        iso(start + dt.timedelta(minutes=1)),
        {"adult": {"female": visitors, "male": 1}, "child": {"female": 0, "male": 0}},
        {"adult": 1},
        2,
        1,
        40.0,
        7.5,
        {
            "adult_female": {"visitors": visitors, "watchers": 1, "dwell_s": 30.0,
                             "attention_s": 5.0},
            "adult_male": {"visitors": 1, "watchers": 1, "dwell_s": 10.0, "attention_s": 2.5},
            "adult_unknown": {"visitors": 1, "watchers": 0, "dwell_s": 0.0, "attention_s": 0.0},
            "unclassified": {"visitors": 1},
        },
    )  # fmt: skip


def play(display: str, n: int) -> PlayEvent:
    start = START + dt.timedelta(minutes=n, seconds=5)
    return PlayEvent(
        f"{display}/{iso(start)}",
        display,
        "door",
        "spring",
        "Spring sale",
        "segment",
        iso(start),
        iso(start + dt.timedelta(seconds=15)),
        15.0,
        {"adult": {"female": 2, "male": 0, "unknown": 1}},
        {"adult": {"female": 1, "male": 0, "unknown": 0}},
        0,
        3.0,
        {"adult_female": {"impressions": 2, "reach": 2, "watchers": 1, "attention_s": 3.0,
                          "dwell_s": 9.0}},
        "spring-2026",
        "Acme",
    )  # fmt: skip


class Box:
    """A store box's MQTT side: the real publisher of `edge run`, its outbox included."""

    def __init__(self, tmp_path: Path, port: int, store: str):
        folder = tmp_path / f"box-{store}"
        folder.mkdir(exist_ok=True)
        (folder / "config.yaml").write_text(
            f"mqtt: {{enabled: true, host: 127.0.0.1, port: {port}, store_id: {store}}}\n"
            f"state_dir: {folder / 'state'}\n"
        )
        self.publisher = MqttPublisher(config_mod.load(folder / "config.yaml"))
        self.publisher.start()
        deadline = time.monotonic() + 10
        while not self.publisher.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.publisher.connected

    def emit(self, *events) -> None:
        for event in events:
            self.publisher.emit(event)

    def flush(self, timeout: float = 20) -> None:
        """Until the broker has acknowledged every report."""
        deadline = time.monotonic() + timeout
        while self.publisher.status().outbox and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.publisher.status().outbox == 0

    def close(self) -> None:
        self.publisher.close()


def hq_config(tmp_path: Path, port: int, url: str, name: str = "hq", **sections) -> Path:
    settings = {
        "broker": {"host": "127.0.0.1", "port": port, "client_id": f"test-{name}",
                   "share_group": "hq", "keepalive_s": 5},
        "database": {"url": url, "connect_timeout_s": 2},
        "ingest": {"batch_size": 50, "max_delay_s": 0.05},
        "metrics": {"port": 0},
    }  # fmt: skip
    for key, values in sections.items():
        settings.setdefault(key, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


class Hq:
    """`edge hq CONFIG` as a subprocess, its log in a file."""

    def __init__(self, config: Path):
        self.config = config
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, subscribed: bool = True) -> Hq:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as out:
            self.proc = edge_process("hq", str(self.config), stdout=out, stderr=out)
        if subscribed:
            self.wait_log(r"hq: subscribed", offset=offset)
        return self

    def text(self, offset: int = 0) -> str:
        return self.log.read_text(errors="replace")[offset:]

    def wait_log(self, pattern: str, timeout: float = 30, offset: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text(offset)):
                return
            assert self.proc is not None and self.proc.poll() is None, self.text()
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log:\n{self.text()[-3000:]}")

    def metric(self, port: int, name: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        status = self.proc.wait(timeout=30)
        self.proc = None
        return status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture()
def hqs():
    started: list[Hq] = []

    def make(config: Path) -> Hq:
        hq = Hq(config)
        started.append(hq)
        return hq

    yield make
    for hq in started:
        hq.kill()


def query(url: str, sql: str, *args):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def totals(url: str) -> tuple:
    """(intervals, adult women counted, interval segment rows, plays, impressions)."""
    return query(
        url,
        "SELECT (SELECT count(*) FROM intervals), "
        "(SELECT coalesce(sum(visitors_adult_female), 0) FROM intervals), "
        "(SELECT count(*) FROM interval_segments), (SELECT count(*) FROM plays), "
        "(SELECT coalesce(sum(impressions), 0) FROM play_segments)",
    )[0]


def wait_for(predicate, timeout: float = 30, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what or predicate}")


def expected(intervals: int, plays: int = 0, visitors: int = 3) -> tuple:
    return (intervals, intervals * visitors, intervals * 4, plays, plays * 2)


def test_a_box_s_messages_arrive_as_rows(make_broker, pg_url, tmp_path, hqs):
    broker = make_broker()
    metrics = free_port()
    hq = hqs(hq_config(tmp_path, broker.port, pg_url, metrics={"port": metrics})).start()
    box = Box(tmp_path, broker.port, "s1")
    try:
        box.emit(*(interval("door", n) for n in range(30)), *(play("front", n) for n in range(5)))
        box.emit(CameraEvent("door", "Door", False, "no frames for 10 s", 2))
        box.emit(
            StatsEvent(iso(START), {}, None, None, None, None)
        )  # the box's stats, with its zone
        box.flush()
        wait_for(lambda: totals(pg_url) == expected(30, 5), what=f"{totals(pg_url)}")
    finally:
        box.close()  # publishes availability offline on its way out
    wait_for(lambda: query(pg_url, "SELECT online FROM stores") == [(False,)])
    row = query(
        pg_url,
        "SELECT store, camera, id, start_ts, visitors_adult_male, watchers, dwell_s "
        "FROM intervals ORDER BY start_ts LIMIT 1",
    )[0]
    first = interval("door", 0)
    assert row == ("s1", "door", f"door/{first.start}", dt.datetime.fromisoformat(first.start),
                   1, 2, 40.0)  # fmt: skip
    segment = query(
        pg_url,
        "SELECT age_class, gender, visitors, watchers, attention_s FROM interval_segments "
        "WHERE interval_id = %s AND segment = 'adult_female'",
        f"door/{first.start}",
    )
    assert segment == [("adult", "female", 3, 1, 5.0)]
    campaign = query(pg_url, "SELECT DISTINCT store, display, campaign, advertiser FROM plays")
    assert campaign == [("s1", "front", "spring-2026", "Acme")]
    status = query(pg_url, "SELECT store, camera, online, state, error FROM camera_status")
    assert status == [("s1", "door", False, "offline", "no frames for 10 s")]
    tz, availability, stats = query(pg_url, "SELECT tz, availability, stats FROM stores")[0]
    assert tz == zone_name() and availability == "offline" and stats["timezone"] == zone_name()
    assert query(pg_url, "SELECT count(*) FROM rejected") == [(0,)]
    # messages/s, lag and batch sizes on /metrics
    assert hq.metric(metrics, "edge_hq_messages_total") >= 30 + 5 + 2
    assert hq.metric(metrics, "edge_hq_lag_seconds_count") >= 35
    assert hq.metric(metrics, "edge_hq_batch_size_sum") >= 35
    assert hq.metric(metrics, "edge_hq_database_connected") == 1
    assert hq.stop() == 0


def raw_publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    client.loop_stop()
    client.disconnect()


def payload(event, **changes) -> bytes:
    data = {"schema": 1, "time": iso(START), **event.to_json(), **changes}
    del data["type"]
    return json.dumps(data).encode()


def test_hostile_messages_are_rejected_with_their_reason_and_the_ingest_goes_on(
    make_broker, pg_url, tmp_path, hqs
):
    broker = make_broker()
    config = hq_config(
        tmp_path, broker.port, pg_url, ingest={"max_message_bytes": 4096, "rejected_max_rows": 10}
    )
    hq = hqs(config).start()
    good = interval("door", 1)
    topic = "edge/s1/cameras/door/counts"
    raw_publish(
        broker.port,
        [
            (topic, b"not json at all \x00\xff"),
            (topic, payload(interval("door", 2), watchers="many")),
            (topic, payload(interval("door", 3), segments={"adult_female": {"visitors": -4}})),
            (topic, b"{" + b" " * 5000 + b"}"),
            (topic, payload(interval("door", 4), store="s2")),
            (topic, payload(interval("door", 5), schema=9)),
            ("edge/s1/cameras/other/counts", payload(interval("door", 6))),
            ("edge/s1/availability", b"maybe"),
            # valid JSON that PostgreSQL's jsonb refuses (\u0000): the batch is taken
            # apart, this one rejected, the others written
            (
                "edge/s1/stats",
                b'{"schema": 1, "time": "2026-12-01T10:00:00+01:00", "x": "\\u0000"}',
            ),
            (topic, payload(good)),
        ],
    )
    wait_for(lambda: totals(pg_url)[0] == 1)
    wait_for(lambda: query(pg_url, "SELECT count(*) FROM rejected")[0][0] == 9)
    # by topic, since a batch's refused rows are written after its others
    reasons = [r for (r,) in query(pg_url, "SELECT reason FROM rejected ORDER BY id")]
    assert sorted(r.split(":")[0] for r in reasons) == sorted(
        [
            "not JSON",
            "wrong type",
            "out of range",
            "oversized",
            "store mismatch",
            "unknown schema",
            "camera mismatch",
            "wrong type",
            "database refused",
        ]
    )
    assert any("'watchers' must be int" in r for r in reasons)
    assert any("5002 bytes" in r for r in reasons)
    assert any(r.startswith("database refused: unsupported Unicode escape") for r in reasons)
    rows = query(
        pg_url, "SELECT topic, store, payload FROM rejected WHERE reason LIKE %s", "not JSON%"
    )
    assert rows == [(topic, "s1", "not json at all \\0\ufffd")]
    assert query(pg_url, "SELECT id FROM intervals") == [(f"door/{good.start}",)]
    # The table is bounded: the newest rejected_max_rows are kept.
    raw_publish(broker.port, [(topic, f"junk {n}".encode()) for n in range(12)])
    wait_for(lambda: query(pg_url, "SELECT max(payload) FROM rejected")[0][0] == "junk 9")
    wait_for(lambda: query(pg_url, "SELECT count(*) FROM rejected")[0][0] == 10)
    kept = [p for (p,) in query(pg_url, "SELECT payload FROM rejected ORDER BY id")]
    assert kept == [f"junk {n}" for n in range(2, 12)]
    # 13 messages that were not JSON within a minute: one log line
    lines = [line for line in hq.text().splitlines() if "rejected a message" in line]
    assert sum("not JSON" in line for line in lines) == 1, lines


def test_a_kill_a_database_restart_and_a_replay_lose_and_double_nothing(
    make_broker, postgres, pg_url, tmp_path, hqs
):
    broker = make_broker()
    hq = hqs(hq_config(tmp_path, broker.port, pg_url)).start()
    box = Box(tmp_path, broker.port, "s1")
    events = [interval("door", n) for n in range(120)]
    try:
        box.emit(*events[:40])
        wait_for(lambda: totals(pg_url)[0] > 0)
        hq.kill()  # SIGKILL mid-run: what it had not acknowledged stays at the broker
        box.emit(*events[40:80])  # dealt to its session while it is down
        box.flush()
        offset = len(hq.text())
        hq.start()
        wait_for(lambda: totals(pg_url)[0] == 80, what=f"{totals(pg_url)}")
        assert "session resumed" in hq.text(offset)
        postgres.stop("fast")  # the database goes away mid-run ...
        box.emit(*events[80:])
        box.flush()
        time.sleep(1.0)
        postgres.start()  # ... and comes back: the batch in hand is written then
        wait_for(lambda: totals(pg_url) == expected(120), what=f"{totals(pg_url)}")
        assert "messages stay unacknowledged at the broker, retrying" in hq.text(offset)
        box.emit(*events)  # every message again: idempotent
        box.flush()
        time.sleep(1.0)
        assert totals(pg_url) == expected(120)
        box.emit(interval("door", 500))  # and the ingest still goes on
        wait_for(lambda: totals(pg_url)[0] == 121)
    finally:
        box.close()
        if not postgres.running():
            postgres.start()
    assert hq.stop() == 0


def test_two_processes_share_the_messages_and_one_takes_over_when_the_other_leaves(
    make_broker, pg_url, tmp_path, hqs
):
    broker = make_broker()
    ports = [free_port(), free_port()]
    a, b = (
        hqs(
            hq_config(
                tmp_path,
                broker.port,
                pg_url,
                name,
                broker={"leave_on_stop": True},
                metrics={"port": port},
            )
        ).start()
        for name, port in zip(("a", "b"), ports, strict=True)
    )
    box = Box(tmp_path, broker.port, "s1")
    try:
        box.emit(*(interval("door", n) for n in range(100)))
        box.flush()
        wait_for(lambda: totals(pg_url)[0] == 100)
        shares = [a.metric(ports[0], "edge_hq_messages_total"),
                  b.metric(ports[1], "edge_hq_messages_total")]  # fmt: skip
        assert sum(shares) >= 100 and min(shares) >= 20, shares  # both got a share
        assert b.stop() == 0  # leaves the group: the broker deals everything to a
        box.emit(*(interval("door", n) for n in range(100, 200)))
        box.flush()
        wait_for(lambda: totals(pg_url) == expected(200), what=f"{totals(pg_url)}")
        assert a.metric(ports[0], "edge_hq_messages_total") >= shares[0] + 100
    finally:
        box.close()


def test_retention_drops_old_months_and_makes_partitions_ahead(make_broker, pg_url, tmp_path, hqs):
    this = schema.month_start(dt.datetime.now(dt.UTC))
    old = schema.add_months(this, -7)
    with psycopg.connect(pg_url) as conn:
        schema.migrate(conn, pg_url)
        schema.ensure_partitions(conn, {old, schema.add_months(this, -3)})
        conn.execute(
            "INSERT INTO intervals (store, id, camera, start_ts, end_ts, watchers, unclassified, "
            "dwell_s, attention_s) VALUES ('s1', 'door/x', 'door', %s, %s, 0, 0, 0, 0)",
            (dt.datetime(old.year, old.month, 2, tzinfo=dt.UTC),) * 2,
        )
        conn.commit()
    broker = make_broker()
    config = hq_config(tmp_path, broker.port, pg_url, database={"retention_months": 6})
    hqs(config).start()
    with psycopg.connect(pg_url) as conn:
        months = schema.existing_months(conn, every=False)
    assert old not in months and schema.add_months(this, -3) in months
    assert {this, schema.add_months(this, 1), schema.add_months(this, 2)} <= months
    assert query(pg_url, "SELECT count(*) FROM intervals") == [(0,)]
    # A record older than the months kept is rejected, not written to a doomed partition.
    raw_publish(broker.port, [("edge/s1/cameras/door/counts", payload(old_interval(old)))])
    wait_for(lambda: query(pg_url, "SELECT count(*) FROM rejected")[0][0] == 1)
    assert query(pg_url, "SELECT reason FROM rejected")[0][0].startswith("outside retention")


def old_interval(month: dt.date) -> IntervalEvent:
    event = interval("door", 0)
    start = dt.datetime(month.year, month.month, 3, 10, tzinfo=dt.UTC)
    return IntervalEvent(
        **{**event.__dict__, "start": iso(start), "end": iso(start + dt.timedelta(minutes=1))}
    )


def test_reference_in_docs_is_current():
    """docs/hq.md's key table is generated by `edge hq --reference`."""
    result = run_edge("hq", "--reference")
    text = (Path(__file__).resolve().parent.parent / "docs" / "hq.md").read_text()
    start = text.index("<!-- hq-config-reference:start -->\n") + len(
        "<!-- hq-config-reference:start -->\n"
    )
    assert result.returncode == 0
    assert text[start : text.index("<!-- hq-config-reference:end -->")] == result.stdout


def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "hq.yaml"
    path.write_text("broker: {port: 99999, share_group: 'a/b'}\ningest: {batch_sise: 3}\n")
    result = run_edge("hq", str(path))
    assert result.returncode == 78
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1, result.stderr
    for needle in ("hq.yaml", "'broker.port' is 99999", "unknown key 'ingest.batch_sise'",
                   "'broker.share_group' is 'a/b'"):  # fmt: skip
        assert needle in lines[0]


def test_the_example_hq_yaml_is_valid_and_complete():
    from edge.hq import config as hq_config

    root = Path(__file__).resolve().parent.parent
    example = hq_config.load(root / "hq.yaml")
    assert example.client_id == "edge-hq-1" and example.broker.share_group == "edge-hq"
    text = (root / "hq.yaml").read_text()
    sections = {key.split(".")[0] for key, _, _ in config_mod.reference(hq_config.HqConfig)}
    assert all(f"\n{section}:" in text for section in sections)


def test_the_box_names_its_time_zone(monkeypatch):
    """stats' `timezone` (timefmt.zone_name): the IANA name where the box has one,
    else its UTC offset now."""
    import sys

    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert zone_name() == "Europe/Berlin"
    monkeypatch.setenv("TZ", ":America/New_York")
    assert zone_name() == "America/New_York"
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/Asia/Tokyo")
    assert zone_name() == "Asia/Tokyo"
    # A POSIX rule names no zone: the offset (its sign is POSIX's, reversed).
    result = subprocess.run(
        [sys.executable, "-c", "from edge.timefmt import zone_name; print(zone_name())"],
        env={"TZ": "XYZ-5:30", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.stdout.strip() == "+05:30", result.stderr


def test_it_waits_for_a_database_that_is_down_at_start(
    make_broker, postgres, pg_url, tmp_path, hqs
):
    broker = make_broker()
    postgres.stop("fast")
    try:
        hq = hqs(hq_config(tmp_path, broker.port, pg_url)).start(subscribed=False)
        hq.wait_log(r"hq database: .*retrying")
        assert "subscribed" not in hq.text()  # nothing taken in before it can be written
    finally:
        postgres.start()
    hq.wait_log(r"hq: subscribed")
    box = Box(tmp_path, broker.port, "s1")
    try:
        box.emit(interval("door", 0))
        wait_for(lambda: totals(pg_url) == expected(1))
    finally:
        box.close()


def test_secrets_come_from_the_environment_or_credentials(tmp_path, monkeypatch):
    from edge.hq import config as hq_config_mod

    path = tmp_path / "hq.yaml"
    path.write_text("broker: {username: from-file}\n")
    for name in ("EDGE_HQ_DB_PASSWORD", "EDGE_HQ_MQTT_USERNAME", "EDGE_HQ_MQTT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "hq-db-password").write_text("db-secret\n")
    (tmp_path / "hq-mqtt-password").write_text("mqtt-secret\n")
    cfg = hq_config_mod.load(path)
    assert cfg.db_password() == "db-secret"
    assert cfg.mqtt_credentials() == ("from-file", "mqtt-secret")
    monkeypatch.setenv("EDGE_HQ_DB_PASSWORD", "env-wins")
    monkeypatch.setenv("EDGE_HQ_MQTT_USERNAME", "env-user")
    assert cfg.db_password() == "env-wins" and cfg.mqtt_credentials()[0] == "env-user"
