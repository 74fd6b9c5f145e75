"""The event classes (edge/events.py): their JSON lines, and the MQTT payloads built
from them against the topic table that documents them (README is checked against the
generated tables in test_config.py)."""

from __future__ import annotations

import json
from dataclasses import fields

from edge import config as config_mod
from edge import events
from edge.events import (
    AudienceEvent,
    CameraEvent,
    CameraStats,
    DecisionEvent,
    ErrorEvent,
    IntervalEvent,
    PlayEvent,
    Reason,
    StatsEvent,
    SummaryEvent,
)
from edge.outputs import topics
from edge.records import Decision, empty_counts
from edge.timefmt import iso

T = "2026-11-28T09:00:00.000+00:00"
PERSON = {
    "track": 7,
    "age_class": "adult",
    "gender": "female",
    "age_class_confidence": 0.9,
    "gender_confidence": 0.8,
    "dwell_s": 2.0,
    "attention_s": 1.0,
    "watching": True,
    "samples": 3,
}


def one_of_each() -> list:
    counts = empty_counts()
    counts["adult"]["female"] = 1
    unsure = {"child": 0, "adult": 0, "old": 0}
    decision = Decision(
        "window",
        "spring",
        "Spring",
        "creatives/spring.html",
        10.0,
        "targeting",
        {"age_class": "adult", "gender": "female"},
        {"people": 1, "watchers": 1},
        1795856400.0,
    )
    return [
        CameraEvent("door", "Front door", True, None, 0),
        AudienceEvent("door", T, [PERSON, {**PERSON, "track": 8, "watching": False}], counts),
        IntervalEvent("door", T, T, counts, unsure, 1, 0, 2.0, 1.0),
        StatsEvent(
            T,
            {"door": CameraStats(True, 5.0, 5.0, 0.0, 0.0, 12.5, 0.5, 1, 0)},
            3.0,
            1.0,
            40.0,
            60.0,
        ),
        DecisionEvent.of(decision),
        PlayEvent(
            f"window/{T}",
            "window",
            "door",
            "spring",
            "Spring",
            "targeting",
            T,
            T,
            10.0,
            counts,
            counts,
            0,
            1.0,
        ),
        SummaryEvent(
            "door",
            41,
            30,
            counts,
            unsure,
            1,
            0,
            plays={"spring": {"plays": 1, "viewers": 1, "watchers": 1, "duration_s": 10.0}},
        ),
        ErrorEvent("door", "clip.mp4", "no such file", 66),
    ]


def test_every_kind_is_listed_once_and_makes_its_json_line():
    made = one_of_each()
    assert [type(e) for e in made] == list(events.EVENTS)
    assert len({e.type for e in made}) == len(made)
    for event in made:
        line = json.loads(json.dumps(event.to_json()))
        assert list(line) == ["type", *(f.name for f in fields(event))]
        assert line["type"] == event.type


def test_nested_records_and_the_optional_plays_of_a_summary():
    decision = one_of_each()[4].to_json()
    assert decision["reason"] == {
        "rule": "targeting",
        "segment": {"age_class": "adult", "gender": "female"},
        "audience": {"people": 1, "watchers": 1},
    }
    assert decision["time"] == iso(1795856400.0)
    stats = one_of_each()[3].to_json()
    assert stats["cameras"]["door"]["detector_ms"] == 12.5
    assert "plays" not in SummaryEvent("door", 1, 1, {}, {}, 0, 0, None).to_json()
    per_ad = {"spring": {"plays": 1, "viewers": 1, "watchers": 0, "duration_s": 10.0}}
    assert SummaryEvent("door", 1, 1, {}, {}, 0, 0, per_ad).to_json()["plays"] == per_ad
    assert Reason("nobody", None, {}).to_json() == {
        "rule": "nobody",
        "segment": None,
        "audience": {},
    }


def documented_keys(topic: topics.Topic) -> list[str]:
    return [
        "schema",
        *topic.added,
        *(f.name for f in fields(topic.payload)),
        *(k.split(":")[0] for k in topic.added_last),
    ]


def test_published_payloads_have_the_keys_the_topic_table_documents(tmp_path):
    """The publisher, never started (no broker): what it would send is kept as retained
    state and in the outbox."""
    from edge.outputs.publish import MqttPublisher

    config = config_mod.Config(state_dir=str(tmp_path / "state"))
    publisher = MqttPublisher(config)
    for event in one_of_each():
        publisher.emit(event)
    sent = dict(publisher._state)
    sent.update((r.topic, r.payload) for r in publisher.outbox.reports)
    name = publisher.topics.name
    expected = {
        name(topics.CAMERA_STATUS, camera="door"): topics.CAMERA_STATUS,
        name(topics.CAMERA_AUDIENCE, camera="door"): topics.CAMERA_AUDIENCE,
        name(topics.CAMERA_COUNTS, camera="door"): topics.CAMERA_COUNTS,
        name(topics.DISPLAY_CONTENT, display="window"): topics.DISPLAY_CONTENT,
        name(topics.DISPLAY_PLAYS, display="window"): topics.DISPLAY_PLAYS,
    }
    assert set(sent) == set(expected)  # stats go out only while connected (test_mqtt.py)
    for topic_name, topic in expected.items():
        payload = json.loads(sent[topic_name])
        assert list(payload) == documented_keys(topic), topic_name
        assert payload["schema"] == topics.SCHEMA_VERSION and payload["time"]
    audience = json.loads(sent[name(topics.CAMERA_AUDIENCE, camera="door")])
    assert (audience["present"], audience["watching"], audience["unclassified"]) == (2, 1, 1)
    counts = json.loads(sent[name(topics.CAMERA_COUNTS, camera="door")])
    assert counts["id"] == f"door/{T}"


def test_stats_topic_documents_the_stats_event_and_the_publisher_status():
    doc = topics.STATS.payload_doc()
    assert doc.startswith("`{schema, time, cameras: {<camera>: {online, capture_fps,")
    # then the keys the publisher adds: its own status, and the box's time zone (edge hq)
    assert doc.endswith("mqtt: {connected, outbox, dropped, outbox_saved}, timezone}`")
