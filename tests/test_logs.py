"""Log lines (issue 23): a time on every line unless journald is the reader, no None
in any line, and a degraded service said once when it changes, not every stats line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from edge.events import CameraStats, StatsEvent
from edge.service import stats_line

from conftest import LOG_TIME, ROOT, edge_process, notify_socket

STAMPED = re.compile(LOG_TIME.pattern + "(DEBUG|INFO|WARNING|ERROR) ")
LOG_ONE_LINE = (
    "import logging; from edge.cli import setup_logging; setup_logging(); "
    "logging.getLogger('edge').info('hello')"
)


def log_one_line(tmp_path, journal_stream=None) -> str:
    """What `edge` writes for one log line, with stderr a file (as under nohup or in a
    container) and JOURNAL_STREAM as given."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    path = tmp_path / "stderr.log"
    with path.open("w") as stderr:
        if journal_stream == "this file":
            info = os.fstat(stderr.fileno())
            journal_stream = f"{info.st_dev}:{info.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run(
            [sys.executable, "-c", LOG_ONE_LINE], cwd=ROOT, env=env, stderr=stderr, check=True
        )
    return path.read_text()


def test_log_lines_carry_their_time_unless_journald_reads_them(tmp_path):
    # A file (nohup, a container's log, a redirect): not a terminal, and still stamped.
    assert STAMPED.match(log_one_line(tmp_path)), log_one_line(tmp_path)
    # Under systemd, JOURNAL_STREAM names stderr's device and inode: journald stamps.
    assert log_one_line(tmp_path, "this file") == "INFO edge: hello\n"
    # Started from a service but with stderr sent elsewhere: JOURNAL_STREAM is
    # inherited, names another stream, and the line needs its own time.
    assert STAMPED.match(log_one_line(tmp_path, "1:2"))
    assert STAMPED.match(log_one_line(tmp_path, "not a stream"))


def camera(**figures) -> CameraStats:
    base = dict(
        online=True,
        capture_fps=15.0,
        processed_fps=15.0,
        skipped_fps=0.0,
        passed_over_fps=0.0,
        detector_ms=20.5,
        detected_share=0.5,
        tracks=2,
        reconnects_last_hour=0,
    )
    return CameraStats(**{**base, **figures})


def test_a_stats_window_without_figures_says_so_without_none():
    idle = StatsEvent(
        time="2026-12-06T10:00:00.000+00:00",
        cameras={
            "door": camera(),
            "till": camera(online=False, processed_fps=0.0, detector_ms=None, detected_share=None),
        },
        classifier_ms=None,
        classifier_batch=None,
        latency_p50_ms=None,
        latency_p95_ms=None,
    )
    line = stats_line(idle)
    assert "None" not in line and " - " not in line, line
    assert line == (
        "door: 15.0 fps (0.0 skipped), detect 20.5 ms on 50% of frames, 2 people; "
        "till: 0.0 fps (0.0 skipped), no detection, 2 people; no classification"
    )
    busy = StatsEvent(
        time="2026-12-06T10:00:00.000+00:00",
        cameras={"door": camera()},
        classifier_ms=12.25,
        classifier_batch=3.0,
        latency_p50_ms=40.0,
        latency_p95_ms=80.5,
    )
    assert stats_line(busy).endswith("; classify 12.25 ms x3.0; latency p95 80.5 ms")


@pytest.mark.slow
def test_degraded_is_logged_when_it_changes_and_no_line_holds_none(tmp_path, group_photo):
    """A still camera and one whose file is missing, stats every second: the service
    says once that it is degraded (systemd's status says it every time), says once
    that it is not when the file appears, and no line of its log holds None."""
    later = tmp_path / "later.jpg"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nstats: {{interval_s: 1}}\nmetrics: {{port: 0}}\n"
        f"cameras:\n  - {{id: door, source: '{group_photo}', fps: 5}}\n"
        f"  - {{id: till, source: '{later}', fps: 5}}\n"
    )
    path, manager = notify_socket(tmp_path)
    log = tmp_path / "stderr.log"

    def text() -> str:
        return log.read_text()

    def wait_for(needle: str, count: int = 1, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text().count(needle) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert text().count(needle) >= count, text()

    with log.open("w") as stderr:
        proc = edge_process(
            "--config",
            str(config),
            "run",
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "NOTIFY_SOCKET": path},
        )
    try:
        wait_for("INFO edge.service: stats ", count=4)  # four windows with till offline
        # The camera's file appears, whole (a reader retrying meanwhile must not catch
        # it half written): retried, online.
        shutil.copy(group_photo, tmp_path / "later.part")
        os.replace(tmp_path / "later.part", later)
        wait_for("no longer degraded")
        wait_for("INFO edge.service: stats ", count=text().count("stats ") + 2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        manager.close()
    lines = text().splitlines()
    assert lines and all(STAMPED.match(line) for line in lines), lines
    assert not [line for line in lines if "None" in line]
    degraded = [line for line in lines if re.search(r"edge.service: (no longer )?degraded", line)]
    assert len(degraded) == 2, degraded
    assert "WARNING edge.service: degraded: 1 of 2 camera(s) offline: till (" in degraded[0]
    assert "no longer degraded" in degraded[1]
    assert any("till: 0.0 fps (0.0 skipped), no detection" in line for line in lines)
