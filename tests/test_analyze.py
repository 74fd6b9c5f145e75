"""Still photos: a tight portrait is looked at again with a border."""

import cv2
import numpy as np

from edge.pipeline.analyze import border, moved, pad


def tight_portraits(frame, faces, shrink=0.2, zoom=2.0):
    """Each face cut inside its own box (a fifth off every side), enlarged: the face
    fills the photo and its outline is gone, as in a passport-style crop."""
    crops = []
    for x1, y1, x2, y2 in faces.boxes.astype(int):
        dx, dy = int(shrink * (x2 - x1)), int(shrink * (y2 - y1))
        crop = frame[y1 + dy : y2 - dy, x1 + dx : x2 - dx]
        crops.append(cv2.resize(crop, None, fx=zoom, fy=zoom))
    return crops


def test_a_tight_portrait_is_found_with_a_border(analyzer, group_photo):
    frame = cv2.imread(str(group_photo))
    faces, _ = analyzer(frame)
    crops = tight_portraits(frame, faces)
    plain = [len(analyzer.detector(crop)) for crop in crops]
    results = analyzer.many(crops)
    found = [len(f) for f, _ in results]
    assert sum(plain) < len(crops)  # the detector alone misses some of them
    assert sum(found) > sum(plain) and all(n >= p for n, p in zip(found, plain, strict=True))
    for crop, (f, d) in zip(crops, results, strict=True):
        if len(f) == 0:
            continue
        # reported in the photo's own coordinates: the face covers about all of it
        height, width = crop.shape[:2]
        x1, y1, x2, y2 = f.boxes[0]
        assert -0.2 * width < x1 < 0.3 * width and 0.7 * width < x2 < 1.2 * width
        assert -0.2 * height < y1 < 0.3 * height and 0.7 * height < y2 < 1.3 * height
        eyes = f.landmarks[0, :2]
        assert ((eyes >= 0) & (eyes < [width, height])).all()  # the eyes are in the photo
        assert d.ages.shape == (1,) and d.genders[0] in ("female", "male")


def test_pad_and_move_back():
    image = np.zeros((100, 60, 3), np.uint8)
    assert border(image) == 30 and pad(image).shape == (160, 120, 3)
    assert pad(image)[0, 0].tolist() == [127, 127, 127]


def test_moved_shifts_boxes_and_landmarks(analyzer, group_photo):
    faces, _ = analyzer(cv2.imread(str(group_photo)))
    back = moved(moved(faces, 30), -30)
    np.testing.assert_allclose(back.boxes, faces.boxes, atol=1e-4)
    np.testing.assert_allclose(moved(faces, 30).landmarks, faces.landmarks + 30)
    assert moved(faces, 0) is faces
