"""Track stage: follow each face from frame to frame, ByteTrack-style.

The audience stage counts visitors and averages a person's age/gender over
many frames, so it needs a stable id per face across frames. This tracker
uses box geometry only (a constant-velocity Kalman filter and IoU): no
appearance features or embeddings are ever computed, so nothing here can
recognise a person, and ids are random per run so they cannot be linked
across runs or stores.

Association follows ByteTrack (Y. Zhang et al., "ByteTrack: Multi-Object
Tracking by Associating Every Detection Box", ECCV 2022, arXiv:2110.06864):
confident detections are matched first; weak ones (a face turning away,
motion blur) are then used only to continue confirmed tracks, never to start
or confirm one. Written for this project from the papers' descriptions
(MIT-style), numpy and the standard library only.

Where it departs from ByteTrack's reference code, and why:
- Greedy matching, best IoU first, instead of the Hungarian algorithm: faces
  in a shop rarely overlap, so the two agree in practice, and greedy needs
  neither scipy nor lap.
- No score fusion: the IoU is not weighted by the detection's score; one
  `match_iou` serves both passes.
- Tentative (unconfirmed) tracks take part in the first pass with all the
  others; ByteTrack matches them in a separate third step against the
  confident detections left over.
- Lost confirmed tracks (missed in earlier frames, within max_age_s) take part
  in the second pass too, so a weak detection can bring one back; ByteTrack's
  second pass considers only tracks found in the previous frame.
- A lost track is also looked for where it was last measured, not only where
  the Kalman prediction has carried it (see _associate).
- Time is real seconds, not frames: the Kalman step is the time between the
  frames processed and tracks expire after max_age_s, so dropped frames
  neither shorten nor stretch how long a face may be away.
- New tracks need min_hits matches to be confirmed (ByteTrack: the second).
- No removal of duplicate tracks (ByteTrack drops the younger of a live and a
  lost track that overlap by IoU > 0.85): a lost face is matched by its last
  box as well, and a new track must be confirmed, which keeps duplicates rare.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from edge.config import TrackerConfig
from edge.records import Detections

TrackState = Literal["tentative", "confirmed"]


@dataclass(frozen=True, slots=True)
class Track:
    """One tracked face as of the latest update."""

    id: int  # random per run, unique within the run
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2: filtered (or predicted if missed)
    score: float  # score of the last matched detection
    landmarks: np.ndarray  # (5, 2) float32 of the last matched detection
    first_seen: float  # timestamp of the detection that started the track
    last_seen: float  # timestamp of the last matched detection
    hits: int  # frames in which a detection was matched
    misses: int  # consecutive updates without a match (0 if matched now)
    state: TrackState
    det_index: int  # row of this update's Detections it matched, or -1


class TrackerUpdate(NamedTuple):
    """What one `FaceTracker.update` returns."""

    tracks: list[Track]  # the live tracks
    removed: list[Track]  # tracks that ended in this update (the audience closes their visits)


# ----------------------------------------------------------------- geometry


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N,4) and (M,4) x1,y1,x2,y2 boxes -> (N,M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    a = a[:, None, :].astype(np.float64)
    b = b[None, :, :].astype(np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def greedy_match(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """(row, col) pairs, best IoU first, each row and column used once.

    Greedy rather than Hungarian: faces in a shop rarely overlap, so the
    two give the same answer in practice, and greedy needs no scipy.
    """
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


def _to_xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w / max(h, 1e-6), h], np.float64)


def _to_xyxy(xyah: np.ndarray) -> np.ndarray:
    cx, cy, a, h = xyah[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


# ------------------------------------------------------------------ Kalman


class BoxKalman:
    """Constant-velocity Kalman filter on (centre x, centre y, aspect w/h, height).

    Velocities are per second and the step is the real time between frames,
    so a dropped frame is a longer prediction, not a missed one. Noise is
    proportional to the box height (ByteTrack/DeepSORT's choice): a near,
    large face moves more pixels per second than a far one.
    """

    # Standard deviations as fractions of box height; the process terms are
    # per sqrt(second), tuned so that at 12.5 fps they match ByteTrack's
    # per-frame 1/20 (position) and 1/160 (velocity) weights.
    POS = 1 / 20
    VEL = 1 / 160
    FPS_REF = 12.5

    def __init__(self, box: np.ndarray):
        z = _to_xyah(box)
        self.mean = np.concatenate([z, np.zeros(4)])
        h = z[3]
        std = [
            2 * self.POS * h,
            2 * self.POS * h,
            1e-2,
            2 * self.POS * h,
            10 * self.VEL * h * self.FPS_REF,
            10 * self.VEL * h * self.FPS_REF,
            1e-5,
            10 * self.VEL * h * self.FPS_REF,
        ]
        self.cov = np.diag(np.square(std))

    def predict(self, dt: float) -> None:
        """Advance by dt seconds; dt <= 0 (repeated timestamp) leaves the state as is."""
        if dt <= 0:
            return
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt
        h = self.mean[3]
        # Per-frame variance at FPS_REF, scaled to dt: a random walk's variance grows with time.
        frames = dt * self.FPS_REF
        pos, vel = self.POS * h, self.VEL * h * self.FPS_REF
        q = np.diag(np.square([pos, pos, 1e-2, pos, vel, vel, 1e-5, vel])) * frames
        self.mean = f @ self.mean
        self.cov = f @ self.cov @ f.T + q

    def update(self, box: np.ndarray) -> None:
        """Fold in a measured box."""
        z = _to_xyah(box)
        h = self.mean[3]
        r = np.diag(np.square([self.POS * h, self.POS * h, 1e-1, self.POS * h]))
        proj = np.eye(4, 8)
        s = proj @ self.cov @ proj.T + r
        gain = np.linalg.solve(s, proj @ self.cov).T  # cov H^T S^-1 (S and cov symmetric)
        self.mean = self.mean + gain @ (z - proj @ self.mean)
        self.cov = self.cov - gain @ s @ gain.T

    @property
    def box(self) -> np.ndarray:
        return _to_xyxy(self.mean)


# ----------------------------------------------------------------- tracker


class _Live:
    """Mutable bookkeeping for one track; callers only ever see `Track` snapshots."""

    def __init__(self, track_id: int, det: Detections, row: int, timestamp: float, min_hits: int):
        self.id = track_id
        self.kalman = BoxKalman(det.boxes[row])
        self.last_box = det.boxes[row].copy()  # as measured, for re-finding a lost face
        self.score = float(det.scores[row])
        self.landmarks = det.landmarks[row].copy()
        self.first_seen = self.last_seen = timestamp
        self.hits = 1
        self.misses = 0
        self.confirmed = min_hits <= 1
        self.det_index = row

    def matched(self, det: Detections, row: int, timestamp: float, min_hits: int) -> None:
        self.kalman.update(det.boxes[row])
        self.last_box = det.boxes[row].copy()
        self.score = float(det.scores[row])
        self.landmarks = det.landmarks[row].copy()
        self.last_seen = timestamp
        self.hits += 1
        self.misses = 0
        self.det_index = row
        self.confirmed = self.confirmed or self.hits >= min_hits

    def missed(self) -> None:
        self.misses += 1
        self.det_index = -1

    def snapshot(self) -> Track:
        return Track(
            self.id,
            self.kalman.box,
            self.score,
            self.landmarks,
            self.first_seen,
            self.last_seen,
            self.hits,
            self.misses,
            "confirmed" if self.confirmed else "tentative",
            self.det_index,
        )


class FaceTracker:
    """ByteTrack-style multi-face tracker on box geometry only.

    Call `update` once per frame the detector ran on, with all detections (run
    the detector with a threshold at or below `low_threshold`, or the second
    association pass never sees anything) and the frame's capture time. Frames
    the detector skipped (motion gating, tracked_detect_fps) are not given to
    it: an empty update would count as a miss, and tentative tracks die at their
    first miss. Nothing is lost by leaving them out, because the Kalman filter
    predicts over the real time between updates and tracks expire after
    max_age_s of time, not after a number of frames.
    Build it with `from_config`: the settings' defaults live in edge/config.py.
    """

    def __init__(
        self,
        *,
        high_threshold: float,
        low_threshold: float,
        match_iou: float,
        min_hits: int,
        max_age_s: float,
    ):
        if not 0 <= low_threshold <= high_threshold:
            raise ValueError("need 0 <= low_threshold <= high_threshold")
        if min_hits < 1 or max_age_s < 0:
            raise ValueError("need min_hits >= 1 and max_age_s >= 0")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.match_iou = match_iou
        self.min_hits = min_hits
        self.max_age_s = max_age_s
        self._tracks: list[_Live] = []
        self._last_time: float | None = None
        # Random start, then sequential: unique within the run, meaningless outside it.
        self._next_id = secrets.randbits(32)

    @property
    def has_tracks(self) -> bool:
        """Anyone tracked, found or lost for less than max_age_s (tentative ones too)."""
        return bool(self._tracks)

    @property
    def all_confirmed(self) -> bool:
        """No tentative track: every face in view has been matched min_hits times."""
        return all(t.confirmed for t in self._tracks)

    @classmethod
    def from_config(cls, config: TrackerConfig) -> FaceTracker:
        return cls(
            high_threshold=config.high_threshold,
            low_threshold=config.low_threshold,
            match_iou=config.match_iou,
            min_hits=config.min_hits,
            max_age_s=config.max_age_s,
        )

    def update(self, detections: Detections, timestamp: float) -> TrackerUpdate:
        """Advance to `timestamp`, associate `detections`; the live tracks, and those
        that ended now."""
        dt = 0.0 if self._last_time is None else timestamp - self._last_time
        self._last_time = timestamp
        for t in self._tracks:
            t.kalman.predict(dt)

        high = np.flatnonzero(detections.scores >= self.high_threshold)
        low = np.flatnonzero(
            (detections.scores >= self.low_threshold) & (detections.scores < self.high_threshold)
        )

        for t in self._tracks:
            t.det_index = -1
        # Pass 1: confident detections against every track.
        tracks, new_rows = self._associate(self._tracks, detections, high, timestamp)
        # Pass 2: weak detections may only continue confirmed tracks, so a
        # blur of low scores can neither start nor confirm a "visitor".
        self._associate([t for t in tracks if t.confirmed], detections, low, timestamp)
        for t in self._tracks:
            if t.det_index < 0:
                t.missed()

        removed = self._retire(timestamp)
        self._start(detections, new_rows, timestamp)
        return TrackerUpdate([t.snapshot() for t in self._tracks], removed)

    def _associate(
        self, tracks: list[_Live], det: Detections, rows: np.ndarray, timestamp: float
    ) -> tuple[list[_Live], np.ndarray]:
        """Match `rows` of `det` to `tracks` by IoU; return the unmatched tracks and rows."""
        if len(tracks) == 0 or len(rows) == 0:
            return list(tracks), rows
        iou = iou_matrix(np.stack([t.kalman.box for t in tracks]), det.boxes[rows])
        # A face lost for a while is looked for both where its motion would have
        # taken it and where it was last seen: someone who stopped, turned away or
        # stood behind another shopper comes back where they were, while a jittery
        # box's small velocity would carry the prediction away over a few seconds.
        lost = np.array([t.misses > 0 for t in tracks])
        if lost.any():
            last = iou_matrix(np.stack([t.last_box for t in tracks]), det.boxes[rows])
            iou = np.where(lost[:, None], np.maximum(iou, last), iou)
        pairs = greedy_match(iou, self.match_iou)
        for ti, di in pairs:
            tracks[ti].matched(det, int(rows[di]), timestamp, self.min_hits)
        used = {di for _, di in pairs}
        rest = np.array([r for k, r in enumerate(rows) if k not in used], np.int64)
        return [t for t in tracks if t.det_index < 0], rest

    def _retire(self, timestamp: float) -> list[Track]:
        """Drop tentative tracks at their first miss and confirmed ones after max_age_s.

        A tentative track that misses is most likely a false detection, as in
        ByteTrack; a confirmed one gets max_age_s of real time (not a frame
        count, since frames can be dropped) to reappear from behind someone.
        """
        keep, removed = [], []
        for t in self._tracks:
            expired = timestamp - t.last_seen > self.max_age_s
            if expired or (t.misses > 0 and not t.confirmed):
                removed.append(t.snapshot())
            else:
                keep.append(t)
        self._tracks = keep
        return removed

    def _start(self, det: Detections, rows: np.ndarray, timestamp: float) -> None:
        """New tentative tracks, only ever from confident detections left unmatched."""
        for row in rows:
            self._tracks.append(_Live(self._next_id, det, int(row), timestamp, self.min_hits))
            self._next_id = (self._next_id + 1) % (1 << 32)
