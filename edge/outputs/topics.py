"""The MQTT topic tree: every topic, its payload, QoS and retain flag, in one place.

docs/reference.md's "MQTT topics" table is generated from TOPICS (`edge config --topics`), its
payload column from the event classes of events.py, so the documentation and the code
cannot drift apart. Every JSON payload carries `schema` (SCHEMA_VERSION) and `time`
(ISO 8601 with zone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge import events

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Topic:
    pattern: str  # below <prefix>/<store>/
    qos: int
    retain: bool
    payload: type | str  # the record it carries (events.py), or what a plain payload says
    doc: str
    added: tuple[str, ...] = ()  # keys publish.py adds before the record's own
    added_last: tuple[str, ...] = ()  # and after them

    def payload_doc(self) -> str:
        if isinstance(self.payload, str):
            return self.payload
        keys = ["schema", *self.added, events.shape(self.payload)[1:-1], *self.added_last]
        return f"`{{{', '.join(keys)}}}`"


AVAILABILITY = Topic(
    "availability",
    1,
    True,
    "`online` or `offline` (plain text)",
    "The service's availability. The broker publishes `offline` as the last will when the "
    "connection is lost; `online` is sent again after every reconnect.",
)
CAMERA_STATUS = Topic(
    "cameras/<camera>/status",
    1,
    True,
    events.CameraEvent,
    "A camera went online or offline (and the reason).",
    added=("time",),
)
CAMERA_AUDIENCE = Topic(
    "cameras/<camera>/audience",
    1,
    True,
    events.AudienceCounts,
    "Who is in front of the camera now, as counts only; published when it changes, retained "
    "so a dashboard that connects later sees it at once.",
)
CAMERA_COUNTS = Topic(
    "cameras/<camera>/counts",
    1,
    False,
    events.IntervalEvent,
    "Visitors per reporting interval (`audience.interval_s`): each visit counted once, in "
    "the interval in which it ended. Kept while the broker is away and delivered in order "
    "after reconnect; `id` (camera/start) is unique, for de-duplicating QoS 1 redeliveries.",
    added=("time", "id"),
)
DISPLAY_CONTENT = Topic(
    "displays/<display>/content",
    1,
    True,
    events.DecisionEvent,
    "What the display shows, and why. `creative` is a path relative to the ad catalog's "
    "folder (the player serves it) or an http(s) URL. Published only when it changes.",
)
DISPLAY_PLAYS = Topic(
    "displays/<display>/plays",
    1,
    False,
    events.PlayEvent,
    "One finished play (proof of play): an ad on the display from `start` until the next "
    "replaced it, the service stopped, or its `duration_s` passed (an ad held longer loops: "
    "each loop is a play). `viewers` (the play's impressions): people in front of the "
    "display's camera who counted for ad selection (in view `selector.min_dwell_s`), each "
    "once per play; `watchers`: viewers who looked for `audience.min_attention_s` during the "
    "play; `attention_s`: their looking time during the play; `segments`: per segment "
    "`impressions`, `reach`, `watchers`, `attention_s`, `dwell_s` (docs/metrics.md). "
    "Delivered like the counts (kept, in order, across outages and restarts); `id` "
    "(display/start) is unique, for de-duplication.",
    added=("time",),
)
STATS = Topic(
    "stats",
    0,
    False,
    events.StatsEvent,
    "Pipeline statistics every `stats.interval_s`; dropped while the broker is away. "
    "`timezone`: the box's IANA time zone (Europe/Berlin), or its UTC offset (+01:00) "
    "where it has no name; the head office (`edge hq`) keeps it per store.",
    added_last=(
        "mqtt: {connected, outbox, dropped, outbox_saved}",
        "timezone",
    ),
)

TOPICS = (
    AVAILABILITY,
    CAMERA_STATUS,
    CAMERA_AUDIENCE,
    CAMERA_COUNTS,
    DISPLAY_CONTENT,
    DISPLAY_PLAYS,
    STATS,
)


class Topics:
    """Concrete topic names for one store, and the entry of TOPICS each name is of (the
    publisher reads a message's QoS and retain flag from there, never writes its own)."""

    def __init__(self, prefix: str, store_id: str):
        self.root = f"{prefix}/{store_id}"
        self._specs: dict[str, Topic] = {}
        self._patterns = [
            (re.compile(re.escape(f"{self.root}/") + re.sub(r"<\w+>", "[^/]+", t.pattern) + "$"), t)
            for t in TOPICS
        ]

    def spec(self, name: str) -> Topic:
        """The entry of TOPICS a concrete topic name belongs to."""
        spec = self._specs.get(name)
        if spec is None:
            spec = next((t for pattern, t in self._patterns if pattern.match(name)), None)
            if spec is None:
                raise KeyError(f"{name}: no topic of topics.TOPICS")
            self._specs[name] = spec
        return spec

    def name(self, topic: Topic, **ids: str) -> str:
        path = topic.pattern
        for key, value in ids.items():
            path = path.replace(f"<{key}>", value)
        return f"{self.root}/{path}"

    @property
    def availability(self) -> str:
        return self.name(AVAILABILITY)

    def camera_status(self, camera: str) -> str:
        return self.name(CAMERA_STATUS, camera=camera)

    def camera_audience(self, camera: str) -> str:
        return self.name(CAMERA_AUDIENCE, camera=camera)

    def camera_counts(self, camera: str) -> str:
        return self.name(CAMERA_COUNTS, camera=camera)

    def display_content(self, display: str) -> str:
        return self.name(DISPLAY_CONTENT, display=display)

    def display_plays(self, display: str) -> str:
        return self.name(DISPLAY_PLAYS, display=display)

    @property
    def stats(self) -> str:
        return self.name(STATS)


def reference() -> str:
    """The README table."""
    rows = [
        "| topic (below `<topic_prefix>/<store_id>/`) | QoS | retained | payload | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in TOPICS:
        retained = "yes" if t.retain else "no"
        rows.append(f"| `{t.pattern}` | {t.qos} | {retained} | {t.payload_doc()} | {t.doc} |")
    return "\n".join(rows)
