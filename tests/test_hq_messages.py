"""edge/hq/messages.py without a broker or a database: what one message becomes, or
why it is rejected. The payloads are the box's own (its event classes)."""

from __future__ import annotations

import json

import pytest
from test_hq import START, iso, payload, play

from edge.hq.messages import Rejected, parse


def parsed(topic: str, body: bytes, max_bytes: int = 100000):
    return parse(topic, body, "edge", max_bytes)


def test_a_play_becomes_its_row_and_segment_rows_with_the_store_in_front():
    event = play("front", 3)
    p = parsed("edge/s7/displays/front/plays", payload(event))
    (row,) = p.rows["plays"]
    assert row[:3] == ("s7", event.id, "front") and row[-2:] == ("spring-2026", "Acme")
    assert p.rows["play_segments"] == [
        ("s7", event.id, "adult_female", "adult", "female", 2, 2, 1, 3.0, 9.0, p.start)
    ]
    assert p.kind == "plays" and p.start.isoformat() == event.start.replace(".000", "")


@pytest.mark.parametrize(
    "topic, body, reason",
    [
        ("other/s1/stats", b"{}", "bad topic"),
        ("edge/s 1/stats", b"{}", "bad topic"),
        ("edge/s1/cameras/door/audience", b'{"schema": 1}', "bad topic"),
        ("edge/s1/displays/back/plays", None, "camera mismatch"),
        ("edge/s1/displays/front/plays", b"[1, 2]", "not JSON"),
        ("edge/s1/displays/front/plays", b'{"schema": 1, "x": NaN}', "not JSON"),
        ("edge/s1/displays/front/plays", b"\xff\xfe", "not JSON"),
        ("edge/s1/stats", b'{"schema": 1, "time": "2026-12-01T10:00:00"}', "wrong type"),
        ("edge/s1/stats", b'{"schema": 1, "time": "now"}', "wrong type"),
        ("edge/s1/stats", b'{"schema": 1, "time": "2026-12-01T10:00:00Z", "timezone": 5}',
         "wrong type"),
        ("edge/s1/bridge/hq", b"2", "wrong type"),
    ],
)  # fmt: skip
def test_what_a_box_cannot_send_is_rejected_with_a_reason(topic, body, reason):
    with pytest.raises(Rejected) as caught:
        parsed(topic, body if body is not None else payload(play("front", 1)))
    assert caught.value.key == reason


def test_a_changed_field_type_or_a_missing_field_is_named():
    event = play("front", 1)
    with pytest.raises(Rejected, match="'duration_s' must be float"):
        parsed("edge/s1/displays/front/plays", payload(event, duration_s="15"))
    data = json.loads(payload(event))
    del data["ad"]
    with pytest.raises(Rejected, match="'ad' is missing"):
        parsed("edge/s1/displays/front/plays", json.dumps(data).encode())
    # fields the box added later (campaign, segments) may be missing: older boxes
    del data["campaign"], data["segments"]
    data["ad"] = "spring"
    assert parsed("edge/s1/displays/front/plays", json.dumps(data).encode()).rows["plays"]


def test_stats_availability_and_the_bridge_say_how_a_store_is():
    stats = parsed(
        "edge/s1/stats",
        json.dumps(
            {"schema": 1, "time": iso(START), "cameras": {}, "timezone": "Europe/Berlin"}
        ).encode(),
    )
    assert stats.zone == "Europe/Berlin" and stats.offset == iso(START)[-6:]
    assert parsed("edge/s1/availability", b"online").online is True
    assert parsed("edge/s1/availability", b"offline").online is False
    assert parsed("edge/s1/bridge/hq", b"0").online is False
    assert parsed("edge/s1/bridge/hq", b"1").online is None  # availability says


def test_nothing_of_the_box_imports_edge_hq():
    """edge hq is the head office's: the box's packages never import it (the command
    line only, lazily, for `edge hq`)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "edge"
    importers = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "hq" not in path.relative_to(root).parts[:1]
        and re.search(r"^\s*(from|import) edge\.hq\b", path.read_text(), re.M)
    ]
    assert importers == ["cli.py"]
