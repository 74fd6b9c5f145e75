"""What `edge hq` makes of one MQTT message: rows for the database, or a rejection.

Payloads are the box's own (edge/outputs/publish.py, classes of edge/events.py); each
is checked field by field against those classes, so a message that the box could not
have sent is rejected with a reason instead of half-written. The store id is the
topic's; a payload that names another store is rejected, so one store's credentials
cannot write another store's rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from edge.events import CameraEvent, IntervalEvent, Payload, PlayEvent
from edge.hq import schema
from edge.outputs import store as box_store
from edge.outputs.topics import SCHEMA_VERSION
from edge.records import SEGMENTS

STORE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as the box's mqtt.store_id
INT_MAX = 2**31 - 1  # PostgreSQL integer
EXCERPT = 200  # characters of a rejected payload kept
ZONE = re.compile(r"[A-Za-z0-9_+\-/:]{1,64}")

# Subscribed topics below <prefix>/<store>/ (edge/outputs/topics.py; the bridge's own
# notification topic, mosquitto/bridge-hq.conf.example).
PATTERNS = (
    "cameras/+/counts",
    "displays/+/plays",
    "cameras/+/status",
    "availability",
    "stats",
    "bridge/+",
)


class Rejected(Exception):
    """A message that cannot be ingested: `key` is the kind of problem (for metrics and
    the once-a-minute log), the message says what exactly."""

    def __init__(self, key: str, detail: str):
        super().__init__(f"{key}: {detail}" if detail else key)
        self.key = key


@dataclass
class Parsed:
    kind: str  # counts, plays, status, availability, stats, bridge
    store: str
    time: dt.datetime | None = None  # the payload's own time (lag)
    rows: dict[str, list[tuple]] = field(default_factory=dict)  # table -> rows
    start: dt.datetime | None = None  # a record's start_ts (partition)
    status: tuple | None = None  # a camera_status row
    online: bool | None = None
    availability: str | None = None
    stats: str | None = None  # JSON text
    zone: str | None = None  # IANA name or offset, as the box says it
    offset: str | None = None  # the UTC offset of the payload's time


def excerpt(payload: bytes) -> str:
    text = payload[: EXCERPT * 4].decode("utf-8", "replace")[:EXCERPT]
    return text.replace("\x00", "\\0")


def parse(topic: str, payload: bytes, prefix: str, max_bytes: int) -> Parsed:
    """The message as rows; Rejected when it is not what a box sends."""
    if not topic.startswith(prefix + "/"):
        raise Rejected("bad topic", f"not below {prefix}/")
    store, _, rest = topic[len(prefix) + 1 :].partition("/")
    if not STORE_ID.fullmatch(store):
        raise Rejected("bad topic", f"store id {store[:80]!r}")
    if len(payload) > max_bytes:
        raise Rejected("oversized", f"{len(payload)} bytes (ingest.max_message_bytes {max_bytes})")
    parts = rest.split("/")
    if rest == "availability":
        return _availability(store, payload)
    if parts[0] == "bridge" and len(parts) == 2:
        return _bridge(store, payload)
    data = _json(payload)
    other = data.get("store")
    if other is not None and other != store:
        raise Rejected("store mismatch", f"payload says store {str(other)[:80]!r}")
    if data.get("schema") != SCHEMA_VERSION:
        raise Rejected("unknown schema", f"schema {str(data.get('schema'))[:20]!r}")
    if rest == "stats":
        return _stats(store, data)
    if len(parts) == 3 and parts[0] == "cameras" and parts[2] == "counts":
        return _interval(store, parts[1], data)
    if len(parts) == 3 and parts[0] == "displays" and parts[2] == "plays":
        return _play(store, parts[1], data)
    if len(parts) == 3 and parts[0] == "cameras" and parts[2] == "status":
        return _status(store, parts[1], data)
    raise Rejected("bad topic", f"{rest[:80]!r} is not an ingested topic")


# -- kinds -------------------------------------------------------------------------------


def _availability(store: str, payload: bytes) -> Parsed:
    text = payload.decode("utf-8", "replace").strip()
    if text not in ("online", "offline"):
        raise Rejected("wrong type", f"availability {text[:40]!r} (online or offline)")
    return Parsed("availability", store, online=text == "online", availability=text)


def _bridge(store: str, payload: bytes) -> Parsed:
    """Mosquitto's bridge notification (retained 1/0): a link that is down means the
    store is offline for HQ whatever its last availability said."""
    text = payload.decode("utf-8", "replace").strip()
    if text not in ("0", "1"):
        raise Rejected("wrong type", f"bridge notification {text[:40]!r} (0 or 1)")
    return Parsed("bridge", store, online=False if text == "0" else None)


def _stats(store: str, data: dict) -> Parsed:
    when = _time(data.get("time"), "time")
    if not isinstance(data.get("cameras", {}), dict):
        raise Rejected("wrong type", "'cameras' must be a mapping")
    zone = data.get("timezone")
    if zone is not None and not (isinstance(zone, str) and ZONE.fullmatch(zone)):
        raise Rejected("wrong type", f"'timezone' {str(zone)[:40]!r}")
    return Parsed(
        "stats",
        store,
        time=when,
        stats=json.dumps(data),
        zone=zone,
        offset=_offset(when),
    )


def _interval(store: str, camera: str, data: dict) -> Parsed:
    event = _event(IntervalEvent, data)
    if event.camera != camera:
        raise Rejected("camera mismatch", f"topic camera {camera!r}, payload {event.camera!r}")
    record = box_store.record_id(event)
    if data.get("id", record) != record:
        raise Rejected("wrong type", f"'id' is {str(data['id'])[:80]!r}, not camera/start")
    start, end = _time(event.start, "start"), _time(event.end, "end")
    _counts(event.unique_visitors, "unique_visitors")
    _figures(event.gender_unknown, "gender_unknown")
    row = list(box_store.interval_row(event))
    row[2], row[3] = start, end
    segments = _segments(box_store.interval_segments(event), box_store.INTERVAL_FIGURES, "visitors")
    segment_rows = box_store._segment_rows(record, segments, box_store.INTERVAL_FIGURES)
    return _report(
        "counts", store, data, start, ("intervals", row), ("interval_segments", segment_rows)
    )


def _play(store: str, display: str, data: dict) -> Parsed:
    event = _event(PlayEvent, data)
    if event.display != display:
        raise Rejected("camera mismatch", f"topic display {display!r}, payload {event.display!r}")
    start, end = _time(event.start, "start"), _time(event.end, "end")
    _counts(event.viewers, "viewers")
    _counts(event.watchers, "watchers")
    row = list(box_store.play_row(event))
    row[6], row[7] = start, end
    segments = _segments(box_store.play_segments(event), box_store.PLAY_FIGURES, "impressions")
    segment_rows = box_store._segment_rows(event.id, segments, box_store.PLAY_FIGURES)
    return _report("plays", store, data, start, ("plays", row), ("play_segments", segment_rows))


def _report(
    kind: str, store: str, data: dict, start: dt.datetime, main: tuple, segments: tuple
) -> Parsed:
    """An interval's or a play's rows: its own row and its segments' (table, rows), each
    row led by the store; the segments' also end with the start, their partition key."""
    (table, row), (segment_table, segment_rows) = main, segments
    return Parsed(
        kind,
        store,
        time=_payload_time(data, start),
        start=start,
        offset=_offset(start),
        rows={
            table: [(store, *row)],
            segment_table: [(store, *r, start) for r in segment_rows],
        },
    )


def _status(store: str, camera: str, data: dict) -> Parsed:
    when = _time(data.get("time"), "time")
    event = _event(CameraEvent, data)
    if event.camera != camera:
        raise Rejected("camera mismatch", f"topic camera {camera!r}, payload {event.camera!r}")
    state = "online" if event.online else "offline"
    return Parsed(
        "status",
        store,
        time=when,
        offset=_offset(when),
        status=(store, camera, event.name, event.online, state, event.error,
                event.reconnects_last_hour, when),
    )  # fmt: skip


# -- checks ------------------------------------------------------------------------------


def _json(payload: bytes) -> dict:
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected("not JSON", str(exc)[:120]) from None
    if not isinstance(data, dict):
        raise Rejected("not JSON", f"a JSON {type(data).__name__}, not an object")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type[Payload]) -> dict[str, Any]:
    """A payload class's field types, resolved once: typing.get_type_hints evaluates
    every annotation again on each call, two thirds of parsing a message (134 -> 27
    CPU ms per 1,000 of tools/fleet_sim.py's messages)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _event(cls: type[Payload], data: dict) -> Any:
    """An event of `cls` from a payload, every field checked against its type."""
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default_factory is not dataclasses.MISSING:  # added later: optional
                continue
            raise Rejected("wrong type", f"'{f.name}' is missing")
        values[f.name] = _typed(data[f.name], hints[f.name], f.name)
    return cls(**values)


def _typed(value: Any, hint: Any, key: str) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise Rejected("wrong type", f"'{key}' must not be null")
    base = typing.get_origin(allowed[0]) or allowed[0]
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise Rejected("wrong type", f"'{key}' must be {base.__name__}, got {str(value)[:40]!r}")
    if base is str and "\x00" in value:
        raise Rejected("wrong type", f"'{key}' holds a NUL character")
    if base is int and not 0 <= value <= INT_MAX:
        raise Rejected("out of range", f"'{key}' is {value}")
    if base is float and not (math.isfinite(value) and value >= 0):
        raise Rejected("out of range", f"'{key}' is {value}")
    return value


def _number(value: Any, key: str, kind: type) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise Rejected("wrong type", f"'{key}' must be a number, got {str(value)[:40]!r}")
    if not (math.isfinite(value) and 0 <= value <= (INT_MAX if kind is int else math.inf)):
        raise Rejected("out of range", f"'{key}' is {value}")


def _figures(values: Any, key: str) -> None:
    if not isinstance(values, dict):
        raise Rejected("wrong type", f"'{key}' must be a mapping")
    for name, n in values.items():
        _number(n, f"{key}.{name}", int)


def _counts(counts: dict, key: str) -> None:
    """age class x gender: {class: {gender: n}}."""
    for age_class, by_gender in counts.items():
        _figures(by_gender, f"{key}.{age_class}")


FLOAT_FIGURES = {"dwell_s", "attention_s"}


def _segments(segments: Any, figures: tuple[str, ...], required: str) -> dict:
    if not isinstance(segments, dict):
        raise Rejected("wrong type", "'segments' must be a mapping")
    for key, values in segments.items():
        if key not in SEGMENTS:
            raise Rejected("wrong type", f"'segments' has unknown segment {str(key)[:40]!r}")
        if not isinstance(values, dict):
            raise Rejected("wrong type", f"'segments.{key}' must be a mapping")
        if values.get(required) is None:
            raise Rejected("wrong type", f"'segments.{key}.{required}' is missing")
        for name in figures:
            if values.get(name) is not None:
                kind = float if name in FLOAT_FIGURES else int
                _number(values[name], f"segments.{key}.{name}", kind)
    return segments


def _time(text: Any, key: str) -> dt.datetime:
    if not isinstance(text, str):
        raise Rejected("wrong type", f"'{key}' must be an ISO 8601 time, got {str(text)[:40]!r}")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Rejected("wrong type", f"'{key}' is {text[:40]!r}, not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise Rejected("wrong type", f"'{key}' is {text[:40]!r}, a time without its zone")
    return when


def _payload_time(data: dict, fallback: dt.datetime) -> dt.datetime:
    try:
        return _time(data.get("time"), "time")
    except Rejected:
        return fallback


def _offset(when: dt.datetime) -> str:
    """'+01:00' (the box writes its local times with their offset)."""
    offset = when.utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def columns(table: str) -> tuple[str, ...]:
    return schema.columns(table)
