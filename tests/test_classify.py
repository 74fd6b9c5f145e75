"""Batched age/gender classification."""

import dataclasses

import cv2
import numpy as np
import pytest

from edge.pipeline import classify
from edge.records import AGE_CLASSES

from conftest import need


@pytest.fixture(scope="module")
def photo_faces(analyzer, group_photo):
    frame = cv2.imread(str(group_photo))
    return frame, analyzer.detector(frame)


def model_paths(cfg):
    """The verified model files the configuration's classifier loads, by manifest name."""
    from edge.inference import modelstore

    models = cfg.resolve(cfg.models.dir)
    specs = modelstore.load_manifest(models)
    return {n: modelstore.verify(specs[n], models) for n in modelstore.classifier_models(cfg)}


def chip_settings(**changes):
    """The production settings (the config's defaults) with `changes`."""
    return dataclasses.replace(classify.ChipSettings.defaults(), **changes)


def backend(config, name, **overrides):
    """The configured classifier with another backend (and settings)."""

    classifier = dataclasses.replace(config.classifier, backend=name, **overrides)
    cfg = dataclasses.replace(config, classifier=classifier)
    return classify.create(cfg, model_paths(cfg))


@pytest.fixture(scope="module")
def cydral(config):
    return backend(config, "cydral")


@pytest.fixture(scope="module")
def face_api(config):
    return backend(config, "faceapi")


def test_default_is_the_calibrated_pair_of_fairface_networks(analyzer):
    """Issue 26: face-api's and Cydral's networks fine-tuned on FairFace, weighted and
    calibrated as a whole on FairFace val (docs/calibration.md section 12)."""
    clf = analyzer.classifier
    assert isinstance(clf, classify.Ensemble)
    assert [type(m) for m in clf.members] == [classify.FaceApiAgeGender, classify.CydralAgeGender]
    assert clf.members[0].calibration is classify.FAIRFACE_CALIBRATION
    np.testing.assert_allclose(clf.weights, [0.7, 0.3])
    np.testing.assert_allclose(clf.gender_weights, [0.3, 0.7])
    key = (("cydral-fairface", 0.3), ("faceapi-fairface", 0.7))
    assert clf.calibration is classify.ENSEMBLE_CALIBRATIONS[key]


def test_ensemble_pools_cydral_without_its_decision_threshold(config, analyzer, photo_faces):
    """A Cydral network's male threshold is its decision rule when it decides alone
    (docs/calibration.md section 10); the ensemble pools its unshifted log-odds, with
    the gender weights fitted for the pair, and the pair's own even odds are the
    ensemble's."""
    frame, faces = photo_faces
    member = analyzer.classifier.members[1]
    assert isinstance(member, classify.CydralAgeGender)
    alone = backend(config, "cydral-fairface")(frame, faces).male_probs
    pooled = member(frame, faces).male_probs
    threshold = classify.CYDRAL_FAIRFACE_MALE_THRESHOLD
    shift = classify.RegressionCalibration(male_threshold=threshold)
    np.testing.assert_allclose(alone, shift.male_probs(pooled), atol=1e-5)
    assert np.all(alone < pooled)  # its even odds lie above 0.5
    np.testing.assert_allclose(analyzer.classifier.gender_weights, [0.3, 0.7])
    assert analyzer.classifier.calibration.male_threshold != 0.5


@pytest.mark.parametrize("name", ["faceapi", "cydral"])
def test_each_backend_batch_of_n_equals_n_singles(config, photo_faces, name):
    frame, faces = photo_faces
    clf = backend(config, name)
    batch = clf(frame, faces)
    for i in range(len(faces)):
        single = clf(frame, faces[i])
        np.testing.assert_allclose(single.class_probs[0], batch.class_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.male_probs[0], batch.male_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.ages[0], batch.ages[i], atol=1e-3)


def test_faceapi_flip_tta_averages_the_mirrored_chip(config, face_api, photo_faces):
    frame, faces = photo_faces
    plain = backend(config, "faceapi", flip_tta=False)
    (chips,) = face_api.chips([frame], [faces])
    age, male = face_api.raw(chips)
    age_a, male_a = plain.raw(chips)
    age_b, male_b = plain.raw(np.ascontiguousarray(chips[:, :, ::-1]))
    np.testing.assert_allclose(age, (age_a + age_b) / 2, atol=1e-4)
    np.testing.assert_allclose(male, (male_a + male_b) / 2, atol=1e-5)
    assert np.abs(age_a - age_b).max() > 0.01  # the mirror is a different input


def test_ensemble_runs_one_batch_per_network(analyzer, photo_faces):
    frame, faces = photo_faces
    calls = []
    runners = []
    for member in analyzer.classifier.members:
        for attr in ("_runner", "_age", "_gender"):
            runner = getattr(member, attr, None)
            if runner is not None:
                runners.append((runner, runner.sess.run))
                runner.sess = _CountingSession(runner.sess, attr, calls)
    try:
        analyzer.classifier(frame, faces)
    finally:
        for runner, _ in runners:
            runner.sess = runner.sess.inner
    # face-api's one network, Cydral's two; all six faces and their mirrors in each, and
    # for Cydral's gender network each face at its three chip scales.
    assert sorted(calls) == [("_age", 12), ("_gender", 36), ("_runner", 12)]


class _CountingSession:
    def __init__(self, inner, label, calls):
        self.inner, self.label, self.calls = inner, label, calls

    def run(self, outputs, feeds):
        self.calls.append((self.label, len(next(iter(feeds.values())))))
        return self.inner.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_ensemble_averages_its_members():
    from edge.records import Demographics

    a = Demographics(
        np.array([20.0], np.float32),
        np.array([[0.2, 0.8, 0.0]], np.float32),
        np.array([0.9], np.float32),
    )
    b = Demographics(
        np.array([40.0], np.float32),
        np.array([[0.0, 0.6, 0.4]], np.float32),
        np.array([0.3], np.float32),
    )
    members = [type("M", (), {"provider": "cpu"})()] * 2
    plain = classify.Ensemble(members, ["faceapi", "insightface"], weights=[3, 1])
    assert plain.calibration is None
    out = plain.combine([a, b])
    np.testing.assert_allclose(out.ages, [25.0])
    # P(male): the log-odds mean, here with equal gender weights (the default for this set).
    np.testing.assert_allclose(out.male_probs, [1 / (1 + np.sqrt(1 / 9 * 7 / 3))], rtol=1e-6)
    weighted = classify.Ensemble(
        members, ["faceapi", "insightface"], weights=[3, 1], gender_weights=[1, 0]
    ).combine([a, b])
    np.testing.assert_allclose(weighted.male_probs, [0.9], rtol=1e-6)
    np.testing.assert_allclose(out.class_probs, [[0.15, 0.75, 0.1]], atol=1e-6)
    # The calibrated pair spreads its classes from the calibrated mean age instead.
    pair = classify.Ensemble(members, ["faceapi", "cydral"])
    np.testing.assert_allclose(pair.weights, [0.7, 0.3])
    np.testing.assert_allclose(pair.gender_weights, [0.5, 0.5])
    out = pair.combine([a, b])
    expected_age = pair.calibration.ages(np.array([0.7 * 20 + 0.3 * 40]))
    np.testing.assert_allclose(out.ages, expected_age, rtol=1e-6)
    np.testing.assert_allclose(out.class_probs.sum(1), 1, atol=1e-6)


def test_regression_calibration_spreads_classes_around_the_age():
    cal = classify.RegressionCalibration(age_spread=0.2, age_spread_floor=10)
    probs = cal.class_probs(np.array([5.0, 18.0, 35.0, 60.0, 75.0]), 18, 60)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
    assert probs[:, 0].argmax() == 0 and probs[:, 2].argmax() == 4
    # At a boundary the two sides are even; sigma grows with age (0.2 * 60 = 12 years).
    assert probs[1, 0] == pytest.approx(0.5, abs=1e-3)
    assert probs[3, 2] == pytest.approx(0.5, abs=1e-3)
    assert probs[0, 0] > 0.999 and 0.001 < probs[4, 1] < 0.2
    shifted = classify.RegressionCalibration(male_threshold=0.36)
    np.testing.assert_allclose(
        shifted.male_probs(np.array([0.36, 0.9, 0.1])), [0.5, 0.9411, 0.1649], atol=1e-3
    )
    knots = classify.FACEAPI_CALIBRATION
    assert knots.ages(np.array([17.5, 58.5, 80.0, 90.0])).tolist() == [18, 60, 80, 90]


def test_default_batch_of_n_equals_n_singles(analyzer, photo_faces):
    frame, faces = photo_faces
    batch = analyzer.classifier(frame, faces)
    for i in range(len(faces)):
        single = analyzer.classifier(frame, faces[i])
        np.testing.assert_allclose(single.class_probs[0], batch.class_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.male_probs[0], batch.male_probs[i], atol=1e-5)
        np.testing.assert_allclose(single.ages[0], batch.ages[i], atol=1e-3)


def test_one_model_call_per_batch(cydral, photo_faces):
    frame, faces = photo_faces
    clf = cydral
    calls = []
    original = clf._run
    clf._run = lambda sess, chips: calls.append(len(chips)) or original(sess, chips)
    try:
        clf(frame, faces)
    finally:
        clf._run = original
    assert calls == [6, 6]  # one call for age, one for gender, each with all six faces


def test_cydral_fairface_pools_its_gender_network_over_three_chip_scales(config, photo_faces):
    """The 32-px gender network swings with a few pixels of crop, so the FairFace-tuned
    Cydral sees each face at CYDRAL_FAIRFACE_GENDER_SCALES, in one call, and averages
    the log-odds (docs/calibration.md section 15); age keeps the one chip."""
    from edge.pipeline.align import CHIP_TEMPLATE, face_chips

    frame, faces = photo_faces
    clf = backend(config, "cydral-fairface")
    assert isinstance(clf, classify.CydralAgeGender)
    scales = classify.CYDRAL_FAIRFACE_GENDER_SCALES
    assert len(scales) == 3 and 1.0 in scales
    n = len(faces)
    age_chips, gender_chips = clf.chips([frame], [faces])
    assert age_chips.shape == (n, 64, 64, 3) and gender_chips.shape == (3 * n, 32, 32, 3)
    # scale 1.0 is the plain chip; a scale above 1 shows the face larger
    plain = face_chips(frame, faces.landmarks, 32)
    k = scales.index(1.0)
    np.testing.assert_array_equal(gender_chips[k * n : (k + 1) * n], plain)
    template = 0.5 + (CHIP_TEMPLATE - 0.5) * max(scales)
    np.testing.assert_array_equal(
        gender_chips[scales.index(max(scales)) * n :][:n],
        face_chips(frame, faces.landmarks, 32, template),
    )
    calls = []
    original = clf._run
    clf._run = lambda sess, chips: calls.append(len(chips)) or original(sess, chips)
    try:
        pooled = clf.classify_chips(age_chips, gender_chips).male_probs
    finally:
        clf._run = original
    assert calls == [n, 3 * n]
    per_scale = clf._run(clf._gender, gender_chips)[:, 1].reshape(3, n)
    logits = np.log(per_scale / (1 - per_scale)).mean(axis=0)
    expected = classify.RegressionCalibration(
        male_threshold=classify.CYDRAL_FAIRFACE_MALE_THRESHOLD
    ).male_probs(1 / (1 + np.exp(-logits)))
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    # the pooled answer is not any one scale's: the scales disagree on some face
    assert np.abs(per_scale - per_scale.mean(axis=0)).max() > 0.01
    paths = model_paths(config)  # the default's: cydral-fairface is a member
    with pytest.raises(ValueError, match="gender_scales"):
        classify.CydralAgeGender(
            paths["cydral-fairface-age"], paths["cydral-fairface-gender"], gender_scales=()
        )


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


def test_chip_settings_read_the_classifier_section(config):
    c = dataclasses.replace(
        config.classifier,
        child_below=16,
        old_from=65,
        flip_tta=False,
        exposure_floor=70,
        turned_yaw=0.7,
    )
    settings = classify.ChipSettings.from_config(dataclasses.replace(config, classifier=c))
    assert settings == classify.ChipSettings(
        child_below=16,
        old_from=65,
        flip_tta=False,
        calibrated=c.calibrated,
        exposure_floor=70,
        turned_yaw=0.7,
    )


def test_uncalibrated_mode_reports_raw_model_ages(config):
    from edge.inference import modelstore

    models = config.resolve(config.models.dir)
    paths = modelstore.verify_all(modelstore.load_manifest(models), models)
    raw = classify.CydralAgeGender(
        paths["age"],
        paths["gender"],
        settings=chip_settings(calibrated=False),
    )
    np.testing.assert_array_equal(raw.bin_ages, classify.AGE_BINS)
    # a distribution all on the 55-year bin: raw says adult, calibrated says old
    probs = np.zeros((1, 81), np.float32)
    probs[0, 55] = 1
    assert raw.demographics(probs, np.array([0.5])).age_classes == ["adult"]
    cal = classify.CydralAgeGender(
        paths["age"],
        paths["gender"],
        settings=chip_settings(calibrated=True),
    )
    assert cal.demographics(probs, np.array([0.5])).age_classes == ["old"]


def test_lift_exposure_brightens_only_dark_faces_and_keeps_their_contrast():
    rng = np.random.default_rng(0)
    bright = rng.integers(100, 200, (1, 64, 64, 3), dtype=np.uint8)
    dark = (bright // 3).astype(np.uint8)
    chips = np.concatenate([bright, dark])
    lifted = classify.lift_exposure(chips, floor=90)
    np.testing.assert_array_equal(lifted[0], bright[0])  # already above the floor
    centre = lifted[1, 16:48, 16:48].reshape(-1, 3).mean(axis=0) @ classify.LUMA_BGR
    assert centre == pytest.approx(90, abs=0.5)
    # A gain, not a curve: pixel ratios stay (to rounding).
    ratio = lifted[1].astype(float) / np.maximum(dark[0], 1)
    assert ratio[dark[0] > 20].std() < 0.05
    np.testing.assert_array_equal(classify.lift_exposure(chips, floor=0), chips)
    assert classify.lift_exposure(chips[:0], floor=90).shape == (0, 64, 64, 3)


@pytest.mark.slow
@pytest.mark.cpu
def test_lift_exposure_recovers_accuracy_on_dim_dev_faces(analyzer, cydral):
    # The 1,200 dev faces at a store camera's size (80 px) and 45% exposure, as
    # `tools/robustness.py faces` makes them, through edge eval's own padding, face
    # choice and scoring; chips cut once, classified without and with the lift.
    # Measured (with the gender threshold 0.36): gender 13+ 0.924 -> 0.934, age class
    # 0.789 -> 0.805.
    from edge.commands.evaluate import pad, read_labels, score
    from edge.pipeline.align import face_chips

    clf = cydral
    kept, age_chips, gender_chips = [], [], []
    for label in read_labels(need("faces/utkface-dev/labels.csv")):
        small = cv2.resize(cv2.imread(str(label.path)), (80, 80), interpolation=cv2.INTER_AREA)
        frame = pad((small * 0.45).astype(np.uint8))
        faces = analyzer.detector(frame)
        if len(faces) == 0:
            continue
        best = faces[int(np.argmax(faces.areas))]
        age_chips.append(face_chips(frame, best.landmarks, clf.AGE_SIZE)[0])
        gender_chips.append(face_chips(frame, best.landmarks, clf.GENDER_SIZE)[0])
        kept.append(label)
    scores = {}
    for floor in (0, 90):
        demo = clf.classify_chips(
            classify.lift_exposure(np.stack(age_chips), floor),
            classify.lift_exposure(np.stack(gender_chips), floor),
        )
        predictions = [
            {"age": float(age), "class": int(probs.argmax()), "male_prob": float(male)}
            for age, probs, male in zip(demo.ages, demo.class_probs, demo.male_probs, strict=False)
        ]
        result = score(kept, predictions, child_below=18, old_from=60)
        scores[floor] = (result["age_class_accuracy"], result["gender_accuracy_13plus"])
    print(
        f"dim dev faces (n={len(kept)}): age class, gender 13+ "
        f"{scores[0][0]:.3f}, {scores[0][1]:.3f} without lift; "
        f"{scores[90][0]:.3f}, {scores[90][1]:.3f} with"
    )
    assert len(kept) >= 1190
    assert scores[90][0] > scores[0][0] + 0.01 and scores[90][1] > scores[0][1] + 0.01


def test_yaw_from_five_points():
    from edge.pipeline import pose

    frontal = [[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]]
    half = [[40, 50], [80, 50], [70, 70], [45, 90], [75, 90]]  # nose halfway to an eye
    profile = [[50, 50], [60, 50], [75, 70], [52, 90], [62, 90]]  # nose past the far eye
    flat = [[50, 50], [50, 50], [40, 70], [45, 90], [55, 90]]  # eyes on one spot
    turn = pose.yaw(np.array([frontal, half, profile, flat], float))
    assert turn[0] == pytest.approx(0) and turn[1] == pytest.approx(0.5)
    assert turn[2] == pose.YAW_LIMIT and turn[3] == pose.YAW_LIMIT
    mirrored = np.array(half, float) * [-1, 1] + [120, 0]
    assert pose.yaw(mirrored[[1, 0, 2, 4, 3]])[0] == pytest.approx(-0.5)
    assert pose.frontality(np.array([frontal, half, profile], float)).tolist() == [1, 0.5, 0]


def test_faceapi_crops_a_turned_head_from_the_detector_box(config, photo_faces):
    """Past classifier.turned_yaw a face's chip is cut from the detector's box
    (faceapi.box_chip); below it from the eye line, as face-api itself does."""
    from edge.inference import faceapi
    from edge.pipeline import pose

    frame, faces = photo_faces
    turn = np.abs(pose.yaw(faces.landmarks))
    settings = dataclasses.replace(
        classify.ChipSettings.defaults(), turned_yaw=float(np.median(turn))
    )
    chips = classify.faceapi_chips([frame], [faces], settings)
    for i, (box, points) in enumerate(zip(faces.boxes, faces.landmarks, strict=True)):
        cut = faceapi.box_chip(frame, box) if turn[i] > settings.turned_yaw else None
        want = cut if cut is not None else faceapi.face_chip(frame, points)
        np.testing.assert_array_equal(chips[i], want)
    assert 0 < (turn > settings.turned_yaw).sum() < len(faces)  # both crops were used
    never = classify.faceapi_chips([frame], [faces], chip_settings(turned_yaw=9))
    np.testing.assert_array_equal(
        never, np.stack([faceapi.face_chip(frame, p) for p in faces.landmarks])
    )


def test_box_chip_of_a_frontal_face_is_close_to_the_eye_line_chip(photo_faces):
    """BOX_TO_ALIGNED maps a frontal face's detector box onto about the box face-api
    cuts from its landmarks (the group photo's frontal faces)."""
    from edge.inference import faceapi
    from edge.pipeline import pose

    frame, faces = photo_faces
    frontal = faces[np.abs(pose.yaw(faces.landmarks)) < 0.25]
    assert len(frontal) >= 2  # of six
    for box, points in zip(frontal.boxes, frontal.landmarks, strict=True):
        aligned = faceapi.aligned_box(points)
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        dx, dy, sw, sh = faceapi.BOX_TO_ALIGNED
        centre = ((x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h)
        assert abs(centre[0] - (aligned[0] + aligned[2] / 2)) < 0.15 * aligned[2]
        assert abs(centre[1] - (aligned[1] + aligned[3] / 2)) < 0.15 * aligned[3]
        assert 0.8 < sw * w / aligned[2] < 1.25 and 0.8 < sh * h / aligned[3] < 1.25


def test_the_fairface_fine_tuned_network_runs_as_a_backend_and_a_member(config, photo_faces):
    """faceapi-fairface (models/faceapi-fairface.md) loads from its committed, pinned file
    and runs alone and beside Cydral; its chips use the box crop it was trained on."""
    frame, faces = photo_faces
    alone = backend(config, "faceapi-fairface")
    assert alone.settings.turned_yaw == classify.FAIRFACE_TURNED_YAW
    assert alone.calibration is classify.FAIRFACE_CALIBRATION
    demo = alone(frame, faces)
    assert (
        demo.ages.shape == (len(faces),) and ((demo.male_probs >= 0) & (demo.male_probs <= 1)).all()
    )
    assert list(demo.age_classes) == ["adult"] * len(faces)  # the group photo's six adults
    pair = backend(config, "ensemble", members=["faceapi-fairface", "cydral"])
    assert pair(frame, faces).ages.shape == (len(faces),)
