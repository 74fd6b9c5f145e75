"""Capture stage: one reader thread per camera, keeping only the newest frame.

Live sources (V4L2 devices, RTSP/HTTP streams) are read as fast as they
deliver; when processing falls behind, the unread frame is replaced and counted
as skipped, never queued (Frigate keeps a queue of 2 and counts skipped_fps).
Files and image folders can instead be read `paced` (at their own frame rate,
as a stand-in camera) or `every_frame` (offline analysis: the reader waits for
the pipeline, nothing is dropped, timestamps come from the file's frame rate).

A source that fails to open or stops delivering is reopened with exponential
backoff. For streams "stops delivering" means a read that waited
`stall_timeout_s` (FFmpeg's read timeout) for a frame, so a sparse stream that
sends a frame every few seconds is left alone rather than restarted in a loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge import images
from edge.errors import InputError

log = logging.getLogger(__name__)

# OpenCV/FFmpeg would log every stream timeout itself; we log one line of our own.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

HEALTHY_AFTER_S = 60.0  # a source must deliver this long before its backoff starts over

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# A stream URL's password never reaches a log line or an MQTT status message.
from edge.redact import redact  # noqa: E402 (kept importable from here)


@dataclass(frozen=True, slots=True)
class Frame:
    camera: str
    index: int          # frames delivered by this camera so far (0-based)
    timestamp: float    # capture time, seconds (wall clock; file time in every_frame mode)
    image: np.ndarray   # BGR


@dataclass
class CameraStatus:
    online: bool = False
    ended: bool = False
    captured: int = 0
    skipped: int = 0
    last_error: str = ""


class SourceEnded(Exception):
    """A non-looped file or folder has no more frames."""


class ImageSequence:
    """A folder of images, a list of image files, or one still photo, as a camera."""

    def __init__(self, paths: list[Path], fps: float, loop: bool):
        self.paths, self.fps, self.loop = paths, fps, loop
        self._next = 0

    def read(self) -> np.ndarray:
        if self._next >= len(self.paths):
            if not self.loop:
                raise SourceEnded()
            self._next = 0
        path = self.paths[self._next]
        self._next += 1
        try:  # the same rules as `edge analyze` (size, shape, truncation)
            return images.read_image(path)
        except InputError as exc:
            raise OSError(str(exc)) from None

    def release(self) -> None:
        pass


class VideoSource:
    """cv2.VideoCapture over a device, stream URL or video file."""

    def __init__(self, source: str | int, is_file: bool, loop: bool, timeout_s: float = 10.0):
        self.is_file, self.loop, self._source = is_file, loop, source
        if isinstance(source, str) and "://" in source:
            # A stalled stream must fail a read after timeout_s, not block for minutes;
            # a sparse one (a frame every few seconds) must not fail.
            ms = int(timeout_s * 1000)
            self._cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG,
                                         [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            self._cap = cv2.VideoCapture(source)
        if not self._cap.isOpened():
            raise OSError(f"cannot open {redact(str(source))}")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 240 else 0.0

    def read(self) -> np.ndarray:
        ok, image = self._cap.read()
        if ok:
            return image
        if not self.is_file:
            raise OSError(f"{redact(str(self._source))}: no frame")
        if not self.loop:
            raise SourceEnded()
        self._cap.release()
        self._cap = cv2.VideoCapture(self._source)
        ok, image = self._cap.read()
        if not ok:
            raise OSError(f"{self._source}: cannot restart the file")
        return image

    def release(self) -> None:
        self._cap.release()


def open_source(source: str, loop: bool, still_fps: float, timeout_s: float = 10.0):
    """The right reader for a config `source` string."""
    if source.isdigit():
        return VideoSource(int(source), is_file=False, loop=False)
    if "://" in source or source.startswith("/dev/"):
        return VideoSource(source, is_file=False, loop=False, timeout_s=timeout_s)
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise OSError(f"{path}: folder has no images")
        return ImageSequence(images, still_fps, loop)
    if not path.exists():
        raise OSError(f"{path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        # A still photo is a camera that shows the same scene at still_fps.
        return ImageSequence([path], still_fps, loop=True)
    return VideoSource(str(path), is_file=True, loop=loop)


@dataclass
class Backoff:
    initial_s: float = 1.0
    max_s: float = 60.0
    _next: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        self._next = self.initial_s if self._next == 0 else min(self.max_s, self._next * 2)
        return self._next

    def reset(self) -> None:
        self._next = 0.0


class CameraReader:
    """Reads one camera on its own thread; `latest()` hands over the newest frame."""

    def __init__(self, camera_id: str, source: str, *, fps: float = 15.0, loop: bool = False,
                 mode: str = "live", stall_timeout_s: float = 10.0,
                 backoff: Backoff | None = None, opener=open_source):
        assert mode in ("live", "paced", "every_frame")
        self.camera_id, self.source, self.fps, self.loop, self.mode = (
            camera_id, source, fps, loop, mode)
        self.stall_timeout_s = stall_timeout_s
        self._backoff = backoff or Backoff()
        self._opener = opener
        self.status = CameraStatus()
        self._reconnects: collections.deque[float] = collections.deque()
        self._online_since = 0.0
        self._delivered = 0  # frames handed over since start, across reopens
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera_id}", daemon=True)

    def start(self) -> "CameraReader":
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 3.0) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def latest(self, timeout: float = 0.0) -> Frame | None:
        """Take the newest unread frame, waiting up to `timeout` seconds for one."""
        with self._cond:
            if self._slot is None and timeout > 0:
                self._cond.wait_for(lambda: self._slot is not None or self.status.ended
                                    or self._stop.is_set(), timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()  # an every_frame reader waits for the slot to empty
            return frame

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self.mode == "every_frame":
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
            elif self._slot is not None:
                self.status.skipped += 1
            self._slot = frame
            self.status.captured += 1
            self._cond.notify_all()

    def reconnects_last_hour(self) -> int:
        cutoff = time.time() - 3600
        while self._reconnects and self._reconnects[0] < cutoff:
            self._reconnects.popleft()
        return len(self._reconnects)

    def _run(self) -> None:
        opened_once = False
        while not self._stop.is_set():
            try:
                reader = self._opener(self.source, self.loop, self.fps, self.stall_timeout_s)
            except OSError as exc:
                self._went_offline(redact(str(exc)))
                continue
            if opened_once:
                self._reconnects.append(time.time())
            opened_once = True
            file_fps = getattr(reader, "fps", 0.0) or self.fps
            log.info("camera %s online (%s)", self.camera_id, redact(self.source))
            self.status.online, self.status.last_error = True, ""
            self._online_since = time.monotonic()
            try:
                self._read_frames(reader, file_fps)
                return  # stopped or ended
            except OSError as exc:
                self._went_offline(redact(str(exc)))
            finally:
                reader.release()

    def _read_frames(self, reader, file_fps: float) -> None:
        interval = 1.0 / file_fps if file_fps > 0 else 0.0
        started, first = time.time(), self._delivered
        while not self._stop.is_set():
            try:
                image = reader.read()
            except SourceEnded:
                log.info("camera %s: end of %s after %d frames", self.camera_id,
                         redact(self.source),
                         self._delivered)
                with self._cond:
                    self.status.ended, self.status.online = True, False
                    self._cond.notify_all()
                return
            n = self._delivered - first  # frames since this open, for file time
            if self.mode == "every_frame":
                timestamp = started + n * interval
            else:
                timestamp = time.time()
            self._publish(Frame(self.camera_id, self._delivered, timestamp, image))
            self._delivered += 1
            if self.mode == "paced" and interval:
                # Sleep to the file's own clock, not a fixed gap, so slow reads don't drift.
                delay = started + (n + 1) * interval - time.time()
                if delay > 0:
                    self._stop.wait(delay)

    def _went_offline(self, reason: str) -> None:
        # A source that opens but fails again at once (a flapping stream) keeps
        # backing off; only one that delivered for a while starts over at 1 s.
        if self.status.online and time.monotonic() - self._online_since >= HEALTHY_AFTER_S:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        if self.status.online or self.status.last_error != reason:
            log.warning("camera %s offline: %s; retrying in %.1f s", self.camera_id, reason,
                        delay)
        self.status.online, self.status.last_error = False, reason
        self._stop.wait(delay)
