"""face-api's age/gender network: our conversion against face-api's own JavaScript,
its crop convention, and fetching it from an npm registry.

The reference outputs in tests/data/faceapi_reference.npz come from face-api's own
code (@vladmandic/face-api 1.7.15 on @tensorflow/tfjs 4.22.0's pure-JS CPU backend,
in Node). Regenerate them (needs node, npm and the npm registry) with:

    .venv/bin/python tools/faceapi_fixture.py
"""

import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge import samples
from edge.errors import ModelError
from edge.inference import faceapi, modelstore

from conftest import ROOT

MODELS = ROOT / "models"
FIXTURE = ROOT / "tests" / "data" / "faceapi_reference.npz"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def session():
    spec = modelstore.load_manifest(MODELS)["faceapi"]
    path = modelstore.verify(spec, MODELS)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def reference_inputs(data):
    """The crops face-api saw: the photo's faces (recut here) and the synthetic images."""
    frame = cv2.imread(str(samples.group_photo()))
    crops = []
    for (x, y, w, h), digest in zip(data["photo_boxes"], data["photo_sha256"], strict=False):
        crop = np.ascontiguousarray(frame[y : y + h, x : x + w, ::-1])
        assert hashlib.sha256(crop.tobytes()).hexdigest() == str(digest), (
            "the group photo decodes differently from when the fixture was made; "
            "regenerate it: .venv/bin/python tools/faceapi_fixture.py"
        )
        crops.append(crop)
    k = 0
    while f"synthetic_{k}" in data:
        crops.append(data[f"synthetic_{k}"])
        k += 1
    return crops


def test_onnx_matches_faceapi_javascript(session):
    data = np.load(FIXTURE)
    crops = reference_inputs(data)
    assert len(crops) == len(data["age"]) >= 8
    # Different sizes on purpose: pad to square and resize are part of what is compared.
    assert len({c.shape for c in crops}) >= 4
    chips = np.stack([faceapi.chip_from_crop(c) for c in crops])
    age, gender = session.run(None, {"images": chips.transpose(0, 3, 1, 2)})
    np.testing.assert_allclose(age, data["age"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(gender, data["gender"], rtol=0, atol=TOLERANCE)
    # The comparison means something: the inputs give different answers.
    assert np.ptp(data["age"]) > 5 and np.ptp(data["gender"][:, 0]) > 0.3


def test_build_is_deterministic_and_matches_the_pin(tmp_path):
    specs = modelstore.load_manifest(MODELS)
    manifest = modelstore.verify(specs["faceapi-weights-manifest"], MODELS)
    weights = modelstore.verify(specs["faceapi-weights"], MODELS)
    first = faceapi.convert(manifest, weights, tmp_path / "a.onnx")
    second = faceapi.convert(manifest, weights, tmp_path / "b.onnx")
    assert first == second
    assert hashlib.sha256(first).hexdigest() == specs["faceapi"].sha256


def test_dequantisation_is_min_plus_scale_times_q():
    manifest = json.dumps(
        [
            {
                "paths": ["x.bin"],
                "weights": [
                    {
                        "name": "q",
                        "shape": [2, 2],
                        "dtype": "float32",
                        "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0},
                    },
                    {"name": "f", "shape": [2], "dtype": "float32"},
                ],
            }
        ]
    ).encode()
    data = bytes([0, 1, 2, 255]) + np.array([1.5, -2.25], "<f4").tobytes()
    weights = faceapi.read_weights(manifest, data)
    np.testing.assert_array_equal(weights["q"], [[-1.0, -0.5], [0.0, 126.5]])
    np.testing.assert_array_equal(weights["f"], [1.5, -2.25])
    with pytest.raises(ModelError, match="describes 12"):
        faceapi.read_weights(manifest, data + b"\0")
    with pytest.raises(ModelError, match="too short"):
        faceapi.read_weights(manifest, data[:6])


def test_pad_to_square_puts_the_odd_pixel_after():
    image = np.ones((5, 2, 3), np.float32)
    square = faceapi.pad_to_square(image)
    assert square.shape == (5, 5, 3)
    # diff 3: round(1.5) = 2 columns after the image, 1 before (ops/padToSquare.ts).
    assert square[:, 0].sum() == 0 and square[:, 1:3].min() == 1 and square[:, 3:].sum() == 0


def test_resize_samples_at_scaled_indices_without_half_pixel_centres():
    image = np.arange(4, dtype=np.float32).reshape(1, 4, 1).repeat(4, 0).repeat(3, 2)
    out = faceapi.resize_bilinear(image, 8)
    # Column c samples source column c * 4 / 8, clamped at the last one.
    np.testing.assert_allclose(out[0, :, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])


def test_aligned_box_follows_the_face():
    points = np.array([[100, 100], [140, 100], [120, 120], [105, 142], [137, 142]], float)
    x, y, w, h = faceapi.aligned_box(points)
    # The outline runs from ear to ear and brow to chin, plus 20 %.
    assert x < 100 - 20 and x + w > 140 + 20 and y < 100 - 10 and y + h > 142 + 20
    shifted = faceapi.aligned_box(points * 2 + 50)
    np.testing.assert_allclose(shifted, [2 * x + 50, 2 * y + 50, 2 * w, 2 * h], atol=1e-9)
    assert faceapi.clip_box(np.array([-5.5, 3.7, 20.2, 500.0]), 100, 80) == (0, 3, 14, 76)


# --- fetching from an npm registry (a real npm client against a loopback registry) ---

PACKAGE = "@vladmandic/face-api"


def make_tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {
            "package/package.json": json.dumps({"name": PACKAGE, "version": "1.7.15"}).encode(),
            **files,
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Registry:
    """A minimal npm registry on 127.0.0.1: one package, one version, one tarball."""

    def __init__(self, tarball: bytes):
        self.tarball = tarball
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.endswith(".tgz"):
                    body, kind = registry.tarball, "application/octet-stream"
                else:
                    base = f"http://127.0.0.1:{self.server.server_port}"
                    body = json.dumps(
                        {
                            "name": PACKAGE,
                            "dist-tags": {"latest": "1.7.15"},
                            "versions": {
                                "1.7.15": {
                                    "name": PACKAGE,
                                    "version": "1.7.15",
                                    "dist": {
                                        "tarball": f"{base}/face-api-1.7.15.tgz",
                                        "integrity": integrity(registry.tarball),
                                    },
                                }
                            },
                        }
                    ).encode()
                    kind = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def integrity(data: bytes) -> str:
    import base64

    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture()
def npm_env(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed (make system-deps installs it)")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_userconfig", str(tmp_path / "npmrc"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_audit", "false")
    servers = []

    def serve(tarball: bytes) -> Registry:
        registry = Registry(tarball)
        servers.append(registry)
        monkeypatch.setenv("npm_config_registry", registry.url)
        return registry

    yield serve
    for registry in servers:
        registry.close()


def faceapi_models(tmp_path, pin_tarball: bytes) -> tuple:
    """A models folder with the face-api entries only (the npm files and the build; not
    the fine-tuned network committed beside them), pinned to `pin_tarball`."""
    import yaml

    target = tmp_path / "models"
    target.mkdir()
    manifest = yaml.safe_load((MODELS / "manifest.yaml").read_text())
    entries = {
        k: v
        for k, v in manifest["models"].items()
        if k.startswith("faceapi") and not v.get("committed")
    }
    for entry in entries.values():
        if "source" in entry:
            entry["source"]["integrity"] = integrity(pin_tarball)
    (target / "manifest.yaml").write_text(yaml.safe_dump({"models": entries}))
    return target, modelstore.load_manifest(target)


def real_files() -> dict[str, bytes]:
    specs = modelstore.load_manifest(MODELS)
    return {
        specs[n].member: modelstore.verify(specs[n], MODELS).read_bytes()
        for n in ("faceapi-weights-manifest", "faceapi-weights")
    }


@pytest.mark.slow
def test_fetch_builds_the_model_and_repairs_a_corrupt_bin(tmp_path, npm_env):
    tarball = make_tarball(real_files())
    npm_env(tarball)
    models, specs = faceapi_models(tmp_path, tarball)
    written = modelstore.fetch(specs, models)
    assert sorted(p.name for p in written) == [
        "age_gender_model-weights_manifest.json",
        "age_gender_model.bin",
        "faceapi-age-gender.onnx",
    ]
    modelstore.verify_all(specs, models)
    (models / "age_gender_model.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ModelError, match="age_gender_model.bin is corrupt.*edge models fetch"):
        modelstore.verify(specs["faceapi-weights"], models)
    # The bin is fetched again, and the model rebuilt from it.
    assert sorted(p.name for p in modelstore.fetch(specs, models)) == [
        "age_gender_model.bin",
        "faceapi-age-gender.onnx",
    ]
    modelstore.verify_all(specs, models)


@pytest.mark.slow
def test_changed_tarball_stops_fetch(tmp_path, npm_env):
    files = real_files()
    pinned = make_tarball(files)
    models, specs = faceapi_models(tmp_path, pinned)
    changed = dict(files)
    changed["package/README.md"] = b"one more file\n"
    npm_env(make_tarball(changed))
    with pytest.raises(ModelError) as info:
        modelstore.fetch(specs, models)
    message = str(info.value)
    assert "tarball" in message and integrity(pinned) in message
    assert "npm config get registry" in message and "edge models fetch" in message
    assert not any(models.glob("*.bin")) and not any(models.glob("*.onnx"))


@pytest.mark.slow
def test_corrupt_bin_in_the_tarball_stops_fetch(tmp_path, npm_env):
    files = real_files()
    member = "package/model/age_gender_model.bin"
    files[member] = files[member][:-1] + bytes([files[member][-1] ^ 1])
    tarball = make_tarball(files)
    npm_env(tarball)
    models, specs = faceapi_models(tmp_path, tarball)
    with pytest.raises(ModelError) as info:
        modelstore.fetch(specs, models)
    message = str(info.value)
    assert member in message and specs["faceapi-weights"].sha256 in message
    assert "edge models fetch" in message
    assert not (models / "age_gender_model.bin").exists()
    assert not (models / "faceapi-age-gender.onnx").exists()
