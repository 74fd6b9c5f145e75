"""Audience stage: who is in front of a camera, what they are, and for how long they looked.

Per confirmed track it decides when a face is worth classifying (first when
confirmed, then only for a clearly better view or after an interval, up to a
cap: DeepStream's secondary classifiers re-infer on box growth or interval),
combines the samples into a stable label (log-probabilities averaged with each look's
quality as its weight: bigger and more frontal faces count for more, and the looks of
a strongly turned head are dropped once a frontal one comes), and keeps
dwell time (first to last seen) and attention time (face turned to the camera,
estimated from the five landmarks; the display sits next to the camera).

A visit is counted once, in the reporting interval in which it ends, when its
label is final. Nothing here identifies a person: track ids are random per run
and no appearance feature is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge.config import AudienceConfig
from edge.pipeline.track import Track
from edge.records import (
    AGE_CLASSES,
    GENDERS,
    UNCLASSIFIED,
    Counts,
    Demographics,
    PresentAudience,
    PresentPerson,
    Viewer,
    VisitTally,
    empty_counts,
)

_EPS = 1e-6


def head_pose(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) proxies from RetinaFace-order landmarks, 0 = facing the camera.

    yaw: nose offset from the eye midpoint, in eye distances (about +-0.5 at a
    45 degree turn). pitch: where the nose sits between eyes (0) and mouth (1),
    centred so a level face gives about 0.
    """
    left_eye, right_eye, nose, left_mouth, right_mouth = landmarks
    eye_mid = (left_eye + right_eye) / 2
    mouth_mid = (left_mouth + right_mouth) / 2
    eye_dist = max(float(np.linalg.norm(right_eye - left_eye)), _EPS)
    yaw = float(nose[0] - eye_mid[0]) / eye_dist
    face_height = max(float(mouth_mid[1] - eye_mid[1]), _EPS)
    pitch = float(nose[1] - eye_mid[1]) / face_height - 0.55
    return yaw, pitch


@dataclass
class Person:
    """What the audience stage knows about one track during one visit."""

    track_id: int  # the tracker's random per-run id
    first_seen: float
    last_seen: float
    samples: int = 0
    # quality-weighted sums of the samples' log-probabilities and log-odds, and of the weights
    class_log_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    male_logit_sum: float = 0.0
    weight_sum: float = 0.0
    best_quality: float = 0.0
    frontal_seen: bool = False  # a sample of a head not strongly turned
    last_classified: float = -math.inf
    attention_s: float = 0.0
    watching: bool = False

    @property
    def dwell_s(self) -> float:
        return self.last_seen - self.first_seen

    @property
    def class_probs(self) -> np.ndarray:
        mean = self.class_log_sum / max(self.weight_sum, _EPS)
        p = np.exp(mean - mean.max())
        return p / p.sum()

    @property
    def male_prob(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.male_logit_sum / max(self.weight_sum, _EPS)))

    @property
    def age_class(self) -> str:
        return AGE_CLASSES[int(self.class_probs.argmax())]

    @property
    def gender(self) -> str:
        return GENDERS[int(self.male_prob >= 0.5)]

    def confident(self, min_confidence: float) -> bool:
        return self.samples > 0 and float(self.class_probs.max()) >= min_confidence

    def segment(self, min_confidence: float, gender_margin: float) -> str:
        """Their segment (records.SEGMENTS, docs/metrics.md): age class x gender, the
        gender "unknown" while P(male) stays within gender_margin of 0.5 (a coin toss
        would skew the split), "unclassified" while the age class is unsure."""
        if not self.confident(min_confidence):
            return UNCLASSIFIED
        sure = abs(self.male_prob - 0.5) >= gender_margin
        return f"{self.age_class}_{self.gender if sure else 'unknown'}"

    def add_sample(
        self,
        class_probs: np.ndarray,
        male_prob: float,
        quality: float,
        now: float,
        turned: bool = False,
    ) -> None:
        """One look, weighted by its quality (face_quality). A head turned past TURNED_YAW
        shows half a face, or a zoomed one: gender was wrong on 1 in 3 such chips against
        1 in 8 frontal ones (issue 26). Its looks count until the first frontal one,
        which replaces them all."""
        if not turned and not self.frontal_seen:
            self.class_log_sum = np.zeros(3)
            self.male_logit_sum = self.weight_sum = 0.0
            self.frontal_seen = True
        weight = max(quality, _EPS)
        self.class_log_sum += weight * np.log(np.clip(class_probs, _EPS, 1.0))
        p = min(max(male_prob, _EPS), 1 - _EPS)
        self.male_logit_sum += weight * math.log(p / (1 - p))
        self.weight_sum += weight
        self.samples += 1
        self.best_quality = max(self.best_quality, quality)
        self.last_classified = now

    def summary(self) -> PresentPerson:
        return PresentPerson(
            track=self.track_id,
            age_class=self.age_class,
            gender=self.gender,
            age_class_confidence=round(float(self.class_probs.max()), 3),
            gender_confidence=round(max(self.male_prob, 1 - self.male_prob), 3),
            dwell_s=round(self.dwell_s, 2),
            attention_s=round(self.attention_s, 2),
            watching=self.watching,
            samples=self.samples,
        )


class Audience:
    """Audience state for one camera."""

    def __init__(self, camera_id: str, settings: AudienceConfig | None = None):
        self.camera_id = camera_id
        self.settings = settings or AudienceConfig()
        self.people: dict[int, Person] = {}
        self._interval = VisitTally.empty()
        self._totals = VisitTally.empty()
        self._last_present: list[tuple[int, str, str]] = []

    # -- classification scheduling -------------------------------------------------

    def wants_classification(
        self, tracks: list[Track], now: float, better_faces: bool = True
    ) -> list[int]:
        """Indices of the tracks (matched this frame, confirmed) worth classifying now:
        never classified, due again, or (with `better_faces`) seen with a better face.
        A better face can wait for a later look: it is still there then."""
        s = self.settings
        wanted = []
        for i, track in enumerate(tracks):
            if track.state != "confirmed" or track.det_index < 0:
                continue
            person = self.people.get(track.id)
            if person is None or person.samples == 0:
                wanted.append(i)
                continue
            if person.samples >= s.max_samples and person.frontal_seen:
                continue  # (only turned looks so far: a frontal one is still wanted)
            better = better_faces and (
                face_quality(track) >= s.better_face_ratio * person.best_quality
                or (not strongly_turned(track) and not person.frontal_seen)
            )
            due = now - person.last_classified >= s.reclassify_interval_s
            if better or due:
                wanted.append(i)
        return wanted

    def classification_rank(self, track: Track) -> tuple[bool, float]:
        """Which of the faces wanted now go first when a tick cannot take them all:
        people never classified before those due again, then bigger, more frontal faces
        (the better label, and the face most likely to be in front of the display)."""
        person = self.people.get(track.id)
        return (person is None or person.samples == 0, face_quality(track))

    def classification_due(self, tracks: list[Track], now: float) -> bool:
        """A periodic reclassification is due for someone found in the last detection
        (the service detects on such frames). Someone lost cannot be classified until
        found again, so they do not count."""
        s = self.settings
        for track in tracks:
            person = self.people.get(track.id)
            if (
                track.det_index >= 0
                and person is not None
                and (
                    person.samples < s.max_samples
                    and now - person.last_classified >= s.reclassify_interval_s
                )
            ):
                return True
        return False

    def add_samples(self, tracks: list[Track], demographics: Demographics, now: float) -> None:
        for i, track in enumerate(tracks):
            person = self._person(track)
            person.add_sample(
                demographics.class_probs[i],
                float(demographics.male_probs[i]),
                face_quality(track),
                now,
                turned=strongly_turned(track),
            )

    # -- per-frame update ----------------------------------------------------------

    def update(self, tracks: list[Track], removed: list[Track], now: float, dt: float) -> bool:
        """Advance dwell and attention; close visits of removed tracks.

        Returns True when who is present (or their label) changed.
        """
        s = self.settings
        for track in tracks:
            if track.state != "confirmed":
                continue
            person = self._person(track)
            person.last_seen = max(person.last_seen, track.last_seen)
            if track.det_index >= 0:
                yaw, pitch = head_pose(track.landmarks)
                looking = abs(yaw) <= s.attention_max_yaw and abs(pitch) <= s.attention_max_pitch
                if looking:
                    person.attention_s += dt
                person.watching = person.watching or person.attention_s >= s.min_attention_s
        for track in removed:
            gone = self.people.pop(track.id, None)
            if gone is not None:
                self._close_visit(gone)
        present = self.present_key()
        changed = present != self._last_present
        self._last_present = present
        return changed

    def present(self) -> list[PresentPerson]:
        return [p.summary() for p in self.people.values() if p.samples > 0]

    def snapshot(self) -> PresentAudience:
        """Who is in view now, for the audience event."""
        return PresentAudience(self.present(), self.present_counts())

    def viewers(self) -> list[Viewer]:
        """The classified people present now, for the select stage."""
        return [
            Viewer(
                p.age_class,
                p.gender,
                float(p.class_probs.max()),
                max(p.male_prob, 1 - p.male_prob),
                p.dwell_s,
                p.attention_s,
                p.watching,
                child_prob=float(p.class_probs[AGE_CLASSES.index("child")]),
            )
            for p in self.people.values()
            if p.samples > 0
        ]

    def present_key(self) -> list[tuple[int, str, str]]:
        return sorted(
            (p.track_id, p.age_class, p.gender) for p in self.people.values() if p.samples > 0
        )

    def present_counts(self) -> Counts:
        counts = empty_counts()
        for p in self.people.values():
            if p.confident(self.settings.min_confidence):
                counts[p.age_class][p.gender] += 1
        return counts

    # -- reporting intervals -------------------------------------------------------

    def begin(self, now: float) -> None:
        """Start the first reporting interval at the camera's first frame."""
        self._interval.start = now

    def close_interval(self, now: float, flush: bool = False) -> VisitTally:
        """Counts for the interval that ends now. `flush` ends every open visit first."""
        if flush:
            for person in list(self.people.values()):
                self._close_visit(person)
            self.people.clear()
        report, self._interval = self._interval, VisitTally.empty(start=now)
        report.end = now
        return report

    def totals(self) -> VisitTally:
        return self._totals

    def _close_visit(self, person: Person) -> None:
        """Count a visit that ended: everyone counts, in exactly one segment; watchers,
        dwell and attention of every visitor, unclassified ones included
        (docs/metrics.md)."""
        s = self.settings
        if person.dwell_s < s.min_visit_s:
            key = UNCLASSIFIED  # too short for its label to mean anything
        else:
            key = person.segment(s.min_confidence, s.gender_margin)
        for bucket in (self._interval, self._totals):
            if key == UNCLASSIFIED:
                bucket.unclassified += 1
            elif key.endswith("_unknown"):  # counted, but not as a gender
                bucket.gender_unknown[person.age_class] += 1
            else:
                bucket.unique_visitors[person.age_class][person.gender] += 1
            bucket.watchers += int(person.watching)
            bucket.dwell_s = round(bucket.dwell_s + person.dwell_s, 3)
            bucket.attention_s = round(bucket.attention_s + person.attention_s, 3)
            add_to_segment(
                bucket.segments,
                key,
                visitors=1,
                watchers=int(person.watching),
                dwell_s=person.dwell_s,
                attention_s=person.attention_s,
            )

    def _person(self, track: Track) -> Person:
        person = self.people.get(track.id)
        if person is None:
            person = self.people[track.id] = Person(track.id, track.first_seen, track.last_seen)
        return person


def add_to_segment(segments: dict[str, dict[str, float]], key: str, **figures: float) -> None:
    """Add figures to one segment of a {segment: {metric: value}} table (times to 3
    decimals, so sums stay exact in JSON)."""
    row = segments.setdefault(key, {})
    for name, value in figures.items():
        total = row.get(name, 0) + value
        row[name] = round(total, 3) if isinstance(total, float) else total


# head_pose's yaw past which a look is strongly turned (about 40 degrees): its samples
# give way to the first frontal one (Person.add_sample).
TURNED_YAW = 0.45


def strongly_turned(track: Track) -> bool:
    return abs(head_pose(track.landmarks)[0]) > TURNED_YAW


def face_quality(track: Track) -> float:
    """Bigger and more frontal is better: box width (more pixels of the face) times a
    frontal factor. It ranks looks for classification and weighs their samples."""
    width = float(track.box[2] - track.box[0])
    yaw, _ = head_pose(track.landmarks)
    return width * max(0.1, 1.0 - abs(yaw) / 0.6)
