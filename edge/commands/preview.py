"""`edge preview`: one annotated still from one camera, for aiming it.

This is the only command that writes an image of people, and it never runs
inside the service: an installer runs it by hand, looks, and deletes the file
(written readable by its owner only). The faces are found, tracked and
classified by the service's own pipeline, run for a few seconds on that one
camera, so the picture shows what the service would see.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np

from edge.config import Config
from edge.errors import ConfigError, EdgeError
from edge.pipeline.audience import Person
from edge.pipeline.capture import Frame
from edge.pipeline.track import Track
from edge.redact import redact
from edge.service import Service
from edge.timefmt import iso

CLASSIFIED = (80, 200, 60)  # BGR: box of a face with a label
PENDING = (0, 170, 255)  # BGR: tracked, not classified yet


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the pipeline saw in one frame it processed."""

    frame: Frame
    faces: list[Track]  # tracks matched to a detection in this frame
    people: dict[int, Person]  # track id -> the audience stage's label so far


@dataclasses.dataclass(frozen=True)
class Window:
    """The preview's few seconds: the frame with the most faces (the last frame when
    none had one) and how many frames were processed."""

    best: Snapshot
    frames: int


def capture(config: Config, camera_id: str, seconds: float) -> Window:
    """Run the pipeline on one camera for `seconds`; keep the frame the detector found
    the most faces in (the later one on a tie: its labels have more samples). People
    who come and go, or a detector that misses a face now and then, would otherwise
    leave a frame without them as often as not."""
    camera = next(c for c in config.cameras if c.id == camera_id)
    best: list[Snapshot] = []
    last: list[Snapshot] = []
    frames = [0]

    def keep(cid, frame, tracks, audience) -> None:
        frames[0] += 1
        # Only a frame the detector ran on has boxes that belong to its picture.
        detected = service.cameras[cid].last_detected == frame.timestamp
        faces = [t for t in tracks if t.det_index >= 0] if detected else []
        # Copied now: the audience stage forgets its people when the service stops.
        snapshot = Snapshot(frame, faces, dict(audience.people))
        last[:] = [snapshot]
        if faces and (not best or len(faces) >= len(best[0].faces)):
            best[:] = [snapshot]

    # No displays: the preview chooses no ads and publishes nothing.
    service = Service(dataclasses.replace(config, cameras=[camera], displays=[]), [], on_frame=keep)
    service.run(duration_s=seconds)
    if not last:
        error = service.cameras[camera_id].reader.status.last_error or "no frame"
        raise EdgeError(
            f"camera {camera_id} ({redact(camera.source)}) delivered no frame in "
            f"{seconds:g} s: {error} (`edge check` says more; a camera the "
            f"running service holds may not open twice)"
        )
    return Window((best or last)[0], frames[0])


def label(track: Track, person: Person | None) -> list[str]:
    """Short lines, stacked under the face, so neighbours' labels don't run together."""
    if person is None or person.samples == 0:
        return [f"#{track.id}", "not classified yet"]
    s = person.summary()
    return [
        f"#{track.id}",
        f"{s.age_class} {s.age_class_confidence:.0%}",
        f"{s.gender} {s.gender_confidence:.0%}",
    ]


def annotate(snapshot: Snapshot, caption: str) -> np.ndarray:
    """A copy of the frame with a box and label per face and a caption at the top."""
    image = snapshot.frame.image.copy()
    scale = max(0.35, image.shape[1] / 2400)
    thickness = max(1, round(scale * 2))
    box_thickness = max(2, image.shape[1] // 640)
    for track in snapshot.faces:
        person = snapshot.people.get(track.id)
        color = CLASSIFIED if person is not None and person.samples else PENDING
        x1, y1, x2, y2 = (int(round(v)) for v in track.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, box_thickness)
        _text(image, label(track, person), (x1, y2 + box_thickness), color, scale, thickness)
    _text(image, [caption], (0, 0), (40, 40, 40), scale * 1.3, thickness)
    return image


def _text(
    image: np.ndarray,
    lines: list[str],
    at: tuple[int, int],
    background: tuple,
    scale: float,
    thickness: int,
) -> None:
    """White lines on a filled band whose top left is `at`, kept inside the frame."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(line, font, scale, thickness) for line in lines]
    line_h = max(h + base for (_, h), base in sizes) + max(2, int(6 * scale))
    pad = max(2, int(4 * scale))
    width = max(w for (w, _), _ in sizes) + 2 * pad
    height = line_h * len(lines) + pad
    x = min(max(at[0], 0), max(image.shape[1] - width, 0))
    y = min(max(at[1], 0), max(image.shape[0] - height, 0))
    cv2.rectangle(image, (x, y), (x + width, y + height), background, cv2.FILLED)
    for i, (line, ((_, h), _)) in enumerate(zip(lines, sizes, strict=False)):
        cv2.putText(
            image,
            line,
            (x + pad, y + pad + i * line_h + h),
            font,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )


def write_private_jpeg(path: Path, image: np.ndarray) -> None:
    """JPEG readable by its owner only, also when it replaces an older file."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise EdgeError(f"{path}: the image could not be encoded as JPEG")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # an existing file would keep its mode
            handle.write(data.tobytes())
    except OSError as exc:
        raise EdgeError(f"cannot write {path}: {exc.strerror}") from exc


def main(config: Config, camera_id: str, out: Path, seconds: float, where: str) -> int:
    known = [c.id for c in config.cameras]
    if camera_id not in known:
        raise ConfigError(
            f"{where}: no camera '{camera_id}'; configured cameras: {', '.join(known) or 'none'}"
        )
    if not out.parent.is_dir():  # before the camera runs, not after
        raise EdgeError(f"cannot write {out}: folder {out.parent} does not exist")
    window = capture(config, camera_id, seconds)
    snapshot = window.best
    n = len(snapshot.faces)
    faces = f"{n} face{'s' if n != 1 else ''}"
    caption = f"camera {camera_id}  {iso(snapshot.frame.timestamp)}  {faces}"
    write_private_jpeg(out, annotate(snapshot, caption))
    height, width = snapshot.frame.image.shape[:2]
    if n:
        print(
            f"{out}: {faces}, camera {camera_id}, {width}x{height} (the frame with the most "
            f"faces of {window.frames} in {seconds:g} s)"
        )
    else:
        print(
            f"{out}: no face seen in {window.frames} frame(s) in {seconds:g} s, camera "
            f"{camera_id}, {width}x{height}; the image is the last frame. Check the aim, "
            f"the light and the distance (a face needs about 12 px at the detector's "
            f"width: README, Troubleshooting), or try again with a longer --seconds"
        )
    print(f"This image shows people: delete it once the camera is aimed (rm {out}).")
    return 0
