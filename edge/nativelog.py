"""Rate-limit what C libraries print to stderr.

libjpeg (inside OpenCV) prints a warning such as "Corrupt JPEG data: 4 extraneous
bytes before marker 0xd9" on every decode of a damaged image, and FFmpeg prints its
own lines for damaged video, straight to file descriptor 2: no logging level of
OpenCV's reaches them. A looping folder or file would repeat the same line many times
a second in the journal. Here fd 2 becomes a pipe read by a thread that passes each
distinct line on the first `burst` times in a window and then counts it, with one
summary line when the window closes. Python's own stderr (log lines, tracebacks) keeps
writing to the original descriptor, unfiltered.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time

log = logging.getLogger("edge.native")

# "[mjpeg @ 0x55d0c3a1e2c0] " differs per decoder instance; the rest is the message.
_ADDRESS = re.compile(rb"0x[0-9a-fA-F]+")


class NativeStderrFilter:
    def __init__(self, window_s: float = 10.0, burst: int = 3):
        self.window_s, self.burst = window_s, burst
        self._seen: dict[bytes, list] = {}  # key -> [first line, count, window start]
        self._lock = threading.Lock()
        sys.stderr.flush()
        self._original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        # Python keeps the real stderr (the journal, the terminal); only C writes are piped.
        sys.stderr = os.fdopen(
            os.dup(self._original),
            "w",
            buffering=1,
            encoding=sys.stderr.encoding,
            errors="backslashreplace",
        )
        self._reader = os.fdopen(read_end, "rb", buffering=0)
        threading.Thread(target=self._pump, name="native-stderr", daemon=True).start()
        threading.Thread(target=self._summarise, name="native-stderr-summary", daemon=True).start()

    def _pump(self) -> None:
        buffered = b""
        while True:
            try:
                chunk = self._reader.read(65536)
            except OSError:
                return
            if not chunk:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                self._line(line + b"\n")
            if len(buffered) > 65536:  # no newline for a long time: pass it on as is
                self._line(buffered)
                buffered = b""

    def _line(self, line: bytes) -> None:
        key = _ADDRESS.sub(b"0x", line.strip())
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[2] >= self.window_s:
                if entry is not None:
                    self._report(key, entry)
                entry = self._seen[key] = [line, 0, now]
            entry[1] += 1
            passed = entry[1] <= self.burst
        if passed:
            os.write(self._original, line)

    def _summarise(self) -> None:
        while True:
            time.sleep(self.window_s / 2)
            now = time.monotonic()
            with self._lock:
                for key, entry in list(self._seen.items()):
                    if now - entry[2] >= self.window_s:
                        self._report(key, entry)
                        del self._seen[key]

    def _report(self, key: bytes, entry: list) -> None:
        held_back = entry[1] - self.burst
        if held_back > 0:
            log.warning(
                "%s (repeated %d more times in %.0f s)",
                entry[0].decode("utf-8", "replace").strip(),
                held_back,
                self.window_s,
            )


_installed: NativeStderrFilter | None = None


def install(window_s: float = 10.0, burst: int = 3) -> None:
    """Once per process, before logging is set up (its handler keeps sys.stderr)."""
    global _installed
    if _installed is None:
        _installed = NativeStderrFilter(window_s, burst)
