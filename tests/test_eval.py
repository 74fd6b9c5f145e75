"""`edge eval` on labelled faces: metrics, misses, error paths, and the dev-set floors."""

import csv
import json
from pathlib import Path

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
    assert metrics["age_class_accuracy"] <= round((len(rows) - 1) / len(rows), 4)
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
    # Measured with the default (the FairFace-tuned pair, issue 26; calibrated on FairFace,
    # not on this set, which face-api's base network saw in training): age class 0.859,
    # child 0.893, old 0.785, gender 13+ 0.962, MAE 5.77, 1 miss. Issue 26's targets here
    # are gender 13+ >= 0.955 and age class >= 0.86 (missed by 0.001: see its note);
    # the old default read 0.882 / 0.918 / 0.885 / 0.965 / 4.86 on these flattering faces.
    assert m["n"] == 1200 and m["misses"] <= 10
    assert m["age_class_accuracy"] >= 0.85
    assert m["recall"]["child"] >= 0.88 and m["recall"]["old"] >= 0.77
    assert m["gender_accuracy_13plus"] >= 0.955
    assert m["age_mae"] <= 6.0


def fake_labels(rows):
    """Labels from (age, gender, age_group, race) with no image behind them."""
    from edge.commands.evaluate import Label

    return [
        Label(Path(f"{i}.jpg"), age, gender, {"age_group": group, "race": race})
        for i, (age, gender, group, race) in enumerate(rows)
    ]


def test_balance_weighs_every_cell_the_same():
    from edge.commands.evaluate import balance_weights, score

    # three women 70+ (one called a man), nine men 20-29 (all right): by image 11/12,
    # by cell (1 + 2/3) / 2
    labels = fake_labels([(75, "female", "70+", "A")] * 3 + [(25, "male", "20-29", "B")] * 9)
    predictions = [{"age": 70.0, "class": 2, "male_prob": p} for p in (0.9, 0.1, 0.1)] + [
        {"age": 25.0, "class": 1, "male_prob": 0.9}
    ] * 9
    weights = balance_weights(labels, ["age_group", "gender"])
    assert weights[:3].sum() == pytest.approx(weights[3:].sum())
    assert score(labels, predictions, 18, 60)["gender_accuracy"] == round(11 / 12, 4)
    balanced = score(labels, predictions, 18, 60, weights)
    assert balanced["gender_accuracy"] == round((2 / 3 + 1) / 2, 4)
    assert balanced["confusion"] == [[0, 0, 0], [0, 9, 0], [0, 0, 3]]  # counts, not weights


def test_fairness_by_group_names_worst_and_spread():
    from edge.commands.evaluate import fairness

    labels = fake_labels(
        [(35, "female", "30-39", "A")] * 4
        + [(35, "male", "30-39", "A")] * 4
        + [(35, "female", "30-39", "B")] * 4
        + [(35, "male", "30-39", "B")] * 4
    )
    right = {"age": 35.0, "class": 1}
    predictions = (
        [{**right, "male_prob": 0.2}] * 4
        + [{**right, "male_prob": 0.8}] * 4
        + [{**right, "male_prob": 0.2}] * 2
        + [{**right, "male_prob": 0.8}] * 2  # two women of B called men
        + [None] * 4  # group B's men: missed
    )
    m = fairness(labels, predictions, 18, 60, by=["race"], balance_by=["age_group", "gender"])
    groups = m["by"]["race"]["groups"]
    assert groups["A"]["gender_accuracy_13plus"] == 1.0
    assert groups["B"]["gender_accuracy_13plus"] == 0.25 and groups["B"]["miss_rate"] == 0.5
    spread = m["by"]["race"]["spread"]["gender_accuracy_13plus"]
    assert (spread["worst"], spread["best"], spread["spread"]) == ("B", "A", 0.75)
    assert m["by"]["race"]["spread"]["miss_rate"]["worst"] == "B"
    # cells of age group x gender: 30-39 / female is 6 of 8 right, 30-39 / male 4 of 8
    assert m["cells"]["30-39 / female"]["gender_accuracy_13plus"] == 0.75
    assert m["worst_cell"]["gender_accuracy_13plus"]["worst"] == "30-39 / male"


def test_chance_tells_a_real_gap_from_a_few_faces():
    """`chance` shuffles the --by column within the balance cells: a gap that holds over
    many faces stands out from every shuffle (p near 0), one made by a single face of a
    tiny cell is what chance gives (p large); each group keeps its size and its cells."""
    from edge.commands.evaluate import fairness

    right = {"age": 35.0, "class": 1}

    def guess(gender, ok):
        p_male = 0.9 if (gender == "male") == ok else 0.1
        return {**right, "male_prob": p_male}

    # a real gap: 60 faces a race, A right on all, B wrong on 30 %
    labels, predictions = [], []
    for race, wrong_every in (("A", None), ("B", 3)):
        for i in range(60):
            gender = ("female", "male")[i % 2]
            labels.append((35, gender, "30-39", race))
            predictions.append(guess(gender, wrong_every is None or i % 10 >= wrong_every))
    m = fairness(fake_labels(labels), predictions, 18, 60, by=["race"], chance_rounds=100)
    real = m["by"]["race"]["chance"]["gender_accuracy_13plus"]
    assert m["by"]["race"]["spread"]["gender_accuracy_13plus"]["spread"] == 0.3
    assert real["p"] <= 0.01 and real["p90"] < 0.2
    assert m["by"]["race"]["chance"]["rounds"] == 100

    # noise: big cells all right, one tiny cell (two old women a race) with one error
    labels, predictions = [], []
    for race in ("A", "B"):
        labels += [(35, "female", "30-39", race)] * 40 + [(75, "female", "70+", race)] * 2
        predictions += [guess("female", True)] * 40
        predictions += [guess("female", race == "A"), guess("female", True)]
    m = fairness(
        fake_labels(labels), predictions, 18, 60, by=["race"],
        balance_by=["age_group", "gender"], chance_rounds=100,
    )  # fmt: skip
    # balanced, that one face is a quarter of B's figure: a gap of 0.25
    assert m["by"]["race"]["spread"]["gender_accuracy_13plus"]["spread"] == 0.25
    noise = m["by"]["race"]["chance"]["gender_accuracy_13plus"]
    assert noise["p"] == 1.0 and noise["median"] == 0.25
    # a balanced column is shuffled within the other balance columns (here: gender):
    # the wrong face lands among the four old ones about 4 times in 84
    m = fairness(
        fake_labels(labels), predictions, 18, 60, by=["age_group"],
        balance_by=["age_group", "gender"], chance_rounds=200,
    )  # fmt: skip
    by_age = m["by"]["age_group"]["chance"]["gender_accuracy_13plus"]
    assert by_age["median"] == 0.0125 and by_age["p"] < 0.15
    # off when asked
    m = fairness(fake_labels(labels), predictions, 18, 60, by=["race"], chance_rounds=0)
    assert "chance" not in m["by"]["race"]


def test_select_rows_and_bad_selectors(tmp_path):
    from edge.commands.evaluate import parse_selector, select
    from edge.errors import InputError

    labels = fake_labels([(15, "female", "10-19", "A"), (35, "male", "30-39", "B")])
    kept = select(labels, tmp_path, exclude=[parse_selector("age_group=10-19", "--exclude")])
    assert [label.age for label in kept] == [35]
    kept = select(labels, tmp_path, where=[("race", {"A", "C"})])
    assert [label.age for label in kept] == [15]
    with pytest.raises(InputError, match=r"--where 'race': expected COLUMN=VALUE"):
        parse_selector("race", "--where")
    with pytest.raises(InputError, match=r"no column 'skin' \(columns: gender, age_group, race\)"):
        select(labels, tmp_path, where=[("skin", {"x"})])
    with pytest.raises(InputError, match="no rows left"):
        select(labels, tmp_path, where=[("race", {"Z"})])


@pytest.mark.slow
def test_eval_by_race_balanced_on_fairface(tmp_path):
    """The fairness report on real FairFace val photos: every race group and cell
    present, the spread the gap between the named best and worst group."""
    root = need("faces/fairface")
    with open(root / "labels.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"]
    picked = []
    for race in ("Black", "East Asian"):
        for group in ("30-39", "60-69"):
            picked += [r for r in rows if r["race"] == race and r["age_group"] == group][:4]
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in picked:
            writer.writerow({**r, "file": str(root / r["file"])})
    result = run_edge(
        "--config", "config.yaml", "eval", str(labels), "--no-progress",
        "--by", "race", "--balance-by", "age_group,gender", "--exclude", "age_group=10-19",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout)
    assert m["n"] == 16 and m["balanced_by"] == ["age_group", "gender"]
    groups = m["by"]["race"]["groups"]
    assert set(groups) == {"Black", "East Asian"} and groups["Black"]["n"] == 8
    spread = m["by"]["race"]["spread"]["gender_accuracy_13plus"]
    values = [g["gender_accuracy_13plus"] for g in groups.values()]
    assert spread["spread"] == pytest.approx(max(values) - min(values), abs=1e-4)
    assert {name.split(" / ")[0] for name in m["cells"]} == {"30-39", "60-69"}
    chance = m["by"]["race"]["chance"]
    assert chance["rounds"] == 200 and 0 <= chance["gender_accuracy_13plus"]["p"] <= 1
    bad = run_edge("eval", str(labels), "--chance-rounds", "-1")
    assert bad.returncode != 0 and "invalid count value: '-1'" in bad.stderr
    bad = run_edge("eval", str(labels), "--by", "skin")
    assert bad.returncode == EX_DATAERR and "no column 'skin'" in bad.stderr


def test_race_gap_floor_of_a_race_blind_classifier_on_fairface_val():
    """`tools/fairface_fit.py floor`: a classifier equally right on every race still shows a
    gap on FairFace val's small old cells; a perfect one shows none."""
    import subprocess
    import sys

    labels = need("faces/fairface/labels.csv")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "tools" / "fairface_fit.py"), "--labels", str(labels)]
        + ["floor", "--accuracy", "1.0", "0.9", "--rounds", "500"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout
    cells, perfect, blind = (json.loads(line) for line in out.splitlines())
    assert cells == {"cells": 84, "under_10": 25, "empty": 1}  # 7 races x 6 groups x 2
    assert perfect["gap_median"] == 0 and perfect["share_at_most_0.05"] == 1
    assert 0.05 < blind["gap_median"] < blind["gap_p90"]
    assert blind["share_at_most_0.05"] < 0.5
