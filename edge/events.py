"""The service's events: what the pipeline reports after the tracker, one frozen
dataclass per kind.

The service hands every event to every sink (outputs/sinks.py): the log or JSON lines,
the MQTT publisher, the Prometheus metrics, the audience store and the dashboard. A sink
picks the events it wants by class. `to_json()` is the JSON object of an `edge run
--jsonl` line, `"type"` first and then the fields in the order written here; the MQTT
payloads (publish.py) are built from it.

Each field's doc sits beside it: README's event table (`edge config --events`) and the
payload column of the MQTT topic table (topics.py) are generated from these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from edge.records import Decision, PresentAudience, VisitTally
from edge.timefmt import iso

COUNTS = "{child|adult|old: {female, male}}"  # age class x gender: a number of people
PLAY_COUNTS = "{child|adult|old: {female, male, unknown}}"  # plays: with unsure genders
# Per segment (records.SEGMENTS), the segment's figures; names as in docs/metrics.md.
SEGMENT_FIGURES = "{<age class>_<gender>|unclassified: {...}}"


def doc(
    text: str = "", *, shape: str = "", of: type | None = None, default_factory: Any = None
) -> Any:
    """A field with its documentation. `shape`: its JSON shape in the topic table;
    `of`: the record class of its value(s), whose own fields the tables list;
    `default_factory`: for a field added later, so older constructors still work."""
    meta = {"doc": text, "shape": shape, "of": of}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(metadata=meta)


class Payload:
    """A frozen dataclass that becomes one JSON object."""

    # Set by @dataclass on each subclass; declared so type checkers see a dataclass.
    __dataclass_fields__: ClassVar[dict[str, Any]]
    type: ClassVar[str] = ""  # the event's "type" key; "" for a record that is no event
    internal: ClassVar[bool] = False  # the loop's own signal (TickEvent...): never published
    when: ClassVar[str] = ""  # when it is emitted, for README's event table

    def to_json(self) -> dict:
        head = {"type": self.type} if self.type else {}
        return {**head, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}


def _tallied(cls: type, tally: VisitTally) -> dict[str, Any]:
    """The fields of event class `cls` that a VisitTally holds (the same names), as the
    tally has them; its own span (float `start`, `end`) the event labels itself."""
    counted = {f.name for f in fields(VisitTally)} - {"start", "end"}
    return {f.name: getattr(tally, f.name) for f in fields(cls) if f.name in counted}


def _plain(value: Any) -> Any:
    if isinstance(value, Payload):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- records inside events -----------------------------------------------------------


@dataclass(frozen=True)
class Reason(Payload):
    """Why a display shows its ad."""

    rule: str = doc('which rule chose it, see README "Ad selection"')
    segment: dict | None = doc("`{age_class, gender}` targeted; null when nobody or family-safe")
    audience: dict = doc("the audience summary the decision was based on")


@dataclass(frozen=True)
class CameraStats(Payload):
    """One camera's figures over the last stats window."""

    online: bool = doc()
    capture_fps: float = doc()
    processed_fps: float = doc()
    skipped_fps: float = doc("lost because processing fell behind")
    passed_over_fps: float = doc("left on purpose: above the camera's `fps`")
    detector_ms: float | None = doc(
        "its share of the detector run, when cameras of one "
        "frame size are detected together on a GPU"
    )
    detected_share: float | None = doc(
        "share of processed frames the detector ran on (motion gating skips still, empty scenes)"
    )
    tracks: int = doc()
    reconnects_last_hour: int = doc()
    error: str | None = doc(
        "while offline: the latest error (it changes as reconnects fail)",
        default_factory=lambda: None,
    )


# -- events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraEvent(Payload):
    type = "camera"
    when = "a camera goes online or offline"

    camera: str = doc()
    name: str = doc()
    online: bool = doc()
    error: str | None = doc()
    reconnects_last_hour: int = doc()


@dataclass(frozen=True)
class AudienceEvent(Payload):
    type = "audience"
    when = "who is present changes"

    camera: str = doc()
    time: str = doc()
    present: list[dict] = doc(
        "per person: random `track` id, `age_class`, `gender`, "
        "confidences, `dwell_s`, `attention_s`, `watching`, `samples`"
    )
    counts: dict = doc("present people by age class × gender", shape=COUNTS)

    @classmethod
    def of(cls, camera: str, time: str, audience: PresentAudience) -> AudienceEvent:
        return cls(camera, time, [p.to_json() for p in audience.people], audience.counts)

    def counts_only(self) -> AudienceCounts:
        """The same moment without the people: what goes over MQTT and to the dashboard."""
        counted = sum(n for by_gender in self.counts.values() for n in by_gender.values())
        return AudienceCounts(
            self.time,
            self.camera,
            len(self.present),
            sum(bool(p["watching"]) for p in self.present),
            len(self.present) - counted,
            self.counts,
        )


@dataclass(frozen=True)
class AudienceCounts(Payload):
    """An audience event as counts only."""

    time: str = doc()
    camera: str = doc()
    present: int = doc("people in view")
    watching: int = doc("of them, people who looked for `audience.min_attention_s`")
    unclassified: int = doc("of them, people not yet classified confidently")
    counts: dict = doc("the others by age class × gender", shape=COUNTS)


@dataclass(frozen=True)
class IntervalEvent(Payload):
    type = "interval"
    when = "every `audience.interval_s`, and at stop"

    camera: str = doc()
    start: str = doc()
    end: str = doc()
    unique_visitors: dict = doc("age class × gender", shape=COUNTS)
    gender_unknown: dict = doc(
        "per age class: visitors whose gender stayed unsure", shape="{child|adult|old}"
    )
    watchers: int = doc("visitors who looked for `audience.min_attention_s`")
    unclassified: int = doc("visitors whose age class stayed unknown (or whose visit was short)")
    dwell_s: float = doc("all visitors' time in view")
    attention_s: float = doc("all visitors' looking time")
    segments: dict = doc(
        "per segment (docs/metrics.md): `visitors`, `watchers`, `dwell_s`, `attention_s`",
        shape=SEGMENT_FIGURES.replace("...", "visitors, watchers, dwell_s, attention_s"),
        default_factory=dict,
    )

    @classmethod
    def of(cls, camera: str, tally: VisitTally, start: str, end: str) -> IntervalEvent:
        """The audience stage's tally of one interval, its fields as they are."""
        return cls(camera=camera, start=start, end=end, **_tallied(cls, tally))


@dataclass(frozen=True)
class StatsEvent(Payload):
    type = "stats"
    when = "every `stats.interval_s`"

    time: str = doc()
    cameras: dict[str, CameraStats] = doc("per camera", of=CameraStats, shape="{<camera>: {...}}")
    classifier_ms: float | None = doc()
    classifier_batch: float | None = doc()
    latency_p50_ms: float | None = doc()
    latency_p95_ms: float | None = doc("capture to decision, over the window; null: no frame")


@dataclass(frozen=True)
class DecisionEvent(Payload):
    type = "decision"
    when = "a display's ad changes"

    time: str = doc()
    display: str = doc()
    ad: str = doc()
    title: str = doc()
    creative: str = doc()
    duration_s: float = doc()
    reason: Reason = doc(of=Reason)

    @classmethod
    def of(cls, d: Decision) -> DecisionEvent:
        return cls(
            iso(d.time),
            d.display,
            d.ad,
            d.title,
            d.creative,
            d.duration_s,
            Reason(d.rule, d.segment, d.audience),
        )


@dataclass(frozen=True)
class PlayEvent(Payload):
    type = "play"
    when = "an ad on a display ends: the next one replaced it, or the service or file stopped"

    id: str = doc("display/start")
    display: str = doc()
    camera: str = doc()
    ad: str = doc()
    title: str = doc()
    rule: str = doc()
    start: str = doc()
    end: str = doc()
    duration_s: float = doc("screen time of this play (at most the ad's `duration_s`)")
    viewers: dict = doc(
        'the play\'s impressions, age class × gender, see README "Plays"', shape=PLAY_COUNTS
    )
    watchers: dict = doc("age class × gender", shape=PLAY_COUNTS)
    unclassified: int = doc("viewers whose age class stayed unknown")
    attention_s: float = doc("the viewers' looking time during the play")
    segments: dict = doc(
        "per segment (docs/metrics.md): `impressions`, `reach`, `watchers`, "
        "`attention_s`, `dwell_s`",
        shape=SEGMENT_FIGURES.replace("...", "impressions, reach, watchers, attention_s, dwell_s"),
        default_factory=dict,
    )
    campaign: str = doc("the ad's campaign in the catalog, or empty", default_factory=str)
    advertiser: str = doc("the ad's advertiser in the catalog, or empty", default_factory=str)


@dataclass(frozen=True)
class SummaryEvent(Payload):
    type = "summary"
    when = "a non-looped file ended, and always last in an offline run that read anything"

    camera: str = doc()
    frames: int = doc()
    frames_detected: int = doc("frames the detector ran on")
    unique_visitors: dict = doc()
    gender_unknown: dict = doc()
    watchers: int = doc()
    unclassified: int = doc()
    plays: dict | None = doc(
        "per ad: `plays`, `viewers`, `watchers`, `duration_s`; only with displays"
    )

    @classmethod
    def of(
        cls,
        camera: str,
        *,
        frames: int,
        frames_detected: int,
        totals: VisitTally,
        plays: dict | None,
    ) -> SummaryEvent:
        """The audience stage's tally since the start, its fields as they are."""
        return cls(
            camera=camera,
            frames=frames,
            frames_detected=frames_detected,
            plays=plays,
            **_tallied(cls, totals),
        )

    def to_json(self) -> dict:
        json = super().to_json()
        if self.plays is None:
            del json["plays"]
        return json


@dataclass(frozen=True)
class ErrorEvent(Payload):
    type = "error"
    when = "offline: the source cannot be read (exit 66) or holds bad data (exit 65)"

    camera: str = doc()
    source: str = doc()
    error: str = doc()
    exit_status: int = doc()


# -- the main loop's own signals ---------------------------------------------------------
# Not published and not in README's event table: they carry what the Prometheus metrics
# and systemd's notify socket need from the loop, so those leave the loop the one way
# every output does (a sink's emit) instead of through calls of their own. JSON lines
# and the MQTT publisher pass them over.


@dataclass(frozen=True)
class CameraCounters(Payload):
    """One camera's running totals as of a tick (the reader's since it started, the
    loop's since the service started)."""

    online: bool
    captured: int  # frames the camera delivered
    processed: int  # frames run through the pipeline
    skipped: int  # due frames lost because processing fell behind
    passed_over: int  # frames left on purpose, above the camera's fps


@dataclass(frozen=True)
class TickEvent(Payload):
    """What one tick measured, and every camera's counters after it: the snapshot the
    metrics endpoint serves, so its scrape thread never reads the loop's state."""

    type = "tick"
    internal: ClassVar[bool] = True

    detect_s: dict[str, float]  # per camera the detector ran for: its share, seconds
    classify_s: float | None  # the classifier call, seconds; None: none this tick
    classified: int  # faces in that call
    latency_s: dict[str, float]  # per camera: capture to decision, seconds (live only)
    cameras: dict[str, CameraCounters]


@dataclass(frozen=True)
class HealthEvent(Payload):
    """The loop's health for a service manager: `ready` once it runs, `alive` while it
    makes progress (systemd's watchdog), `status` with each stats line, `stopping`."""

    type = "health"
    internal: ClassVar[bool] = True

    state: str  # ready | alive | status | stopping
    status: str  # one line for `systemctl status`; empty for alive


Event = (
    CameraEvent
    | AudienceEvent
    | IntervalEvent
    | StatsEvent
    | DecisionEvent
    | PlayEvent
    | SummaryEvent
    | ErrorEvent
    | TickEvent
    | HealthEvent
)
EVENTS = (
    CameraEvent,
    AudienceEvent,
    IntervalEvent,
    StatsEvent,
    DecisionEvent,
    PlayEvent,
    SummaryEvent,
    ErrorEvent,
)


# -- documentation ---------------------------------------------------------------------


def field_list(cls: type) -> str:
    """The fields of a class for README's event table, each with its doc."""
    parts = []
    for f in fields(cls):
        meta = f.metadata
        notes = [meta["doc"]] if meta["doc"] else []
        if meta["of"] is not None:
            notes.append(field_list(meta["of"]))
        note = ": ".join(notes)
        parts.append(f"`{f.name}`" + (f" ({note})" if note else ""))
    return ", ".join(parts)


def shape(cls: type) -> str:
    """The keys of a class's JSON object for the topic table, e.g. `{camera, counts:
    {...}}`."""
    parts = []
    for f in fields(cls):
        meta = f.metadata
        text = meta["shape"]
        if meta["of"] is not None:  # "{<camera>: {...}}": the record's keys go in the {...}
            inner = shape(meta["of"])
            text = text.replace("{...}", inner) if text else inner
        parts.append(f"{f.name}: {text}" if text else f.name)
    return "{" + ", ".join(parts) + "}"


def reference() -> str:
    """README's event table."""
    rows = ["| `type` | when | fields |", "| --- | --- | --- |"]
    rows += [f"| `{e.type}` | {e.when} | {field_list(e)} |" for e in EVENTS]
    return "\n".join(rows)
