"""Two stores and head office, end to end (issue 24): each store a real `edge run
--realtime` on a clip of ../shared (looped, for seconds) with its own Mosquitto,
bridged to head office by the shipped bridge-hq.conf.example (TLS, the store's own
user); head office the shipped hq.conf.example and its ACL, `edge hq` and PostgreSQL.

- Every interval and play each store produced arrives at head office under that
  store's id, and nothing else of the store's does (content, audience).
- `edge hq` is killed (SIGKILL) once the first rows are in and started again while
  the stores run: the broker keeps what arrives meanwhile in its session, and what it
  had not acknowledged is delivered again and counted once.
- PostgreSQL crashes (immediate stop, no checkpoint) right after, and comes back a
  second later: the ingest reconnects and retries its batch.
- Every report is then published again by its store (a replayed outbox): nothing
  counts twice.
- `edge report --db` per store equals that store's own `edge report` (its SQLite).

The suite's most expensive test (two services at once): one xdist group of its own."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from test_mqtt import produced_intervals, start, write_config

from broker import Subscriber
from conftest import need, run_edge
from fleet import EdgeHq, HqBroker, bridge_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleet-e2e")]

# A store per clip: different people, so figures put under the wrong store show.
STORES = {
    "store-a": ("media/face-demographics-walking-and-pause.gif", "pw-a"),
    "store-b": ("media/head-pose-face-detection-female-and-male.gif", "pw-b"),
}


# Each store reads its clip in real time, looped, for this long once its models are
# loaded: edge hq is killed while they run, whatever the machine's load.
RUN_S = "6"


def run_stores(
    tmp_path, make_broker, hq: HqBroker, during: Callable[[list], None]
) -> dict[str, dict]:
    """Both stores at once, each for RUN_S seconds of its clip (in real time), `during`
    called with their processes once they are started: per store, its config, its
    events (--jsonl) and its broker."""
    stores = {}
    for store, (clip, password) in STORES.items():
        broker = make_broker(f"{store}-broker", extra=bridge_config(store, password, hq))
        (tmp_path / store).mkdir()
        config, root = write_config(tmp_path / store, broker.port, source=need(clip), interval_s=1)
        assert root == f"edge/{store}"
        stores[store] = {"config": config, "broker": broker, "clip": need(clip)}
    for s in stores.values():
        s["proc"] = start(
            s["config"], "--source", str(s["clip"]), "--realtime", "--loop", "--duration", RUN_S
        )
    try:
        during([s["proc"] for s in stores.values()])
    except BaseException:
        for s in stores.values():
            s["proc"].kill()
        raise
    for store, s in stores.items():
        proc = s["proc"]
        try:
            out, err = proc.communicate(timeout=180)
        finally:
            proc.kill()
        assert proc.returncode == 0, f"{store}: {err[-2000:]}"
        s["events"] = [json.loads(line) for line in out.splitlines()]
    return stores


def plays_of(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "type"} for e in events if e["type"] == "play"]


def rows(postgres, db: str, table: str, store: str) -> int:
    return int(postgres.psql(f"SELECT count(*) FROM {table} WHERE store = '{store}'", db))


def test_two_stores_through_head_office_into_postgresql(tmp_path, make_broker, postgres, pg_url):
    users = {store: password for store, (_, password) in STORES.items()}
    hq = HqBroker(tmp_path / "hq", {**users, "edge-hq": "pw-hq"}).start()
    db = pg_url.rsplit("/", 1)[1]
    ingest = EdgeHq(tmp_path / "edge-hq", hq, pg_url, "pw-hq").start()
    # What reaches head office, beside the ingest (a plain subscription of its user).
    watch = Subscriber(hq.port, "edge/#", username="edge-hq", password="pw-hq")
    killed: dict = {}

    def kill_and_restart(procs: list) -> None:
        deadline = time.monotonic() + 120
        while not any(rows(postgres, db, "intervals", s) for s in STORES):
            assert time.monotonic() < deadline, f"no interval in PostgreSQL: {ingest.lines[-20:]}"
            assert any(p.poll() is None for p in procs), "the stores ended before any row"
            time.sleep(0.1)
        ingest.kill()
        killed["stores_running"] = sum(p.poll() is None for p in procs)
        killed["rows"] = {s: rows(postgres, db, "intervals", s) for s in STORES}
        time.sleep(1.0)  # the stores go on publishing; head office queues it
        ingest.start()
        # and PostgreSQL crashes under it (no shutdown checkpoint), down for a second
        postgres.restart(mode="immediate", down_seconds=1.0)
        killed["stores_running_at_pg_restart"] = sum(p.poll() is None for p in procs)

    try:
        stores = run_stores(tmp_path, make_broker, hq, kill_and_restart)
        assert killed["stores_running"] >= 1, "edge hq was killed after the stores ended"
        expected = {}
        for store, s in stores.items():
            intervals = produced_intervals(s["events"])
            plays = plays_of(s["events"])
            assert len(intervals) >= 3 and plays, (store, s["events"][-3:])
            expected[store] = {"intervals": len(intervals), "plays": len(plays)}
            root = f"edge/{store}"
            offline = (f"{root}/availability", b"offline")
            watch.wait_for(lambda t, p, r, offline=offline: (t, p) == offline)
            counts = [
                {k: v for k, v in m.items() if k not in ("schema", "time", "id")}
                for t, m in _by_store(watch, "/cameras/door/counts").get(store, [])
            ]
            assert counts == intervals, store
            got_plays = [
                {k: v for k, v in m.items() if k not in ("schema", "time")}
                for t, m in _by_store(watch, "/displays/window/plays").get(store, [])
            ]
            assert got_plays == plays, store
        topics = {t for t, _, _ in watch.seen}
        assert not any(t.endswith(("/content", "/audience")) for t in topics), topics
        assert {t.split("/")[1] for t in topics} == set(STORES)

        # Every row in PostgreSQL, once: the ingest commits in batches (max_delay_s).
        def in_db() -> dict:
            return {
                store: {table: rows(postgres, db, table, store) for table in ("intervals", "plays")}
                for store in STORES
            }

        deadline = time.monotonic() + 30
        while in_db() != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert in_db() == expected, ingest.lines[-20:]

        # A replay of every report (a store's outbox sent again, a bridge redelivering):
        # each store publishes all its counts and plays once more, with its own
        # credentials; nothing is counted twice.
        import paho.mqtt.publish as publish

        before, sent = len(watch.seen), 0
        for store, (_, password) in STORES.items():
            again = [
                {"topic": t, "payload": p, "qos": 1}
                for t, p, _ in watch.seen
                if t.startswith(f"edge/{store}/") and t.endswith(("/counts", "/plays"))
            ]
            assert again, store
            publish.multiple(
                again,
                hostname="127.0.0.1",
                port=hq.port,
                auth={"username": store, "password": password},
                client_id=f"replay-{store}",
            )
            sent += len(again)
        deadline = time.monotonic() + 10  # head office has them all (its ACL let them in)
        while len(watch.seen) < before + sent and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(watch.seen) >= before + sent, (len(watch.seen), before, sent)
        time.sleep(2.0)  # past the ingest's batch delay: a doubled row would be in by now
        assert in_db() == expected, ingest.lines[-20:]

        for store, s in stores.items():
            own = run_edge("--config", str(s["config"]), "report", "--format", "json")
            assert own.returncode == 0, own.stderr
            fleet = run_edge("report", "--db", pg_url, "--store", store, "--format", "json")
            assert fleet.returncode == 0, fleet.stderr
            own_report, fleet_report = json.loads(own.stdout), json.loads(fleet.stdout)
            assert fleet_report["totals"] == own_report["totals"], store
            assert fleet_report["ads"] == own_report["ads"], store
            totals = own_report["totals"]
            print(
                f"{store}: {expected[store]['intervals']} intervals, "
                f"{expected[store]['plays']} plays; visitors {totals['visitors']} in the "
                f"store's report and in PostgreSQL's (edge hq killed at "
                f"{killed['rows'][store]} intervals in, PostgreSQL crashed under it with "
                f"{killed['stores_running_at_pg_restart']} store(s) running, every report "
                f"replayed)"
            )
    finally:
        watch.close()
        ingest.stop()
        hq.stop()


def _by_store(sub: Subscriber, suffix: str) -> dict[str, list[tuple[str, dict]]]:
    """Reports (id-deduplicated, as a consumer keeps them) whose topic ends with suffix,
    per store id (the topic's second level)."""
    kept: dict[str, list[tuple[str, dict]]] = {}
    seen: dict[tuple[str, str], dict] = {}
    for topic, payload, _ in sub.seen:
        if not topic.endswith(suffix):
            continue
        message = json.loads(payload)
        store = topic.split("/")[1]
        key = (store, message["id"])
        if key in seen:
            assert seen[key] == message, "same id, different report"
            continue
        seen[key] = message
        kept.setdefault(store, []).append((topic, message))
    return kept
