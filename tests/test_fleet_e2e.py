"""Two stores and head office, end to end (issue 24): each store a real `edge run
--realtime` on a clip of ../shared with its own Mosquitto, bridged to head office by
the shipped bridge-hq.conf.example (TLS, the store's own user); head office the
shipped hq.conf.example and its ACL. Every interval and play each store produced
arrives at head office under that store's id, and nothing else of the store's does.

The suite's most expensive test (two services at once): one xdist group of its own."""

from __future__ import annotations

import json

import pytest
from test_mqtt import produced_intervals, start, write_config

from broker import Subscriber
from conftest import need
from fleet import HqBroker, bridge_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleet-e2e")]

# A store per clip: different people, so figures put under the wrong store show.
STORES = {
    "store-a": ("media/face-demographics-walking-and-pause.gif", "pw-a"),
    "store-b": ("media/head-pose-face-detection-female-and-male.gif", "pw-b"),
}


def run_stores(tmp_path, make_broker, hq: HqBroker) -> dict[str, dict]:
    """Both stores at once, each to the end of its clip (read in real time): per store,
    its config, its events (--jsonl) and its broker."""
    stores = {}
    for store, (clip, password) in STORES.items():
        broker = make_broker(f"{store}-broker", extra=bridge_config(store, password, hq))
        (tmp_path / store).mkdir()
        config, root = write_config(tmp_path / store, broker.port, source=need(clip), interval_s=1)
        assert root == f"edge/{store}"
        stores[store] = {"config": config, "broker": broker, "clip": need(clip)}
    for s in stores.values():
        s["proc"] = start(s["config"], "--source", str(s["clip"]), "--realtime")
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


def test_two_stores_reach_head_office_each_under_its_own_id(tmp_path, make_broker):
    users = {store: password for store, (_, password) in STORES.items()}
    hq = HqBroker(tmp_path / "hq", {**users, "edge-hq": "pw-hq"}).start()
    ingest = Subscriber(
        hq.port,
        "edge/#",
        client_id="edge-hq-test",
        persistent=True,
        username="edge-hq",
        password="pw-hq",
    )
    try:
        stores = run_stores(tmp_path, make_broker, hq)
        for store, s in stores.items():
            intervals = produced_intervals(s["events"])
            plays = plays_of(s["events"])
            assert len(intervals) >= 3 and plays, (store, s["events"][-3:])
            root = f"edge/{store}"
            offline = (f"{root}/availability", b"offline")
            ingest.wait_for(lambda t, p, r, offline=offline: (t, p) == offline)

            counts = [
                {k: v for k, v in m.items() if k not in ("schema", "time", "id")}
                for t, m in _by_store(ingest, "/cameras/door/counts").get(store, [])
            ]
            assert counts == intervals, store
            got_plays = [
                {k: v for k, v in m.items() if k not in ("schema", "time")}
                for t, m in _by_store(ingest, "/displays/window/plays").get(store, [])
            ]
            assert got_plays == plays, store
            print(f"{store}: {len(counts)} intervals, {len(got_plays)} plays at head office")
        topics = {t for t, _, _ in ingest.seen}
        assert not any(t.endswith(("/content", "/audience")) for t in topics), topics
        assert {t.split("/")[1] for t in topics} == set(STORES)
    finally:
        ingest.close()
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
