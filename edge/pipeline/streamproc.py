"""Network streams read in a child process of their own.

OpenCV's FFmpeg backend opens streams under one process-wide lock, and an open
blocks until the stream answers or its open timeout runs out. A camera that
accepts the TCP connection and never answers therefore held every other open in
the process (another stream's, and a looping file's reopen at its end) for the
whole timeout, and several hung cameras queued up behind each other. In a child
process per stream an open blocks only that child; the parent waits on a pipe
with its own deadline and kills the child when the deadline passes, so no hung
camera can hold up another camera, the service loop or `edge check`. A crash in
FFmpeg takes down only that child, too.

The child gets the URL on stdin (not in argv, where `ps` would show a password)
and writes messages to stdout: a fixed header, then a payload. Frames are raw
BGR pixels; FFmpeg's own log lines arrive on the child's stderr and are kept as
the reason when the stream fails, instead of being printed on every retry.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import threading
import time

import numpy as np

from edge.redact import redact

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<BIIId")  # kind, a, b, c, value
_OPENED, _FRAME, _FAILED = 1, 2, 3
# The child must import OpenCV before it can open anything: allowed on top of the
# stream's own open timeout, so a slow start on a busy box is not a dead camera.
START_GRACE_S = 3.0
# FFmpeg's "[tcp @ 0x55d0c3a1e2c0] " prefix differs per attempt; the rest is the reason.
_FFMPEG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")


class StreamProcess:
    """A network stream, opened and read in a child process (see the module's doc).

    The constructor returns once the stream delivered its header, or raises OSError
    with the reason after `timeout_s` (plus START_GRACE_S for the child to start).
    `read()` raises OSError when no frame came within `timeout_s`."""

    def __init__(self, url: str, timeout_s: float, shown_as: str):
        self.fps = 0.0
        self._shown_as = shown_as  # the URL with its password masked
        self._timeout_s = timeout_s
        self._messages: collections.deque[str] = collections.deque(maxlen=5)
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge.pipeline.streamproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env={**os.environ, "PYTHONPATH": _package_root()},
        )
        # All three are pipes (PIPE above), so none is None.
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self._stdin, self._stdout, self._stderr = proc.stdin, proc.stdout, proc.stderr
        self._stderr_reader = threading.Thread(
            target=self._collect_stderr, name="stream-stderr", daemon=True
        )
        self._stderr_reader.start()
        try:
            self._stdin.write(
                json.dumps({"url": url, "timeout_ms": int(timeout_s * 1000)}).encode() + b"\n"
            )
            self._stdin.close()
            kind, _a, _b, _c, value = self._header(
                time.monotonic() + timeout_s + START_GRACE_S, "no answer"
            )
            if kind != _OPENED:
                raise OSError(f"{shown_as}: unexpected message from the reader process")
            self.fps = value
        except BaseException:
            self.release()
            raise

    def read(self) -> np.ndarray:
        # The child's own read timeout is timeout_s; one second more covers the pipe.
        kind, height, width, channels, _ = self._header(
            time.monotonic() + self._timeout_s + 1.0, "no frame"
        )
        if kind != _FRAME:
            raise OSError(f"{self._shown_as}: unexpected message from the reader process")
        image = np.empty((height, width, channels), np.uint8)
        self._read_into(image.data.cast("B"), time.monotonic() + self._timeout_s, "frame cut off")
        return image

    def release(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:  # reaped by the OS when we exit; nothing to wait for
            pass
        self._stdout.close()

    # -- the pipe ----------------------------------------------------------------

    def _header(self, deadline: float, what: str) -> tuple:
        buffer = bytearray(_HEADER.size)
        self._read_into(memoryview(buffer), deadline, what)
        kind, a, b, c, value = _HEADER.unpack(buffer)
        if kind == _FAILED:
            message = bytearray(a)
            self._read_into(memoryview(message), time.monotonic() + 1.0, "message cut off")
            self.release()  # its stderr, flushed before the message, stays readable
            raise OSError(self._with_reason(message.decode("utf-8", "replace")))
        return kind, a, b, c, value

    def _read_into(self, view: memoryview, deadline: float, what: str) -> None:
        fd, got = self._stdout.fileno(), 0
        while got < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.release()
                raise OSError(
                    self._with_reason(f"{self._shown_as}: {what} within {self._timeout_s:g} s")
                )
            n = os.readv(fd, [view[got:]])
            if n == 0:  # the child ended without saying why (killed, crashed)
                self._proc.wait(timeout=2.0)
                raise OSError(
                    self._with_reason(
                        f"{self._shown_as}: reader process ended (exit status "
                        f"{self._proc.returncode})"
                    )
                )
            got += n

    def _collect_stderr(self) -> None:
        for raw in self._stderr:
            line = _FFMPEG_PREFIX.sub("", raw.decode("utf-8", "replace").strip())
            if line:
                self._messages.append(line)
                log.debug("%s: %s", self._shown_as, redact(line))
        self._stderr.close()

    def _with_reason(self, message: str) -> str:
        # FFmpeg's last line says why (refused, 401, not found); it may quote the URL.
        # Every caller has a child that has ended or is ending: read its stderr to the end.
        self._stderr_reader.join(1.0)
        detail = self._messages[-1] if self._messages else ""
        return f"{message} ({redact(detail)})" if detail else message


def _package_root() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    existing = os.environ.get("PYTHONPATH", "")
    return f"{root}{os.pathsep}{existing}" if existing else root


# -- the child ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the thread that started it ends (the camera's
    reader, or the process itself), so no orphan keeps a camera connection open."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child() -> int:
    _die_with_parent()
    import cv2

    # As capture.py does in the parent: OpenCV's own warnings (a backend that "can't be
    # used to capture by name", with a timestamp) would otherwise become the reason the
    # parent reports, a new one on every retry.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

    spec = json.loads(sys.stdin.readline())
    out = sys.stdout.buffer

    def send(
        kind: int,
        a: int = 0,
        b: int = 0,
        c: int = 0,
        value: float = 0.0,
        payload: bytes | memoryview = b"",
    ) -> None:
        out.write(_HEADER.pack(kind, a, b, c, value))
        if payload:
            out.write(payload)
        out.flush()

    def failed(message: str) -> int:
        sys.stderr.flush()  # FFmpeg's reason first, then ours: the parent reads both
        data = message.encode()
        send(_FAILED, len(data), payload=data)
        return 1

    shown = redact(spec["url"])
    ms = spec["timeout_ms"]
    started = time.monotonic()
    cap = cv2.VideoCapture(
        spec["url"],
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms],
    )
    if not cap.isOpened():
        if time.monotonic() - started >= ms / 1000 - 0.1:  # FFmpeg gave up waiting
            return failed(f"{shown}: no answer within {ms / 1000:g} s")
        return failed(f"cannot open {shown}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    send(_OPENED, value=fps if fps and 0 < fps < 240 else 0.0)
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return failed(f"{shown}: no frame")
            image = np.ascontiguousarray(image)
            if image.ndim == 2:
                image = image[:, :, None]
            send(
                _FRAME,
                image.shape[0],
                image.shape[1],
                image.shape[2],
                payload=image.data.cast("B"),
            )
    except BrokenPipeError:  # the parent has gone, or gave up on this stream
        return 0
    finally:
        cap.release()


if __name__ == "__main__":
    sys.exit(_child())
