"""Typed records that pass forward between pipeline stages.

Arrays are batched (one row per face) so a stage can hand a whole frame's
faces to the next in one call, the way supervision's `Detections` does.
Landmarks always follow the RetinaFace convention whatever the detector:
eye centres (image-left first), nose tip, mouth corners (image-left first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

AGE_CLASSES = ("child", "adult", "old")
GENDERS = ("female", "male")
# The audience segments every count is split by (docs/metrics.md): age class x gender,
# where a gender that stayed unsure (audience.gender_margin) is "unknown", and one
# segment for the people whose age class is unknown. Everyone falls in exactly one.
SEGMENT_GENDERS = (*GENDERS, "unknown")
UNCLASSIFIED = "unclassified"
SEGMENTS = (*(f"{c}_{g}" for c in AGE_CLASSES for g in SEGMENT_GENDERS), UNCLASSIFIED)


# Visitors by age class and gender ({"child": {"female": 0, "male": 0}, ...}): what an
# interval counts, kept here so the pipeline that counts them and the outputs that
# show them build the same zeroes without importing each other.
Counts = dict[str, dict[str, int]]


def empty_counts() -> Counts:
    """Zero visitors in every age class and gender."""
    return {c: {g: 0 for g in GENDERS} for c in AGE_CLASSES}


@dataclass
class VisitTally:
    """Visits counted over a span of time (a reporting interval, or since the start),
    each when it ended (docs/metrics.md): by age class and gender, gender unsure by age
    class, unclassified, watchers, their dwell and attention, and per segment. The
    audience stage adds to it; the interval and summary events carry its fields as
    they are."""

    start: float | None  # the span's first frame; None before any
    unique_visitors: Counts
    gender_unknown: dict[str, int]  # per age class
    watchers: int
    unclassified: int
    dwell_s: float
    attention_s: float
    segments: dict[str, dict[str, float]]  # per segment: visitors, watchers, dwell_s, ...
    end: float | None = None  # set when the span is closed

    @classmethod
    def empty(cls, start: float | None = None) -> VisitTally:
        return cls(
            start=start,
            unique_visitors=empty_counts(),
            gender_unknown={c: 0 for c in AGE_CLASSES},
            watchers=0,
            unclassified=0,
            dwell_s=0.0,
            attention_s=0.0,
            segments={},
        )


@dataclass(frozen=True, slots=True)
class PresentPerson:
    """One classified person in view now, as the audience event lists them: nothing
    that identifies them (the track id is random per run)."""

    track: int
    age_class: str
    gender: str
    age_class_confidence: float
    gender_confidence: float
    dwell_s: float
    attention_s: float
    watching: bool
    samples: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PresentAudience:
    """Who is in view of one camera now: the classified people, and those classified
    confidently by age class and gender."""

    people: list[PresentPerson] = field(default_factory=list)
    counts: Counts = field(default_factory=empty_counts)


def segment_parts(key: str) -> tuple[str, str]:
    """(age class, gender) of a segment key; ("unknown", "unknown") for unclassified."""
    if key == UNCLASSIFIED:
        return "unknown", "unknown"
    age_class, gender = key.split("_")
    return age_class, gender


@dataclass(frozen=True, slots=True)
class Detections:
    """Faces found in one frame, in frame pixel coordinates."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N, 5, 2) float32

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> Detections:
        """Select rows by index array, mask or slice; always returns Detections."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def areas(self) -> np.ndarray:
        return self.widths * (self.boxes[:, 3] - self.boxes[:, 1])


@dataclass(frozen=True, slots=True)
class Demographics:
    """Age and gender estimates, one row per face, in the order of the faces given."""

    ages: np.ndarray  # (N,) float32 expected age in years
    class_probs: np.ndarray  # (N, 3) float32 P(child), P(adult), P(old)
    male_probs: np.ndarray  # (N,) float32 P(male)

    def __len__(self) -> int:
        return len(self.ages)

    @property
    def age_classes(self) -> list[str]:
        return [AGE_CLASSES[i] for i in self.class_probs.argmax(axis=1)]

    @property
    def genders(self) -> list[str]:
        return [GENDERS[int(p >= 0.5)] for p in self.male_probs]

    @property
    def gender_probs(self) -> np.ndarray:
        """Probability of the gender reported for each face."""
        return np.maximum(self.male_probs, 1.0 - self.male_probs)


@dataclass(frozen=True, slots=True)
class Viewer:
    """One person in front of a camera now, as the audience stage sees them (no identity)."""

    age_class: str
    gender: str
    age_class_confidence: float  # probability of age_class
    gender_confidence: float  # probability of gender
    dwell_s: float  # first to last seen, this visit
    attention_s: float  # time spent facing the camera (and display)
    watching: bool  # looked for at least audience.min_attention_s
    child_prob: float  # P(child), whatever the most likely class: the family-safe
    # rule weighs children by it (select.py)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one display should show, and why (select -> publish)."""

    display: str
    ad: str  # ad id in the catalog
    title: str
    creative: str  # path relative to the catalog's folder, or an http(s) URL
    duration_s: float  # shown at least this long
    rule: str  # which rule chose it (README "Ad selection")
    segment: dict | None  # {"age_class", "gender"} targeted, None when nobody / family-safe
    audience: dict  # the audience summary the decision was based on
    time: float  # epoch seconds of the decision
    campaign: str = ""  # the ad's campaign and advertiser in the catalog (reports group by them)
    advertiser: str = ""
