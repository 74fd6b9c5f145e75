"""Detectors: decoding, NMS, sizing, graph fix-up, and real faces in a real photo."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge.pipeline import detect
from edge.records import Detections

from conftest import ROOT, need


def test_centerface_decode_places_box_and_landmarks():
    h, w = 8, 10
    heat = np.zeros((1, 1, h, w), np.float32)
    heat[0, 0, 3, 5] = 0.9
    sizes = np.zeros((1, 2, h, w), np.float32)
    sizes[0, 0, 3, 5] = np.log(24 / 4)  # box height 24 px
    sizes[0, 1, 3, 5] = np.log(16 / 4)  # box width 16 px
    offsets = np.zeros((1, 2, h, w), np.float32)
    offsets[0, 0, 3, 5], offsets[0, 1, 3, 5] = 0.25, -0.5
    marks = np.zeros((1, 10, h, w), np.float32)
    marks[0, 0::2, 3, 5] = 0.5  # every landmark at half the box height (dy)
    marks[0, 1::2, 3, 5] = 0.25  # and a quarter of its width (dx)
    boxes, scores, landmarks = detect.CenterFace.decode(heat, sizes, offsets, marks, 0.5)
    cx, cy = (5 - 0.5 + 0.5) * 4, (3 + 0.25 + 0.5) * 4
    np.testing.assert_allclose(boxes[0], [cx - 8, cy - 12, cx + 8, cy + 12], atol=1e-4)
    np.testing.assert_allclose(scores, [0.9])
    np.testing.assert_allclose(landmarks[0], [[cx - 8 + 4, cy - 12 + 12]] * 5, atol=1e-4)


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = detect.nms(boxes, np.array([0.6, 0.9, 0.8], np.float32), 0.3)
    assert sorted(keep.tolist()) == [1, 2]


def test_input_size_is_multiple_of_32_and_never_upscales():
    assert detect.input_size(1280, 720, 640) == (640, 384)
    assert detect.input_size(300, 300, 640) == (320, 320)
    w, h = detect.input_size(1919, 1081, 641)
    assert w % 32 == 0 and h % 32 == 0


def test_detector_settings_read_the_detector_section_and_size_the_canvas(config):
    d = config.detector
    settings = detect.DetectorSettings.from_config(config)
    assert settings == detect.DetectorSettings(
        d.input_width, d.score_threshold, d.nms_iou, d.min_face_px
    )
    assert detect.DetectorSettings.from_config(config, 0.1).score_threshold == 0.1
    frame = np.zeros((720, 1280, 3), np.uint8)
    assert settings.canvas(frame) == detect.input_size(1280, 720, d.input_width)
    assert settings.canvas(frame, 320) == detect.input_size(1280, 720, 320)


def test_letterbox_keeps_aspect_and_scale():
    frame = np.full((100, 200, 3), 255, np.uint8)
    canvas, scale = detect.letterbox(frame, (128, 96))
    assert canvas.shape == (96, 128, 3) and scale == pytest.approx(0.64)
    assert canvas[:64, :128].min() == 255 and canvas[64:].max() == 0


def test_centerface_graph_loads_without_runtime_warnings():
    # The file lists its weights as graph inputs; ORT would warn once per tensor.
    code = (
        "import logging, onnxruntime as ort; ort.set_default_logger_severity(1);"
        "from pathlib import Path; from edge.pipeline.detect import CenterFace;"
        "d = CenterFace(Path('models/centerface.onnx')); print(d.provider)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"
    assert "appears in graph inputs" not in out.stderr
    assert "[W:onnxruntime" not in out.stderr


def test_centerface_finds_the_six_faces(analyzer, group_photo):
    frame = cv2.imread(str(group_photo))
    faces = analyzer.detector(frame)
    assert len(faces) == 6
    assert (faces.scores > 0.8).all()
    assert (faces.widths > 80).all() and (faces.widths < 130).all()
    # RetinaFace order: image-left eye left of image-right eye, nose between, mouth below eyes
    lm = faces.landmarks
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
    assert (lm[:, 3, 1] > lm[:, 0, 1]).all()


def iou(a, b):
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matches(found: Detections, reference: Detections) -> int:
    return sum(max(iou(f, r) for r in reference.boxes) > 0.5 for f in found.boxes)


def test_yunet_backend_agrees_with_centerface(analyzer, group_photo):
    model = need("models/face_detection_yunet_2023mar.onnx")
    frame = cv2.imread(str(group_photo))
    faces = detect.YuNet(model)(frame)
    assert len(faces) == 6
    assert matches(faces, analyzer.detector(frame)) == 6
    assert (faces.landmarks[:, 0, 0] < faces.landmarks[:, 1, 0]).all()


@pytest.mark.slow
def test_scrfd_backend_through_insightface_agrees_with_centerface(analyzer, group_photo):
    model = need("models/det_2.5g.onnx")
    frame = cv2.imread(str(group_photo))
    faces = detect.SCRFD(model)(frame)
    assert len(faces) == 6
    assert matches(faces, analyzer.detector(frame)) == 6
    assert faces.landmarks.shape == (6, 5, 2)


def test_operator_model_missing_is_a_clear_error(tmp_path):
    from edge.errors import ModelError

    with pytest.raises(ModelError, match="detector.model"):
        detect.YuNet(tmp_path / "yunet.onnx")


def test_blank_frame_has_no_faces(analyzer):
    faces = analyzer.detector(np.full((360, 640, 3), 127, np.uint8))
    assert len(faces) == 0 and faces.landmarks.shape == (0, 5, 2)


@pytest.mark.slow
def test_scrfd_backend_keeps_stdout_clean(group_photo, tmp_path):
    """insightface print()s on model load; `edge analyze` output must stay pure JSON."""
    import json

    from conftest import run_edge

    model = need("models/det_2.5g.onnx")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models:\n  dir: {ROOT / 'models'}\ndetector:\n  backend: scrfd\n  model: {model}\n"
    )
    result = run_edge("--config", str(config), "analyze", str(group_photo))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["faces"]) == 6
