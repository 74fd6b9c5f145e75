"""`edge eval` on labelled faces: metrics, misses, error paths, and the dev-set floors."""

import csv
import json

import cv2
import numpy as np
import pytest

from edge.errors import EX_DATAERR

from conftest import need, run_edge


def subset(tmp_path, rows):
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "age", "gender"])
        writer.writerows(rows)
    return path


def dev_rows(step=100):
    root = need("faces/utkface-dev")
    with open(root / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))[::step]
    return [(str(root / r["file"]), r["age"], r["gender"]) for r in rows]


@pytest.mark.slow
def test_eval_small_set_with_a_miss(tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    rows = dev_rows() + [("blank.png", "30", "female")]
    labels = subset(tmp_path, rows)
    out = tmp_path / "results.json"
    result = run_edge("--config", "config.yaml", "eval", str(labels), "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert json.loads(out.read_text()) == metrics
    assert metrics["n"] == len(rows) and metrics["misses"] == 1
    for key in (
        "gender_accuracy",
        "gender_accuracy_13plus",
        "age_mae",
        "age_class_accuracy",
        "confusion",
        "recall",
        "gender_accuracy_by_class",
    ):
        assert key in metrics
    assert set(metrics["recall"]) == {"child", "adult", "old"}
    # the miss is wrong on every metric: at most n-1 correct
    assert metrics["age_class_accuracy"] <= (len(rows) - 1) / len(rows)
    assert np.array(metrics["confusion"]).sum() == len(rows) - 1
    assert "eval" in result.stderr  # progress bar


@pytest.mark.slow
def test_eval_errors_name_file_and_line(tmp_path):
    bad = subset(tmp_path, [("a.jpg", "30", "female"), ("b.jpg", "forty", "male")])
    result = run_edge("eval", str(bad))
    assert result.returncode == EX_DATAERR
    assert f"{bad}:3: age 'forty' is not a number" in result.stderr
    bad.write_text("file,age\na.jpg,3\n")
    result = run_edge("eval", str(bad))
    assert result.returncode == EX_DATAERR and "missing column(s) gender" in result.stderr


@pytest.mark.slow
@pytest.mark.cpu
def test_dev_set_accuracy_floors(tmp_path):
    """Regression floors on the whole dev set, below the figures measured when
    calibrating (README "Accuracy"): a drop under them means something broke."""
    labels = need("faces/utkface-dev/labels.csv")
    result = run_edge("--config", "config.yaml", "eval", str(labels), "--no-progress")
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout)
    # Measured with the default ensemble: age class 0.882, child 0.918, old 0.885,
    # gender 13+ 0.9654, MAE 4.86 (issue 11's targets: 0.87, 0.89, 0.82, 0.965, 5.5).
    assert m["n"] == 1200 and m["misses"] <= 10
    assert m["age_class_accuracy"] >= 0.87
    assert m["recall"]["child"] >= 0.90 and m["recall"]["old"] >= 0.86
    assert m["gender_accuracy_13plus"] >= 0.96
    assert m["age_mae"] <= 5.2
