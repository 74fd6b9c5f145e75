"""Accuracy on a labelled face set (`edge eval LABELS.csv`).

CSV columns `file,age,gender`, paths relative to the CSV. Crops may be tight,
so every image is padded before detection; the largest face is scored and an
image without a face counts as a miss (wrong on every metric).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError
from edge.pipeline.analyze import read_image
from edge.records import AGE_CLASSES, GENDERS

PAD_FRACTION = 0.3  # of the crop's side, each way; tight crops hide the face outline


@dataclass(frozen=True)
class Label:
    path: Path
    age: float
    gender: str


def read_labels(csv_path: Path) -> list[Label]:
    csv_path = Path(csv_path)
    try:
        handle = open(csv_path, newline="")
    except OSError as exc:
        raise InputError(f"{csv_path}: cannot read: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = {"file", "age", "gender"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                f"expected header file,age,gender"
            )
        labels = []
        for line, row in enumerate(reader, start=2):
            try:
                age = float(row["age"])
            except (TypeError, ValueError):
                raise InputError(f"{csv_path}:{line}: age {row['age']!r} is not a number") from None
            gender = (row["gender"] or "").strip().lower()
            if gender not in GENDERS:
                raise InputError(
                    f"{csv_path}:{line}: gender {row['gender']!r} is not female or male"
                )
            labels.append(Label(csv_path.parent / row["file"], age, gender))
    if not labels:
        raise InputError(f"{csv_path}: no rows")
    return labels


def load_padded(path: Path) -> np.ndarray:
    return pad(read_image(path))


def pad(image: np.ndarray) -> np.ndarray:
    """A tight face crop with a mid-grey border of PAD_FRACTION of its side."""
    border = int(round(PAD_FRACTION * max(image.shape[:2])))
    return cv2.copyMakeBorder(
        image, border, border, border, border, cv2.BORDER_CONSTANT, value=(127, 127, 127)
    )


def age_class(age: float, child_below: float, old_from: float) -> int:
    return 0 if age < child_below else 2 if age >= old_from else 1


def score(
    labels: list[Label], predictions: list[dict | None], child_below: float, old_from: float
) -> dict:
    """Metrics from per-image predictions ({'age', 'class', 'male_prob'} or None = miss)."""
    n = len(labels)
    confusion = np.zeros((3, 3), int)
    gender_ok = np.zeros(n, bool)
    class_ok = np.zeros(n, bool)
    errors = []
    truth_class = np.array([age_class(label.age, child_below, old_from) for label in labels])
    for i, (label, pred) in enumerate(zip(labels, predictions, strict=False)):
        if pred is None:
            continue
        gender_ok[i] = GENDERS[int(pred["male_prob"] >= 0.5)] == label.gender
        class_ok[i] = pred["class"] == truth_class[i]
        confusion[truth_class[i], pred["class"]] += 1
        errors.append(abs(pred["age"] - label.age))
    teen_up = np.array([label.age >= 13 for label in labels])
    result = {
        "n": n,
        "misses": int(sum(p is None for p in predictions)),
        "gender_accuracy": _ratio(gender_ok.sum(), n),
        "gender_accuracy_13plus": _ratio(gender_ok[teen_up].sum(), teen_up.sum()),
        "age_mae": round(float(np.mean(errors)), 3) if errors else None,
        "age_class_accuracy": _ratio(class_ok.sum(), n),
        "confusion": confusion.tolist(),
        "confusion_rows": "true child, adult, old; columns predicted (misses not counted)",
        "recall": {
            c: _ratio(class_ok[truth_class == k].sum(), (truth_class == k).sum())
            for k, c in enumerate(AGE_CLASSES)
        },
        "gender_accuracy_by_class": {
            c: _ratio(gender_ok[truth_class == k].sum(), (truth_class == k).sum())
            for k, c in enumerate(AGE_CLASSES)
        },
        "class_boundaries": {"child_below": child_below, "old_from": old_from},
    }
    return result


def predict(analyzer, labels: list[Label], progress: bool = True) -> list[dict | None]:
    from tqdm import tqdm

    predictions: list[dict | None] = []
    for label in tqdm(labels, desc="eval", unit="img", disable=not progress, file=sys.stderr):
        frame = load_padded(label.path)
        faces = analyzer.detector(frame)
        if len(faces) == 0:
            predictions.append(None)
            continue
        best = faces[int(np.argmax(faces.areas))]
        demo = analyzer.classifier(frame, best)
        predictions.append(
            {
                "age": float(demo.ages[0]),
                "class": int(demo.class_probs[0].argmax()),
                "male_prob": float(demo.male_probs[0]),
            }
        )
    return predictions


def _ratio(num, den) -> float | None:
    return round(float(num) / float(den), 4) if den else None
