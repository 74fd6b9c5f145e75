"""`edge report` on a store filled by real runs on the shared clips: its totals equal
the runs' summaries."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os

import pytest

from conftest import ROOT, need, run_edge

CLIPS = (
    "face-demographics-walking-and-pause.gif",
    "head-pose-face-detection-female-and-male.gif",
    "store-aisle-detection.gif",
)
SEGMENT_KEYS = (  # docs/metrics.md: everyone in exactly one
    "child_female",
    "child_male",
    "child_unknown",
    "adult_female",
    "adult_male",
    "adult_unknown",
    "old_female",
    "old_male",
    "old_unknown",
    "unclassified",
)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """(config, summaries): the three shared clips run into one store, as the entrance
    camera followed by the window display with the repository's ad catalog."""
    tmp = tmp_path_factory.mktemp("report")
    config = tmp / "config.yaml"
    config.write_text(
        f"models: {{dir: {ROOT / 'models'}}}\n"
        "cameras: [{id: entrance, source: /dev/video0}]\n"
        "displays: [{id: window, camera: entrance}]\n"
        f"selector: {{catalog: {ROOT / 'ads' / 'catalog.yaml'}}}\n"
        f"state_dir: {tmp / 'state'}\n"
    )
    summaries = []
    for clip in CLIPS:
        path = need(f"media/{clip}")
        result = run_edge(
            "--config", str(config), "run", "--source", str(path), "--jsonl", "--store"
        )
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads(result.stdout.splitlines()[-1]))
    return config, summaries


def report(config, *args, env=None):
    result = run_edge("--config", str(config), "report", *args, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def summary_segments(summaries) -> dict:
    """The runs' visitors by report segment: gender unknown and unclassified included."""
    out = dict.fromkeys(SEGMENT_KEYS, 0)
    for s in summaries:
        for c, by_g in s["unique_visitors"].items():
            for g, n in by_g.items():
                out[f"{c}_{g}"] += n
        for c, n in s["gender_unknown"].items():
            out[f"{c}_unknown"] += n
        out["unclassified"] += s["unclassified"]
    return out


@pytest.mark.slow
def test_report_totals_equal_the_runs_summaries(filled):
    config, summaries = filled
    data = json.loads(report(config, "--format", "json"))
    expected = summary_segments(summaries)
    totals = data["totals"]
    assert {k: v["visitors"] for k, v in totals["segments"].items()} == expected
    assert totals["visitors"] == sum(expected.values())  # everyone, nobody dropped
    assert expected["adult_female"] == 3 and expected["adult_male"] == 2  # 2+1, 1+1, 0
    assert totals["watchers"] == sum(s["watchers"] for s in summaries)
    assert totals["store"] == data["store"] == "store1"
    per_ad = {}
    for s in summaries:
        for ad, figures in s["plays"].items():
            mine = per_ad.setdefault(ad, {"plays": 0, "viewers": 0, "watchers": 0})
            for key in mine:
                mine[key] += figures[key]
    # The summary's viewers and watchers leave the unclassified out; impressions do not.
    assert {
        a["ad"]: {
            "plays": a["plays"],
            "viewers": a["impressions"] - a["segments"]["unclassified"]["impressions"],
            "watchers": a["watchers"] - (a["segments"]["unclassified"]["watchers"] or 0),
        }
        for a in data["ads"]
    } == per_ad
    for ad in data["ads"]:
        assert ad["watch_rate"] == (
            round(ad["watchers"] / ad["impressions"], 3) if ad["impressions"] else None
        )
        assert ad["screen_time_s"] > 0
        assert ad["reach"] <= ad["impressions"]
    assert sum(a["plays"] for a in data["ads"]) == totals["plays"] >= 3
    # All of it happened just now, in the box's time zone (a run near midnight: two days).
    days = {(dt.date.today() - dt.timedelta(days=n)).isoformat() for n in (0, 1)}
    assert data["periods"] and {p["period"] for p in data["periods"]} <= days


@pytest.mark.slow
def test_table_csv_and_hours(filled):
    config, summaries = filled
    table = report(config)
    assert table.startswith("Store store1: visitors per day") and "\nAds\n" in table
    total_line = next(line for line in table.splitlines() if line.startswith("total"))
    expected = summary_segments(summaries)
    assert total_line.split()[1:12] == [
        *(str(expected[k]) for k in SEGMENT_KEYS),
        str(sum(expected.values())),
    ]
    assert "spring-collection" in table and "Spring collection" in table
    text = report(config, "--format", "csv", "--by", "hour")
    visitors, ads, ad_periods = text.split("\n\n")
    rows = list(csv.DictReader(io.StringIO(visitors)))
    everyone = [r for r in rows if r["segment"] == "all"]
    assert sum(int(r["visitors"]) for r in everyone) == sum(expected.values())
    assert all(len(r["period"]) == 16 and r["period"].endswith(":00") for r in rows)
    assert all(r["store"] == "store1" and r["utc_offset"][0] in "+-" for r in rows)
    ad_rows = list(csv.DictReader(io.StringIO(ads)))
    assert {r["ad"] for r in ad_rows} >= {"welcome", "spring-collection"}
    assert {"impressions", "reach", "watch_rate", "campaign"} <= set(ad_rows[0])
    per_hour = list(csv.DictReader(io.StringIO(ad_periods)))
    assert sum(int(r["plays"]) for r in per_hour if r["segment"] == "all") == sum(
        int(r["plays"]) for r in ad_rows if r["segment"] == "all"
    )


@pytest.mark.slow
def test_filters_and_time_zone(filled):
    config, _ = filled
    data = json.loads(report(config, "--format", "json", "--display", "window"))
    assert data["ads"]
    only = json.loads(report(config, "--format", "json", "--ad", "welcome"))
    assert [a["ad"] for a in only["ads"]] == ["welcome"]
    assert "no counts or plays from 2001-01-01" in report(
        config, "--from", "2001-01-01", "--to", "2001-01-31"
    )
    # Hours are the box's: the same store read with the clock fourteen hours ahead.
    local = json.loads(report(config, "--format", "json", "--by", "hour", env={"TZ": "UTC"}))[
        "periods"
    ][0]
    ahead = json.loads(
        report(config, "--format", "json", "--by", "hour", env={"TZ": "Etc/GMT-14"})
    )["periods"][0]
    shift = dt.datetime.fromisoformat(ahead["period"]) - dt.datetime.fromisoformat(local["period"])
    assert shift == dt.timedelta(hours=14)
    assert (local["utc_offset"], ahead["utc_offset"]) == ("+00:00", "+14:00")
    # --to a date includes that whole day
    today = dt.date.today().isoformat()
    whole = json.loads(report(config, "--format", "json"))["totals"]["visitors"]
    assert (
        json.loads(
            report(config, "--format", "json", "--from", today, "--to", today, env={"TZ": "UTC"})
        )["totals"]["visitors"]
        == whole
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "value", "known"),
    [
        ("--camera", "nosuch", "entrance"),
        ("--display", "lobby", "window"),
        ("--ad", "x", "welcome"),
    ],
)
def test_an_unknown_id_is_one_line_naming_the_known_ones(filled, option, value, known):
    config, _ = filled
    result = run_edge("--config", str(config), "report", option, value)
    assert result.returncode == 64 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"'{value}' in the audience store; known: " in result.stderr
    assert known in result.stderr


def test_missing_or_empty_store_is_one_clear_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = run_edge("--config", str(config), "report")
    assert result.returncode == 66 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no audience store yet" in result.stderr and "audience.db" in result.stderr
    from edge.outputs.store import AudienceStore

    AudienceStore(tmp_path / "state" / "audience.db").start().close()
    result = run_edge("--config", str(config), "report", "--format", "json")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [
        f"{tmp_path / 'state' / 'audience.db'}: no counts or plays"
    ]


def test_bad_date_is_one_line(tmp_path):
    result = run_edge("report", "--from", "28.11.2026")
    assert result.returncode == 2 and "'28.11.2026' is not a date" in result.stderr


def play_event(ad: str, start: float, *, campaign: str = "", impressions=1, reach=1, watchers=1):
    from edge.events import PlayEvent
    from edge.timefmt import iso

    figures = {
        "impressions": impressions,
        "reach": reach,
        "watchers": watchers,
        "attention_s": 2.0,
        "dwell_s": 6.0,
    }
    return PlayEvent(
        f"window/{iso(start)}", "window", "door", ad, ad.title(), "targeting",
        iso(start), iso(start + 10), 10.0,
        viewers={"adult": {"female": impressions, "male": 0, "unknown": 0}},
        watchers={"adult": {"female": watchers, "male": 0, "unknown": 0}},
        unclassified=0, attention_s=2.0, segments={"adult_female": figures},
        campaign=campaign, advertiser="Acme" if campaign else "",
    )  # fmt: skip


def store_config(tmp_path, events, store_id="store1"):
    """A config whose state folder holds a store with `events` written by the real store."""
    from edge.outputs.store import AudienceStore

    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {state}\nmqtt: {{store_id: {store_id}}}\n")
    store = AudienceStore(state / "audience.db").start()
    try:
        for event in events:
            store.emit(event)
        assert store.flush()
    finally:
        store.close()
    return config


def test_a_campaign_report_groups_two_ads(tmp_path):
    import time

    now = time.time() - 3600
    config = store_config(
        tmp_path,
        [
            play_event("spring-dress", now, campaign="spring-26"),
            play_event("spring-shoes", now + 10, campaign="spring-26", reach=0),
            play_event("spring-shoes", now + 20, campaign="spring-26", reach=1, watchers=0),
            play_event("grooming", now + 30),
        ],
        store_id="berlin-7",
    )
    data = json.loads(report(config, "--by", "campaign", "--format", "json"))
    campaigns = {c["campaign"]: c for c in data["ads"]}
    assert set(campaigns) == {"spring-26", ""}  # an ad without a campaign: its own row
    spring = campaigns["spring-26"]
    assert spring["ads"] == ["spring-dress", "spring-shoes"] and spring["advertiser"] == "Acme"
    assert (spring["plays"], spring["impressions"], spring["reach"], spring["watchers"]) == (
        3,
        3,
        2,
        2,
    )
    assert spring["watch_rate"] == round(2 / 3, 3) and spring["screen_time_s"] == 30.0
    assert spring["segments"]["adult_female"]["mean_dwell_s"] == 6.0
    assert spring["store"] == "berlin-7"
    table = report(config, "--by", "campaign")
    assert "Campaigns" in table and "spring-26" in table and "Acme" in table
    assert "Campaigns per day" in table
    _, ads, _ = report(config, "--by", "campaign", "--format", "csv").split("\n\n")
    rows = list(csv.DictReader(io.StringIO(ads)))
    assert [(r["store"], r["campaign"], r["segment"], r["plays"]) for r in rows][:2] == [
        ("berlin-7", "spring-26", "all", "3"),
        ("berlin-7", "spring-26", "adult_female", ""),
    ]


def test_the_autumn_change_gives_two_0200_rows_with_their_offsets(tmp_path):
    from test_store import interval

    # Europe/Berlin, night of 25 October 2026: 02:00-03:00 happens twice, first at
    # +02:00 (00:00 UTC), then at +01:00 (01:00 UTC).
    first = dt.datetime(2026, 10, 25, 0, 15, tzinfo=dt.UTC).timestamp()
    second = dt.datetime(2026, 10, 25, 1, 15, tzinfo=dt.UTC).timestamp()
    config = store_config(
        tmp_path,
        [interval("door", first, women=1), interval("door", second, women=2)]
        + [play_event("spring", first), play_event("spring", second)],
    )
    berlin = {"TZ": "Europe/Berlin"}
    data = json.loads(report(config, "--by", "hour", "--format", "json", env=berlin))
    rows = [(p["period"], p["utc_offset"], p["visitors"]) for p in data["periods"]]
    assert rows == [("2026-10-25 02:00", "+02:00", 1), ("2026-10-25 02:00", "+01:00", 2)]
    per_ad = [(p["period"], p["utc_offset"], p["plays"]) for p in data["ad_periods"]]
    assert per_ad == [("2026-10-25 02:00", "+02:00", 1), ("2026-10-25 02:00", "+01:00", 1)]
    table = report(config, "--by", "hour", env=berlin)
    assert "2026-10-25 02:00  +02:00" in table and "2026-10-25 02:00  +01:00" in table
    print(table)
    # By day it is one day of 25 hours.
    days = json.loads(report(config, "--format", "json", env=berlin))["periods"]
    assert [(p["period"], p["visitors"]) for p in days] == [("2026-10-25", 3)]


def test_a_store_not_yet_migrated_is_one_line_saying_what_to_do(tmp_path):
    import sqlite3

    from edge.outputs import store as store_mod

    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    (tmp_path / "state").mkdir()
    conn = sqlite3.connect(tmp_path / "state" / "audience.db", isolation_level=None)
    conn.executescript(f"BEGIN;\n{store_mod.MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    conn.close()
    result = run_edge("--config", str(config), "report")
    assert result.returncode == 78 and len(result.stderr.strip().splitlines()) == 1
    assert "schema version 1" in result.stderr and "start `edge run` once" in result.stderr


def test_the_spring_change_and_its_offset_stretches(tmp_path):
    import zoneinfo

    from edge.outputs.reporting import offset_stretches

    from test_store import interval

    # Europe/Berlin, 29 March 2026: 02:00 +01:00 becomes 03:00 +02:00 at 01:00 UTC.
    change = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC).timestamp()
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    assert offset_stretches(berlin, change - 5 * 86400, change + 86400) == [
        (change - 5 * 86400, change, 3600),
        (change, change + 86400 + 1, 7200),
    ]
    assert offset_stretches(berlin, change + 1, change + 3600) == [
        (change + 1, change + 3601, 7200)
    ]
    config = store_config(
        tmp_path,
        [interval("door", change - 1, women=1), interval("door", change, women=2)]
        + [play_event("spring", change - 1), play_event("spring", change + 1)],
    )
    berlin_tz = {"TZ": "Europe/Berlin"}
    data = json.loads(report(config, "--by", "hour", "--format", "json", env=berlin_tz))
    rows = [(p["period"], p["utc_offset"], p["visitors"]) for p in data["periods"]]
    assert rows == [("2026-03-29 01:00", "+01:00", 1), ("2026-03-29 03:00", "+02:00", 2)]
    days = json.loads(report(config, "--format", "json", env=berlin_tz))["periods"]
    assert [(p["period"], p["utc_offset"], p["visitors"]) for p in days] == [
        ("2026-03-29", "+01:00", 3)
    ]
