"""The installed set: one ONNX Runtime, one OpenCV, insightface importable."""

import importlib.metadata as md
import platform
import subprocess
import sys

import pytest

ORT_DISTS = {
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-silicon",
    "onnxruntime-training",
}
CV_DISTS = {
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
}


def installed(names):
    return {d.metadata["Name"].lower() for d in md.distributions()} & names


def test_exactly_one_onnxruntime():
    found = installed(ORT_DISTS)
    assert len(found) == 1, f"ONNX Runtime distributions installed: {sorted(found)}"
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert found == {"onnxruntime-gpu"}


def test_gpu_build_keeps_cuda_provider():
    # A CPU onnxruntime installed over the GPU one silently removes CUDA.
    import onnxruntime

    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_exactly_one_opencv():
    found = installed(CV_DISTS)
    assert found == {"opencv-python"}, f"OpenCV distributions installed: {sorted(found)}"


@pytest.mark.slow
def test_insightface_model_zoo_imports_cleanly():
    # In a subprocess: importing insightface is slow and must not touch the network.
    code = "import insightface.model_zoo as z; print(z.get_model.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "get_model"
