"""The audience store: real SQLite files, a real writer killed mid-batch, and the
store a real run fills."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edge.events import AudienceEvent, IntervalEvent
from edge.outputs import store as store_mod
from edge.outputs.store import AudienceStore, StoreError

from conftest import ROOT, need, run_edge


def interval(camera: str, start: float, women: int = 1, length_s: float = 60) -> IntervalEvent:
    from edge.timefmt import iso

    return IntervalEvent(
        camera,
        iso(start),
        iso(start + length_s),
        unique_visitors={
            "child": {"female": 0, "male": 0},
            "adult": {"female": women, "male": 0},
            "old": {"female": 0, "male": 0},
        },
        gender_unknown={"child": 0, "adult": 0, "old": 0},
        watchers=1,
        unclassified=0,
        dwell_s=3.5,
        attention_s=1.5,
    )


def rows(path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_inserts_are_idempotent_by_id_and_aggregate_only(tmp_path):
    path = tmp_path / "audience.db"
    store = AudienceStore(path).start()
    now = time.time()
    try:
        for event in (
            interval("door", now),
            interval("door", now),
            interval("door", now + 60),
            AudienceEvent("door", "t", present=[], counts={}),
        ):
            store.emit(event)
        assert store.flush()
    finally:
        store.close()
    assert rows(path, "intervals") == 2 and store.written == 2
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(intervals)")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert "visitors_adult_female" in columns and not any("track" in c for c in columns)


def test_a_bad_record_is_logged_and_the_rest_are_written(tmp_path, caplog):
    path = tmp_path / "audience.db"
    store = AudienceStore(path).start()
    try:
        store.emit(dataclasses.replace(interval("door", time.time()), start="yesterday"))
        store.emit(interval("door", time.time()))
        assert store.flush()
    finally:
        store.close()
    assert rows(path, "intervals") == 1 and store.failed == 1
    assert "interval door/yesterday not written" in caplog.text


def test_retention_prunes_old_records(tmp_path):
    path = tmp_path / "audience.db"
    store = AudienceStore(path, retention_days=90).start()
    day = 86400
    try:
        store.emit(interval("door", time.time() - 100 * day))
        store.emit(interval("door", time.time() - 10 * day))
        assert store.flush()
        assert store.prune() == 1
    finally:
        store.close()
    assert rows(path, "intervals") == 1
    # At start too: a box that was off for months comes back within its retention.
    store = AudienceStore(path, retention_days=5).start()
    store.close()
    assert rows(path, "intervals") == 0


def test_schema_versions_are_migrated_and_a_newer_store_is_refused(tmp_path):
    path = tmp_path / "audience.db"
    with sqlite3.connect(path) as conn:  # an empty file: version 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    AudienceStore(path).start().close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
        conn.execute(f"PRAGMA user_version = {len(store_mod.MIGRATIONS) + 1}")
    with pytest.raises(
        StoreError,
        match=r"audience.db: the audience store has schema version "
        r"2, newer than this edge knows \(1\)",
    ):
        AudienceStore(path).start()


WRITER = """
import sys, time
from pathlib import Path
from edge.events import IntervalEvent
from edge.outputs.store import AudienceStore
from edge.timefmt import iso

store = AudienceStore(Path(sys.argv[1])).start()
store.on_commit(lambda kind, event: print(event.start, flush=True))
base = time.time()
for i in range(100000):  # far more than it writes before it is killed
    store.emit(IntervalEvent("door", iso(base + i), iso(base + i + 1),
                             {"adult": {"female": 1, "male": 0}}, {}, watchers=0,
                             unclassified=0, dwell_s=1.0, attention_s=0.0))
time.sleep(60)
"""


def test_killed_writer_loses_at_most_the_record_in_flight(tmp_path):
    path = tmp_path / "audience.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(50):  # well into the batch
            assert proc.stdout.readline(), proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        committed = 50 + len(proc.stdout.read().splitlines())  # all it said it committed
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    conn = store_mod.connect(path)  # reopening recovers the WAL
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = conn.execute("SELECT COUNT(*) FROM intervals").fetchone()[0]
    finally:
        conn.close()
    # Everything reported committed is there; at most the one being written past that.
    assert committed <= stored <= committed + 1 < 100000  # killed mid-batch
    print(f"killed after {committed} committed, {stored} stored")
    AudienceStore(path).start().close()  # and the store opens and migrates as usual


@pytest.mark.slow
def test_an_offline_run_writes_only_with_store(tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{dir: {ROOT / 'models'}}}\nstate_dir: {state}\n")
    result = run_edge("--config", str(config), "run", "--source", str(clip), "--jsonl")
    assert result.returncode == 0 and not (state / "audience.db").exists()
    result = run_edge("--config", str(config), "run", "--source", str(clip), "--jsonl", "--store")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    with sqlite3.connect(state / "audience.db") as conn:
        women, men = conn.execute(
            "SELECT SUM(visitors_adult_female), SUM(visitors_adult_male) FROM intervals"
        ).fetchone()
    assert (
        (women, men)
        == (
            summary["unique_visitors"]["adult"]["female"],
            summary["unique_visitors"]["adult"]["male"],
        )
        == (2, 1)
    )


@pytest.mark.slow
def test_an_unusable_store_is_one_line_and_the_run_goes_on(tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    state = tmp_path / "state"
    (state / "audience.db").mkdir(parents=True)  # a folder where the file should be
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{dir: {ROOT / 'models'}}}\nstate_dir: {state}\n")
    result = run_edge("--config", str(config), "run", "--source", str(clip), "--jsonl", "--store")
    assert result.returncode == 0, result.stderr
    assert (
        "cannot open the audience store" in result.stderr and "running without it" in result.stderr
    )
    assert json.loads(result.stdout.splitlines()[-1])["type"] == "summary"
