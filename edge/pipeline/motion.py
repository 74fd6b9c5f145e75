"""Motion stage: is anything moving in front of a camera? Decides whether to run the detector.

A store camera sees an empty aisle most of the day, and the face detector is the
most expensive stage on a CPU (CenterFace at 640 px: about 18 ms a frame). Frigate
runs a cheap motion test first and the object detector only where it finds
motion; this does the same per camera, on a small grey copy of the frame
(about 0.2 ms for 1280x720), against a running-average background:

- the frame is shrunk to WIDTH_PX wide (nearest-neighbour to twice that, then
  area-averaged: cheap and still smooth enough that sensor noise averages out),
  made grey and blurred;
- a pixel has changed when it differs from the background by more than
  PIXEL_THRESHOLD grey levels; there is motion when more than MIN_CHANGED of the
  small frame's pixels changed;
- the background follows the scene with a time constant of BACKGROUND_TAU_S
  (real time, not frames, so the behaviour does not depend on the frame rate).

The decision is deliberately biased towards "motion": a false alarm costs one
detector run, a miss could cost a visitor. A lighting change, a camera that
re-opens with another size, or the first frame all count as motion. The service
never relies on this stage alone: live tracks always keep the detector running
(a person standing still is never dropped because they stopped moving), and an
empty, still scene is still searched every `cameras[].idle_detect_s`
(edge/service.py says why).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

WIDTH_PX = 160
# Grey levels (0-255) after the blur: well above sensor noise once 64 pixels
# are averaged into one, well below a face or a body against a shelf.
PIXEL_THRESHOLD = 12
# Share of the small frame: 0.1 % is 14 pixels of 160x90, about a 25x25 px patch
# of a 720p frame. A face 35 px wide in a 1080p frame (README troubleshooting)
# moving by a third of its width changes more than that.
MIN_CHANGED = 0.001
BACKGROUND_TAU_S = 1.0


class MotionDetector:
    """Motion in one camera's frames, one call per frame, in time order."""

    def __init__(
        self,
        width_px: int = WIDTH_PX,
        pixel_threshold: float = PIXEL_THRESHOLD,
        min_changed: float = MIN_CHANGED,
        background_tau_s: float = BACKGROUND_TAU_S,
    ):
        self.width_px = width_px
        self.pixel_threshold = pixel_threshold
        self.min_changed = min_changed
        self.background_tau_s = background_tau_s
        self._background: np.ndarray | None = None  # float32, small grey frame
        self._frame_shape: tuple | None = None  # of the frames the background came from
        self._last_time: float | None = None
        self.changed_share = 1.0  # of the last frame, for logs and tests

    def small_grey(self, frame: np.ndarray) -> np.ndarray:
        """The frame shrunk to width_px wide, grey and blurred (uint8)."""
        h, w = frame.shape[:2]
        small_w = min(self.width_px, w)
        small_h = max(1, round(h * small_w / w))
        if w >= 2 * small_w and h >= 2 * small_h:
            # Area-averaging 1280x720 straight to 160x90 costs about 1 ms; sampling every
            # other pixel first and averaging 2x2 costs about 0.15 ms.
            frame = cv2.resize(frame, (2 * small_w, 2 * small_h), interpolation=cv2.INTER_NEAREST)
        small = cv2.resize(frame, (small_w, small_h), interpolation=cv2.INTER_AREA)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(small, (5, 5), 0)

    def update(self, frame: np.ndarray, timestamp: float) -> bool:
        """Fold the frame into the background; True when something moved."""
        grey = self.small_grey(frame)
        if self._background is None or frame.shape != self._frame_shape:
            # First frame, or the camera came back with another resolution or view.
            self._background = grey.astype(np.float32)
            self._frame_shape = frame.shape
            self._last_time = timestamp
            self.changed_share = 1.0
            return True  # nothing to compare with: look
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(self._background))
        self.changed_share = float(np.count_nonzero(diff > self.pixel_threshold)) / diff.size
        dt = max(0.0, timestamp - (self._last_time if self._last_time is not None else timestamp))
        self._last_time = timestamp
        # Exponential forgetting in real time; at least a little per frame, so a
        # repeated timestamp does not freeze the background.
        alpha = max(1.0 - math.exp(-dt / self.background_tau_s), 0.01)
        cv2.accumulateWeighted(grey, self._background, alpha)
        return self.changed_share > self.min_changed
