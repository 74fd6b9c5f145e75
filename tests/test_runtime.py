"""Execution providers: the GPU fallback is reported by us, in one line, not by ORT's errors."""

import logging
from pathlib import Path

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


def _one_conv(weight: np.ndarray) -> bytes:
    """A one-layer network (a 1x1 convolution) with the given weights."""
    w = onnx.numpy_helper.from_array(weight.astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1], 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0], 4, 4])],
        [w],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8
    ).SerializeToString()


def test_denormal_weights_are_set_to_zero_in_memory_and_the_outputs_stay():
    weight = np.array([[[[0.5]], [[1e-40]]], [[[-2e-39]], [[0.25]]]], np.float32)
    assert (np.abs(weight[weight != 0]) < np.finfo(np.float32).tiny).sum() == 2  # two denormals
    model = _one_conv(weight)
    flushed = runtime.without_denormals(model)
    assert flushed is not None
    kept = onnx.numpy_helper.to_array(onnx.load_from_string(flushed).graph.initializer[0])
    assert kept.tolist() == [[[[0.5]], [[0.0]]], [[[0.0]], [[0.25]]]]
    x = np.random.default_rng(1).normal(size=(1, 2, 4, 4)).astype(np.float32)
    y = runtime.session(model, ("cpu",)).run(None, {"x": x})[0]
    np.testing.assert_allclose(y[0, 0], 0.5 * x[0, 0], atol=1e-6)
    np.testing.assert_allclose(y[0, 1], 0.25 * x[0, 1], atol=1e-6)
    # a model without denormals is passed through untouched
    assert runtime.without_denormals(_one_conv(np.full((1, 1, 1, 1), 0.5))) is None


@pytest.mark.parametrize(("name", "size"), [("age", 64), ("gender", 32)])
def test_cydral_networks_say_the_same_without_their_denormal_weights(name, size):
    """Cydral's networks carry denormal weights (age 6,667, gender 145): zeroing them makes
    the age network several times faster on the CPU (docs/benchmarks.md) and must not
    change what they say. (cydral-fairface-age, fine-tuned from it, is stored as float16,
    where they are zero already.)"""
    import onnxruntime as ort

    from edge.inference import modelstore

    models = Path(__file__).resolve().parent.parent / "models"
    path = modelstore.verify(modelstore.load_manifest(models)[name], models)
    raw = path.read_bytes()
    assert runtime.without_denormals(raw) is not None
    x = np.random.default_rng(2).normal(0, 0.5, (8, 3, size, size)).astype(np.float32)
    plain = ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(None, {"images": x})
    ours = runtime.session(path, ("cpu",)).run(None, {"images": x})
    np.testing.assert_allclose(ours[0], plain[0], rtol=0, atol=1e-6)
