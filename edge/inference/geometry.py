"""Plane geometry the face networks' input cuts share.

The least-squares similarity lives here, below both its users: the chip cutter of the
pipeline (pipeline/align.py) and face-api's aligned box (inference/faceapi.py), so the
converter of face-api's weights does not reach up into a stage for it.
"""

from __future__ import annotations

import numpy as np


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src onto dst, 2x3.

    Umeyama's closed form, without reflection.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var = (s**2).sum() / len(src)
    scale = (sig * np.diag(sign)).sum() / var if var > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - matrix[:, :2] @ mu_s
    return matrix
