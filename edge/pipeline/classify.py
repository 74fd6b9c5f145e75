"""Classify stage: age class and gender for a batch of faces, one model call each
(on a GPU, one per batch bucket: edge/inference/runtime.py BatchRunner).

CydralAgeGender runs dlib-models' age (81-bin softmax) and gender networks on
dlib-geometry chips (edge/pipeline/align.py). FaceApiAgeGender runs face-api.js's
AgeGenderNet (converted by edge/inference/faceapi.py) on face-api's own 112x112 chips.
Ensemble averages several of them. InsightFaceGenderAge runs an operator-supplied
InsightFace genderage.onnx. All return `Demographics`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.config import Config
from edge.errors import ModelError
from edge.inference import faceapi, runtime
from edge.pipeline import pose
from edge.pipeline.align import CHIP_TEMPLATE, face_chips
from edge.records import Demographics, Detections

log = logging.getLogger(__name__)

# Age bins of the Cydral age network (manifest.json "age_weights"): 0.25, 1, ..., 80.
AGE_BINS = np.array([0.25] + list(range(1, 81)), np.float64)
CHANNEL_MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)  # RGB

# Monotone map from the network's age scale to calibrated years, as (model, calibrated)
# knots for np.interp. The network under-estimates older faces ("calls most people
# over 60 adults"); the knots were fitted once on the development set with two-fold
# cross-validation (tools/calibrate.py, docs/calibration.md). Identity outside knots.
AGE_CALIBRATION = np.array(
    [
        [0.0, 0.0],
        [18.5, 18.0],
        [53.0, 60.0],
        [80.0, 80.0],
    ],
    np.float64,
)
# The gender network's P(male) that is even odds when it decides alone: it calls too
# many men female (elderly men most). Both cross-validation folds fitted 0.36, and it
# lifted held-out gender 13+ from 0.934 to 0.940 (docs/calibration.md section 8). It is
# a decision threshold (fitted by balanced accuracy), not a calibration of the network's
# log-odds: fitted as one (Platt, a * logit + b, by log loss) the bias b is nil (0.01;
# folds -0.24 and +0.30) and only the scale moves (0.62: the network is overconfident).
# So an ensemble pools its unshifted log-odds (docs/calibration.md section 10).
CYDRAL_MALE_THRESHOLD = 0.36

# Cydral's networks fine-tuned on FairFace's train split (models/cydral-fairface.md):
# the age map and gender threshold fitted on FairFace's val split (tools/fairface_fit.py,
# docs/calibration.md sections 12, 14 and 15).
CYDRAL_FAIRFACE_AGE_CALIBRATION = np.array([[0.0, 0.0], [16.0, 18.0], [59.0, 60.0], [80.0, 80.0]])
CYDRAL_FAIRFACE_MALE_THRESHOLD = 0.55
# Its 32-px gender network swings with a few pixels of crop (one man of t1.jpg: P(male)
# 0.48, 0.30 and 0.85 with the chip template scaled 0.9, 1.0 and 1.1 about its centre),
# so it sees the chip at all three scales and its log-odds are averaged. On FairFace val,
# fitted on one half and scored on the other, that lifted gender 13+ by 1.1 points for
# the default pair and 2.6 for this backend alone (docs/calibration.md section 15). Part
# of the model, as FAIRFACE_TURNED_YAW is face-api's: its calibrations were fitted with it.
CYDRAL_FAIRFACE_GENDER_SCALES = (0.9, 1.0, 1.1)


# ITU-R BT.601 luma weights in OpenCV's BGR order.
LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)


def _exposure_gain(
    chips: np.ndarray, floor: float, luma_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(gain per chip, indices of the chips to brighten): the mean luma of each chip's
    centre (the face) against `floor`. Nothing to brighten when floor <= 0."""
    if floor <= 0 or len(chips) == 0:
        return np.ones(len(chips), np.float32), np.zeros(0, np.int64)
    s = chips.shape[1]
    centre = chips[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4].reshape(len(chips), -1, 3)
    luma = centre.mean(axis=1, dtype=np.float32) @ luma_weights
    gain = floor / np.maximum(luma, 1.0)
    return gain, np.flatnonzero(gain > 1)


def lift_exposure(chips_bgr: np.ndarray, floor: float) -> np.ndarray:
    """Brighten each chip whose centre (the face) has a mean luma below `floor` up to it.

    The networks were trained on well-exposed photos; a backlit entrance or a dim
    aisle puts faces below that range, where the gender network in particular
    guesses. Only the gain is changed, never the contrast, and only for faces
    darker than `floor`; brighter ones are passed through untouched.
    """
    gain, dark = _exposure_gain(chips_bgr, floor, LUMA_BGR)
    if len(dark) == 0:
        return chips_bgr
    out = chips_bgr.copy()
    lifted = chips_bgr[dark] * gain[dark, None, None, None]
    out[dark] = np.clip(np.rint(lifted), 0, 255).astype(np.uint8)
    return out


def class_masks(bin_ages: np.ndarray, child_below: float, old_from: float) -> np.ndarray:
    """(3, bins) 0/1 matrix summing an age distribution into child, adult, old."""
    child = bin_ages < child_below
    old = bin_ages >= old_from
    return np.stack([child, ~child & ~old, old]).astype(np.float32)


@dataclass(frozen=True)
class ChipSettings:
    """The config's classifier settings the chip backends share: age classes (child
    below `child_below`, old from `old_from`), flip TTA, calibration, and the exposure
    floor (0: chips are not brightened). No defaults of its own: built from a config,
    so a backend built without one runs with the production defaults (`defaults`)."""

    child_below: float
    old_from: float
    flip_tta: bool
    calibrated: bool
    exposure_floor: float
    turned_yaw: float  # classifier.turned_yaw (2: never)

    @classmethod
    def from_config(cls, config: Config) -> ChipSettings:
        # Every field is the classifier key of the same name.
        return cls(**{f.name: getattr(config.classifier, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def defaults(cls) -> ChipSettings:
        """The configuration's defaults (config.py), as `edge run` without a config."""
        return cls.from_config(Config())


def per_face(
    frames: list[np.ndarray], faces: list[Detections], field: str = "landmarks"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, that face's `field` row) for every face, frame by frame: the order of the
    rows a backend's chips and results come in."""
    return (
        (frame, row) for frame, f in zip(frames, faces, strict=False) for row in getattr(f, field)
    )


class AgeGenderClassifier(Protocol):
    """What the service and the photo API ask of a classifier: faces of one frame, or
    of several frames (cameras) in one model call per network."""

    provider: str

    def __call__(self, frame: np.ndarray, faces: Detections) -> Demographics: ...

    def classify_many(
        self, frames: list[np.ndarray], faces: list[Detections]
    ) -> list[Demographics]: ...


class ChipClassifier(AgeGenderClassifier, Protocol):
    """A backend in two halves: faces cut into its own chips (`chips`), and the chips
    classified (`classify_chips`). The ensemble calls the halves of each member, so
    any such backend can be a member."""

    def chips(self, frames: list[np.ndarray], faces: list[Detections]) -> tuple[Any, ...]: ...

    def classify_chips(self, *chips: Any) -> Demographics: ...


class ChipBackend:
    """What every chip classifier shares: one face, or the faces of several frames,
    through its two halves (a backend writes `chips` and `classify_chips`)."""

    def __call__(self: ChipClassifier, frame: np.ndarray, faces: Detections) -> Demographics:
        return self.classify_many([frame], [faces])[0]

    def classify_many(
        self: ChipClassifier, frames: list[np.ndarray], faces: list[Detections]
    ) -> list[Demographics]:
        """Faces from several frames (cameras) in one model call per network."""
        counts = [len(f) for f in faces]
        if sum(counts) == 0:
            return [empty_demographics() for _ in frames]
        return split(self.classify_chips(*self.chips(frames, faces)), counts)


class CydralAgeGender(ChipBackend):
    AGE_SIZE, GENDER_SIZE = 64, 32

    def __init__(
        self,
        age_model: Path,
        gender_model: Path,
        placement: runtime.Placement = runtime.Placement(),
        settings: ChipSettings | None = None,
        *,
        gender_threshold: bool = True,
        age_calibration: np.ndarray | None = None,
        male_threshold: float | None = None,
        gender_scales: tuple[float, ...] = (1.0,),
    ):
        """`age_calibration` and `male_threshold`: the networks' own (default: Cydral's,
        AGE_CALIBRATION and CYDRAL_MALE_THRESHOLD); the FairFace fine-tune has its own.
        `gender_scales`: the gender chip is cut with the chip template scaled by each
        about its centre (above 1: the face larger in the chip), and the gender
        network's log-odds averaged over them."""
        if not gender_scales or any(not 0.5 <= k <= 2.0 for k in gender_scales):
            raise ValueError(f"gender_scales {gender_scales!r}: expected scales in 0.5..2.0")
        self.gender_templates = [0.5 + (CHIP_TEMPLATE - 0.5) * k for k in gender_scales]
        runners = []
        for path, size, label in (
            (age_model, self.AGE_SIZE, "age"),
            (gender_model, self.GENDER_SIZE, "gender"),
        ):
            sess = placement.session(path, label, batch_inputs={"images": (3, size, size)})
            shape = sess.get_inputs()[0].shape
            if list(shape[1:]) != [3, size, size]:
                raise ModelError(f"{path}: input shape {shape}, expected [N, 3, {size}, {size}]")
            runners.append(runtime.BatchRunner(sess, placement.gpu))
        self._age, self._gender = runners
        self.settings = s = settings or ChipSettings.defaults()
        identity = np.array([[0.0, 0.0], [80.0, 80.0]])
        knots = AGE_CALIBRATION if age_calibration is None else age_calibration
        calibration = knots if s.calibrated else identity
        self.bin_ages = np.interp(AGE_BINS, calibration[:, 0], calibration[:, 1])
        self._masks = class_masks(self.bin_ages, s.child_below, s.old_from)
        # gender_threshold: False for an ensemble member (a decision rule for one network).
        threshold = CYDRAL_MALE_THRESHOLD if male_threshold is None else male_threshold
        self._gender_calibration = RegressionCalibration(
            male_threshold=threshold if s.calibrated and gender_threshold else 0.5
        )
        self.provider = runtime.active_provider(self._age.sess)

    def classify_landmarks(self, frame: np.ndarray, landmarks: np.ndarray) -> Demographics:
        """Batch of faces in a BGR frame, given only their (N, 5, 2) landmarks."""
        n = len(landmarks)
        faces = Detections(
            np.zeros((n, 4), np.float32), np.ones(n, np.float32), np.asarray(landmarks, np.float32)
        )
        return self(frame, faces)

    def chips(self, frames: list[np.ndarray], faces: list[Detections]) -> tuple[np.ndarray, ...]:
        """(age chips, gender chips) of every face, frame by frame, BGR uint8; the gender
        chips once per gender scale, all faces at the first scale, then at the next."""
        pairs = [(frame, f.landmarks) for frame, f in zip(frames, faces, strict=False) if len(f)]
        age = [face_chips(frame, lm, self.AGE_SIZE) for frame, lm in pairs]
        gender = [
            face_chips(frame, lm, self.GENDER_SIZE, template)
            for template in self.gender_templates
            for frame, lm in pairs
        ]
        floor = self.settings.exposure_floor
        return lift_exposure(np.concatenate(age), floor), lift_exposure(
            np.concatenate(gender), floor
        )

    def classify_chips(self, age_chips: np.ndarray, gender_chips: np.ndarray) -> Demographics:
        """The networks alone, on chips already cut (edge bench times this)."""
        return self.demographics(*self.raw(age_chips, gender_chips))

    def raw(self, age_chips: np.ndarray, gender_chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The networks' age-bin probabilities and P(male), before any calibration;
        with several gender scales, P(male) of the mean of their log-odds."""
        age_p = self._run(self._age, age_chips)
        male_p = self._run(self._gender, gender_chips)[:, 1].reshape(-1, len(age_chips))
        if len(male_p) == 1:
            return age_p, male_p[0]
        return age_p, _from_log_odds(_log_odds(male_p).mean(axis=0))

    def demographics(self, age_probs: np.ndarray, male_probs: np.ndarray) -> Demographics:
        ages = age_probs.astype(np.float64) @ self.bin_ages
        class_probs = age_probs @ self._masks.T
        male_probs = self._gender_calibration.male_probs(male_probs)
        return Demographics(
            ages.astype(np.float32), class_probs.astype(np.float32), male_probs.astype(np.float32)
        )

    def _run(self, runner: runtime.BatchRunner, chips_bgr: np.ndarray) -> np.ndarray:
        """One inference call for all chips (and their mirrors with flip TTA)."""
        probs = runner(chip_tensor(chips_bgr, self.settings.flip_tta))[0]
        if self.settings.flip_tta:
            n = len(chips_bgr)
            probs = (probs[:n] + probs[n:]) / 2
        return probs


def chip_tensor(chips_bgr: np.ndarray, flip_tta: bool) -> np.ndarray:
    """Network input from (N, S, S, 3) BGR chips: (N, 3, S, S) float32 RGB, mean removed,
    / 256; with flip TTA the N mirrored chips follow. Written in one pass per copy:
    at batch 128 this was the classifier's main CPU cost."""
    n = len(chips_bgr)
    rgb = chips_bgr.transpose(0, 3, 1, 2)[:, ::-1]  # a view: NCHW, BGR -> RGB
    views = (rgb, rgb[..., ::-1]) if flip_tta else (rgb,)
    tensor = np.empty((n * len(views), *rgb.shape[1:]), np.float32)
    for k, view in enumerate(views):
        np.subtract(
            view, CHANNEL_MEANS[:, None, None], out=tensor[k * n : (k + 1) * n], casting="unsafe"
        )
    tensor *= np.float32(1 / 256)  # a power of two: the same as dividing
    return tensor


@dataclass(frozen=True)
class RegressionCalibration:
    """How a single-age network's output becomes Demographics (fitted by tools/calibrate.py).

    age_knots: monotone (model age, years) pairs for np.interp, identity beyond them.
    age_spread: the true age's spread around the calibrated one, sigma = age_spread *
      max(age, age_spread_floor) years: errors grow with age, so a 70-year-old read
      as 58 is less surprising than a 10-year-old read as 22. Class probabilities are
      that Gaussian's mass below child_below, between, and from old_from.
    male_threshold: the raw P(male) that is treated as even odds: outputs are shifted
      on the logit scale so that it maps to 0.5.
    """

    age_knots: tuple[tuple[float, float], ...] = ((0.0, 0.0), (80.0, 80.0))
    age_spread: float = 0.15
    age_spread_floor: float = 10.0
    male_threshold: float = 0.5

    def ages(self, raw: np.ndarray) -> np.ndarray:
        knots = np.asarray(self.age_knots, np.float64)
        raw = np.asarray(raw, np.float64)
        # np.interp clamps outside the knots; beyond them the map is the identity shift.
        inside = np.interp(raw, knots[:, 0], knots[:, 1])
        below = raw - knots[0, 0] + knots[0, 1]
        above = raw - knots[-1, 0] + knots[-1, 1]
        return np.where(raw < knots[0, 0], below, np.where(raw > knots[-1, 0], above, inside))

    def class_probs(self, ages: np.ndarray, child_below: float, old_from: float) -> np.ndarray:
        sigma = self.age_spread * np.maximum(ages, self.age_spread_floor)
        below_child = _normal_cdf((child_below - ages) / sigma)
        below_old = _normal_cdf((old_from - ages) / sigma)
        return np.stack([below_child, below_old - below_child, 1 - below_old], axis=1)

    def male_probs(self, raw: np.ndarray) -> np.ndarray:
        if self.male_threshold == 0.5:
            return np.asarray(raw, np.float64)
        shift = math.log(self.male_threshold / (1 - self.male_threshold))
        p = np.clip(np.asarray(raw, np.float64), 1e-7, 1 - 1e-7)
        return _from_log_odds(np.log(p / (1 - p)) - shift)


_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + _ERF(np.asarray(z, np.float64) / math.sqrt(2)))


# face-api's calibration, fitted on the development set with two-fold cross-validation
# (tools/calibrate.py; docs/calibration.md section 8): the network calls late teens
# children and sixty-year-olds adults, a little.
FACEAPI_CALIBRATION = RegressionCalibration(
    age_knots=((0.0, 0.0), (17.5, 18.0), (58.5, 60.0), (80.0, 80.0)), age_spread=0.19
)

# face-api's network fine-tuned on FairFace's train split (models/faceapi-fairface.md),
# calibrated on FairFace's val split (tools/fairface_fit.py, docs/calibration.md
# sections 12 and 15): it learnt ages from FairFace's groups, yet calls some 16-17-year-olds adults
# and the late fifties old less than it should (knots 16.5 -> 18, 58 -> 60); its P(male)
# leans male a little (even odds at 0.55). Its chips were cut with the box crop past
# FAIRFACE_TURNED_YAW (classify.faceapi_chips).
FAIRFACE_CALIBRATION = RegressionCalibration(
    age_knots=((0.0, 0.0), (16.5, 18.0), (58.0, 60.0), (80.0, 80.0)),
    age_spread=0.21,
    male_threshold=0.55,
)
FAIRFACE_TURNED_YAW = 0.5

# Ensembles calibrated as a whole: the weighted mean of the members' calibrated ages
# mapped again and spread into classes (tools/calibrate.py, docs/calibration.md
# section 8), keyed by (member, weight) pairs. Other member sets or weights use the
# members' mean class probabilities instead.
ENSEMBLE_CALIBRATIONS: dict[tuple[tuple[str, float], ...], RegressionCalibration] = {
    (("cydral", 0.3), ("faceapi", 0.7)): RegressionCalibration(
        age_knots=((0.0, 0.0), (19.0, 18.0), (56.5, 60.0), (80.0, 80.0)), age_spread=0.20
    ),
    # The default (docs/calibration.md sections 12, 14 and 15), fitted on FairFace's val
    # split with tools/fairface_fit.py: the members' calibrated ages mapped again, and the
    # pooled log-odds' even odds (faceapi-fairface's own threshold already applied,
    # Cydral's net pooled raw as every member is): the pair leans male by 0.14 on the
    # log-odds (0.7 x Cydral's own 0.2; the pair adds nothing).
    (("cydral-fairface", 0.3), ("faceapi-fairface", 0.7)): RegressionCalibration(
        age_knots=((0.0, 0.0), (18.0, 18.0), (59.0, 60.0), (80.0, 80.0)),
        age_spread=0.19,
        male_threshold=0.535,
    ),
}
# Weights when classifier.weights / classifier.gender_weights are not set: those chosen
# for the member set (docs/calibration.md section 8), else equal. face-api's network
# leads on age by far, on the dev faces and on independent ones (issue 11). For the
# untuned pair P(male) is pooled with equal weights: on gender, the dev set's lead for
# face-api is the part most likely to be memory (it was trained on UTKFace), so neither
# a tilt nor weights or Platt scales fitted on that set carry over to other faces
# (docs/calibration.md section 10). The FairFace-tuned pair's were fitted on FairFace
# val, which neither network saw (docs/calibration.md section 14).
DEFAULT_WEIGHTS = {
    frozenset({"cydral", "faceapi"}): {"faceapi": 0.7, "cydral": 0.3},
    frozenset({"cydral-fairface", "faceapi-fairface"}): {
        "faceapi-fairface": 0.7,
        "cydral-fairface": 0.3,
    },
}
DEFAULT_GENDER_WEIGHTS = {
    frozenset({"cydral-fairface", "faceapi-fairface"}): {
        "faceapi-fairface": 0.3,
        "cydral-fairface": 0.7,
    },
}


class FaceApiAgeGender(ChipBackend):
    """face-api.js's AgeGenderNet (edge/inference/faceapi.py) on face-api's own 112x112 RGB chips.

    The network regresses one age; class probabilities come from the calibrated
    spread around it (RegressionCalibration). P(male) is its gender softmax's
    first output, as face-api reads it.
    """

    SIZE = faceapi.INPUT_SIZE

    def __init__(
        self,
        model: Path,
        placement: runtime.Placement = runtime.Placement(),
        settings: ChipSettings | None = None,
        calibration: RegressionCalibration | None = None,
    ):
        """`calibration`: the network's own (default: FACEAPI_CALIBRATION, face-api's)."""
        sess = placement.session(
            model, "faceapi", batch_inputs={faceapi.INPUT_NAME: (3, self.SIZE, self.SIZE)}
        )
        shape = sess.get_inputs()[0].shape
        if list(shape[1:]) != [3, self.SIZE, self.SIZE]:
            raise ModelError(
                f"{model}: input shape {shape}, expected [N, 3, {self.SIZE}, {self.SIZE}]"
            )
        self._runner = runtime.BatchRunner(
            sess, placement.gpu, (faceapi.AGE_OUTPUT, faceapi.GENDER_OUTPUT)
        )
        self.settings = settings = settings or ChipSettings.defaults()
        self.calibration = (
            (calibration or FACEAPI_CALIBRATION) if settings.calibrated else RegressionCalibration()
        )
        self.provider = runtime.active_provider(sess)

    def chips(self, frames: list[np.ndarray], faces: list[Detections]) -> tuple[np.ndarray]:
        """(chips,): every face's (112, 112, 3) float32 RGB chip, frame by frame."""
        return (faceapi_chips(frames, faces, self.settings),)

    def raw(self, chips_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's (age, P(male)) per chip, averaged with the mirror under flip TTA."""
        tensor = chips_rgb.transpose(0, 3, 1, 2)
        if self.settings.flip_tta:
            tensor = np.concatenate([tensor, tensor[..., ::-1]])
        age, gender = self._runner(np.ascontiguousarray(tensor, np.float32))
        male = gender[:, 0]
        if self.settings.flip_tta:
            n = len(chips_rgb)
            age, male = (age[:n] + age[n:]) / 2, (male[:n] + male[n:]) / 2
        return age, male

    def classify_chips(self, chips_rgb: np.ndarray) -> Demographics:
        return self.demographics(*self.raw(chips_rgb))

    def demographics(self, raw_ages: np.ndarray, raw_male: np.ndarray) -> Demographics:
        ages = self.calibration.ages(raw_ages)
        s = self.settings
        return Demographics(
            ages.astype(np.float32),
            self.calibration.class_probs(ages, s.child_below, s.old_from).astype(np.float32),
            self.calibration.male_probs(raw_male).astype(np.float32),
        )


def faceapi_chips(
    frames: list[np.ndarray], faces: list[Detections], settings: ChipSettings
) -> np.ndarray:
    """face-api's chips, frame by frame, as the network sees them: cut from the eye line
    (face-api's own aligned box), or from the detector's box when the head is turned
    past settings.turned_yaw (pose.py), then brightened to the exposure floor. The
    training tool (tools/train_classifier.py) cuts its chips here too."""
    chips = []
    for frame, f in zip(frames, faces, strict=False):
        turned = np.abs(pose.yaw(f.landmarks)) > settings.turned_yaw
        for box, points, side in zip(f.boxes, f.landmarks, turned, strict=True):
            chip = faceapi.box_chip(frame, box) if side else faceapi.face_chip(frame, points)
            chips.append(chip)
    return lift_exposure_rgb(np.stack(chips), settings.exposure_floor)


# ITU-R BT.601 luma weights in RGB order.
LUMA_RGB = LUMA_BGR[::-1].copy()


def lift_exposure_rgb(chips_rgb: np.ndarray, floor: float) -> np.ndarray:
    """lift_exposure for float RGB chips (face-api's): same centre, same rule."""
    gain, dark = _exposure_gain(chips_rgb, floor, LUMA_RGB)
    if len(dark) == 0:
        return chips_rgb
    out = chips_rgb.copy()
    out[dark] = np.minimum(chips_rgb[dark] * gain[dark, None, None, None], 255)
    return out


# A member's P(male) is held to [1e-4, 1 - 1e-4] before pooling, so that one network's
# certainty cannot outvote the others without limit (log-odds at most 9.2).
POOL_CLIP = 1e-4


def _normalised(
    weights: list[float] | None,
    names: list[str],
    defaults: dict[frozenset[str], dict[str, float]],
) -> np.ndarray:
    if weights:
        w = np.asarray(weights, np.float64)
    else:
        chosen = defaults.get(frozenset(names), {})
        w = np.array([chosen.get(n, 1.0) for n in names])
    return w / w.sum()


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), POOL_CLIP, 1 - POOL_CLIP)
    return np.log(p / (1 - p))


def _from_log_odds(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


class Ensemble(ChipBackend):
    """Several backends on the same faces: age is their weighted mean, P(male) their
    weighted mean on the log-odds scale (with its own weights, equal by default; each
    member's log-odds before any decision threshold of its own); class probabilities
    are their weighted mean, unless the ensemble was calibrated as a whole
    (ENSEMBLE_CALIBRATIONS), when they are spread from its calibrated age. Each member
    cuts its own chips and runs one batch per network per call, so a tick still costs
    one model call per network.

    Log-odds, as the service fuses a person's samples: a member that is sure counts
    for more than one that leans. On the shared walking clip face-api's network leans
    male (P 0.79-0.81) on a woman the Cydral network calls female (P 0.03-0.13); the
    plain mean of P(male) called her a man. On the dev faces it is also a little
    better (docs/calibration.md section 8)."""

    def __init__(
        self,
        members: list[ChipClassifier],
        names: list[str],
        *,
        weights: list[float] | None = None,
        child_below: float = 18,
        old_from: float = 60,
        calibrated: bool = True,
        gender_weights: list[float] | None = None,
    ):
        self.members = members
        self.weights = _normalised(weights, names, DEFAULT_WEIGHTS)
        self.gender_weights = _normalised(gender_weights, names, DEFAULT_GENDER_WEIGHTS)
        key = tuple(
            sorted((n, round(float(x), 3)) for n, x in zip(names, self.weights, strict=False))
        )
        self.calibration = ENSEMBLE_CALIBRATIONS.get(key) if calibrated else None
        if calibrated and self.calibration is None:
            log.info(
                "ensemble %s: no calibration fitted for these members and weights; "
                "class probabilities are the members' weighted mean",
                ", ".join(f"{n} {x:.2f}" for n, x in zip(names, self.weights, strict=False)),
            )
        self.child_below, self.old_from = child_below, old_from
        self.provider = members[0].provider

    def chips(self, frames: list[np.ndarray], faces: list[Detections]) -> tuple:
        """One entry per member: that member's own chips tuple."""
        return tuple(m.chips(frames, faces) for m in self.members)

    def classify_chips(self, *member_chips: tuple[Any, ...]) -> Demographics:
        return self.combine(
            [m.classify_chips(*c) for m, c in zip(self.members, member_chips, strict=False)]
        )

    def combine(self, results: list[Demographics]) -> Demographics:
        w = self.weights
        ages = sum(wi * r.ages.astype(np.float64) for wi, r in zip(w, results, strict=False))
        log_odds = sum(
            wi * _log_odds(r.male_probs)
            for wi, r in zip(self.gender_weights, results, strict=False)
        )
        male = _from_log_odds(log_odds)
        if self.calibration is not None:  # the pair's own even odds (identity when 0.5)
            male = self.calibration.male_probs(male)
        if self.calibration is None:
            class_probs = sum(wi * r.class_probs for wi, r in zip(w, results, strict=False))
        else:
            ages = self.calibration.ages(ages)
            class_probs = self.calibration.class_probs(ages, self.child_below, self.old_from)
        return Demographics(
            ages.astype(np.float32), np.asarray(class_probs, np.float32), male.astype(np.float32)
        )


class InsightFaceGenderAge(ChipBackend):
    """Operator-supplied InsightFace genderage.onnx (96x96, outputs female, male, age/100).

    It gives one age, not a distribution; class probabilities are spread with a
    Gaussian of `AGE_SIGMA` years around it so downstream averaging still works.
    """

    AGE_SIGMA = 6.0

    def __init__(
        self,
        model: Path,
        placement: runtime.Placement = runtime.Placement(),
        settings: ChipSettings | None = None,
    ):
        if not Path(model).is_file():
            raise ModelError(
                f"model file {model} (config 'classifier.model') does not exist; "
                f"the insightface backend uses a genderage.onnx you provide"
            )
        # Its input size is read from the file after loading, so no TensorRT profile.
        sess = placement.session(model, "genderage")
        shape = sess.get_inputs()[0].shape
        self.size = int(shape[2]) if isinstance(shape[2], int) else 96
        self._runner = runtime.BatchRunner(sess, placement.gpu)
        self._years = np.arange(0, 101, dtype=np.float64)
        # Of the settings only the age classes apply: no flip TTA, calibration or floor.
        settings = settings or ChipSettings.defaults()
        self._masks = class_masks(self._years, settings.child_below, settings.old_from)
        self.provider = runtime.active_provider(sess)

    def chips(self, frames: list[np.ndarray], faces: list[Detections]) -> tuple[np.ndarray]:
        """(chips,): every face's square crop, frame by frame, BGR uint8."""
        chips = np.stack(
            [self._crop(frame, box) for frame, box in per_face(frames, faces, "boxes")]
        )
        return (chips,)

    def classify_chips(self, chips: np.ndarray) -> Demographics:
        # insightface's Attribute model: BGR->RGB, (x - 0) / 1, as in model_zoo/attribute.py
        tensor = cv2.dnn.blobFromImages(
            list(chips), 1.0, (self.size, self.size), (0.0, 0.0, 0.0), swapRB=True
        )
        out = self._runner(tensor)[0]
        logits = out[:, :2].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        male = e[:, 1] / e.sum(axis=1)
        ages = out[:, 2].astype(np.float64) * 100
        spread = np.exp(-0.5 * ((self._years[None, :] - ages[:, None]) / self.AGE_SIGMA) ** 2)
        spread /= spread.sum(axis=1, keepdims=True)
        return Demographics(
            ages.astype(np.float32),
            (spread @ self._masks.T).astype(np.float32),
            male.astype(np.float32),
        )

    def _crop(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        # Same framing as insightface's Attribute.get: box centre, side * 1.5.
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        scale = self.size / (max(w, h) * 1.5)
        m = np.array(
            [[scale, 0, self.size / 2 - cx * scale], [0, scale, self.size / 2 - cy * scale]],
            np.float64,
        )
        return cv2.warpAffine(frame, m, (self.size, self.size), borderValue=0)


def empty_demographics() -> Demographics:
    return Demographics(
        np.zeros(0, np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32)
    )


def split(batch: Demographics, counts: list[int]) -> list[Demographics]:
    """Cut one batch's rows back into per-frame records."""
    edges = np.cumsum([0] + counts)
    return [
        Demographics(batch.ages[a:b], batch.class_probs[a:b], batch.male_probs[a:b])
        for a, b in zip(edges[:-1], edges[1:], strict=False)
    ]


def create(config: Config, model_paths: dict[str, Path]) -> AgeGenderClassifier:
    """The classifier the config asks for, from verified model files."""
    c = config.classifier
    if c.backend == "ensemble":
        return Ensemble(
            [_create(config, b, model_paths, member=True) for b in c.members],
            c.members,
            weights=c.weights,
            child_below=c.child_below,
            old_from=c.old_from,
            calibrated=c.calibrated,
            gender_weights=c.gender_weights,
        )
    return _create(config, c.backend, model_paths)


def _create(
    config: Config, backend: str, model_paths: dict[str, Path], member: bool = False
) -> ChipClassifier:
    placement = runtime.Placement.from_config(config)
    settings = ChipSettings.from_config(config)
    if backend == "cydral":
        return CydralAgeGender(
            model_paths["age"],
            model_paths["gender"],
            placement,
            settings,
            gender_threshold=not member,
        )
    if backend == "cydral-fairface":
        return CydralAgeGender(
            model_paths["cydral-fairface-age"],
            model_paths["cydral-fairface-gender"],
            placement,
            settings,
            gender_threshold=not member,
            age_calibration=CYDRAL_FAIRFACE_AGE_CALIBRATION,
            male_threshold=CYDRAL_FAIRFACE_MALE_THRESHOLD,
            gender_scales=CYDRAL_FAIRFACE_GENDER_SCALES,
        )
    if backend == "faceapi":
        return FaceApiAgeGender(model_paths["faceapi"], placement, settings)
    if backend == "faceapi-fairface":
        # Trained on chips cut with FAIRFACE_TURNED_YAW (tools/train_classifier.py): the
        # crop is part of the model, whatever classifier.turned_yaw says for face-api's.
        fairface = dataclasses.replace(settings, turned_yaw=FAIRFACE_TURNED_YAW)
        return FaceApiAgeGender(
            model_paths["faceapi-fairface"], placement, fairface, FAIRFACE_CALIBRATION
        )
    # config validation requires classifier.model for insightface (alone or a member)
    model = config.classifier.model
    assert model is not None
    return InsightFaceGenderAge(config.resolve(model), placement, settings)
