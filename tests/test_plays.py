"""Plays (proof of play): per ad on a display, its viewers and watchers by segment, in
the offline run's events and summary, and over MQTT through the outbox (none lost,
in order, across a broker outage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_mqtt import outage, reporting, wait_received, write_config

from broker import Subscriber
from conftest import ROOT, need, run_edge, total

WALKING = "media/face-demographics-walking-and-pause.gif"
SEGMENTS = {("adult", "female"): 2, ("adult", "male"): 1}  # the walking clip's visitors


def nonzero(counts: dict) -> dict:
    return {(c, g): n for c, by_g in counts.items() for g, n in by_g.items() if n}


def write_catalog(folder: Path, ads: str, default: str = "welcome") -> Path:
    (folder / "creatives").mkdir(parents=True, exist_ok=True)
    (folder / "creatives" / "page.html").write_text("<h1>ad</h1>")
    path = folder / "catalog.yaml"
    path.write_text(f"default: {default}\nfamily_safe: {default}\nads:\n{ads}")
    return path


def one_ad_config(tmp_path: Path) -> Path:
    """One ad for the whole clip: the default, shown for an hour at least."""
    catalog = write_catalog(
        tmp_path / "ads",
        "  - {id: only, title: Only ad, creative: creatives/page.html, duration_s: 3600}\n",
        "only",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models: {{dir: {ROOT / 'models'}}}\n"
        "cameras: [{id: door, source: /dev/video0}]\n"
        "displays: [{id: window, camera: door}]\n"
        f"selector: {{catalog: {catalog}}}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    return config


@pytest.mark.slow
def test_one_ad_over_the_walking_clip_played_to_its_three_visitors(tmp_path):
    clip = need(WALKING)
    result = run_edge(
        "--config", str(one_ad_config(tmp_path)), "run", "--source", str(clip), "--jsonl"
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    plays = [e for e in events if e["type"] == "play"]
    assert len(plays) == 1
    play = plays[0]
    assert nonzero(play["viewers"]) == SEGMENTS
    assert (play["ad"], play["title"], play["display"], play["camera"], play["rule"]) == (
        "only",
        "Only ad",
        "window",
        "door",
        "nobody",
    )
    assert play["id"] == f"window/{play['start']}"
    assert play["duration_s"] > 3.0  # the clip is 41 frames at 12.5 fps, 3.2 s
    assert play["start"].endswith("+00:00") or play["start"][-6] in "+-"
    # Everyone looked toward the camera for well over audience.min_attention_s (1 s).
    assert nonzero(play["watchers"]) == SEGMENTS and play["unclassified"] == 0
    assert play["attention_s"] > 3.0
    assert "track" not in json.dumps(play)  # counts only
    summary = events[-1]
    assert summary["type"] == "summary"
    assert summary["plays"] == {
        "only": {"plays": 1, "viewers": 3, "watchers": 3, "duration_s": play["duration_s"]}
    }
    # The play is finished before the summary, and after the last decision.
    kinds = [e["type"] for e in events]
    assert kinds.index("play") < kinds.index("summary")


@pytest.mark.slow
def test_ad_changes_split_the_audience_between_plays(tmp_path):
    """With targeted ads the default gives way when the three count; they are viewers
    of the ad that replaced it, not of the default shown to nobody."""
    clip = need(WALKING)
    result = run_edge("--config", "config.yaml", "run", "--source", str(clip), "--jsonl")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    decisions = [e for e in events if e["type"] == "decision"]
    plays = [e for e in events if e["type"] == "play"]
    assert [p["ad"] for p in plays] == [d["ad"] for d in decisions]
    for play, decision, following in zip(plays, decisions, decisions[1:] + [None], strict=False):
        assert play["start"] == decision["time"] and play["rule"] == decision["reason"]["rule"]
        if following is not None:
            assert play["end"] == following["time"]  # back to back, no gap
    assert plays[0]["ad"] == "welcome" and nonzero(plays[0]["viewers"]) == {}
    assert nonzero(plays[-1]["viewers"]) == SEGMENTS
    per_ad = events[-1]["plays"]
    assert sum(a["plays"] for a in per_ad.values()) == len(plays)


def rotating_catalog(tmp_path: Path) -> Path:
    """Two untargeted ads of 1 s take turns while anyone is there, the default when
    nobody is: a play ends about every second."""
    return write_catalog(
        tmp_path / "ads",
        "".join(
            f"  - {{id: {ad}, title: {ad}, creative: creatives/page.html, duration_s: 1}}\n"
            for ad in ("welcome", "ad-a", "ad-b")
        ),
    )


def received_plays(sub):
    return [
        {k: v for k, v in m.items() if k not in ("schema", "time")}
        for m in sub.reports("/displays/window/plays")
    ]


def produced_plays(events):
    return [{k: v for k, v in e.items() if k != "type"} for e in events if e["type"] == "play"]


def test_broker_outage_loses_no_play_and_keeps_their_order(make_broker, tmp_path):
    clip = need(WALKING)
    catalog = rotating_catalog(tmp_path)
    broker = make_broker()
    config, root = write_config(
        tmp_path, broker.port, source=clip, loop=True, interval_s=60, catalog=catalog
    )
    topic = f"{root}/displays/window/plays"
    with reporting(broker, config, topic, "plays-test") as (sub, proc):
        produced = produced_plays(outage(broker, proc))  # plays end with no broker
        assert len(produced) >= 6
        # every one, once (repeats dropped by id), in order; the last one ended at stop
        assert wait_received(received_plays, sub, len(produced), 15) == produced
        assert len({p["id"] for p in produced}) == len(produced)
        assert any(total(p["viewers"]) for p in produced)


def test_plays_waiting_when_stopped_are_delivered_after_restart(make_broker, tmp_path):
    from test_mqtt import run_for

    clip = need(WALKING)
    catalog = rotating_catalog(tmp_path)
    broker = make_broker()
    port = broker.port
    broker.stop()  # away for the whole first run
    config, root = write_config(tmp_path, port, source=clip, loop=True, catalog=catalog)
    first, _ = run_for(config, 6)
    saved = produced_plays(first)
    assert len(saved) >= 2
    broker.start()
    sub = Subscriber(port, f"{root}/displays/window/plays")
    second, _ = run_for(config, 3)
    produced = saved + produced_plays(second)
    assert wait_received(received_plays, sub, len(produced), 10) == produced
    sub.close()


# -- loops and reach, on the plays stage itself --------------------------------------


def held_ad(seconds: float, duration_s: float = 10.0, people: int = 1):
    """One ad of `duration_s` held on a display for `seconds` while `people` adult women
    stand in front, looking, the whole time: the plays the stage reports."""
    import numpy as np

    from edge.pipeline.audience import Person
    from edge.pipeline.plays import PlayLog, PlaySettings
    from edge.records import Decision

    log = PlayLog("door", PlaySettings(1.0, 1.0, 0.5, 0.15))
    decision = Decision(
        "window", "spring", "Spring", "creatives/page.html", duration_s, "targeting",
        None, {}, 0.0, campaign="spring-26", advertiser="Acme",
    )  # fmt: skip
    crowd = {i: Person(i, 0.0, 0.0) for i in range(1, people + 1)}
    for person in crowd.values():
        person.add_sample(np.array([0.05, 0.9, 0.05]), 0.05, 40.0, 0.0)
    plays = [] if log.switch(decision, 0.0) is None else ["unexpected"]
    now = 0.0
    while now < seconds - 1e-9:
        now = round(now + 0.5, 3)
        for person in crowd.values():
            person.last_seen = now
            person.attention_s = now  # looking all along
        plays += log.observe(crowd, now)
    return plays + log.finish_all(now)


def test_an_ad_held_three_times_its_duration_is_three_plays():
    plays = held_ad(30.0, duration_s=10.0)
    assert [(p.start[11:19], p.end[11:19], p.duration_s) for p in plays] == [
        (plays[0].start[11:19], plays[1].start[11:19], 10.0),
        (plays[1].start[11:19], plays[2].start[11:19], 10.0),
        (plays[2].start[11:19], plays[2].end[11:19], 10.0),
    ]
    assert len({p.id for p in plays}) == 3 and {p.ad for p in plays} == {"spring"}
    assert {(p.campaign, p.advertiser) for p in plays} == {("spring-26", "Acme")}
    # A partial last loop is a play too, with its own screen time.
    assert [p.duration_s for p in held_ad(25.0)] == [10.0, 10.0, 5.0]


def test_one_person_in_front_of_three_plays_is_reach_1_and_impressions_3():
    plays = held_ad(30.0)
    figures = [p.segments["adult_female"] for p in plays]
    assert sum(f["impressions"] for f in figures) == 3
    assert sum(f["reach"] for f in figures) == 1 and figures[0]["reach"] == 1
    assert all(f["watchers"] == 1 for f in figures)  # looked through each loop
    assert [total(p.viewers) for p in plays] == [1, 1, 1]
    # Two people: reach 2, impressions 6; nothing in a play names a track.
    two = held_ad(30.0, people=2)
    assert sum(p.segments["adult_female"]["impressions"] for p in two) == 6
    assert sum(p.segments["adult_female"]["reach"] for p in two) == 2
    assert "track" not in json.dumps([p.to_json() for p in two])
