"""Records of a few stores, written by the box's real store (edge/outputs/store.py) into
one SQLite file per store, and the same events, as the box's publisher words them
(edge/outputs/publish.py), put into head office's PostgreSQL by `edge hq`'s own ingest
(edge/hq/ingest.py: parse, partitions, inserts, the stores and camera_status rows),
without the broker in between: the fleet report's and fleet dashboard's tests compare
the two.

The stores are chosen for their clocks: Berlin's autumn change (25 October 2026, two
02:00 hours), Kathmandu's +05:45 (local midnight at 18:15 UTC, inside a UTC hour) and
a store that gives its zone as a fixed offset (-04:00)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from edge.events import IntervalEvent, PlayEvent
from edge.outputs.store import AudienceStore
from edge.timefmt import iso

# store id -> (stores.tz at head office, the TZ the box runs with)
STORES = {
    "berlin-7": ("Europe/Berlin", "Europe/Berlin"),
    "kathmandu-1": ("Asia/Kathmandu", "Asia/Kathmandu"),
    "nyc-3": ("-04:00", "Etc/GMT+4"),
}


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def interval(camera: str, start: float, women: int, men: int, unsure: int = 0) -> IntervalEvent:
    """An interval with figures per segment, as the service writes them."""
    segments = {}
    if women:
        segments["adult_female"] = {
            "visitors": women,
            "watchers": women - 1 if women > 1 else women,
            "dwell_s": 4.25 * women,
            "attention_s": 1.5 * women,
        }
    if men:
        segments["old_male"] = {
            "visitors": men,
            "watchers": 0,
            "dwell_s": 3.0 * men,
            "attention_s": 0.0,
        }
    if unsure:
        segments["unclassified"] = {
            "visitors": unsure,
            "watchers": 0,
            "dwell_s": 0.5,
            "attention_s": 0.0,
        }
    return IntervalEvent(
        camera,
        iso(start),
        iso(start + 60),
        unique_visitors={
            "child": {"female": 0, "male": 0},
            "adult": {"female": women, "male": 0},
            "old": {"female": 0, "male": men},
        },
        gender_unknown={"child": 0, "adult": 0, "old": 0},
        watchers=sum(s["watchers"] for s in segments.values()),
        unclassified=unsure,
        dwell_s=sum(s["dwell_s"] for s in segments.values()),
        attention_s=sum(s["attention_s"] for s in segments.values()),
        segments=segments,
    )


def play(ad: str, start: float, *, campaign: str = "", women: int = 1, reach: int = 1):
    figures = {
        "impressions": women,
        "reach": reach,
        "watchers": min(women, 1),
        "attention_s": 2.0 * women,
        "dwell_s": 6.0 * women,
    }
    return PlayEvent(
        f"window/{iso(start)}", "window", "door", ad, ad.title(), "targeting",
        iso(start), iso(start + 10), 10.0,
        viewers={"adult": {"female": women, "male": 0, "unknown": 0}},
        watchers={"adult": {"female": figures["watchers"], "male": 0, "unknown": 0}},
        unclassified=0, attention_s=figures["attention_s"], segments={"adult_female": figures},
        campaign=campaign, advertiser="Acme" if campaign else "",
    )  # fmt: skip


def events(store_id: str) -> list:
    """Each store's records, around its own midnight and the Berlin change."""
    if store_id == "berlin-7":
        first = utc(2026, 10, 25, 0, 15)  # 02:15 +02:00
        second = utc(2026, 10, 25, 1, 15)  # 02:15 +01:00, the second 02:00 hour
        before = utc(2026, 10, 24, 21, 50)  # 23:50 on the 24th
        return [
            interval("door", before, 2, 1),
            interval("door", first, 1, 0, unsure=1),
            interval("door", second, 3, 2),
            play("spring-dress", before, campaign="spring-26", women=2, reach=2),
            play("spring-dress", first, campaign="spring-26"),
            play("spring-shoes", second, campaign="spring-26", reach=0),
            play("grooming", second + 30),
        ]
    if store_id == "kathmandu-1":
        midnight = utc(2026, 10, 24, 18, 15)  # 00:00 +05:45 on the 25th
        return [
            interval("door", midnight - 60, 1, 1),  # 23:59 on the 24th
            interval("door", midnight + 60, 2, 0),  # 00:01 on the 25th
            interval("door", midnight + 1800, 0, 1, unsure=2),
            play("spring-dress", midnight - 30, campaign="spring-26"),
            play("grooming", midnight + 90, women=3, reach=2),
        ]
    noon = utc(2026, 10, 25, 16, 0)  # 12:00 -04:00
    return [
        interval("entrance", noon, 4, 0),
        interval("entrance", noon + 3600, 1, 1),
        play("grooming", noon + 100, women=2, reach=1),
    ]


def write_box(folder: Path, store_id: str) -> Path:
    """The store's records in a box's SQLite store (the real writer): its path."""
    path = folder / store_id / "audience.db"
    store = AudienceStore(path).start()
    try:
        for event in events(store_id):
            store.emit(event)
        assert store.flush()
    finally:
        store.close()
    return path


def ingest_to_postgres(url: str, store_id: str, tz: str, *, online: bool = True) -> int:
    """The store's events, its availability and a stats message naming its zone, as
    MQTT messages through `edge hq`'s ingest into the database at `url` (migrated
    first); the messages written."""
    import psycopg

    from edge.events import CameraEvent
    from edge.hq import schema
    from edge.hq.config import HqConfig
    from edge.hq.ingest import Ingest, Message
    from edge.hq.metrics import HqMetrics
    from edge.outputs.publish import _fields, _json

    config = HqConfig()
    root = f"{config.broker.topic_prefix}/{store_id}"
    stamp = iso(utc(2026, 10, 26))
    messages = [
        (f"{root}/availability", b"online" if online else b"offline"),
        (f"{root}/stats", _json({"time": stamp, "cameras": {}, "timezone": tz}).encode()),
    ]
    for event in events(store_id):
        if isinstance(event, IntervalEvent):
            topic = f"{root}/cameras/{event.camera}/counts"
            payload = {"time": stamp, "id": f"{event.camera}/{event.start}", **_fields(event)}
        else:
            topic = f"{root}/displays/{event.display}/plays"
            payload = {"time": stamp, **_fields(event)}
        messages.append((topic, _json(payload).encode()))
    if not online:  # a store gone away: one camera offline, one online
        for camera, up in (("entrance", False), ("aisle", True)):
            status = CameraEvent(camera, camera.title(), up, None if up else "no frames", 0)
            payload = {"time": stamp, **_fields(status)}
            messages.append((f"{root}/cameras/{camera}/status", _json(payload).encode()))
    received = dt.datetime.now(dt.UTC)
    ingest = Ingest(config, HqMetrics())
    ingest.conn = psycopg.connect(url)
    try:
        schema.migrate(ingest.conn, url)
        batch = [Message(t, p, n, 1, received) for n, (t, p) in enumerate(messages)]
        written = ingest._write(batch)  # the ingest's transaction for one batch
    finally:
        ingest.conn.close()
    assert len(written) == len(batch), "the ingest rejected messages"
    return len(written)


def fleet(folder: Path, url: str) -> dict[str, Path]:
    """Every store of STORES written on its box and ingested at `url` (nyc-3 offline):
    store -> box path."""
    boxes = {}
    for store_id, (tz, _) in STORES.items():
        boxes[store_id] = write_box(folder, store_id)
        ingest_to_postgres(url, store_id, tz, online=store_id != "nyc-3")
    return boxes
