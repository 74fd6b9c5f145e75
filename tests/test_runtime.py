"""Execution providers: the GPU fallback is reported by us, in one line, not by ORT's errors."""

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge import config as config_mod
from edge.inference import runtime
from edge.pipeline import classify

from conftest import run_edge

NO_GPU = runtime.gpu_probe()[0] == 0


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU; the fallback cannot happen")
def test_cuda_request_without_gpu_falls_back_in_one_line(caplog):
    runtime.choose_providers.cache_clear()
    with caplog.at_level(logging.WARNING, logger="edge.inference.runtime"):
        chosen = runtime.choose_providers(("cuda", "cpu"))
        runtime.choose_providers(("cuda", "cpu"))  # asked again: no second line
    assert chosen == ("CPUExecutionProvider",)
    assert len(caplog.records) == 1
    assert (
        "cuda (" in caplog.records[0].getMessage()
        and "using CPUExecutionProvider" in caplog.records[0].getMessage()
    )


def test_cpu_only_request_logs_nothing(caplog):
    runtime.choose_providers.cache_clear()
    with caplog.at_level(logging.WARNING, logger="edge.inference.runtime"):
        assert runtime.choose_providers(("cpu",)) == ("CPUExecutionProvider",)
    assert caplog.records == []


def test_placement_defaults_to_the_cpu_and_reads_the_runtime_section(tmp_path):
    assert runtime.Placement() == runtime.Placement(("cpu",), 0, runtime.GpuOptions())
    path = tmp_path / "config.yaml"
    path.write_text("runtime:\n  providers: [cuda, cpu]\n  threads: 2\n  batch_buckets: [1, 8]\n")
    config = config_mod.load(path)
    placement = runtime.Placement.from_config(config)
    assert placement.providers == ("cuda", "cpu") and placement.threads == 2
    assert placement.gpu == runtime.GpuOptions.from_config(config)


@pytest.mark.slow
def test_service_start_shows_no_onnxruntime_error_lines(group_photo):
    result = run_edge("--config", "config.yaml", "analyze", str(group_photo))
    assert result.returncode == 0
    assert "[E:onnxruntime" not in result.stderr and "[W:onnxruntime" not in result.stderr
    provider_lines = [line for line in result.stderr.splitlines() if "providers skipped" in line]
    assert len(provider_lines) == (1 if NO_GPU else 0)
    assert "models ready: detector centerface on" in result.stderr


def tiny_genderage(path):
    """An ONNX model with InsightFace genderage's interface (N,3,96,96 -> N,3):
    real ONNX Runtime execution of our backend's pre/post-processing, since no
    genderage.onnx may be shipped or downloaded here."""
    weights = np.array([[0.01, -0.01, 0.002], [-0.01, 0.01, 0.003], [0.0, 0.0, 0.001]], np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "genderage",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 96, 96])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 3], weights.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_insightface_genderage_backend_batches_and_reports_probabilities(
    tmp_path, analyzer, group_photo
):
    import cv2

    path = tmp_path / "genderage.onnx"
    tiny_genderage(path)
    backend = classify.InsightFaceGenderAge(path)
    frame = cv2.imread(str(group_photo))
    faces = analyzer.detector(frame)
    batch = backend(frame, faces)
    assert len(batch) == 6
    np.testing.assert_allclose(batch.class_probs.sum(axis=1), 1, atol=1e-5)
    for i in range(6):
        single = backend(frame, faces[i])
        np.testing.assert_allclose(single.male_probs[0], batch.male_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.ages[0], batch.ages[i], atol=1e-4)


def test_insightface_backend_without_its_file_says_so(tmp_path):
    from edge.errors import ModelError

    with pytest.raises(ModelError, match="classifier.model.*genderage.onnx you provide"):
        classify.InsightFaceGenderAge(tmp_path / "genderage.onnx")


def test_insightface_genderage_can_be_an_ensemble_member(tmp_path, analyzer, group_photo):
    """The ensemble cuts and classifies each member's own chips (classify.ChipBackend), so
    the insightface backend is a member like the others, as config validation allows."""
    import cv2

    path = tmp_path / "genderage.onnx"
    tiny_genderage(path)
    member = classify.InsightFaceGenderAge(path)
    ensemble = classify.Ensemble([member, member], ["insightface", "faceapi"])
    frame = cv2.imread(str(group_photo))
    faces = analyzer.detector(frame)
    alone, together = member(frame, faces), ensemble(frame, faces)
    assert len(together) == 6
    np.testing.assert_allclose(together.male_probs, alone.male_probs, atol=1e-5)
    np.testing.assert_allclose(together.ages, alone.ages, atol=1e-3)
