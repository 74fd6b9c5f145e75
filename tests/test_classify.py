"""Batched age/gender classification."""

import cv2
import numpy as np
import pytest

from edge import classify
from edge.records import AGE_CLASSES


@pytest.fixture(scope="module")
def photo_faces(analyzer, group_photo):
    frame = cv2.imread(str(group_photo))
    return frame, analyzer.detector(frame)


def test_batch_of_n_equals_n_singles(analyzer, photo_faces):
    frame, faces = photo_faces
    batch = analyzer.classifier(frame, faces)
    for i in range(len(faces)):
        single = analyzer.classifier(frame, faces[i])
        np.testing.assert_allclose(single.class_probs[0], batch.class_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.male_probs[0], batch.male_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.ages[0], batch.ages[i], atol=1e-3)


def test_one_model_call_per_batch(analyzer, photo_faces):
    frame, faces = photo_faces
    clf = analyzer.classifier
    calls = []
    original = clf._run
    clf._run = lambda sess, chips: calls.append(len(chips)) or original(sess, chips)
    try:
        clf(frame, faces)
    finally:
        clf._run = original
    assert calls == [6, 6]  # one call for age, one for gender, each with all six faces


def test_outputs_are_probabilities(analyzer, photo_faces):
    frame, faces = photo_faces
    demo = analyzer.classifier(frame, faces)
    np.testing.assert_allclose(demo.class_probs.sum(axis=1), 1, atol=1e-4)
    assert ((demo.male_probs >= 0) & (demo.male_probs <= 1)).all()
    assert ((demo.ages > 0) & (demo.ages <= 80)).all()
    assert set(demo.age_classes) <= set(AGE_CLASSES)


def test_no_faces_gives_empty_demographics(analyzer, photo_faces):
    frame, faces = photo_faces
    demo = analyzer.classifier(frame, faces[np.zeros(len(faces), bool)])
    assert len(demo) == 0 and demo.class_probs.shape == (0, 3)


def test_class_masks_partition_the_bins():
    masks = classify.class_masks(classify.AGE_BINS, 18, 60)
    np.testing.assert_array_equal(masks.sum(axis=0), 1)
    assert masks[0, classify.AGE_BINS == 17].all() and masks[1, classify.AGE_BINS == 18].all()
    assert masks[1, classify.AGE_BINS == 59].all() and masks[2, classify.AGE_BINS == 60].all()


def test_calibration_is_monotone_and_hits_its_knots():
    knots = classify.AGE_CALIBRATION
    assert (np.diff(knots[:, 0]) > 0).all() and (np.diff(knots[:, 1]) > 0).all()
    mapped = np.interp(classify.AGE_BINS, knots[:, 0], knots[:, 1])
    assert (np.diff(mapped) > 0).all()
    assert mapped[0] == pytest.approx(0.25, abs=0.01) and mapped[-1] == 80


def test_uncalibrated_mode_reports_raw_model_ages(config):
    from edge import modelstore

    models = config.resolve(config.models.dir)
    paths = modelstore.verify_all(modelstore.load_manifest(models), models)
    raw = classify.CydralAgeGender(paths["age"], paths["gender"], ["cpu"], calibrated=False)
    np.testing.assert_array_equal(raw.bin_ages, classify.AGE_BINS)
    # a distribution all on the 55-year bin: raw says adult, calibrated says old
    probs = np.zeros((1, 81), np.float32)
    probs[0, 55] = 1
    assert raw.demographics(probs, np.array([0.5])).age_classes == ["adult"]
    cal = classify.CydralAgeGender(paths["age"], paths["gender"], ["cpu"], calibrated=True)
    assert cal.demographics(probs, np.array([0.5])).age_classes == ["old"]
