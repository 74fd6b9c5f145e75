"""The GPU code path, run on the CPU: provider choice and fallback, TensorRT options,
batch buckets with I/O binding (forced onto the CPU device), and batching equivalence
(a face batched with others gets the result it gets alone, within 1e-4)."""

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import config as config_mod
from edge.errors import ConfigError
from edge.inference import modelstore, runtime
from edge.pipeline import classify, detect

from conftest import ROOT

BUCKETS = runtime.DEFAULT_BUCKETS
ON_CPU = runtime.GpuOptions(force_device="cpu")  # the GPU path's code on the CPU device


class RecordingSession:
    """A real session that records the batch size of every inference it runs."""

    def __init__(self, sess):
        self._sess, self.fed = sess, []

    def __getattr__(self, name):
        return getattr(self._sess, name)

    def run(self, names, feed):
        self.fed.append(next(iter(feed.values())).shape[0])
        return self._sess.run(names, feed)

    def run_with_iobinding(self, binding):
        self._sess.run_with_iobinding(binding)
        self.fed.append(binding.get_outputs()[0].shape()[0])


def record(*runners) -> list[RecordingSession]:
    for runner in runners:
        runner.sess = RecordingSession(runner.sess)
    return [runner.sess for runner in runners]


# -- provider selection and options ---------------------------------------------------


@pytest.fixture()
def fresh_probes():
    runtime.unusable.cache_clear()
    runtime.choose_providers.cache_clear()
    yield
    runtime.unusable.cache_clear()
    runtime.choose_providers.cache_clear()


def test_gpu_present_with_its_libraries_chooses_cuda(monkeypatch, fresh_probes, caplog):
    monkeypatch.setattr(runtime, "gpu_probe", lambda: (1, ""))
    monkeypatch.setattr(runtime, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(runtime, "_loadable", lambda lib: True)
    with caplog.at_level(logging.WARNING, logger="edge.inference.runtime"):
        chosen = runtime.choose_providers(("tensorrt", "cuda", "cpu"))
    assert chosen == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert caplog.records == []


def test_gpu_without_cuda_libraries_falls_back_in_one_line(monkeypatch, fresh_probes, caplog):
    monkeypatch.setattr(runtime, "gpu_probe", lambda: (1, ""))
    monkeypatch.setattr(runtime, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(runtime, "_loadable", lambda lib: lib != "libcudnn.so.9")
    with caplog.at_level(logging.WARNING, logger="edge.inference.runtime"):
        chosen = runtime.choose_providers(("cuda", "cpu"))
        runtime.choose_providers(("cuda", "cpu"))
    assert chosen == ("CPUExecutionProvider",)
    assert len(caplog.records) == 1
    assert "cuda (libcudnn.so.9 not found" in caplog.records[0].getMessage()


def test_provider_libraries_follow_onnxruntimes_cuda_version():
    assert runtime.provider_libraries("cuda", "13.0") == [
        "libcudart.so.13",
        "libcublas.so.13",
        "libcudnn.so.9",
    ]
    assert runtime.provider_libraries("tensorrt", "12.8")[-1] == "libnvinfer.so.10"
    assert runtime.provider_libraries("cpu", "13.0") == []


def test_tensorrt_options_cache_fp16_and_one_profile_over_the_buckets(tmp_path):
    gpu = runtime.GpuOptions(buckets=(1, 8, 32), trt_cache_dir=tmp_path, trt_fp16=True)
    chosen = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    trt, cuda, cpu = runtime.provider_options(chosen, gpu, {"images": (3, 64, 64)})
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_profile_min_shapes"] == "images:1x3x64x64"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"] == "images:32x3x64x64"
    assert cuda == {} and cpu == {}


def test_tensorrt_without_cache_dir_or_profile():
    (trt,) = runtime.provider_options(("TensorrtExecutionProvider",), runtime.GpuOptions())
    assert trt == {"trt_fp16_enable": "False"}


def test_trt_cache_defaults_to_state_dir_and_resolves_relative_paths(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: /var/lib/edge\n")
    assert runtime.GpuOptions.from_config(config_mod.load(path)).trt_cache_dir == Path(
        "/var/lib/edge/trt-cache"
    )
    path.write_text(
        "runtime:\n  trt_cache_dir: engines\n  trt_fp16: true\n  batch_buckets: [8, 2, 8]\n"
    )
    gpu = runtime.GpuOptions.from_config(config_mod.load(path))
    assert gpu.trt_cache_dir == tmp_path / "engines" and gpu.trt_fp16
    assert gpu.buckets == (2, 8)


@pytest.mark.parametrize("buckets", [(), (0, 4), (4.5,)])
def test_bad_buckets_name_the_key(buckets):
    with pytest.raises(ConfigError, match="runtime.batch_buckets"):
        runtime.GpuOptions(buckets=buckets)


def test_bucket_plan_pads_up_and_splits_at_the_largest():
    assert runtime.bucket_plan(1, BUCKETS) == [(0, 1, 1)]
    assert runtime.bucket_plan(5, BUCKETS) == [(0, 5, 16)]
    assert runtime.bucket_plan(64, BUCKETS) == [(0, 64, 64)]
    assert runtime.bucket_plan(260, BUCKETS) == [(0, 128, 128), (128, 128, 128), (256, 4, 4)]
    assert runtime.bucket_plan(0, BUCKETS) == []


def test_cpu_session_takes_the_plain_path(config):
    models = config.resolve(config.models.dir)
    runner = runtime.BatchRunner(runtime.session(models / "gender-v1.onnx", ("cpu",)))
    assert runner.device is None


# -- classifier ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_paths(config):
    models = config.resolve(config.models.dir)
    return modelstore.verify_all(modelstore.load_manifest(models), models)


@pytest.fixture(scope="module")
def photo(analyzer, group_photo):
    frame = cv2.imread(str(group_photo))
    return frame, analyzer.detector(frame)


@pytest.fixture(scope="module")
def chips(model_paths, photo):
    """Age and gender chips of the six faces of the group photo."""
    frame, faces = photo
    cydral = classify.CydralAgeGender(model_paths["age"], model_paths["gender"])
    return cydral.chips([frame], [faces])


@pytest.mark.slow
def test_faceapi_bucketed_batches_equal_per_face_results(model_paths, photo):
    frame, faces = photo
    plain = classify.FaceApiAgeGender(model_paths["faceapi"])
    bucketed = classify.FaceApiAgeGender(model_paths["faceapi"], runtime.Placement(gpu=ON_CPU))
    (chips,) = plain.chips([frame], [faces])
    singles = [plain.classify_chips(chips[i : i + 1]) for i in range(len(chips))]
    (sess,) = record(bucketed._runner)
    for n in (1, 5, 17):
        sess.fed.clear()
        index = np.arange(n) % len(chips)
        assert_rows_match(bucketed.classify_chips(chips[index]), singles, index)
        assert sess.fed == [b for _, _, b in runtime.bucket_plan(2 * n, BUCKETS)]


def assert_rows_match(batch, singles, index, atol=1e-4):
    for row, face in enumerate(index):
        np.testing.assert_allclose(batch.class_probs[row], singles[face].class_probs[0], atol=atol)
        np.testing.assert_allclose(batch.male_probs[row], singles[face].male_probs[0], atol=atol)
        np.testing.assert_allclose(batch.ages[row], singles[face].ages[0], atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("flip_tta", [True, False])
def test_bucketed_batches_equal_per_face_results(model_paths, chips, flip_tta):
    age, gender = chips
    settings = dataclasses.replace(classify.ChipSettings.defaults(), flip_tta=flip_tta)
    plain = classify.CydralAgeGender(model_paths["age"], model_paths["gender"], settings=settings)
    bucketed = classify.CydralAgeGender(
        model_paths["age"], model_paths["gender"], runtime.Placement(gpu=ON_CPU), settings
    )
    singles = [plain.classify_chips(age[i : i + 1], gender[i : i + 1]) for i in range(len(age))]
    sessions = record(bucketed._age, bucketed._gender)
    rows_per_face = 2 if flip_tta else 1
    for n in (1, 3, 4, 5, 17, 130):
        for sess in sessions:
            sess.fed.clear()
        index = np.arange(n) % len(age)  # the six faces, repeated
        assert_rows_match(bucketed.classify_chips(age[index], gender[index]), singles, index)
        planned = [bucket for _, _, bucket in runtime.bucket_plan(n * rows_per_face, BUCKETS)]
        for sess in sessions:  # only bucket sizes ever reach the network
            assert sess.fed == planned and set(sess.fed) <= set(BUCKETS)


def test_binding_path_and_plain_path_give_identical_results(model_paths, chips):
    age, gender = chips
    index = np.arange(16) % len(age)  # 32 rows with flip TTA: padded to the 64 bucket
    results = [
        classify.CydralAgeGender(
            model_paths["age"], model_paths["gender"], runtime.Placement(gpu=gpu)
        ).classify_chips(age[index], gender[index])
        for gpu in (runtime.GpuOptions(), ON_CPU)
    ]
    plain, bound = results
    np.testing.assert_allclose(bound.class_probs, plain.class_probs, atol=1e-6)
    np.testing.assert_allclose(bound.male_probs, plain.male_probs, atol=1e-6)
    np.testing.assert_allclose(bound.ages, plain.ages, atol=1e-4)


def test_classifier_chips_preprocessing_matches_the_reference_formula(chips):
    age, _ = chips
    reference = age[..., ::-1].astype(np.float32)
    reference = np.concatenate([reference, reference[:, :, ::-1]])
    reference = ((reference - classify.CHANNEL_MEANS) / 256).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(classify.chip_tensor(age, flip_tta=True), reference)


# -- detector: cameras of one frame size share a run ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("gpu", [runtime.GpuOptions(), ON_CPU], ids=["plain", "bucketed"])
def test_detect_many_equals_single_calls(group_photo, gpu, monkeypatch):
    monkeypatch.setattr(detect, "CPU_CORES", 2)  # the plain CPU path as on a 2-core box
    detector = detect.CenterFace(ROOT / "models" / "centerface.onnx", runtime.Placement(gpu=gpu))
    frame = cv2.imread(str(group_photo))
    small = cv2.resize(frame, (frame.shape[1] // 3, frame.shape[0] // 3))  # another canvas size
    frames = [frame, frame, small, frame]
    singles = [detector(f) for f in frames]
    size = detect.input_size(frame.shape[1], frame.shape[0], detector.settings.input_width)
    small_size = detect.input_size(small.shape[1], small.shape[0], detector.settings.input_width)
    if gpu.force_device is None:
        detector._runner(size, threads=1)
        all_cores, one_core = record(detector._sessions[(size, 0)], detector._sessions[(size, 1)])
    else:
        (all_cores,) = record(detector._sessions[(size, 0)])
    many = detector.detect_many(frames)
    if gpu.force_device is None:
        # CPU: two of the three copies side by side on a one-thread session, the one
        # left over on all cores; the small frame alone, on all cores.
        assert (one_core.fed, all_cores.fed) == ([1, 1], [1])
    else:  # GPU path: one run for the three copies, padded to the 4 bucket
        assert all_cores.fed == [4]
    assert small_size in detector.canvas_sizes
    for got, want in zip(many, singles, strict=True):
        assert len(got) == len(want) == 6
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(got.landmarks, want.landmarks, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


def test_detect_many_honours_each_cameras_width(analyzer, group_photo):
    frame = cv2.imread(str(group_photo))
    many = analyzer.detector.detect_many([frame, frame], [None, 320])
    assert [len(d) for d in many] == [
        len(analyzer.detector(frame)),
        len(analyzer.detector(frame, 320)),
    ]
    np.testing.assert_allclose(many[1].boxes, analyzer.detector(frame, 320).boxes, atol=1e-3)
