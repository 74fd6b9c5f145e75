"""How far a face is turned, from its five landmarks.

The detector gives eye centres, nose tip and mouth corners. Seen from the front the
nose tip sits midway between the eyes; as the head turns it moves toward one eye and,
in profile, past it, while the eye line shortens. `yaw` measures that: 0 frontal, -1 or
+1 with the nose tip straight below an eye (roughly 45 degrees), beyond that a profile.
The sign says which way, in image terms; only the magnitude is used.

Used to choose face-api's crop for turned heads (classify.faceapi_chips) and to weigh a
track's looks by how frontal they are (docs/calibration.md section 11).
"""

from __future__ import annotations

import numpy as np

YAW_LIMIT = 2.0  # a nose tip far outside the eyes (or eyes on top of each other)


def yaw(landmarks: np.ndarray) -> np.ndarray:
    """(N, 5, 2) RetinaFace-order landmarks -> (N,) signed turn, clipped to +-YAW_LIMIT."""
    points = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    left, right, nose = points[:, 0, 0], points[:, 1, 0], points[:, 2, 0]
    span = right - left
    # eyes on top of each other or swapped: as turned as it gets
    safe = np.where(np.abs(span) > 1e-6, span, np.nan)
    turn = 2 * (nose - left) / safe - 1
    return np.clip(np.nan_to_num(turn, nan=YAW_LIMIT), -YAW_LIMIT, YAW_LIMIT)


def frontality(landmarks: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: 1 for a frontal face, 0 from the nose-below-an-eye turn on."""
    return 1.0 - np.minimum(np.abs(yaw(landmarks)), 1.0)
