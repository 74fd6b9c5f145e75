"""Capture: newest-frame-only reading, offline every-frame reading, reconnect with backoff."""

import shutil
import time

import cv2
import numpy as np
import pytest

from edge.capture import Backoff, CameraReader, open_source

from conftest import need


def drain(reader, timeout=10.0):
    frames, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = reader.latest(timeout=0.2)
        if frame is not None:
            frames.append(frame)
        elif reader.status.ended:
            break
    return frames


def test_every_frame_mode_delivers_the_whole_clip_in_order():
    clip = need("media/face-demographics-walking-and-pause.gif")
    reader = CameraReader("door", str(clip), mode="every_frame").start()
    try:
        frames = drain(reader)
    finally:
        reader.stop()
    assert [f.index for f in frames] == list(range(41))
    assert reader.status.ended and reader.status.skipped == 0
    gaps = np.diff([f.timestamp for f in frames])
    assert np.allclose(gaps, gaps[0]) and 0.05 < gaps[0] < 0.1  # the GIF's own frame rate
    assert frames[0].image.shape == (270, 480, 3)


def test_live_mode_keeps_only_the_newest_frame_and_counts_skips():
    clip = need("media/store-aisle-detection.gif")
    reader = CameraReader("aisle", str(clip), mode="live").start()
    try:
        time.sleep(1.0)  # nobody reads: frames pile up in one slot, the rest are skipped
        frame = reader.latest(timeout=1.0)
        while not reader.status.ended:
            time.sleep(0.05)
    finally:
        reader.stop()
    assert frame is not None and frame.index > 0
    assert reader.status.captured == 67
    assert reader.status.skipped >= 60


def test_still_photo_is_a_camera(group_photo):
    reader = CameraReader("still", str(group_photo), fps=20, mode="paced").start()
    try:
        frames = [reader.latest(timeout=1.0) for _ in range(3)]
    finally:
        reader.stop()
    assert all(f is not None and f.image.shape[:2] == (886, 1280) for f in frames)
    assert frames[0].index < frames[1].index < frames[2].index


def test_folder_that_disappears_and_comes_back_is_reopened(tmp_path, group_photo):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    image = cv2.resize(cv2.imread(str(group_photo)), (320, 220))
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), image)
    reader = CameraReader("cam", str(folder), fps=30, mode="paced", loop=True,
                          backoff=Backoff(initial_s=0.1, max_s=0.4)).start()
    try:
        assert reader.latest(timeout=2.0) is not None
        shutil.rmtree(folder)  # the "camera" goes away
        deadline = time.monotonic() + 5
        while reader.status.online and time.monotonic() < deadline:
            reader.latest(timeout=0.1)
        assert not reader.status.online and reader.status.last_error
        time.sleep(0.5)  # several failed reopen attempts, backing off
        folder.mkdir()
        for i in range(3):
            cv2.imwrite(str(folder / f"{i}.jpg"), image)
        frame, deadline = None, time.monotonic() + 5
        while frame is None and time.monotonic() < deadline:
            frame = reader.latest(timeout=0.2)
        assert frame is not None and reader.status.online
        assert reader.reconnects_last_hour() == 1  # one reconnect, not one per attempt
    finally:
        reader.stop()


def test_backoff_doubles_to_a_cap_and_resets():
    backoff = Backoff(initial_s=1, max_s=5)
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_unopenable_source_says_why(tmp_path):
    with pytest.raises(OSError, match="no such file"):
        open_source(str(tmp_path / "missing.mp4"), False, 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="folder has no images"):
        open_source(str(tmp_path / "empty"), False, 10)


class MjpegCamera:
    """A real HTTP MJPEG stream on loopback, as cheap IP cameras serve one."""

    def __init__(self, period_s: float, frames_per_connection: int | None = None):
        import http.server
        import socketserver
        import threading

        ok, jpeg = cv2.imencode(".jpg", np.full((240, 320, 3), 90, np.uint8))
        payload = jpeg.tobytes()
        connections = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                connections.append(time.monotonic())
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                sent = 0
                try:
                    while frames_per_connection is None or sent < frames_per_connection:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(payload)
                                         + payload + b"\r\n")
                        self.wfile.flush()
                        sent += 1
                        time.sleep(period_s)
                    time.sleep(60)  # then stall, connection open: a hung camera
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.connections = connections
        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def collect(reader, seconds):
    frames, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        frame = reader.latest(timeout=0.2)
        if frame is not None:
            frames.append(frame)
    return frames


def test_sparse_stream_is_not_restarted():
    camera = MjpegCamera(period_s=1.5)  # a frame every 1.5 s, well inside the 4 s timeout
    reader = CameraReader("ip", camera.url, mode="live", stall_timeout_s=4).start()
    try:
        frames = collect(reader, 6.5)
    finally:
        reader.stop()
        camera.close()
    assert len(frames) >= 4
    assert reader.reconnects_last_hour() == 0 and len(camera.connections) == 1


def test_hung_stream_is_reopened_and_flapping_backs_off():
    camera = MjpegCamera(period_s=0.1, frames_per_connection=3)  # 3 frames, then hangs
    reader = CameraReader("ip", camera.url, mode="live", stall_timeout_s=1,
                          backoff=Backoff(initial_s=0.5, max_s=8)).start()
    try:
        frames = collect(reader, 9)
    finally:
        reader.stop()
        camera.close()
    assert reader.reconnects_last_hour() >= 2
    assert frames[-1].index >= 6  # frames came again after each reopen
    gaps = np.diff(camera.connections)
    assert gaps[-1] > gaps[0]  # backoff grows while the stream keeps failing


def test_stream_passwords_are_redacted_from_errors_and_status():
    from edge.capture import redact

    assert redact("cannot open rtsp://admin:s3cr3t@10.0.0.5:554/s1") == \
        "cannot open rtsp://admin:***@10.0.0.5:554/s1"
    assert redact("/dev/video0") == "/dev/video0"
    # A real open of an unreachable stream: the status that MQTT publishes has no password.
    reader = CameraReader("door", "rtsp://admin:s3cr3t@127.0.0.1:9/stream", fps=5,
                          mode="live", stall_timeout_s=1)
    reader.start()
    deadline = time.monotonic() + 10
    while not reader.status.last_error and time.monotonic() < deadline:
        time.sleep(0.05)
    reader.request_stop()
    reader.stop(timeout=2)
    assert "127.0.0.1:9" in reader.status.last_error
    assert "s3cr3t" not in reader.status.last_error
