"""Capture stage: one reader thread per camera, keeping only the newest frame.

Live sources (V4L2 devices, RTSP/HTTP streams) are read as fast as they
deliver. Frames that come faster than the camera's target `fps` are passed over
here (counted, not handed on: a 60 fps camera at fps 15 hands on every fourth);
when processing falls behind, a due frame that was not taken yet is replaced by
the next one and counted as skipped, never queued (Frigate keeps a queue of 2 and
counts skipped_fps). So `skipped` means the pipeline could not keep up, nothing else.
Files and image folders can instead be read `paced` (at their own frame rate,
as a stand-in camera) or `every_frame` (offline analysis: the reader waits for
the pipeline, nothing is dropped, timestamps come from the file's frame rate).

A source that fails to open or stops delivering is reopened with exponential
backoff. For streams "stops delivering" means a read that waited
`stall_timeout_s` (FFmpeg's read timeout) for a frame, so a sparse stream that
sends a frame every few seconds is left alone rather than restarted in a loop.
Network streams are opened and read in a child process each (streamproc.py), so
a camera that hangs cannot hold up the others. Offline (`every_frame`), a source
that cannot be read ends the camera with an exit status instead of retrying.
Folders skip a bad image (logged once) and go on.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.errors import EX_DATAERR, EX_NOINPUT, EX_SOFTWARE, InputError
from edge.pipeline import images
from edge.pipeline.images import jpeg_truncated  # noqa: F401 (kept importable from here)
from edge.redact import redact
from edge.timefmt import now

log = logging.getLogger(__name__)

# OpenCV/FFmpeg would log every stream timeout itself; we log one line of our own.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

HEALTHY_AFTER_S = 60.0  # a source must deliver this long before its backoff starts over

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True, slots=True)
class Frame:
    camera: str
    index: int  # frames delivered by this camera so far (0-based)
    # capture time, seconds of edge.timefmt.now() (monotonic; file time in every_frame mode)
    timestamp: float
    image: np.ndarray  # BGR


@dataclass
class CameraStatus:
    online: bool = False
    ended: bool = False
    captured: int = 0
    skipped: int = 0  # due frames replaced before the pipeline took them: it fell behind
    passed_over: int = 0  # frames faster than the target fps, left on purpose
    last_error: str = ""
    exit_status: int = 0  # offline: why the source ended (65 bad data, 66 unreadable), 0 fine
    bad_files: int = 0  # images a folder camera skipped


class SourceEnded(Exception):
    """A non-looped file or folder has no more frames."""


class SourceUnreadable(OSError):
    """The source is missing, or the service user may not read it."""

    exit_status = EX_NOINPUT


class BadSourceData(OSError):
    """The source can be read but holds no usable frame."""

    exit_status = EX_DATAERR


_reported: collections.OrderedDict[str, None] = collections.OrderedDict()
_reported_lock = threading.Lock()


def log_once(level: int, message: str) -> None:
    """Log a message the first time it occurs in this process (bounded memory), so a
    looping folder or a retried source does not repeat the same line forever."""
    with _reported_lock:
        if message in _reported:
            return
        _reported[message] = None
        if len(_reported) > 1000:
            _reported.popitem(last=False)
    log.log(level, "%s", message)


def read_image_file(path: Path) -> np.ndarray:
    """Decode one image file by `edge analyze`'s rules (edge/pipeline/images.py): SourceUnreadable
    when it is missing or may not be read, BadSourceData when it holds no usable image."""
    if not path.exists():
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise SourceUnreadable(f"{path}: no such file{broken}")
    if path.is_file() and not os.access(path, os.R_OK):
        raise SourceUnreadable(f"{path}: cannot read it (permission denied)")
    try:
        return images.read_image(path)
    except InputError as exc:
        raise BadSourceData(str(exc)) from None


class ImageSequence:
    """A folder of images, a list of image files, or one still photo, as a camera.

    A bad file in a folder (corrupt, empty, truncated, a folder or broken link with an
    image's name) is logged once and skipped; the others are read in order as before.
    A still photo is decoded once and shown again at `fps` while `loop` is set."""

    def __init__(self, paths: list[Path], fps: float, loop: bool, folder: Path | None = None):
        self.paths, self.fps, self.loop, self.folder = paths, fps, loop, folder
        self.skipped_files = 0
        self._bad: set[Path] = set()
        self._next = 0
        self._still: np.ndarray | None = None

    def read(self) -> np.ndarray:
        if self.folder is None:  # one still photo
            if self._next and not self.loop:
                raise SourceEnded()
            if self._still is None:
                self._still = read_image_file(self.paths[0])
            self._next += 1
            return self._still.copy()  # the pipeline may draw on or keep its frame
        while True:
            if self._next >= len(self.paths):
                if not self.loop:
                    raise SourceEnded()
                if len(self._bad) == len(self.paths):
                    raise BadSourceData(
                        f"{self.folder}: none of its {len(self.paths)} image(s) is readable"
                    )
                self._next = 0
            path = self.paths[self._next]
            self._next += 1
            if path in self._bad:
                continue
            try:
                return read_image_file(path)
            except OSError as exc:
                self._bad.add(path)
                self.skipped_files += 1
                log_once(logging.WARNING, f"{exc}; skipped")

    def release(self) -> None:
        pass


class VideoSource:
    """cv2.VideoCapture over a device or a video file (streams: streamproc.py); `kind` is
    source_kind's answer, "device" or "file"."""

    def __init__(self, source: str | int, kind: str, loop: bool):
        assert kind in ("device", "file"), kind
        self.is_file, self.loop, self._source = kind == "file", loop, source
        self._frames = 0
        self._cap = cv2.VideoCapture(source)
        if not self._cap.isOpened():
            if self.is_file:
                raise BadSourceData(f"{source}: not a video or image OpenCV can read")
            raise OSError(f"cannot open {redact(str(source))}")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 240 else 0.0

    def read(self) -> np.ndarray:
        ok, image = self._cap.read()
        if ok:
            self._frames += 1
            return image
        if not self.is_file:
            raise OSError(f"{redact(str(self._source))}: no frame")
        if not self._frames:
            raise BadSourceData(
                f"{self._source}: no frame could be decoded (truncated or not a video)"
            )
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


SOURCE_KINDS = ("device", "stream", "folder", "still", "file")


def source_kind(source: str) -> str:
    """What a config `source` names, one of SOURCE_KINDS: "device" (a V4L2 index such as
    0, or a /dev/ node), "stream" (a URL: rtsp://, http://, ...), "folder" (of images),
    "still" (one photo) or "file" (a video file). The one rule: open_source, the
    service's read mode and `edge check` all ask it."""
    if source.isdigit():
        return "device"
    if "://" in source:
        return "stream"
    if source.startswith("/dev/"):
        return "device"
    path = Path(source)
    if path.is_dir():
        return "folder"
    return "still" if path.suffix.lower() in IMAGE_SUFFIXES else "file"


def device_node(source: str) -> str | None:
    """The V4L2 device node a device source names (index N: /dev/videoN), else None."""
    if source_kind(source) != "device":
        return None
    return f"/dev/video{source}" if source.isdigit() else source


class FrameSource(Protocol):
    """What a camera reader reads from: a device, a file, a stream's child process, a
    folder of photos (or edge bench's frames in memory). `read` raises SourceEnded at
    the end, an OSError when the source fails."""

    def read(self) -> np.ndarray: ...

    def release(self) -> None: ...


def open_source(
    source: str, loop: bool, still_fps: float, timeout_s: float = 10.0, *, repeat_still: bool = True
) -> FrameSource:
    """The right reader for a config `source` string. A still photo is shown again and
    again at still_fps as a live camera (`repeat_still`), or once for offline analysis."""
    kind = source_kind(source)
    if kind == "device":
        return VideoSource(int(source) if source.isdigit() else source, "device", loop=False)
    if kind == "stream":
        from edge.pipeline.streamproc import StreamProcess

        return StreamProcess(source, timeout_s, redact(source))
    path = Path(source)
    if kind == "folder":
        try:
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceUnreadable(
                f"{path}: cannot list the folder ({exc.strerror or exc})"
            ) from None
        if not images:
            raise BadSourceData(f"{path}: folder has no images")
        return ImageSequence(images, still_fps, loop, folder=path)
    if not path.exists():
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise SourceUnreadable(f"{path}: no such file{broken}")
    if not os.access(path, os.R_OK):
        raise SourceUnreadable(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise BadSourceData(f"{path}: empty file (0 bytes)")
    if kind == "still":
        return ImageSequence([path], still_fps, loop=loop or repeat_still)
    return VideoSource(str(path), "file", loop=loop)


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

    def __init__(
        self,
        camera_id: str,
        source: str,
        *,
        fps: float = 15.0,
        loop: bool = False,
        mode: str = "live",
        stall_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        opener: Callable[[str, bool, float, float], FrameSource] | None = None,
    ):
        assert mode in ("live", "paced", "every_frame")
        self.camera_id, self.source, self.fps, self.loop, self.mode = (
            camera_id,
            source,
            fps,
            loop,
            mode,
        )
        self.stall_timeout_s = stall_timeout_s
        self._backoff = backoff or Backoff()
        # Offline, a still photo is one frame; as a camera it is shown again and again.
        self._opener = opener or functools.partial(open_source, repeat_still=mode != "every_frame")
        self.status = CameraStatus()
        self._reconnects: collections.deque[float] = collections.deque()
        self._online_since = 0.0
        self._delivered = 0  # frames handed over since start, across reopens
        self._slot: Frame | None = None
        self._last_due = -math.inf  # timestamp of the last frame handed on (not passed over)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera_id}", daemon=True)

    def start(self) -> CameraReader:
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

    @property
    def retrying(self) -> bool:
        """Offline and being reopened (with backoff) by its own live thread: a known,
        reported state, not a stuck one."""
        return self._thread.is_alive() and not self.status.online and not self.status.ended

    def latest(self, timeout: float = 0.0) -> Frame | None:
        """Take the newest unread frame, waiting up to `timeout` seconds for one."""
        with self._cond:
            if self._slot is None and timeout > 0:
                self._cond.wait_for(
                    lambda: self._slot is not None or self.status.ended or self._stop.is_set(),
                    timeout,
                )
            frame, self._slot = self._slot, None
            self._cond.notify_all()  # an every_frame reader waits for the slot to empty
            return frame

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            self.status.captured += 1
            if self.mode == "every_frame":
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
            else:
                # 0.9: a camera's own jitter must not pass over a frame that is on time.
                if self.fps > 0 and frame.timestamp - self._last_due < 0.9 / self.fps:
                    self.status.passed_over += 1
                    return
                self._last_due = frame.timestamp
                if self._slot is not None:
                    self.status.skipped += 1
            self._slot = frame
            self._cond.notify_all()

    def reconnects_last_hour(self) -> int:
        cutoff = time.monotonic() - 3600
        while self._reconnects and self._reconnects[0] < cutoff:
            self._reconnects.popleft()
        return len(self._reconnects)

    def _run(self) -> None:
        opened_once = False
        while not self._stop.is_set():
            reader = None
            try:
                reader = self._opener(self.source, self.loop, self.fps, self.stall_timeout_s)
                if opened_once:
                    self._reconnects.append(time.monotonic())
                opened_once = True
                self._read_frames(reader, getattr(reader, "fps", 0.0) or self.fps)
                return  # stopped or ended
            except OSError as exc:
                error: Exception = exc
                reason = redact(str(exc))
            except Exception as exc:  # a decoder or backend bug: the camera must come back
                error = exc
                reason = redact(f"{type(exc).__name__}: {exc}")
                log.debug("camera %s: unexpected error", self.camera_id, exc_info=True)
            finally:
                if reader is not None:
                    _release(reader, self.camera_id)
            if self.mode == "every_frame":  # offline: retrying cannot make the input readable
                self._failed(
                    reason,
                    getattr(
                        error,
                        "exit_status",
                        EX_NOINPUT if isinstance(error, OSError) else EX_SOFTWARE,
                    ),
                )
                return
            self._went_offline(reason)

    def _read_frames(self, reader: FrameSource, file_fps: float) -> None:
        interval = 1.0 / file_fps if file_fps > 0 else 0.0
        # Pacing and frame times are monotonic: a step of the wall clock must not make
        # a paced file sleep for an hour or hand the pipeline frames from the future.
        started, first = now(), self._delivered
        while not self._stop.is_set():
            try:
                image = reader.read()
            except SourceEnded:
                skipped = getattr(reader, "skipped_files", 0)
                log.info(
                    "camera %s: end of %s after %d frames%s",
                    self.camera_id,
                    redact(self.source),
                    self._delivered,
                    f" ({skipped} bad file(s) skipped)" if skipped else "",
                )
                with self._cond:
                    self.status.ended, self.status.online = True, False
                    self.status.bad_files = skipped
                    if skipped and self.mode == "every_frame":
                        self.status.exit_status = BadSourceData.exit_status
                    self._cond.notify_all()
                return
            if not self.status.online:
                # Online means delivering: a source that opens but fails its first read
                # (an unreadable still, a stream that never answers) is not announced.
                log.info("camera %s online (%s)", self.camera_id, redact(self.source))
                self.status.online, self.status.last_error = True, ""
                self._online_since = time.monotonic()
            self.status.bad_files = getattr(reader, "skipped_files", 0)
            n = self._delivered - first  # frames since this open (or stall), for file time
            if self.mode == "every_frame":
                timestamp = started + n * interval
            else:
                timestamp = now()
            self._publish(Frame(self.camera_id, self._delivered, timestamp, image))
            self._delivered += 1
            if self.mode == "paced" and interval:
                # Sleep to the file's own clock, not a fixed gap, so slow reads don't drift.
                delay = started + (n + 1) * interval - now()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -max(2 * interval, 0.25):
                    # A stall (a slow disk, a reopen): catching up would hand over a burst
                    # that the pipeline cannot take and count as skipped. Start the clock over.
                    started, first = now(), self._delivered

    def _failed(self, reason: str, exit_status: int) -> None:
        log.error("camera %s: %s", self.camera_id, reason)
        with self._cond:
            self.status.online, self.status.ended = False, True
            self.status.last_error, self.status.exit_status = reason, exit_status
            self._cond.notify_all()

    def _went_offline(self, reason: str) -> None:
        # A source that opens but fails again at once (a flapping stream) keeps
        # backing off; only one that delivered for a while starts over at 1 s.
        if self.status.online and time.monotonic() - self._online_since >= HEALTHY_AFTER_S:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        if self.status.online or self.status.last_error != reason:
            log.warning("camera %s offline: %s; retrying in %.1f s", self.camera_id, reason, delay)
        self.status.online, self.status.last_error = False, reason
        self._stop.wait(delay)


def _release(reader: FrameSource, camera_id: str) -> None:
    try:
        reader.release()
    except Exception as exc:  # the source is being dropped anyway; reopening must go on
        log.debug("camera %s: release failed: %r", camera_id, exc)
