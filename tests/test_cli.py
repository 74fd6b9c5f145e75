"""`edge analyze` as an operator runs it."""

import json

import cv2
import pytest

from edge.errors import EX_DATAERR

from conftest import run_edge

# insightface's t1.jpg, checked by eye: six adults around a card table.
# Left to right by box centre: woman (blonde, cards), woman (dark hair, behind),
# man (dark hair, grey shirt), man (red shirt, laughing), man (standing, top right),
# woman (blonde, right).
T1_TRUTH = ["female", "female", "male", "male", "male", "female"]


@pytest.fixture(scope="module")
def t1_result(group_photo):
    result = run_edge("--config", "config.yaml", "analyze", str(group_photo))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def by_position(result):
    return sorted(result["faces"], key=lambda f: (f["box"][0] + f["box"][2]) / 2)


@pytest.mark.slow
def test_t1_six_adults_with_full_records(t1_result, group_photo):
    assert t1_result["image"] == str(group_photo)
    faces = t1_result["faces"]
    assert len(faces) == 6
    assert [f["age_class"] for f in faces] == ["adult"] * 6
    for face in faces:
        assert set(face) == {
            "box",
            "score",
            "landmarks",
            "age",
            "age_class",
            "age_class_probs",
            "gender",
            "gender_prob",
        }
        assert set(face["age_class_probs"]) == {"child", "adult", "old"}
        assert len(face["landmarks"]) == 5 and 18 <= face["age"] < 60
        assert 0.5 <= face["gender_prob"] <= 1


def test_t1_three_women_three_men(t1_result):
    # The standing man at top right (head turned) was the CC0 gender network's miss
    # (P(female) 0.70); the old default ensemble, led by face-api's network, got him.
    # The laughing man (fourth from the left) swung with the 32-px gender network's crop
    # (P(male) 0.48, 0.30, 0.85 at chip scales 0.9, 1.0, 1.1) until the FairFace-tuned
    # Cydral pooled all three (docs/calibration.md section 15); the pair now says 0.55.
    assert [f["gender"] for f in by_position(t1_result)] == T1_TRUTH


@pytest.mark.slow
def test_bad_files_are_reported_and_the_rest_analysed(tmp_path, group_photo):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = run_edge(
        "analyze",
        str(text),
        str(group_photo),
        str(tmp_path / "gone.jpg"),
        str(empty),
        str(tmp_path),
    )
    assert result.returncode == EX_DATAERR
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [
        str(text),
        str(group_photo),
        str(tmp_path / "gone.jpg"),
        str(empty),
        str(tmp_path),
    ]
    assert len(lines[1]["faces"]) == 6
    assert "not a readable image" in lines[0]["error"]
    assert "no such file" in lines[2]["error"]
    assert "empty file (0 bytes)" in lines[3]["error"]
    assert "is a folder" in lines[4]["error"]
    assert f"{text}: not a readable image" in result.stderr
    assert "4 of 5 image(s) could not be analysed" in result.stderr


@pytest.fixture(scope="module")
def one_woman(tmp_path_factory, group_photo):
    """The woman at far left of t1.jpg, cut out as a profile photo."""
    frame = cv2.imread(str(group_photo))
    path = tmp_path_factory.mktemp("profile") / "profile.jpg"
    cv2.imwrite(str(path), frame[180:480, 0:260])
    return path


def claim(path, *args):
    result = run_edge("analyze", str(path), *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["claim"]


@pytest.mark.slow
def test_claim_consistent(one_woman):
    verdict = claim(one_woman, "--claimed-age", "30", "--claimed-gender", "female")
    assert verdict["consistent"] and not verdict["mismatch"] and verdict["reasons"] == []


@pytest.mark.slow
def test_claim_mismatch_on_age_and_gender(one_woman):
    verdict = claim(one_woman, "--claimed-age", "72", "--claimed-gender", "male")
    assert verdict["mismatch"] and not verdict["consistent"]
    reasons = " ".join(verdict["reasons"])
    assert "claimed age 72 (old)" in reasons and "looks adult" in reasons
    assert "claimed gender male but the face looks female" in reasons


@pytest.mark.slow
def test_claim_on_group_photo_flags_several_faces(group_photo):
    verdict = claim(group_photo, "--claimed-gender", "female")
    assert verdict["mismatch"] and "6 faces found" in verdict["reasons"][0]


def test_claim_rejects_unknown_gender(one_woman):
    result = run_edge("analyze", str(one_woman), "--claimed-gender", "robot")
    assert result.returncode == 2 and "invalid choice: 'robot'" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--duration", "nan"],
        ["run", "--duration", "inf"],
        ["analyze", "x.jpg", "--claimed-age", "NaN"],
        ["bench", "--source", "x", "--seconds=-inf"],
        ["preview", "--camera", "c", "--out", "x.jpg", "--seconds", "nan"],
    ],
)
def test_non_finite_numbers_on_the_command_line_are_refused(args, capsys):
    """nan passes every comparison it meets (a NaN duration never ends a run)."""
    from edge.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(args)
    assert info.value.code == 2 and "invalid number value" in capsys.readouterr().err
