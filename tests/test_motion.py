"""Motion-gated detection (edge/pipeline/motion.py, Service._detect_need).

The motion stage alone, then the service on real footage with two cameras fed the
same frames side by side, one gated (the defaults: motion on, tracked_detect_fps)
and one detecting every frame: visitor counts must not change, on the shared
clips, on a clip with long still pauses and empty stretches made from them, and
on a person who fades in too slowly for the motion test to fire.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from edge.config import CameraConfig
from edge.pipeline.capture import SourceEnded
from edge.pipeline.motion import MotionDetector
from edge.service import Service

from conftest import clip_frames, visitors

FPS = 12.5  # the walking clip's own rate


def noisy(frame: np.ndarray, rng: np.random.Generator, sd: float = 2.0) -> np.ndarray:
    """A held frame as a real camera delivers it: never twice the same bytes."""
    noise = rng.normal(0, sd, frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def held(frame: np.ndarray, seconds: float, rng) -> list:
    return [noisy(frame, rng) for _ in range(round(seconds * FPS))]


class FrameList:
    """An in-memory camera that ends after its frames (offline, every frame, file time)."""

    def __init__(self, frames: list[np.ndarray]):
        self._frames, self._next, self.fps = frames, 0, FPS

    def read(self) -> np.ndarray:
        if self._next >= len(self._frames):
            raise SourceEnded()
        self._next += 1
        return self._frames[self._next - 1]

    def release(self) -> None:
        pass


def summaries(config, cameras: list[CameraConfig], frames: list[np.ndarray], spy=None) -> dict:
    """Each camera's summary, every camera fed the same frames side by side (offline).
    `spy(taken, chosen)` sees each tick's frames and those the detector ran on."""
    config = dataclasses.replace(config, displays=[], cameras=cameras)
    events = []

    class Sink:
        def start(self):
            pass

        def emit(self, event):
            events.append(event.to_json())

        def close(self):
            pass

    service = Service(config, [Sink()], offline=True, opener=lambda *_: FrameList(frames))
    if spy is not None:
        choose = service._to_detect

        def watched(taken):
            chosen = choose(taken)
            spy(taken, chosen)
            return chosen

        service._to_detect = watched  # type: ignore[method-assign]
    service.run()
    return {e["camera"]: e for e in events if e["type"] == "summary"}


def gated_and_every_frame(config, frames: list[np.ndarray]) -> dict[str, dict]:
    """Summaries of a gated camera and an always-detecting one on the same frames."""
    cameras = [
        CameraConfig(id="gated", source="memory"),  # defaults: gating on
        CameraConfig(id="every", source="memory", motion=False, tracked_detect_fps=None),
    ]
    return summaries(config, cameras, frames)


@pytest.fixture()
def fresh_config():
    from edge import config as config_mod

    from conftest import ROOT

    return config_mod.load(ROOT / "config.yaml")


# ---------------------------------------------------------------- motion stage


@pytest.mark.slow
def test_sensor_noise_is_not_motion_and_a_moving_patch_is():
    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), (0, 0), 9)
    motion = MotionDetector()
    assert motion.update(scene, 0.0)  # nothing to compare with yet: look
    still = [motion.update(noisy(scene, rng, sd=6), i / 15) for i in range(1, 30)]
    assert not any(still)
    # A 60x60 px face-sized patch in a 720p frame moving by a third of its width.
    moved = [scene.copy() for _ in range(2)]
    for k, frame in enumerate(moved):
        x = 600 + 20 * k
        frame[300:360, x : x + 60] = (40, 60, 200)
        moved[k] = noisy(frame, rng, sd=6)
    assert motion.update(moved[0], 2.0) and motion.update(moved[1], 2.07)


def test_a_new_frame_size_is_motion():
    motion = MotionDetector()
    motion.update(np.zeros((720, 1280, 3), np.uint8), 0.0)
    assert not motion.update(np.zeros((720, 1280, 3), np.uint8), 0.1)
    assert motion.update(np.zeros((1080, 1920, 3), np.uint8), 0.2)


# --------------------------------------------------------------- the service


@pytest.mark.parametrize(
    "clip, expected",
    [
        ("face-demographics-walking-and-pause.gif", {("adult", "female"): 2, ("adult", "male"): 1}),
        (
            "head-pose-face-detection-female-and-male.gif",
            {("adult", "female"): 1, ("adult", "male"): 1},
        ),
        ("store-aisle-detection.gif", {}),
    ],
)
@pytest.mark.slow
def test_shared_clips_count_the_same_with_gating(fresh_config, clip, expected):
    frames = clip_frames(f"media/{clip}")
    result = gated_and_every_frame(fresh_config, frames)
    assert result["every"]["frames_detected"] == len(frames)
    assert visitors(result["gated"]) == visitors(result["every"]) == expected
    assert result["gated"]["unclassified"] == result["every"]["unclassified"]


@pytest.mark.slow
@pytest.mark.cpu
def test_people_standing_still_for_seconds_are_kept_and_an_empty_aisle_is_skipped(fresh_config):
    walk = clip_frames("media/face-demographics-walking-and-pause.gif")
    aisle = clip_frames("media/store-aisle-detection.gif")[0]
    empty = cv2.resize(aisle, (walk[0].shape[1], walk[0].shape[0]))
    rng = np.random.default_rng(7)
    # Two visits of the three people: each walks in, then stands perfectly still for
    # seconds (longer than tracker.max_age_s, so a dropped track would end the visit and
    # a new one would count them twice); between and after, an empty, still aisle.
    frames = (
        walk
        + held(walk[-1], 5.0, rng)
        + held(empty, 6.0, rng)
        + walk[:20]
        + held(walk[19], 4.0, rng)
        + held(empty, 5.0, rng)
    )
    result = gated_and_every_frame(fresh_config, frames)
    gated, every = result["gated"], result["every"]
    assert every["frames_detected"] == len(frames) == gated["frames"]
    # Gating did skip the detector: in the empty stretches (after the tracks ended,
    # max_age_s 3 s) and on every other frame while the tracks were steady.
    assert gated["frames_detected"] < 0.7 * len(frames), gated
    assert visitors(gated) == visitors(every)
    assert sum(visitors(gated).values()) == 6
    assert gated["unclassified"] == every["unclassified"] == 0


@pytest.mark.slow
@pytest.mark.cpu
def test_someone_fading_in_without_motion_is_found_by_the_idle_look(fresh_config):
    walk = clip_frames("media/face-demographics-walking-and-pause.gif")
    aisle = clip_frames("media/store-aisle-detection.gif")[0]
    empty = cv2.resize(aisle, (walk[0].shape[1], walk[0].shape[0])).astype(np.float32)
    people = walk[-1].astype(np.float32)
    rng = np.random.default_rng(3)
    # The three fade in over 20 s (a slow entry or a light coming up): at most about
    # half a grey level per frame, so the background keeps up within the motion
    # test's threshold and it never fires.
    fade = [
        noisy((empty + (people - empty) * k / (20 * FPS)).astype(np.uint8), rng)
        for k in range(round(20 * FPS))
    ]
    frames = held(empty.astype(np.uint8), 2.0, rng) + fade + held(walk[-1], 3.0, rng)
    motion = MotionDetector()
    moving = [motion.update(f, i / FPS) for i, f in enumerate(frames)]
    assert not any(moving[1:])  # the motion test never fires
    result = gated_and_every_frame(fresh_config, frames)
    # Found and counted: the same three people, as visitors or (a half-transparent face
    # can leave the age class unsure) as unclassified visits. Not compared label by
    # label: on a face still fading in, the label depends on the frames sampled, and
    # the gated camera's first look comes up to idle_detect_s later.
    for summary in result.values():
        assert (
            sum(visitors(summary).values())
            + sum(summary["gender_unknown"].values())
            + summary["unclassified"]
        ) == 3, summary
    assert result["gated"]["unclassified"] == result["every"]["unclassified"]
    assert result["gated"]["frames_detected"] < result["every"]["frames_detected"] / 2


@pytest.mark.slow
def test_cameras_in_step_spread_their_looks_and_count_the_same(fresh_config):
    """Four cameras fed the same frames at once: their periodic looks fall due in the
    same ticks. The service spreads them, so ticks that detect for some of the
    cameras and not all are common, and each camera still counts the clip's people."""
    frames = clip_frames("media/face-demographics-walking-and-pause.gif")
    cameras = [CameraConfig(id=f"cam{i}", source="memory") for i in range(4)]
    ticks: list[tuple[int, int]] = []
    result = summaries(
        fresh_config,
        cameras,
        frames,
        spy=lambda taken, chosen: ticks.append((len(taken), len(chosen))),
    )
    expected = {("adult", "female"): 2, ("adult", "male"): 1}
    assert {cid: visitors(s) for cid, s in result.items()} == {c.id: expected for c in cameras}
    partial = sum(1 for n, k in ticks if 0 < k < n)
    assert partial >= len(ticks) / 4, ticks  # in step and not spread: every tick 0 or 4
    # Spreading moves looks, it does not add them: no camera detects more than half
    # its frames (one alone: tests above, under 0.7 with long still stretches).
    assert all(s["frames_detected"] <= 0.5 * len(frames) for s in result.values()), result
