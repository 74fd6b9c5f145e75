"""`edge run` end to end: the shared clips, shutdown on SIGTERM, systemd notify, config errors."""

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from edge.errors import EX_CONFIG

from conftest import (
    ROOT,
    clip_frames,
    edge_process,
    need,
    notify_socket,
    run_edge,
    run_service,
    total,
    unstamped,
    visitors,
)


def run_clip(name):
    clip = need(f"media/{name}")
    result = run_edge("--config", "config.yaml", "run", "--source", str(clip), "--jsonl")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    summary = events[-1]
    assert summary["type"] == "summary" and [e["type"] for e in events].count("summary") == 1
    return events, summary


@pytest.mark.slow
def test_walking_clip_three_adults_two_women_one_man():
    events, summary = run_clip("face-demographics-walking-and-pause.gif")
    assert summary["frames"] == 41
    assert visitors(summary) == {("adult", "female"): 2, ("adult", "male"): 1}
    assert summary["unclassified"] == 0
    audience = [e for e in events if e["type"] == "audience"]
    assert audience and len(audience[-1]["present"]) == 3
    assert all(p["dwell_s"] >= 0 and "track" in p for p in audience[-1]["present"])
    intervals = [e for e in events if e["type"] == "interval"]
    assert len(intervals) == 1 and intervals[0]["unique_visitors"] == summary["unique_visitors"]
    assert intervals[0]["end"].endswith("+00:00")  # ISO 8601 with zone


@pytest.mark.slow
def test_head_pose_clip_one_woman_one_man():
    _, summary = run_clip("head-pose-face-detection-female-and-male.gif")
    assert summary["frames"] == 56
    assert visitors(summary) == {("adult", "female"): 1, ("adult", "male"): 1}


@pytest.mark.slow
def test_store_aisle_clip_creates_no_confident_visitor():
    _, summary = run_clip("store-aisle-detection.gif")
    assert summary["frames"] == 67 and visitors(summary) == {}


@pytest.mark.slow
def test_sigterm_stops_within_5s_and_flushes_the_last_interval(tmp_path, group_photo):
    config = tmp_path / "config.yaml"  # no broker: tests/test_mqtt.py covers publishing
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\nmetrics: {{port: 0}}\n")
    proc = edge_process(
        "--config", str(config), "run", "--source", str(group_photo), "--realtime", "--jsonl"
    )
    try:
        first = json.loads(proc.stdout.readline())
        while first["type"] != "audience":
            first = json.loads(proc.stdout.readline())
        assert len(first["present"]) == 6
        time.sleep(1.0)  # longer than audience.min_visit_s, so the six count as visitors
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert took < 5, f"shutdown took {took:.1f} s"
    last = [json.loads(line) for line in out.splitlines()][-1]
    assert last["type"] == "interval"
    # all six flushed: with a gender or without one (a gender-unsure face is a visitor too)
    assert total(last["unique_visitors"]) + sum(last["gender_unknown"].values()) == 6
    assert "stopped" in err


@pytest.mark.slow
def test_systemd_notify_ready_watchdog_status_stopping(tmp_path, group_photo):
    path, manager = notify_socket(tmp_path)
    manager.settimeout(20)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nstats:\n  interval_s: 1\nmetrics: {{port: 0}}\n"
    )
    proc = edge_process(
        "--config",
        str(config),
        "run",
        "--source",
        str(group_photo),
        "--realtime",
        stdout=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
    )
    messages = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            messages.append(manager.recv(4096).decode())
            if any("WATCHDOG=1" in m for m in messages) and any(
                m.startswith("STATUS=") and "fps" in m for m in messages
            ):
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        manager.settimeout(1)
        while True:
            try:
                messages.append(manager.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        proc.kill()
        manager.close()
    assert messages[0].startswith("READY=1\nSTATUS=running 1 camera(s)")
    assert "WATCHDOG=1" in messages
    assert any(m.startswith("STATUS=t1: ") and "fps" in m for m in messages)
    assert messages[-1].startswith("STOPPING=1")
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("cameras:\n  - {id: door}\n", "'cameras[0].source' is missing"),
        ("", "no cameras configured"),
    ],
)
def test_run_config_errors_exit_78(tmp_path, text, needle):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = run_edge("--config", str(config), "run")
    assert result.returncode == EX_CONFIG
    assert needle in result.stderr and str(config) in result.stderr


@pytest.mark.slow
def test_two_cameras_in_one_process_share_the_classifier_batch(tmp_path):
    walk = need("media/face-demographics-walking-and-pause.gif")
    pose = need("media/head-pose-face-detection-female-and-male.gif")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\ncameras:\n"
        f"  - {{id: door, source: {walk}}}\n  - {{id: till, source: {pose}}}\n"
    )
    from edge import config as config_mod
    from edge.service import Service

    class Collect:
        def __init__(self):
            self.events = []

        def start(self):
            pass

        def emit(self, event):
            self.events.append(event.to_json())

        def close(self):
            pass

    sink = Collect()
    service = Service(config_mod.load(config), [sink], offline=True)
    batches = []
    original = service.analyzer.classifier.classify_many
    service.analyzer.classifier.classify_many = lambda frames, faces: (
        batches.append(len(frames)) or original(frames, faces)
    )
    assert service.run() == 0
    summaries = {e["camera"]: e for e in sink.events if e["type"] == "summary"}
    assert visitors(summaries["door"]) == {("adult", "female"): 2, ("adult", "male"): 1}
    assert visitors(summaries["till"]) == {("adult", "female"): 1, ("adult", "male"): 1}
    assert max(batches) == 2  # faces from both cameras went to the model together


def notifications(manager, seconds: float) -> list[tuple[float, bytes]]:
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append((time.monotonic(), manager.recv(4096)))
        except TimeoutError:
            pass
    return got


def wait_for_ready(manager, seconds: float = 60) -> None:
    """Start-up (models, first frame) takes seconds on a busy machine: measure from READY."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if manager.recv(4096).startswith(b"READY=1"):
                return
        except TimeoutError:
            pass
    raise AssertionError("no READY=1")


@pytest.mark.slow
def test_a_camera_that_goes_away_makes_the_service_degraded_not_restarted(tmp_path, group_photo):
    """The camera is offline and retried by its reader: reported as degraded, and the
    watchdog is still fed (a restart would not bring the camera back)."""
    import shutil

    import cv2

    folder = tmp_path / "snapshots"
    folder.mkdir()
    image = cv2.resize(cv2.imread(str(group_photo)), (640, 443))
    cv2.imwrite(str(folder / "0.jpg"), image)
    path, manager = notify_socket(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nstats: {{interval_s: 1}}\n"
        f"metrics: {{port: 0}}\n"
        f"cameras:\n  - {{id: shelf, source: {folder}, loop: true, fps: 10}}\n"
    )
    proc = edge_process(
        "--config",
        str(config),
        "run",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
    )
    try:
        wait_for_ready(manager)
        pets = [t for t, m in notifications(manager, 4) if m == b"WATCHDOG=1"]
        assert len(pets) >= 2  # frames flow: pets every 0.5 s
        shutil.rmtree(folder)  # the camera goes away
        gone = notifications(manager, 4)
        assert any(m.startswith(b"STATUS=degraded: 1 of 1 camera(s) offline") for _, m in gone)
        pets = [t for t, m in gone if m == b"WATCHDOG=1"]
        assert len(pets) >= 4 and max(b - a for a, b in zip(pets, pets[1:], strict=False)) < 1.0
        folder.mkdir()
        cv2.imwrite(str(folder / "0.jpg"), image)
        back = notifications(manager, 8)
        assert any(m.startswith(b"STATUS=") and b"degraded" not in m for _, m in back[-5:])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        manager.close()


@pytest.mark.slow
def test_watchdog_stops_while_the_pipeline_is_stuck_and_resumes(tmp_path, group_photo, monkeypatch):
    """A stage that hangs (a driver, a deadlock) stops the pets, so systemd restarts the
    service; frames flowing again resumes them. The real service with its real detector,
    held up on purpose after a few frames."""
    from edge import config as config_mod
    from edge.outputs.notify import Notifier
    from edge.service import Service

    path, manager = notify_socket(tmp_path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nmetrics: {{port: 0}}\n"
        f"cameras:\n  - {{id: shelf, source: {group_photo}, loop: true, "
        f"fps: 10}}\n"
    )
    service = Service(config_mod.load(config), [Notifier(path)])
    detector = service.analyzer.detector
    real, release = detector.detect_many, threading.Event()
    calls = []

    def detect_many(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            release.wait(30)  # stuck, until the test lets go
        return real(*args, **kwargs)

    monkeypatch.setattr(detector, "detect_many", detect_many)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        wait_for_ready(manager)
        end = time.monotonic() + 60
        while len(calls) < 20 and time.monotonic() < end:
            time.sleep(0.05)
        stuck = time.monotonic()
        pets = [t for t, m in notifications(manager, 3) if m == b"WATCHDOG=1"]
        assert [t for t in pets if t - stuck > 0.6] == []  # stuck: no pets
        release.set()
        pets = [t for t, m in notifications(manager, 3) if m == b"WATCHDOG=1"]
        assert len(pets) >= 2  # moving again
    finally:
        release.set()
        service.stop()
        runner.join(10)
        manager.close()


@pytest.mark.slow
def test_camera_target_fps_and_detection_width(tmp_path):
    from edge import config as config_mod
    from edge.service import Service

    clip = need("media/face-demographics-walking-and-pause.gif")  # 12.5 fps
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\ncameras:\n"
        f"  - {{id: door, source: {clip}, loop: true, fps: 5, detect_width: 320}}\n"
    )
    service = Service(config_mod.load(config), sinks=[])
    service.run(duration_s=3.0)
    stats = service.stats().cameras["door"]
    assert 3.5 <= stats.processed_fps <= 5.5  # the camera's target, not the file's 12.5
    # Frames above the target are passed over on purpose, not skipped (a loaded machine
    # may still skip the odd frame: at most one in the 3 s).
    assert stats.passed_over_fps >= 5 and stats.skipped_fps * 3.0 <= 1.01
    assert (320, 192) in service.analyzer.detector.canvas_sizes  # 480x270 frames at 320 wide


@pytest.mark.slow
def test_a_60_fps_camera_at_fps_15_skips_nothing(tmp_path):
    """The walking clip as a 60 fps camera (a video file written here, each frame five
    times, read at its own pace) with `fps: 15`: every due frame is processed, so no
    frame is skipped; the three in four above the target are passed over (issue 23:
    this reported 5-12 skipped frames/s)."""
    import cv2

    video = tmp_path / "sixty.avi"
    frames = clip_frames("media/face-demographics-walking-and-pause.gif")
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 60.0, (480, 270))
    for image in frames:
        for _ in range(5):
            writer.write(image)
    writer.release()
    config = tmp_path / "config.yaml"
    # A light pipeline (detection at 320 px, one face classified a tick) keeps every
    # tick well inside the 67 ms between due frames even on a busy test machine, so a
    # skipped frame here would be a false alarm, not the machine falling behind.
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\nmetrics: {{port: 0}}\nstats: {{interval_s: 1}}\n"
        "classifier: {max_faces_per_tick: 1}\n"
        f"cameras:\n  - {{id: door, source: {video}, loop: true, fps: 15, detect_width: 320}}\n"
    )
    out, err, status = run_service("--config", str(config), "run", "--jsonl", seconds=5)
    assert status == 0, err
    stats = [json.loads(line) for line in out.splitlines()]
    windows = [e["cameras"]["door"] for e in stats if e["type"] == "stats"][1:]  # 2nd on
    assert len(windows) >= 3, err
    assert [w["skipped_fps"] for w in windows] == [0.0] * len(windows), windows
    for w in windows:
        assert w["passed_over_fps"] >= 35 and w["processed_fps"] >= 10, w


# -- faults (issue 12) ---------------------------------------------------------------


@pytest.mark.slow
def test_hung_cameras_do_not_stall_the_healthy_one_or_the_watchdog(tmp_path):
    """Two network cameras that accept and never answer, beside a looping file: the file
    delivers within 2 s of READY=1 and the watchdog is fed throughout, while the hung
    cameras time out, reopen and time out again; the service reports itself degraded."""
    from hung_camera import HungCamera

    clip = need("media/face-demographics-walking-and-pause.gif")  # 3.3 s, then reopened
    path, manager = notify_socket(tmp_path)
    with HungCamera() as hung1, HungCamera("http") as hung2:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"models:\n  dir: {ROOT / 'models'}\nstats:\n  interval_s: 1\n"
            f"cameras:\n"
            f"  - {{id: hung1, source: '{hung1.url}', stall_timeout_s: 3}}\n"
            f"  - {{id: hung2, source: '{hung2.url}', stall_timeout_s: 3}}\n"
            f"  - {{id: door, source: '{clip}', loop: true}}\n"
        )
        proc = edge_process(
            "--config",
            str(config),
            "run",
            "--jsonl",
            env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
        )
        messages = []  # (time, message)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    messages.append((time.monotonic(), manager.recv(4096).decode()))
                except TimeoutError:
                    continue
                if messages[0][1].startswith("READY=1") and messages[-1][0] - messages[0][0] > 10:
                    break
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
            manager.close()
        assert hung1.connections >= 2 and hung2.connections >= 2  # timed out and reopened
    ready_at, first = messages[0]
    assert first.startswith("READY=1"), messages[:3]
    pets = [t for t, m in messages if m == "WATCHDOG=1"]
    assert pets and pets[0] - ready_at < 2.0, "the healthy camera's first frame came late"
    gaps = np.diff([*pets, messages[-1][0]])
    # Pets are due every 0.5 s; a busy CI box stretches a gap to ~1.7 s. Waiting behind a
    # hung camera's open would take its whole 3 s timeout (two of them in turn, before).
    assert gaps.max() < 2.5, f"the watchdog went unfed for {gaps.max():.1f} s"
    degraded = [m for _, m in messages if "degraded: 2 of 3 camera(s) offline" in m]
    assert degraded and "hung1 (" in degraded[-1] and "door" not in degraded[-1].split(";")[0]
    events = [json.loads(line) for line in out.splitlines()]
    status = {e["camera"]: e for e in events if e["type"] == "camera"}
    assert status["hung1"]["online"] is False and "no answer within 3 s" in status["hung1"]["error"]
    assert status["hung2"]["online"] is False
    assert any(e["type"] == "stats" and e["cameras"]["door"]["processed_fps"] > 5 for e in events)
    assert proc.returncode == 0, err


def run_briefly(*args):
    """`edge` with a 60 s limit: these runs used to retry (or repeat a still) forever."""
    return run_edge(*args, timeout=60)


def _jpeg(group_photo, size=(320, 220)) -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.resize(cv2.imread(str(group_photo)), size))[1].tobytes()


@pytest.mark.parametrize(
    "name, content, status, why",
    [
        ("missing.mp4", None, 66, "no such file"),
        ("upload.jpg", "truncated", 65, "truncated JPEG"),
        ("clip.mp4", b"not a video at all\n" * 10, 65, "not a video or image OpenCV can read"),
    ],
)
@pytest.mark.slow
def test_offline_run_on_an_unreadable_source_is_one_error_line(
    tmp_path, group_photo, name, content, status, why
):
    path = tmp_path / name
    if content == "truncated":
        data = _jpeg(group_photo)
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\n")
    result = run_briefly("--config", str(config), "run", "--source", str(path), "--jsonl")
    assert result.returncode == status, result.stderr
    lines = [unstamped(line) for line in result.stderr.splitlines()]
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 1 and str(path) in errors[0] and why in errors[0], result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {
            "type": "error",
            "camera": "missing" if content is None else path.stem,
            "source": str(path),
            "error": errors[0].split(": ", 2)[2],
            "exit_status": status,
        }
    ]


@pytest.mark.slow
def test_offline_run_on_a_still_photo_is_one_frame(tmp_path, group_photo):
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\n")
    result = run_briefly("--config", str(config), "run", "--source", str(group_photo), "--jsonl")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["frames"] == 1


def offline_service(tmp_path, source, sinks, loop=False):
    from edge import config as config_mod
    from edge.service import Service

    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\ncameras:\n"
        f"  - {{id: door, source: '{source}', loop: {str(loop).lower()}}}\n"
    )
    return Service(config_mod.load(config), sinks, offline=True)


class Collect:
    """A sink (outputs/sinks.py) keeping every event the loop publishes."""

    def __init__(self):
        self.events = []

    def start(self):
        pass

    def emit(self, event):
        if not event.internal:  # the loop's own signals are no JSON line
            self.events.append(event.to_json())  # as a JSON line holds it

    def close(self):
        pass


def test_offline_folder_with_bad_files_counts_the_rest_and_ends(tmp_path, group_photo):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    good = _jpeg(group_photo, (640, 443))
    for i in range(4):
        (folder / f"{i}a.jpg").write_bytes(good)
    (folder / "1b.jpg").write_bytes(b"")
    (folder / "2b.jpg").write_bytes(good[: len(good) // 3])
    (folder / "3b.jpg").mkdir()
    sink = Collect()
    service = offline_service(tmp_path, folder, [sink])
    assert service.run(duration_s=30) == 65  # as edge analyze: bad input, the rest counted
    assert sink.events[-1]["type"] == "summary" and sink.events[-1]["frames"] == 4


@pytest.mark.slow
def test_an_interrupted_offline_run_still_ends_with_its_summary(tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    sink = Collect()
    service = offline_service(tmp_path, clip, [sink], loop=True)  # would never end
    assert service.run(duration_s=2.0) == 0
    assert sink.events[-1]["type"] == "summary" and sink.events[-1]["frames"] > 0


@pytest.mark.slow
def test_one_failing_sink_does_not_stop_the_others(tmp_path, caplog):
    clip = need("media/face-demographics-walking-and-pause.gif")

    class Broken(Collect):
        def emit(self, event):
            raise KeyError("a field the sink did not expect")

    sink = Collect()
    service = offline_service(tmp_path, clip, [Broken(), sink])
    assert service.run() == 0
    summary = sink.events[-1]
    assert summary["type"] == "summary" and summary["frames"] == 41
    assert visitors(summary) == {("adult", "female"): 2, ("adult", "male"): 1}
    failed = [r for r in caplog.records if "event sink Broken failed" in r.getMessage()]
    assert len(failed) == 1  # logged once, not once per event


@pytest.mark.slow
def test_repeated_decoder_warnings_are_rate_limited(tmp_path, group_photo):
    """libjpeg prints one warning per decode of a damaged (but complete) JPEG straight to
    stderr; a looping folder camera at 20 fps would repeat it 20 times a second."""
    folder = tmp_path / "snapshots"
    folder.mkdir()
    good = _jpeg(group_photo)
    (folder / "0.jpg").write_bytes(good)
    (folder / "1.jpg").write_bytes(good[:-2] + b"\x00\x11\x22\x33" + good[-2:])
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\n"
        f"cameras:\n  - {{id: shelf, source: '{folder}', loop: true, fps: 20}}\n"
    )
    result = run_briefly("--config", str(config), "run", "--duration", "4")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "Corrupt JPEG data" in line]
    assert 1 <= len(warnings) <= 3, result.stderr  # the first few, then counted
    assert "stats shelf:" in result.stderr or "stopped" in result.stderr  # our own log lines
