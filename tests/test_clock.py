"""Wall-clock steps during a run (issue 23): durations, gaps and pacing are monotonic,
the wall clock only labels.

The real service runs under Debian's libfaketime, whose wall clock the test steps
by -1 h or +1 day while three people walk through the shared clip: frames keep
flowing, no interval or dwell outlasts the real time the run took, nobody is counted
twice, and the step is logged. Unit tests of edge.timefmt.Clock with an injected
clock sit beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

import cv2
import pytest

from edge.timefmt import Clock

from conftest import ROOT, clip_frames, edge_process, notify_socket, total

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
)
FPS = 5  # the clip's 41 frames as a camera at 5 fps: 8.2 s, long enough to step inside

# Python 3.11's time.sleep calls clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which
# libfaketime 0.9.10 (Debian 12) breaks when the monotonic clock is left real
# (FAKETIME_DONT_FAKE_MONOTONIC): every sleep fails with EINVAL (wolfcw/libfaketime
# issue 426). Faking the monotonic clock instead hangs every timed wait. So the clock
# stays real and sleeps become timed waits on an event, which are the same monotonic
# sleep through another call; nothing else in the service is changed.
SLEEP_SHIM = """import threading, time
_wait = threading.Event().wait
time.sleep = lambda seconds: _wait(seconds)
"""


def faketime_lib() -> str:
    found = next((p for p in FAKETIME_LIBS if Path(p).exists()), None)
    if found is None:
        message = "libfaketime is not installed (Debian package faketime; make test-deps)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the clock tests must run)")
        pytest.skip(message)
    return found


def faketime_env(tmp_path: Path, lib: str, offset: Path, start: str = "+0") -> dict:
    """The environment of a process whose wall clock reads `offset`'s contents (libfaketime
    syntax: -3600, +1d), re-read on every call so a test can step it; the monotonic
    clock stays real, and time.sleep is shimmed (SLEEP_SHIM)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
    offset.write_text(f"{start}\n")
    return {
        **os.environ,
        "LD_PRELOAD": lib,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",  # read the offset on every call: the step is at once
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])),
    }


def parse(label: str) -> float:
    return dt.datetime.fromisoformat(label).timestamp()


def people(summary: dict) -> int:
    """Everyone the run counted: confident visitors, gender-unsure ones, unclassified."""
    return (
        total(summary["unique_visitors"])
        + sum(summary["gender_unknown"].values())
        + summary["unclassified"]
    )


def run_with_step(tmp_path: Path, step: str) -> dict:
    """The walking clip as a 5 fps folder camera in the real service under libfaketime;
    the wall clock steps by `step` (libfaketime's syntax: -3600, +1d) 1.5 s after the
    first person is seen. The events with their arrival times (monotonic), the step's
    time, the run's real length and its log."""
    lib = faketime_lib()
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(clip_frames("media/face-demographics-walking-and-pause.gif")):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nmetrics: {{port: 0}}\n"
        "stats: {interval_s: 1}\naudience: {interval_s: 3}\n"
        f"cameras:\n  - {{id: door, source: {folder}, fps: {FPS}}}\n"
    )
    offset = tmp_path / "faketime"
    env = faketime_env(tmp_path, lib, offset)
    events: list[tuple[float, dict]] = []
    seen = threading.Event()
    started = time.monotonic()
    # systemd's watchdog, every 0.5 s: a frozen pipeline stops the pets (and systemd
    # would restart the service, losing the open interval).
    path, manager = notify_socket(tmp_path)
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    pets: list[float] = []
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:  # stdout is the reader thread's alone
        proc = edge_process("--config", str(config), "run", "--jsonl", env=env, stderr=stderr)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            events.append((time.monotonic(), event))
            if event["type"] == "audience" and event["present"]:
                seen.set()

    def listen() -> None:
        while proc.poll() is None:
            try:
                if manager.recv(4096) == b"WATCHDOG=1":
                    pets.append(time.monotonic())
            except OSError:  # the socket's 0.2 s timeout
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        assert seen.wait(120), "nobody was seen"
        time.sleep(1.5)
        offset.write_text(f"{step}\n")
        stepped = time.monotonic()
        # The folder ends after 8.2 s of frames and the run with it; frozen frames or a
        # pacing sleep of an hour would hold it here.
        proc.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    reader.join(5)
    listener.join(5)
    manager.close()
    err = log.read_text()
    assert proc.returncode == 0, err
    return {"events": events, "stepped": stepped, "elapsed": elapsed, "log": err, "pets": pets}


def check_time_rules(run: dict, step_s: float) -> None:
    events, stepped, elapsed = run["events"], run["stepped"], run["elapsed"]
    kinds = [e["type"] for _, e in events]
    assert kinds.count("summary") == 1, kinds  # the file ended: frames flowed to its end
    summary = next(e for _, e in events if e["type"] == "summary")

    # Frames keep flowing: the first stats window (1 s) that begins after the step
    # begins within 2 s of it and processed frames, and so did every window before
    # the file ended. (A window is timed from the previous stats line to its own.)
    stats = [(t, e) for t, e in events if e["type"] == "stats"]
    windows = [(a, b, e) for (a, _), (b, e) in zip(stats, stats[1:], strict=False)]
    after = [(a, e) for a, _, e in windows if a >= stepped]
    assert after, "no stats window after the step"
    begins, first = after[0]
    assert begins - stepped <= 2.0, f"first window {begins - stepped:.1f} s after the step"
    assert first["cameras"]["door"]["processed_fps"] > 0, first
    ended = next(t for t, e in events if e["type"] == "summary")
    for _, end, event in windows:
        if end < ended:
            assert event["cameras"]["door"]["processed_fps"] > 0, event

    # The watchdog is fed on after the step (every 0.5 s; a busy box stretches a gap to
    # ~1.7 s, as in test_service).
    pets = [t for t in run["pets"] if t >= stepped - 0.5]
    assert len(pets) >= 4 and all(b - a < 2.5 for a, b in zip(pets, pets[1:], strict=False))

    # Nothing outlasts the run: intervals (their labels span the real time they took),
    # dwell per present person, and dwell summed over an interval's visitors.
    slack = 0.5
    intervals = [e for _, e in events if e["type"] == "interval"]
    assert intervals
    for interval in intervals:
        span = parse(interval["end"]) - parse(interval["start"])
        assert 0 <= span <= elapsed + slack, interval
        counted = people(interval)
        assert interval["dwell_s"] <= counted * elapsed + slack, interval
    for _, event in events:
        if event["type"] == "audience":
            for person in event["present"]:
                assert person["dwell_s"] <= elapsed + slack, event

    # Nobody twice: three people walk through the clip (../shared/media/README.md).
    assert people(summary) == 3, summary
    assert total(summary["unique_visitors"]) + sum(summary["gender_unknown"].values()) == 3
    assert f"the wall clock stepped by {step_s:+.1f} s" in run["log"], run["log"]


@pytest.mark.slow
def test_a_service_started_100_days_ahead_deletes_nothing(tmp_path):
    """The real service, started with its wall clock 100 days ahead (as a box whose RTC
    jumped), on a store holding a day's intervals: it keeps them all, says why in one
    line, and adds its own (on main, such a start pruned 21 of 22 for good)."""
    from test_store import fill_like_a_day, rows

    lib = faketime_lib()
    state = tmp_path / "state"
    state.mkdir()
    fill_like_a_day(state / "audience.db", time.time())
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nmetrics: {{port: 0}}\nstate_dir: {state}\n"
        "store: {retention_days: 90}\n"
    )
    env = faketime_env(tmp_path, lib, tmp_path / "faketime", start="+100d")
    clip = ROOT.parent / "shared" / "media" / "face-demographics-walking-and-pause.gif"
    proc = edge_process(
        "--config", str(config), "run", "--source", str(clip), "--store", "--jsonl", env=env
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "days ahead of the newest record" in err, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["type"] == "summary" and people(summary) == 3
    assert rows(state / "audience.db", "intervals") > 22  # the day's 22, and this run's


@pytest.mark.slow
def test_wall_clock_step_back_one_hour_during_a_run(tmp_path):
    run = run_with_step(tmp_path, "-3600")
    check_time_rules(run, -3600)
    # Labels follow the wall clock: events written after the step read an hour earlier.
    labels = [(t, parse(e["time"])) for t, e in run["events"] if e["type"] == "stats"]
    before = [w for t, w in labels if t < run["stepped"]]
    later = [w for t, w in labels if t > run["stepped"] + 1.2]
    assert before and later and later[0] < before[-1] - 3000


@pytest.mark.slow
def test_wall_clock_step_forward_one_day_during_a_run(tmp_path):
    run = run_with_step(tmp_path, "+1d")
    check_time_rules(run, 86400)
    labels = [(t, parse(e["time"])) for t, e in run["events"] if e["type"] == "stats"]
    later = [w for t, w in labels if t > run["stepped"] + 1.2]
    assert later and later[0] > time.time() + 86000


# -- the clock itself, injected ----------------------------------------------------


class FakeClocks:
    def __init__(self):
        self.wall_s, self.mono_s = 1_800_000_000.0, 5_000.0

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds


def test_clock_is_monotonic_and_labels_follow_a_step():
    clocks = FakeClocks()
    clock = Clock(wall=lambda: clocks.wall_s, mono=lambda: clocks.mono_s)
    start = clock.now()
    assert start == pytest.approx(1_800_000_000.0)
    clocks.advance(10)
    assert clock.check() is None
    clocks.wall_s -= 3600  # NTP steps the wall clock back an hour
    clocks.advance(5)
    assert clock.now() - start == pytest.approx(15)  # durations do not see the step
    assert clock.check() == pytest.approx(-3600)
    assert clock.check() is None  # one step, reported once
    # Both ends of an interval are labelled with the clock as it is now: the span is
    # the real 15 s, not 15 s - 1 h.
    assert clock.wall(clock.now()) - clock.wall(start) == pytest.approx(15)
    assert clock.wall(clock.now()) == pytest.approx(clocks.wall_s)


def test_clock_ignores_drift_below_a_second():
    clocks = FakeClocks()
    clock = Clock(wall=lambda: clocks.wall_s, mono=lambda: clocks.mono_s)
    clocks.wall_s += 0.4
    assert clock.check() is None and clock.shift == 0.0
