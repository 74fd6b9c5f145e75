"""The MQTT topic tree: every topic, its payload, QoS and retain flag, in one place.

README's "MQTT topics" table is generated from TOPICS (`edge config --topics`), so
the documentation and the code cannot drift apart. Every JSON payload carries
`schema` (SCHEMA_VERSION) and `time` (ISO 8601 with zone).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Topic:
    pattern: str   # below <prefix>/<store>/
    qos: int
    retain: bool
    payload: str   # schema, for the documentation
    doc: str


AVAILABILITY = Topic(
    "availability", 1, True, "`online` or `offline` (plain text)",
    "The service's availability. The broker publishes `offline` as the last will when the "
    "connection is lost; `online` is sent again after every reconnect.")
CAMERA_STATUS = Topic(
    "cameras/<camera>/status", 1, True,
    "`{schema, time, camera, name, online, error, reconnects_last_hour}`",
    "A camera went online or offline (and the reason).")
CAMERA_AUDIENCE = Topic(
    "cameras/<camera>/audience", 1, True,
    "`{schema, time, camera, present, watching, unclassified, counts: {child|adult|old: "
    "{female, male}}}`",
    "Who is in front of the camera now, as counts only; published when it changes, retained "
    "so a dashboard that connects later sees it at once.")
CAMERA_COUNTS = Topic(
    "cameras/<camera>/counts", 1, False,
    "`{schema, time, id, camera, start, end, unique_visitors: {child|adult|old: {female, "
    "male}}, gender_unknown: {child|adult|old}, watchers, unclassified, dwell_s, "
    "attention_s}`",
    "Visitors per reporting interval (`audience.interval_s`): each visit counted once, in "
    "the interval in which it ended. Kept while the broker is away and delivered in order "
    "after reconnect; `id` (camera/start) is unique, for de-duplicating QoS 1 redeliveries.")
DISPLAY_CONTENT = Topic(
    "displays/<display>/content", 1, True,
    "`{schema, time, display, ad, title, creative, duration_s, reason: {rule, segment, "
    "audience}}`",
    "What the display shows, and why. `creative` is a path relative to the ad catalog's "
    "folder (the player serves it) or an http(s) URL. Published only when it changes.")
DISPLAY_PLAYS = Topic(
    "displays/<display>/plays", 1, False,
    "`{schema, time, id, display, camera, ad, title, rule, start, end, duration_s, "
    "viewers: {child|adult|old: {female, male}}, watchers: {...}, unclassified, attention_s}`",
    "One finished play (proof of play): an ad on the display from `start` until the next "
    "replaced it or the service stopped. `viewers`: people in front of the display's camera "
    "who counted for ad selection (in view `selector.min_dwell_s`), each once per play; "
    "`watchers`: viewers who looked for `audience.min_attention_s` during the play; "
    "`attention_s`: looking time during the play. Delivered like the counts (kept, in order, "
    "across outages and restarts); `id` (display/start) is unique, for de-duplication.")
STATS = Topic(
    "stats", 0, False,
    "`{schema, time, cameras: {<camera>: {capture_fps, processed_fps, skipped_fps, "
    "passed_over_fps, detector_ms, detected_share, tracks, reconnects_last_hour}}, "
    "classifier_ms, classifier_batch, latency_p50_ms, latency_p95_ms, mqtt: {connected, "
    "outbox, dropped, outbox_saved}}`",
    "Pipeline statistics every `stats.interval_s`; dropped while the broker is away.")

TOPICS = (AVAILABILITY, CAMERA_STATUS, CAMERA_AUDIENCE, CAMERA_COUNTS, DISPLAY_CONTENT,
          DISPLAY_PLAYS, STATS)


class Topics:
    """Concrete topic names for one store."""

    def __init__(self, prefix: str, store_id: str):
        self.root = f"{prefix}/{store_id}"

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
    rows = ["| topic (below `<topic_prefix>/<store_id>/`) | QoS | retained | payload | meaning |",
            "| --- | --- | --- | --- | --- |"]
    for t in TOPICS:
        rows.append(f"| `{t.pattern}` | {t.qos} | {'yes' if t.retain else 'no'} | {t.payload} "
                    f"| {t.doc} |")
    return "\n".join(rows)
