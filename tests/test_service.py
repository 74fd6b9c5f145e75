"""`edge run` end to end: the shared clips, shutdown on SIGTERM, systemd notify, config errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from edge.errors import EX_CONFIG

from conftest import ROOT, need, run_edge


def run_clip(name):
    clip = need(f"media/{name}")
    result = run_edge("--config", "config.yaml", "run", "--source", str(clip), "--jsonl")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    summary = events[-1]
    assert summary["type"] == "summary" and [e["type"] for e in events].count("summary") == 1
    return events, summary


def visitors(summary):
    return {(c, g): n for c, by_g in summary["unique_visitors"].items()
            for g, n in by_g.items() if n}


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


def test_head_pose_clip_one_woman_one_man():
    _, summary = run_clip("head-pose-face-detection-female-and-male.gif")
    assert summary["frames"] == 56
    assert visitors(summary) == {("adult", "female"): 1, ("adult", "male"): 1}


def test_store_aisle_clip_creates_no_confident_visitor():
    _, summary = run_clip("store-aisle-detection.gif")
    assert summary["frames"] == 67 and visitors(summary) == {}


def test_sigterm_stops_within_5s_and_flushes_the_last_interval(tmp_path, group_photo):
    config = tmp_path / "config.yaml"  # no broker: tests/test_mqtt.py covers publishing
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\nmetrics: {{port: 0}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "--config", str(config), "run",
                             "--source", str(group_photo), "--realtime", "--jsonl"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    assert sum(n for by_g in last["unique_visitors"].values() for n in by_g.values()) == 6
    assert "stopped" in err


def test_systemd_notify_ready_watchdog_status_stopping(tmp_path, group_photo):
    path = str(tmp_path / "notify.sock")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    manager.settimeout(20)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\nstats:\n  interval_s: 1\n"
                      f"metrics: {{port: 0}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(config), "run", "--source",
         str(group_photo), "--realtime"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    messages = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            messages.append(manager.recv(4096).decode())
            if any("WATCHDOG=1" in m for m in messages) and any(
                    m.startswith("STATUS=") and "fps" in m for m in messages):
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        manager.settimeout(1)
        while True:
            try:
                messages.append(manager.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        proc.kill()
        manager.close()
    assert messages[0].startswith("READY=1\nSTATUS=running 1 camera(s)")
    assert "WATCHDOG=1" in messages
    assert any(m.startswith("STATUS=t1: ") and "fps" in m for m in messages)
    assert messages[-1].startswith("STOPPING=1")
    assert proc.returncode == 0


@pytest.mark.parametrize("text, needle", [
    ("cameras:\n  - {id: door}\n", "'cameras[0].source' is missing"),
    ("", "no cameras configured"),
])
def test_run_config_errors_exit_78(tmp_path, text, needle):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = run_edge("--config", str(config), "run")
    assert result.returncode == EX_CONFIG
    assert needle in result.stderr and str(config) in result.stderr


def test_two_cameras_in_one_process_share_the_classifier_batch(tmp_path):
    walk = need("media/face-demographics-walking-and-pause.gif")
    pose = need("media/head-pose-face-detection-female-and-male.gif")
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\ncameras:\n"
                      f"  - {{id: door, source: {walk}}}\n  - {{id: till, source: {pose}}}\n")
    from edge import config as config_mod
    from edge.service import Service

    class Collect:
        def __init__(self):
            self.events = []

        def emit(self, event):
            self.events.append(event)

    sink = Collect()
    service = Service(config_mod.load(config), [sink], offline=True)
    batches = []
    original = service.analyzer.classifier.classify_many
    service.analyzer.classifier.classify_many = lambda frames, faces: (
        batches.append(len(frames)) or original(frames, faces))
    assert service.run() == 0
    summaries = {e["camera"]: e for e in sink.events if e["type"] == "summary"}
    assert visitors(summaries["door"]) == {("adult", "female"): 2, ("adult", "male"): 1}
    assert visitors(summaries["till"]) == {("adult", "female"): 1, ("adult", "male"): 1}
    assert max(batches) == 2  # faces from both cameras went to the model together


def test_watchdog_stops_while_no_frames_flow_and_resumes(tmp_path, group_photo):
    import shutil

    import cv2

    folder = tmp_path / "snapshots"
    folder.mkdir()
    image = cv2.resize(cv2.imread(str(group_photo)), (640, 443))
    cv2.imwrite(str(folder / "0.jpg"), image)
    path = str(tmp_path / "notify.sock")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    manager.settimeout(0.2)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\n"
                      f"cameras:\n  - {{id: shelf, source: {folder}, loop: true, fps: 10}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "--config", str(config), "run"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "NOTIFY_SOCKET": path,
                                 "WATCHDOG_USEC": "1000000"})

    def watchdogs(seconds):
        times, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if manager.recv(4096) == b"WATCHDOG=1":
                    times.append(time.monotonic())
            except socket.timeout:
                pass
        return times

    try:
        assert len(watchdogs(4)) >= 2  # frames flow: pets every 0.5 s
        shutil.rmtree(folder)  # the camera goes away
        gone = time.monotonic()
        late = [t for t in watchdogs(3) if t - gone > 1.5]
        assert late == []  # no frames, no watchdog: systemd would restart a stuck service
        folder.mkdir()
        cv2.imwrite(str(folder / "0.jpg"), image)
        assert len(watchdogs(8)) >= 2  # back
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        manager.close()


def test_camera_target_fps_and_detection_width(tmp_path):
    from edge import config as config_mod
    from edge.service import Service

    clip = need("media/face-demographics-walking-and-pause.gif")  # 12.5 fps
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\ncameras:\n"
                      f"  - {{id: door, source: {clip}, loop: true, fps: 5, detect_width: 320}}\n")
    service = Service(config_mod.load(config), sinks=[])
    service.run(duration_s=3.0)
    stats = service.stats()["cameras"]["door"]
    assert 3.5 <= stats["processed_fps"] <= 5.5      # the camera's target, not the file's 12.5
    assert stats["passed_over_fps"] >= 5 and stats["skipped_fps"] == 0
    assert (320, 192) in service.analyzer.detector._sessions  # 480x270 frames at 320 wide
