"""Chip geometry: least-squares similarity and dlib-style anti-aliased sampling."""

import cv2
import numpy as np

from edge.inference import geometry
from edge.pipeline import align


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 0.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = geometry.similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_similarity_is_least_squares_for_noisy_points():
    src = align.CHIP_TEMPLATE * 100
    dst = src + np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], float)
    m = geometry.similarity(src, dst)
    residual = np.linalg.norm(src @ m[:, :2].T + m[:, 2] - dst, axis=1)
    assert residual.max() < 1.5


def test_chip_places_landmarks_on_the_template():
    size = 64
    frame = np.zeros((400, 400, 3), np.uint8)
    # A face whose points are the template, scaled x3, rotated 20 degrees, shifted.
    c, s = np.cos(0.35), np.sin(0.35)
    landmarks = (align.CHIP_TEMPLATE * 150) @ np.array([[c, -s], [s, c]]).T + [120, 90]
    for x, y in landmarks:
        cv2.circle(frame, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
    chip = align.face_chips(frame, landmarks[None], size)[0]
    expected = align.CHIP_TEMPLATE * (size - 1)
    for x, y in expected:
        window = chip[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3]
        assert window.max() > 100, (x, y)
    assert chip.shape == (size, size, 3)


def test_pyramid_sampling_matches_direct_sampling_on_smooth_images():
    yy, xx = np.mgrid[0:600, 0:600]
    frame = np.dstack([(127 + 100 * np.sin(xx / 40) * np.cos(yy / 55))] * 3).astype(np.uint8)
    landmarks = align.CHIP_TEMPLATE * 400 + 100  # a 400 px face -> pyramid used for 32 px
    m = align.chip_transform(landmarks, 32)
    pyramid = align.extract_chip(frame, m, 32).astype(float)
    direct = cv2.warpAffine(cv2.GaussianBlur(frame, (0, 0), 3), m, (32, 32)).astype(float)
    assert np.abs(pyramid - direct).mean() < 4


def test_pyramid_removes_aliasing_of_fine_stripes():
    frame = np.zeros((800, 800, 3), np.uint8)
    frame[:, ::2] = 255  # 1-px stripes: plain bilinear at 1/10 scale aliases them
    landmarks = align.CHIP_TEMPLATE * 640 + 80
    chip = align.extract_chip(frame, align.chip_transform(landmarks, 64), 64)
    assert abs(float(chip[8:56, 8:56].mean()) - 127.5) < 10
    assert chip[8:56, 8:56].std() < 20


def test_face_outside_the_frame_gives_a_black_chip():
    frame = np.full((100, 100, 3), 200, np.uint8)
    landmarks = align.CHIP_TEMPLATE * 300 + 1000
    chip = align.face_chips(frame, landmarks[None], 32)[0]
    assert chip.max() == 0
