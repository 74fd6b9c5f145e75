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
SEGMENT_KEYS = (
    "child_female",
    "child_male",
    "adult_female",
    "adult_male",
    "old_female",
    "old_male",
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


@pytest.mark.slow
def test_report_totals_equal_the_runs_summaries(filled):
    config, summaries = filled
    data = json.loads(report(config, "--format", "json"))
    expected = {
        k: sum(s["unique_visitors"][k.split("_")[0]][k.split("_")[1]] for s in summaries)
        for k in SEGMENT_KEYS
    }
    assert data["totals"]["visitors"] == expected
    assert expected["adult_female"] == 3 and expected["adult_male"] == 2  # 2+1, 1+1, 0
    assert data["totals"]["watchers"] == sum(s["watchers"] for s in summaries)
    assert data["totals"]["unclassified"] == sum(s["unclassified"] for s in summaries)
    per_ad = {}
    for s in summaries:
        for ad, totals in s["plays"].items():
            mine = per_ad.setdefault(ad, {"plays": 0, "viewers": 0, "watchers": 0})
            for key in mine:
                mine[key] += totals[key]
    assert {
        a["ad"]: {
            "plays": a["plays"],
            "viewers": a["viewers_total"],
            "watchers": a["watchers_total"],
        }
        for a in data["ads"]
    } == per_ad
    for ad in data["ads"]:
        assert ad["watch_rate"] == (
            round(ad["watchers_total"] / ad["viewers_total"], 3) if ad["viewers_total"] else None
        )
        assert ad["screen_time_s"] > 0
    assert sum(a["plays"] for a in data["ads"]) == data["totals"]["plays"] >= 3
    # All of it happened just now, in the box's time zone (a run near midnight: two days).
    days = {(dt.date.today() - dt.timedelta(days=n)).isoformat() for n in (0, 1)}
    assert data["periods"] and {p["period"] for p in data["periods"]} <= days


@pytest.mark.slow
def test_table_csv_and_hours(filled):
    config, _ = filled
    table = report(config)
    assert table.startswith("Visitors per day") and "\nAds\n" in table
    total_line = next(line for line in table.splitlines() if line.startswith("total"))
    assert total_line.split()[1:8] == ["0", "0", "3", "2", "0", "0", "5"]
    assert "spring-collection" in table and "Spring collection" in table
    text = report(config, "--format", "csv", "--by", "hour")
    visitors, ads = text.split("\n\n")
    rows = list(csv.DictReader(io.StringIO(visitors)))
    assert sum(int(r["visitors"]) for r in rows) == 5
    assert all(len(r["period"]) == 16 and r["period"].endswith(":00") for r in rows)
    ad_rows = list(csv.DictReader(io.StringIO(ads)))
    assert {r["ad"] for r in ad_rows} >= {"welcome", "spring-collection"}


@pytest.mark.slow
def test_filters_and_time_zone(filled):
    config, _ = filled
    data = json.loads(report(config, "--format", "json", "--display", "window"))
    assert data["ads"]
    assert "no counts or plays for display lobby" in report(config, "--display", "lobby")
    assert "no counts or plays for camera till" in report(config, "--camera", "till")
    assert "no counts or plays from 2001-01-01" in report(
        config, "--from", "2001-01-01", "--to", "2001-01-31"
    )
    # Hours are the box's: the same store read with the clock fourteen hours ahead.
    local = json.loads(report(config, "--format", "json", "--by", "hour", env={"TZ": "UTC"}))[
        "periods"
    ][0]["period"]
    ahead = json.loads(
        report(config, "--format", "json", "--by", "hour", env={"TZ": "Etc/GMT-14"})
    )["periods"][0]["period"]
    shift = dt.datetime.fromisoformat(ahead) - dt.datetime.fromisoformat(local)
    assert shift == dt.timedelta(hours=14)
    # --to a date includes that whole day
    today = dt.date.today().isoformat()
    assert (
        json.loads(
            report(config, "--format", "json", "--from", today, "--to", today, env={"TZ": "UTC"})
        )["totals"]["visitors_total"]
        == 5
    )


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
