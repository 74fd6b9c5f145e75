"""Still-image analysis: detect and classify every face in a photo (`edge analyze`).

`FaceAnalyzer` is the detect + classify pair the other entry points share;
`check_claim` is the profile-photo check (does the photo fit a claimed age and
gender?).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import Config
from edge.inference import modelstore
from edge.pipeline import classify, detect, images
from edge.records import AGE_CLASSES, Demographics, Detections
from edge.redact import redact

log = logging.getLogger(__name__)


class FaceAnalyzer:
    """Verified models, a detector and a classifier, built from config."""

    def __init__(self, config: Config, detect_threshold: float | None = None):
        """`detect_threshold` overrides detector.score_threshold (the tracker wants weak
        detections too, for its second association pass)."""
        self.config = config
        models_dir = config.resolve(config.models.dir)
        specs = modelstore.load_manifest(models_dir)
        needed = modelstore.configured_models(config)
        paths = {n: modelstore.verify(specs[n], models_dir) for n in needed}
        self.detector = detect.create(config, paths, detect_threshold)
        self.classifier = classify.create(config, paths)
        log.info(
            "models ready: detector %s on %s, classifier %s on %s",
            config.detector.backend,
            self.detector.provider,
            config.classifier.backend,
            self.classifier.provider,
        )

    def __call__(self, frame: np.ndarray) -> tuple[Detections, Demographics]:
        return self.many([frame])[0]

    def many(self, frames: list[np.ndarray]) -> list[tuple[Detections, Demographics]]:
        """Several photos: detected together, and the faces of all of them classified in
        one classifier call (the photo check API's batches).

        A tight portrait (the face filling the photo, as profile photos and ID crops
        often are) hides the face's outline and the detector can miss it: a photo with
        no face is looked at once more with a border (`pad`), and what is found there is
        classified on the bordered photo and reported in the photo's own coordinates."""
        frames, faces, borders = find_many(self.detector, frames)
        demos = self.classifier.classify_many(frames, faces)
        return [(moved(f, -by), demo) for f, demo, by in zip(faces, demos, borders, strict=True)]


def find_many(
    detector: detect.FaceDetector, frames: list[np.ndarray]
) -> tuple[list[np.ndarray], list[Detections], list[int]]:
    """Stills' faces, detected together: per photo the image its faces are on (the photo,
    or the photo with a border when the photo alone showed none), the faces in that
    image's coordinates, and the border's width (0: none). `edge eval` and the
    calibration tools detect through here too, so they measure what the photo API does."""
    frames = list(frames)
    faces = detector.detect_many(frames)
    borders = [0] * len(frames)
    retry = [i for i, f in enumerate(faces) if len(f) == 0]
    if retry:
        padded = [pad(frames[i]) for i in retry]
        for i, bordered, found in zip(retry, padded, detector.detect_many(padded), strict=True):
            if len(found):
                borders[i] = border(frames[i])
                frames[i], faces[i] = bordered, found
    return frames, faces, borders


PAD_FRACTION = 0.3  # of a tight photo's longer side, each way


def border(image: np.ndarray) -> int:
    return int(round(PAD_FRACTION * max(image.shape[:2])))


def pad(image: np.ndarray) -> np.ndarray:
    """A tight face crop with a mid-grey border (`border` pixels each way): the detector
    finds a face whose outline it can see."""
    width = border(image)
    return cv2.copyMakeBorder(
        image, width, width, width, width, cv2.BORDER_CONSTANT, value=(127, 127, 127)
    )


def moved(faces: Detections, by: float) -> Detections:
    """The same faces with boxes and landmarks moved by `by` pixels on both axes."""
    if by == 0:
        return faces
    return Detections(faces.boxes + by, faces.scores, faces.landmarks + by)


def read_image(path: str | Path) -> np.ndarray:
    """BGR image, or InputError naming the file and what is wrong with it (size, shape,
    truncation: edge/pipeline/images.py, shared with image cameras)."""
    # A stream URL given by mistake may carry a password: never print it as given.
    return images.read_image(path, shown=redact(str(path)))


def face_records(faces: Detections, demo: Demographics) -> list[dict]:
    rows = []
    classes, genders = demo.age_classes, demo.genders
    for i in range(len(faces)):
        rows.append(
            {
                "box": [round(float(v), 1) for v in faces.boxes[i]],
                "score": round(float(faces.scores[i]), 4),
                "landmarks": [
                    [round(float(x), 1), round(float(y), 1)] for x, y in faces.landmarks[i]
                ],
                "age": round(float(demo.ages[i]), 1),
                "age_class": classes[i],
                "age_class_probs": {
                    c: round(float(p), 4)
                    for c, p in zip(AGE_CLASSES, demo.class_probs[i], strict=False)
                },
                "gender": genders[i],
                "gender_prob": round(float(demo.gender_probs[i]), 4),
            }
        )
    return rows


@dataclass(frozen=True)
class Claim:
    age: float | None
    gender: str | None


def photo_result(
    faces: Detections, demo: Demographics, claim: Claim | None, config: Config
) -> dict:
    """One photo's answer, as `edge analyze` prints it and the photo check API returns
    it: its faces, and with a claim, the check of that claim."""
    rows = face_records(faces, demo)
    result: dict = {"faces": rows}
    if claim is not None:
        c = config.classifier
        result["claim"] = check_claim(claim, rows, c.child_below, c.old_from)
    return result


def check_claim(
    claim: Claim,
    faces: list[dict],
    child_below: float,
    old_from: float,
    min_confidence: float = 0.8,
) -> dict:
    """Is the photo consistent with a claimed age and gender?

    A mismatch is flagged only when the model is confident (class or gender
    probability at least `min_confidence`): an uncertain estimate is reported as
    'uncertain', never as a mismatch, so honest users are not flagged on noise.
    """
    if len(faces) == 0:
        return {
            "consistent": False,
            "mismatch": True,
            "reasons": ["no face found in the photo"],
            "uncertain": [],
        }
    if len(faces) > 1:
        return {
            "consistent": False,
            "mismatch": True,
            "reasons": [f"{len(faces)} faces found; a profile photo should show one person"],
            "uncertain": [],
        }
    face = faces[0]
    reasons: list[str] = []
    uncertain: list[str] = []
    if claim.age is not None:
        claimed_class = (
            "child" if claim.age < child_below else "old" if claim.age >= old_from else "adult"
        )
        p = face["age_class_probs"][claimed_class]
        if face["age_class"] != claimed_class:
            message = (
                f"claimed age {claim.age:g} ({claimed_class}) but the face looks "
                f"{face['age_class']} (estimated age {face['age']:g}, "
                f"P({claimed_class}) = {p:.2f})"
            )
            (
                reasons
                if face["age_class_probs"][face["age_class"]] >= min_confidence
                else uncertain
            ).append(message)
    if claim.gender is not None and face["gender"] != claim.gender:
        message = (
            f"claimed gender {claim.gender} but the face looks {face['gender']} "
            f"(P = {face['gender_prob']:.2f})"
        )
        (reasons if face["gender_prob"] >= min_confidence else uncertain).append(message)
    return {
        "consistent": not reasons and not uncertain,
        "mismatch": bool(reasons),
        "reasons": reasons,
        "uncertain": uncertain,
    }
