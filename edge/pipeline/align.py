"""Face chips in the geometry the Cydral age/gender networks were trained on.

dlib cuts a chip by fitting a similarity transform from its own five landmarks
(eye corners, nose base) to a template, with 0.2 padding, then samples with an
image pyramid plus bilinear interpolation so small chips do not alias. Our
detectors give RetinaFace-convention points (eye centres, nose tip, mouth
corners), which sit elsewhere on the face. `CHIP_TEMPLATE` holds where those
points fall inside dlib's padded chip, measured once with dlib's own chip
transform on sample faces (tools/derive_chip_template.py; docs/calibration.md).
All five points are fitted by least squares.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.inference.geometry import similarity

# RetinaFace-order points (image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner) in dlib's padded face chip,
# as fractions of the chip side (padding 0.2). Derived by
# tools/derive_chip_template.py; see docs/calibration.md.
CHIP_TEMPLATE = np.array(
    [
        [0.2873, 0.3131],
        [0.6826, 0.3006],
        [0.4793, 0.5234],
        [0.3229, 0.6923],
        [0.6594, 0.6793],
    ],
    dtype=np.float64,
)


def chip_transform(
    landmarks: np.ndarray, size: int, template: np.ndarray = CHIP_TEMPLATE
) -> np.ndarray:
    """2x3 matrix taking frame pixels to chip pixels for a `size` chip."""
    # dlib's chip pixel i covers template coordinate i / (size - 1).
    return similarity(landmarks, template * (size - 1))


def extract_chip(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Sample a size x size chip through `matrix` (frame -> chip), anti-aliased like dlib.

    When the chip is much smaller than the face, dlib first halves the image
    (5-tap Gaussian, as cv2.pyrDown) until the face is less than twice the
    chip, then interpolates bilinearly. We do the same on a crop around the
    face, which costs a fraction of pyramiding the whole frame.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # chip px per frame px
    levels = max(0, int(np.floor(np.log2(1.0 / scale)))) if scale < 1 else 0
    if levels == 0:
        return _bilinear(frame, matrix, size)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    region = corners @ inverse.T
    margin = 4 * 2**levels  # room for the pyramid filter's support
    x0 = max(0, int(np.floor(region[:, 0].min())) - margin)
    y0 = max(0, int(np.floor(region[:, 1].min())) - margin)
    x1 = min(frame.shape[1], int(np.ceil(region[:, 0].max())) + margin)
    y1 = min(frame.shape[0], int(np.ceil(region[:, 1].max())) + margin)
    if x1 <= x0 or y1 <= y0:  # face entirely outside the frame
        return np.zeros((size, size) + frame.shape[2:], frame.dtype)
    image = frame[y0:y1, x0:x1]
    # Chip pixels from crop pixels: shift by the crop origin, then each pyrDown halves.
    local = matrix.copy()
    local[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    for _ in range(levels):
        if min(image.shape[:2]) < 2:
            break
        image = cv2.pyrDown(image)
        local[:, :2] *= 2.0
    return _bilinear(image, local, size)


def _bilinear(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The size x size chip through `matrix`, bilinear, black outside the image."""
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def face_chips(
    frame: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray = CHIP_TEMPLATE
) -> np.ndarray:
    """(N, size, size, C) chips, one per face's (5, 2) landmarks."""
    chips = np.empty((len(landmarks), size, size) + frame.shape[2:], frame.dtype)
    for i, points in enumerate(landmarks):
        chips[i] = extract_chip(frame, chip_transform(points, size, template), size)
    return chips
