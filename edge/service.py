"""The real-time service (`edge run`): capture -> detect -> track -> classify -> audience
-> select -> publish.

One loop, one tick at a time:
  1. take the newest frame of every camera (capture.py),
  2. decide per camera whether the detector must run (motion gating, below), detect
     faces in those frames (detect.py) and update that camera's tracker (track.py),
  3. collect the tracked faces worth classifying, from all cameras, and classify
     them in one batch (classify.py), at most classifier.max_faces_per_tick of them
     (new faces first, biggest first; the rest at the next detections), so a crowd
     walking in is classified over a few ticks instead of holding one for seconds,
  4. update each camera's audience (audience.py), let each display that follows the
     camera choose its ad (select.py), and emit events to the sinks
     (outputs/sinks.py: log or JSON lines, the MQTT publisher, the player, the store,
     the metrics, systemd's notify socket), the loop's only way out.
Stats, reporting intervals and the systemd watchdog hang off the same loop; the last
two reach their outputs as events too (TickEvent, HealthEvent).

Detection gating (per camera, `_detect_need`): the detector is the costly stage on a
CPU, so it runs only where a face can be:
  - anyone tracked (found, or lost for less than tracker.max_age_s): detect, so a
    person standing still is never dropped for not moving; once every track is
    confirmed, at most `tracked_detect_fps` (the tracker's Kalman filter carries
    the boxes in between, as DeepStream's detector `interval` does; `_to_detect`
    spreads these looks over the ticks when several cameras are due at once), while a new,
    tentative face is detected in every frame until it is confirmed;
  - nobody tracked: detect when the motion stage (motion.py) sees motion, and
    otherwise still every `idle_detect_s`. Motion tests can miss someone who came
    in very slowly, or who stands still facing away and then turns to the display
    (a head turn at 160 px wide is a few pixels); a cheap periodic look bounds that
    delay to idle_detect_s (1 s: 7 % of the frames of an empty 15 fps camera).
Skipped frames still go through the audience, selection and reporting steps, so
decisions, intervals and stats do not depend on the detector having run.
"""

from __future__ import annotations

import collections
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.catalog import load_catalog
from edge.config import CameraConfig, Config
from edge.events import (
    AudienceEvent,
    CameraCounters,
    CameraEvent,
    CameraStats,
    DecisionEvent,
    ErrorEvent,
    Event,
    HealthEvent,
    IntervalEvent,
    StatsEvent,
    SummaryEvent,
    TickEvent,
)
from edge.outputs.notify import watchdog_interval_s
from edge.outputs.sinks import Sink
from edge.pipeline.analyze import FaceAnalyzer
from edge.pipeline.audience import Audience
from edge.pipeline.capture import (
    CameraReader,
    CameraStatus,
    Frame,
    FrameSource,
    redact,
    source_kind,
)
from edge.pipeline.motion import MotionDetector
from edge.pipeline.plays import PlayLog, PlaySettings
from edge.pipeline.select import Selector
from edge.pipeline.track import FaceTracker, Track
from edge.records import Decision, Detections, PresentAudience
from edge.timefmt import CLOCK, iso, local, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueLook:
    """A detection a tracked camera is due for, that the tick may put off (_to_detect)."""

    late: float  # time since its last detection, in tracked gaps
    classify: bool  # a reclassification is due: the look also runs the classifier


@dataclass(frozen=True)
class CameraSettings:
    """A camera's settings for the loop, from its config entry (fixed while it runs)."""

    name: str
    detect_width: int | None  # None: the detector's own input width
    idle_detect_s: float  # nobody tracked: look at least this often
    tracked_gap_s: float  # 1 / tracked_detect_fps; 0 detects every frame

    @classmethod
    def from_config(cls, cam: CameraConfig) -> CameraSettings:
        gap = 1.0 / cam.tracked_detect_fps if cam.tracked_detect_fps else 0.0
        return cls(cam.name, cam.detect_width, cam.idle_detect_s, tracked_gap_s=gap)


@dataclass
class WindowCounters:
    """A camera's figures over the current stats window; `reset` starts the next."""

    processed: int = 0
    detected: int = 0  # processed frames the detector ran on
    detect_ms: list[float] = field(default_factory=list)
    captured_mark: int = 0  # the reader's counts at the window's start
    skipped_mark: int = 0
    passed_over_mark: int = 0

    def reset(self, status: CameraStatus) -> None:
        self.processed, self.detected, self.detect_ms = 0, 0, []
        self.captured_mark = status.captured
        self.skipped_mark = status.skipped
        self.passed_over_mark = status.passed_over


@dataclass
class CameraRuntime:
    """What the loop keeps for one camera: its stages and their state, its settings,
    and its stats window's counters."""

    reader: CameraReader
    tracker: FaceTracker
    audience: Audience
    settings: CameraSettings
    motion: MotionDetector | None = None  # None: detect every frame the rules allow
    plays: PlayLog | None = None  # what its displays showed, to whom (None: no display)
    window: WindowCounters = field(default_factory=WindowCounters)
    frame_gap_s: float = 0.0  # time between the last two frames processed
    last_detected: float = -1e18  # timestamp of the last frame the detector ran on
    attention_from: float | None = None  # the audience's attention clock (see _after_frame)
    last_tracks: list[Track] = field(default_factory=list)  # as of the last detected frame
    frames_detected: int = 0
    last_processed: float = -1e18
    frames: int = 0
    interval_start: float | None = None
    last_ts: float | None = None
    was_online: bool | None = None
    done: bool = False


class Service:
    def __init__(
        self,
        config: Config,
        sinks: list[Sink],
        *,
        offline: bool = False,
        opener: Callable[[str, bool, float, float], FrameSource] | None = None,
        on_frame: Callable[[str, Frame, list[Track], Audience], None] | None = None,
    ):
        """`sinks` (outputs/sinks.py, `assemble`): every way out of the loop, started by
        `run` in order and closed in reverse. `opener` replaces capture.open_source
        (edge bench feeds frames from memory). `on_frame(camera_id, frame, tracks,
        audience)` sees each processed frame in memory (edge preview draws the last
        one); nothing in the service itself keeps frames."""
        self.config = config
        self.sinks = sinks
        self.on_frame = on_frame
        self.offline = offline
        self._stop = threading.Event()
        self.analyzer = FaceAnalyzer(
            config,
            detect_threshold=min(config.detector.score_threshold, config.tracker.low_threshold),
        )
        self.cameras: dict[str, CameraRuntime] = {}
        for cam in config.cameras:
            mode = (
                "every_frame"
                if offline
                else ("live" if source_kind(cam.source) in ("device", "stream") else "paced")
            )
            reader = CameraReader(
                cam.id,
                cam.source,
                fps=cam.fps,
                loop=cam.loop,
                mode=mode,
                stall_timeout_s=cam.stall_timeout_s,
                opener=opener,
            )
            tracker = FaceTracker.from_config(config.tracker)
            self.cameras[cam.id] = CameraRuntime(
                reader=reader,
                tracker=tracker,
                audience=Audience(cam.id, config.audience),
                settings=CameraSettings.from_config(cam),
                motion=MotionDetector() if cam.motion else None,
            )
        # select stage: the displays that follow each camera
        self.selectors: dict[str, list[Selector]] = collections.defaultdict(list)
        if config.displays:
            catalog = load_catalog(config.resolve(config.selector.catalog))
            for display in config.displays:
                shown = self.cameras.get(display.camera)
                if shown is None:  # edge bench runs copies of a source under other ids
                    continue
                self.selectors[display.camera].append(
                    Selector(display.id, catalog, config.selector, config.audience.min_attention_s)
                )
                shown.plays = shown.plays or PlayLog(
                    display.camera,
                    PlaySettings(
                        min_dwell_s=config.selector.min_dwell_s,
                        min_attention_s=config.audience.min_attention_s,
                        min_confidence=config.audience.min_confidence,
                        gender_margin=config.audience.gender_margin,
                    ),
                )
        self._classify_ms: list[float] = []
        self._batch_sizes: list[int] = []  # per stats window
        self.classifier_calls = 0  # since start
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=2000)  # window
        self._offline: set[str] = set()  # cameras offline at the last stats line
        self._stats_at = time.monotonic()
        self._last_processed_at = 0.0
        self._failing_sinks: set[tuple[int, str]] = set()  # (sink, error type) logged once
        self._overrides: collections.deque[Decision] = collections.deque(maxlen=100)
        # this tick's measurements, for its TickEvent (the metrics' histograms)
        self._tick_detect_s: dict[str, float] = {}
        self._tick_latency_s: dict[str, float] = {}
        self._tick_classify: tuple[float, int] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def stop(self, *_args: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, duration_s: float | None = None) -> int:
        """Run until stopped (signal), every camera's file has ended, or `duration_s`."""
        if duration_s is not None:
            timer = threading.Timer(duration_s, self.stop)
            timer.daemon = True
            timer.start()
        return self._run()

    def _start_sinks(self) -> None:
        """Every sink started, in order; when one cannot start, those started already
        are closed (in reverse) before its error goes on."""
        for n, sink in enumerate(self.sinks):
            try:
                sink.start()
            except BaseException:
                self._close_sinks(self.sinks[:n])
                raise

    def _close_sinks(self, sinks: list[Sink]) -> None:
        for sink in reversed(sinks):
            try:
                sink.close()
            except Exception as exc:  # the others still close
                log.error("event sink %s failed to close: %r", type(sink).__name__, exc)

    def _run(self) -> int:
        self._start_sinks()
        try:
            return self._loop()
        finally:
            self._close_sinks(self.sinks)

    def _loop(self) -> int:
        for cam in self.cameras.values():
            cam.reader.start()
        # Ready as soon as the loop runs: cameras come online on their own threads, and
        # one that never opens makes the service degraded (see emit_stats), not dead.
        self.emit(HealthEvent("ready", f"running {len(self.cameras)} camera(s)"))
        log.info(
            "running: %s",
            ", ".join(f"{cid} ({redact(c.reader.source)})" for cid, c in self.cameras.items()),
        )
        watchdog_every = watchdog_interval_s()
        last_watchdog = 0.0
        try:
            while not self._stop.is_set():
                CLOCK.check()  # a step of the wall clock: logged, labels follow it
                worked = self.tick()
                mono = time.monotonic()
                if worked:
                    self._last_processed_at = mono
                # Pet the watchdog while frames are processed, or while every camera
                # without frames is offline and being retried by its own reader: that
                # is reported (degraded, in the status line and over MQTT), and a
                # restart would not bring a dead camera back. A loop stuck in a stage,
                # or a reader that hangs while it claims to be online (its stall timeout
                # reopens it first), stops the pets, and systemd restarts the service.
                if (
                    watchdog_every
                    and mono - last_watchdog >= watchdog_every
                    and (
                        mono - self._last_processed_at < 2 * watchdog_every
                        or all(c.done or c.reader.retrying for c in self.cameras.values())
                    )
                ):
                    self.emit(HealthEvent("alive", ""))
                    last_watchdog = mono
                if mono - self._stats_at >= self.config.stats.interval_s:
                    self.emit_stats()
                if all(c.done for c in self.cameras.values()):
                    break
        finally:
            self.shutdown()
        # Offline, a source that could not be read (66) or held bad data (65) sets the
        # exit status; the service itself always ends with 0.
        return (
            max((c.reader.status.exit_status for c in self.cameras.values()), default=0)
            if self.offline
            else 0
        )

    def shutdown(self) -> None:
        self.emit(HealthEvent("stopping", "stopping"))
        for cam in self.cameras.values():  # all at once, then wait: shutdown stays quick
            cam.reader.request_stop()
        for cam in self.cameras.values():
            cam.reader.stop(timeout=2.0)
        stopped_at = now()
        for cid, cam in self.cameras.items():
            if not self.offline:  # retained state must not show people to a stopped service
                if cam.was_online:
                    self.emit(
                        CameraEvent(
                            camera=cid,
                            name=cam.settings.name,
                            online=False,
                            error="service stopped",
                            reconnects_last_hour=cam.reader.reconnects_last_hour(),
                        )
                    )
                self.emit(AudienceEvent.of(cid, iso(stopped_at), PresentAudience()))
            if not cam.done:  # ended files were flushed already
                self._flush(cid, cam, cam.last_ts or stopped_at)
        log.info("stopped")

    # -- one tick ------------------------------------------------------------------

    def overridden(self, display: str, content: dict) -> None:
        """A display shows content the pipeline did not decide (the player saw an allowed
        override on the broker); any thread. Taken in by the next tick."""
        self._overrides.append(
            Decision(
                display=display,
                ad=content["ad"],
                title=content.get("title") or "",
                creative=content["creative"],
                duration_s=content.get("duration_s") or 0.0,
                rule="override",
                segment=None,
                audience={},
                time=now(),
            )
        )

    def _take_overrides(self) -> None:
        """Proof of play and the dashboard say what is really on screen: the running play
        ends and an `override` one starts; its decision event is not published again."""
        while self._overrides:
            decision = self._overrides.popleft()
            for cid, selectors in self.selectors.items():
                plays = self.cameras[cid].plays
                if plays is not None and any(s.display_id == decision.display for s in selectors):
                    if (ended := plays.switch(decision, decision.time)) is not None:
                        self.emit(ended)
                    self.emit(DecisionEvent.of(decision))

    def tick(self) -> bool:
        """Process the newest frame of each camera; False when none had one."""
        self._take_overrides()
        taken: list[tuple[str, CameraRuntime, Frame]] = []
        # Offline, files are read in lockstep (the reader is never far behind), which
        # keeps results independent of thread timing; live, one camera may block briefly.
        wait = 1.0 if self.offline else (0.05 if len(self.cameras) == 1 else 0.0)
        for cid, cam in self.cameras.items():
            self._camera_status(cid, cam)
            if cam.done:
                continue
            frame = cam.reader.latest(timeout=wait)
            if frame is None:
                if cam.reader.status.ended:
                    self._flush(cid, cam, cam.last_ts or now())
                    cam.done = True
                continue
            cam.frame_gap_s = max(0.0, frame.timestamp - cam.last_processed)
            cam.last_processed = frame.timestamp
            taken.append((cid, cam, frame))
        if not taken:
            if len(self.cameras) > 1:
                time.sleep(0.005)
            return False
        detect = self._to_detect(taken)
        batch: list[tuple[str, Frame, list[Track], list[int]]] = []
        removed: dict[str, list] = {}  # per camera the detector ran for: tracks that ended
        if detect:
            # One detector run for all cameras whose frames share a canvas size.
            started = time.perf_counter()
            found = self.analyzer.detector.detect_many(
                [frame.image for _, _, frame in detect],
                [cam.settings.detect_width for _, cam, _ in detect],
            )
            share_ms = (time.perf_counter() - started) * 1000 / len(detect)
            for (cid, cam, frame), faces in zip(detect, found, strict=False):
                cam.window.detect_ms.append(share_ms)  # each camera's share of the batched run
                self._tick_detect_s[cid] = share_ms / 1000
                cam.window.detected += 1
                cam.frames_detected += 1
                cam.last_detected = frame.timestamp
                tracks, removed[cid] = cam.tracker.update(faces, frame.timestamp)
                cam.last_tracks = tracks
                # A tick that detects for several cameras leaves better faces for a
                # lighter one, so its latency stays near that of its detections.
                wanted = cam.audience.wants_classification(
                    tracks, frame.timestamp, better_faces=len(detect) < 2
                )
                batch.append((cid, frame, tracks, wanted))
            self._classify(self._within_budget(batch))
        for cid, cam, frame in taken:
            self._after_frame(cid, cam, frame, removed.get(cid))
        self._emit_tick()
        return True

    def _emit_tick(self) -> None:
        """The tick's measurements and every camera's counters, as one event (the
        metrics endpoint's histograms and the snapshot it serves)."""
        classify_s, classified = self._tick_classify or (None, 0)
        self.emit(
            TickEvent(
                detect_s=self._tick_detect_s,
                classify_s=classify_s,
                classified=classified,
                latency_s=self._tick_latency_s,
                cameras={
                    cid: CameraCounters(
                        online=cam.reader.status.online,
                        captured=cam.reader.status.captured,
                        processed=cam.frames,
                        skipped=cam.reader.status.skipped,
                        passed_over=cam.reader.status.passed_over,
                    )
                    for cid, cam in self.cameras.items()
                },
            )
        )
        self._tick_detect_s, self._tick_latency_s, self._tick_classify = {}, {}, None

    def _to_detect(
        self, taken: list[tuple[str, CameraRuntime, Frame]]
    ) -> list[tuple[str, CameraRuntime, Frame]]:
        """The frames of this tick the detector runs on (the module docstring gives the
        rules). Cameras whose people are all confirmed need a look only every
        tracked_gap_s, or when a reclassification falls due; those looks are spread over
        the ticks instead of falling in the same one. Cameras started together (or a
        bench's copies of one clip) would otherwise all detect in one tick and none in
        the next, and the slowest tick is what a display waits for.

        A tick has room for the looks its cameras need on average (at least one);
        required looks use it first, a look that classifies costs two (the ensemble
        on a few faces takes about as long as a detection on a CPU), reclassifications
        go before plain looks, then the most overdue. A look put off waits at most
        two gaps, and a tick with nothing else to do takes the first one."""
        must: list[tuple[str, CameraRuntime, Frame]] = []
        due: list[tuple[DueLook, str, CameraRuntime, Frame]] = []
        for cid, cam, frame in taken:
            need = self._detect_need(cam, frame)
            if need is True:
                must.append((cid, cam, frame))
            elif isinstance(need, DueLook):
                due.append((need, cid, cam, frame))
        if not due:
            return must
        share = sum(
            min(1.0, c.frame_gap_s / c.settings.tracked_gap_s)
            for _, c, _ in taken
            if c.settings.tracked_gap_s
        )
        # Cameras that detect every frame (no tracked_detect_fps) are outside this.
        looks = sum(1 for _, cam, _ in must if cam.settings.tracked_gap_s)
        room = max(1, math.ceil(share - 1e-9)) - looks
        chosen = list(must)
        by_rank = sorted(due, key=lambda d: (d[0].classify, d[0].late), reverse=True)
        for look, cid, cam, frame in by_rank:
            cost = 2 if look.classify else 1
            if cost <= room or look.late >= 2 or not looks:
                chosen.append((cid, cam, frame))
                room -= cost
                looks += 1
        return chosen

    def _detect_need(self, cam: CameraRuntime, frame: Frame) -> bool | DueLook:
        """True: this frame needs the detector. A DueLook: a tracked camera's periodic
        look, or a reclassification, is due (the tick may put it off). False: neither."""
        now = frame.timestamp
        # The motion stage sees every frame, detected or not, so its background
        # stays current (a person who just left is not "motion" for seconds).
        moving = cam.motion.update(frame.image, now) if cam.motion is not None else True
        since = now - cam.last_detected
        gap = cam.settings.tracked_gap_s
        if cam.tracker.has_tracks:
            if not gap or not cam.tracker.all_confirmed:
                return True
            late = since / gap
            # A reclassification that falls due is taken as soon as the tick has room
            # (at once with one camera), so the frames sampled for a person's label
            # are those of detection on every frame, or a frame or two later.
            if cam.audience.classification_due(cam.last_tracks, now):
                return DueLook(late, classify=True)
            return DueLook(late, classify=False) if since >= 0.9 * gap else False
        return moving or since >= cam.settings.idle_detect_s

    def _within_budget(
        self, batch: list[tuple[str, Frame, list[Track], list[int]]]
    ) -> list[tuple[str, Frame, list[Track], list[int]]]:
        """The batch cut to classifier.max_faces_per_tick faces, ranked across cameras
        by Audience.classification_rank. A face left out is still wanted at the next
        detection (the audience asks again until it has a sample), so a crowd is
        classified over a few ticks instead of holding one for seconds."""
        limit = self.config.classifier.max_faces_per_tick
        if not limit or sum(len(wanted) for *_, wanted in batch) <= limit:
            return batch
        ranked = sorted(
            (
                (self.cameras[cid].audience.classification_rank(tracks[i]), n, i)
                for n, (cid, _, tracks, wanted) in enumerate(batch)
                for i in wanted
            ),
            key=lambda r: r[0],
            reverse=True,
        )
        chosen = {(n, i) for _, n, i in ranked[:limit]}
        return [
            (cid, frame, tracks, [i for i in wanted if (n, i) in chosen])
            for n, (cid, frame, tracks, wanted) in enumerate(batch)
        ]

    def _classify(self, batch: list[tuple[str, Frame, list[Track], list[int]]]) -> None:
        frames, faces, targets = [], [], []
        for cid, frame, tracks, wanted in batch:
            if wanted:
                chosen = [tracks[i] for i in wanted]
                frames.append(frame.image)
                faces.append(_tracks_as_detections(chosen))
                targets.append((cid, chosen, frame.timestamp))
        if not faces:
            return
        started = time.perf_counter()
        results = self.analyzer.classifier.classify_many(frames, faces)
        self._classify_ms.append((time.perf_counter() - started) * 1000)
        self._batch_sizes.append(sum(len(f) for f in faces))
        self._tick_classify = (self._classify_ms[-1] / 1000, self._batch_sizes[-1])
        self.classifier_calls += 1
        for (cid, chosen, ts), demo in zip(targets, results, strict=False):
            self.cameras[cid].audience.add_samples(chosen, demo, ts)

    def _after_frame(
        self, cid: str, cam: CameraRuntime, frame: Frame, removed: list | None
    ) -> None:
        """`removed`: the tracks that ended at this frame, None when the detector did not
        run on it (the tracker was not updated)."""
        cam.last_ts = frame.timestamp
        cam.frames += 1
        cam.window.processed += 1
        if cam.interval_start is None:
            cam.interval_start = frame.timestamp
            cam.audience.begin(frame.timestamp)
        changed = False
        if removed is not None:
            # Attention is credited for the time since the last frame the tracks were
            # observed in: a frame the detector skipped while people were tracked adds
            # its time to the next detected one; time with nobody tracked counts for no one.
            start = cam.attention_from if cam.attention_from is not None else frame.timestamp
            dt_s = max(0.0, frame.timestamp - start)
            changed = cam.audience.update(cam.last_tracks, removed, frame.timestamp, dt_s)
        if removed is not None or not cam.tracker.has_tracks:
            cam.attention_from = frame.timestamp
        if self.on_frame is not None:
            self.on_frame(cid, frame, cam.last_tracks, cam.audience)
        if changed:
            self.emit(AudienceEvent.of(cid, iso(frame.timestamp), cam.audience.snapshot()))
        self._select(cid, cam, frame.timestamp)
        if not self.offline:
            self._latency_ms.append((now() - frame.timestamp) * 1000)
            self._tick_latency_s[cid] = self._latency_ms[-1] / 1000
        if frame.timestamp - cam.interval_start >= self.config.audience.interval_s:
            self._emit_interval(cid, cam, frame.timestamp, flush=False)

    def _select(self, cid: str, cam: CameraRuntime, ts: float) -> None:
        """Each display that follows the camera chooses its ad; the plays follow."""
        for selector in self.selectors.get(cid, ()):
            decision = selector.decide(cam.audience.viewers(), ts, wall=local(ts))
            if decision is not None:
                assert cam.plays is not None  # set in __init__ with the camera's selectors
                ended = cam.plays.switch(decision, ts)
                if ended is not None:
                    self.emit(ended)
                self.emit(DecisionEvent.of(decision))
        if cam.plays is not None:  # after the switch: this frame is the new ad's audience
            for looped in cam.plays.observe(cam.audience.people, ts):
                self.emit(looped)  # an ad held past its duration_s: each loop is a play

    # -- reporting -----------------------------------------------------------------

    def _emit_interval(self, cid: str, cam: CameraRuntime, end: float, flush: bool) -> None:
        tally = cam.audience.close_interval(end, flush=flush)
        cam.interval_start = end
        self.emit(IntervalEvent.of(cid, tally, start=iso(tally.start or end), end=iso(end)))

    def _flush(self, cid: str, cam: CameraRuntime, end: float) -> None:
        """Close open visits into a final interval and, for an ended file or any offline
        run that started, a summary: the last line of an offline run."""
        status = cam.reader.status
        if status.exit_status and status.last_error:
            self.emit(
                ErrorEvent(
                    camera=cid,
                    source=redact(cam.reader.source),
                    error=status.last_error,
                    exit_status=status.exit_status,
                )
            )
        if cam.frames == 0 and status.exit_status and status.last_error:
            cam.done = True  # nothing was read: the error line is all there is to say
            return
        self._emit_interval(cid, cam, end, flush=True)
        for play in cam.plays.finish_all(end) if cam.plays is not None else ():
            self.emit(play)
        if status.ended or self.offline:
            self.emit(
                SummaryEvent.of(
                    cid,
                    frames=cam.frames,
                    frames_detected=cam.frames_detected,
                    totals=cam.audience.totals(),
                    plays=cam.plays.per_ad if cam.plays is not None else None,
                )
            )
        cam.done = True

    def _camera_status(self, cid: str, cam: CameraRuntime) -> None:
        status = cam.reader.status
        if cam.was_online is None and not status.online and not status.last_error:
            return  # still opening: nothing to report yet
        if status.online != cam.was_online and not status.ended:
            cam.was_online = status.online
            self.emit(
                CameraEvent(
                    camera=cid,
                    name=cam.settings.name,
                    online=status.online,
                    error=status.last_error,
                    reconnects_last_hour=cam.reader.reconnects_last_hour(),
                )
            )

    def stats(self) -> StatsEvent:
        """The figures of the stats window so far."""
        window = max(time.monotonic() - self._stats_at, 1e-6)
        cameras = {}
        for cid, cam in self.cameras.items():
            status, counts = cam.reader.status, cam.window
            cameras[cid] = CameraStats(
                online=status.online,
                capture_fps=round((status.captured - counts.captured_mark) / window, 2),
                processed_fps=round(counts.processed / window, 2),
                skipped_fps=round((status.skipped - counts.skipped_mark) / window, 2),
                passed_over_fps=round((status.passed_over - counts.passed_over_mark) / window, 2),
                detector_ms=_mean(counts.detect_ms),
                detected_share=(
                    round(counts.detected / counts.processed, 3) if counts.processed else None
                ),
                tracks=len(cam.audience.people),
                reconnects_last_hour=cam.reader.reconnects_last_hour(),
                error=None if status.online else (status.last_error or None),
            )
        latencies = np.array(self._latency_ms) if self._latency_ms else None
        p50, p95 = (
            (None, None)
            if latencies is None
            else (round(float(np.percentile(latencies, q)), 1) for q in (50, 95))
        )
        return StatsEvent(
            time=iso(now()),
            cameras=cameras,
            classifier_ms=_mean(self._classify_ms),
            classifier_batch=_mean(self._batch_sizes),
            latency_p50_ms=p50,
            latency_p95_ms=p95,
        )

    def emit_stats(self) -> None:
        stats = self.stats()
        self.emit(stats)
        line = stats_line(stats)
        offline = {
            cid: cam.reader.status.last_error or "opening"
            for cid, cam in self.cameras.items()
            if not cam.reader.status.online and not cam.reader.status.ended and not cam.done
        }
        degraded = (
            f"{len(offline)} of {len(self.cameras)} camera(s) offline: "
            + ", ".join(f"{cid} ({why})" for cid, why in offline.items())
            if offline
            else ""
        )
        # Logged when the set of offline cameras changes (each camera logs its own
        # reasons as they change); systemd's status line says it every time.
        if set(offline) != self._offline:
            if offline:
                log.warning("degraded: %s", degraded)
            else:
                log.info("no longer degraded: every camera delivers frames")
            self._offline = set(offline)
        log.info("stats %s", line)
        self.emit(HealthEvent("status", f"degraded: {degraded}; {line}" if offline else line))
        for cam in self.cameras.values():
            cam.window.reset(cam.reader.status)
        self._classify_ms, self._batch_sizes = [], []
        self._latency_ms.clear()  # p50/p95 are the window's, never a stale figure
        self._stats_at = time.monotonic()

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except BrokenPipeError:
                raise  # whoever read our stdout has gone: the run ends (exit 0, see cli)
            except Exception as exc:  # one failing sink must not stop the others or the loop
                key = (id(sink), type(exc).__name__)
                if key not in self._failing_sinks:
                    self._failing_sinks.add(key)
                    log.error(
                        "event sink %s failed on a %s event: %r; it is skipped for that "
                        "event and tried again with the next (logged once)",
                        type(sink).__name__,
                        event.type,
                        exc,
                    )


def stats_line(stats: StatsEvent) -> str:
    """The stats window as one log line; a figure the window has none of is left out
    (no detection, no classification, no frames), never written as None."""
    parts = []
    for cid, c in stats.cameras.items():
        detect = (
            f"detect {c.detector_ms} ms on {_percent(c.detected_share)} of frames"
            if c.detector_ms is not None
            else "no detection"
        )
        parts.append(
            f"{cid}: {c.processed_fps} fps ({c.skipped_fps} skipped), {detect}, {c.tracks} people"
        )
    if stats.classifier_ms is not None:
        parts.append(f"classify {stats.classifier_ms} ms x{stats.classifier_batch}")
    else:
        parts.append("no classification")
    if stats.latency_p95_ms is not None:
        parts.append(f"latency p95 {stats.latency_p95_ms} ms")
    return "; ".join(parts)


def _tracks_as_detections(tracks: list[Track]) -> Detections:
    return Detections(
        np.array([t.box for t in tracks], np.float32).reshape(-1, 4),
        np.array([t.score for t in tracks], np.float32),
        np.array([t.landmarks for t in tracks], np.float32).reshape(-1, 5, 2),
    )


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 2) if len(values) else None
