"""Regenerate tests/data/faceapi_reference.npz: face-api's own outputs on fixed inputs.

  .venv/bin/python tools/faceapi_fixture.py [--model-dir models]

Inputs: the six faces of insightface's group photo (edge.samples.group_photo()), cut
as face-api cuts them (edge/inference/faceapi.py: aligned box from our detector's landmarks,
clipped and floored) but not padded or resized, plus three synthetic images of
other sizes (one already 112x112, one to shrink, one to enlarge). Only the crop
boxes and a sha256 of each crop are stored for the photo (its faces are not ours to
ship); the synthetic images are stored whole.

Reference: tools/faceapi_reference.mjs runs face-api's own code (pad to square,
resize, AgeGenderNet) in Node on TensorFlow.js's pure-JS CPU backend. This script
installs @vladmandic/face-api (the pinned tarball, via `npm pack`) and
@tensorflow/tfjs (+ tfjs-backend-wasm, which face-api's Node build loads, unused)
in a temporary folder: network to the npm registry, nothing outside /tmp changes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "data" / "faceapi_reference.npz"
TFJS_VERSION = "4.22.0"  # the version face-api 1.7.15 was built against (dist/tfjs.version.js)


def synthetic_images() -> list[np.ndarray]:
    """Smooth, face-free test patterns (uint8 RGB): 112x112, 150x97, 60x83."""
    images = []
    for h, w in ((112, 112), (150, 97), (60, 83)):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        r = 128 + 100 * np.sin(x / 7.0 + y / 11.0)
        g = 128 + 90 * np.cos(np.hypot(x - w / 2, y - h / 2) / 9.0)
        b = 255 * (x + y) / (w + h)
        images.append(np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8))
    return images


def photo_crops(boxes: np.ndarray | None = None):
    """The group photo's face crops (RGB uint8) and their (x, y, w, h) integer boxes."""
    import cv2

    from edge import config as config_mod
    from edge import samples
    from edge.inference import faceapi
    from edge.pipeline.analyze import FaceAnalyzer

    frame = cv2.imread(str(samples.group_photo()))
    if boxes is None:
        cfg = config_mod.load(ROOT / "config.yaml")
        faces = FaceAnalyzer(cfg).detector(frame)
        boxes = np.array(
            [
                faceapi.clip_box(faceapi.aligned_box(points), frame.shape[1], frame.shape[0])
                for points in faces.landmarks
            ]
        )
        boxes = boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]
    crops = [np.ascontiguousarray(frame[y : y + h, x : x + w, ::-1]) for x, y, w, h in boxes]
    return crops, np.asarray(boxes, np.int64)


def crop_sha256(crop: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(crop, np.uint8).tobytes()).hexdigest()


def node_workspace(tmp: Path, name: str, tarball: Path) -> Path:
    """A folder under `tmp` with face-api (from its integrity-checked `tarball`) and the
    pure-JS tfjs it was built against installed by npm, for face-api's own code to run."""
    work = tmp / "node"
    work.mkdir()
    (work / "package.json").write_text(json.dumps({"name": name, "private": True}) + "\n")
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            f"@tensorflow/tfjs@{TFJS_VERSION}",
            f"@tensorflow/tfjs-backend-wasm@{TFJS_VERSION}",
            str(tarball),
        ],
        cwd=work,
        check=True,
    )
    return work


def run_node(work: Path, script: str, model_dir: Path, images: list[np.ndarray]) -> Any:
    """tools/`script` run by Node in `work` (a node_workspace) on `images` (RGB uint8),
    with face-api's model files from `model_dir`: its output, parsed. The images go in
    as in.json (size and base64 pixels), the result comes back as out.json."""
    request = {
        "images": [
            {
                "height": int(i.shape[0]),
                "width": int(i.shape[1]),
                "rgb": base64.b64encode(i.tobytes()).decode(),
            }
            for i in images
        ]
    }
    (work / "in.json").write_text(json.dumps(request))
    subprocess.run(
        ["node", str(ROOT / "tools" / script), str(model_dir.resolve()), "in.json", "out.json"],
        cwd=work,
        check=True,
    )
    return json.loads((work / "out.json").read_text())


def run_reference(images: list[np.ndarray], model_dir: Path) -> dict:
    from edge.inference import modelstore

    spec = modelstore.load_manifest(model_dir)["faceapi-weights"]
    with tempfile.TemporaryDirectory(prefix="faceapi-ref-") as tmp:
        tmp = Path(tmp)
        tarball = modelstore._npm_pack(spec, tmp)  # integrity-checked, as `models fetch` does
        work = node_workspace(tmp, "faceapi-reference", tarball)
        return run_node(work, "faceapi_reference.mjs", model_dir, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    args = parser.parse_args()
    crops, boxes = photo_crops()
    synthetic = synthetic_images()
    result = run_reference(crops + synthetic, args.model_dir)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        FIXTURE,
        photo_boxes=boxes,
        photo_sha256=np.array([crop_sha256(c) for c in crops]),
        **{f"synthetic_{i}": img for i, img in enumerate(synthetic)},
        age=np.array(result["age"], np.float64),
        gender=np.array(result["gender"], np.float64),
        versions=np.array(json.dumps(result["versions"])),
    )
    print(
        f"{FIXTURE}: {len(crops)} photo faces + {len(synthetic)} synthetic images; "
        f"ages {np.round(result['age'], 2).tolist()}"
    )


if __name__ == "__main__":
    main()
