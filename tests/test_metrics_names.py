"""docs/metrics.md is the one set of definitions: every name the report (JSON keys, CSV
columns), the dashboard's history data and the camera's audience figures, and the MQTT
payloads of the audience, counts and plays topics use must be defined there."""

from __future__ import annotations

import csv
import io
import json
import re
import time

from test_mqtt import run_to_end, write_config
from test_report import play_event, store_config

from broker import Subscriber
from conftest import ROOT, need, run_edge
from test_store import interval

NAME = re.compile(r"`([A-Za-z0-9_]+)`")


def defined() -> set[str]:
    """The names in the first column of docs/metrics.md's tables."""
    names = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names |= set(NAME.findall(cells[1]))
    return names


def keys(value) -> set[str]:
    """Every key of every object inside a JSON value."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            found.add(key)
            found |= keys(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= keys(inner)
    return found


def test_the_names_table_is_read_and_catches_an_undefined_name():
    names = defined()
    assert {"visitors", "impressions", "reach", "watchers", "watch_rate", "attention_s"} <= names
    assert {"dwell_s", "mean_dwell_s", "screen_time_s", "plays", "utc_offset"} <= names
    assert {"adult_unknown", "unclassified", "store"} <= names
    assert keys({"visitors": 1, "viewers_total": 2}) - names == {"viewers_total"}


def test_report_and_dashboard_use_only_defined_names(tmp_path):
    from edge import config as config_mod
    from edge.outputs.dashboard import Dashboard

    now = time.time() - 60
    config_path = store_config(
        tmp_path,
        [interval("door", now - 600), play_event("spring", now - 300, campaign="spring-26")],
    )
    names = defined()
    used: dict[str, set[str]] = {}
    for by in ("hour", "day", "campaign"):
        result = run_edge("--config", str(config_path), "report", "--by", by, "--format", "json")
        assert result.returncode == 0, result.stderr
        used[f"report --by {by} (JSON)"] = keys(json.loads(result.stdout))
        result = run_edge("--config", str(config_path), "report", "--by", by, "--format", "csv")
        columns = set()
        for table in result.stdout.split("\n\n"):
            columns |= set(next(csv.reader(io.StringIO(table))))
        used[f"report --by {by} (CSV)"] = columns
    dashboard = Dashboard(config_mod.load(config_path), live=False)
    for name in ("today", "7days"):
        history = dashboard.history(name)
        assert "error" not in history and history["totals"]["visitors"] == 1
        used[f"dashboard history {name}"] = keys(history)
    camera = dashboard.snapshot()["cameras"]
    # The camera cards' audience figures (their pipeline health, online/fps, is README's).
    health = ("name", "online", "fps", "skipped_fps")
    used["dashboard now"] = keys(
        {k: v for c in camera.values() for k, v in c.items() if k not in health}
    )
    undefined = {where: sorted(k - names) for where, k in used.items() if k - names}
    assert not undefined, f"not defined in docs/metrics.md: {undefined}"


def test_mqtt_payloads_use_only_defined_names(broker, tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    config, root = write_config(tmp_path, broker.port, source=clip)
    topics = [f"{root}/cameras/+/audience", f"{root}/cameras/+/counts", f"{root}/displays/+/plays"]
    sub = Subscriber(broker.port, topics)
    run_to_end(config)
    sub.wait_for(lambda t, p, r: t.endswith("/plays"), timeout=10)
    time.sleep(0.5)
    sub.close()
    used: dict[str, set[str]] = {}
    for topic, payload, _ in sub.seen:
        if payload:
            kind = topic.rsplit("/", 1)[1]
            used[kind] = used.get(kind, set()) | keys(json.loads(payload))
    assert set(used) == {"audience", "counts", "plays"}
    assert {"impressions", "reach", "watchers"} <= used["plays"]  # per segment
    undefined = {kind: sorted(k - defined()) for kind, k in used.items() if k - defined()}
    assert not undefined, f"not defined in docs/metrics.md: {undefined}"
