"""Plays: who was in front of a display while each ad was on it (proof of play).

A play is one airing of the spot: it runs from the decision that put an ad on a
display until the next decision for that display, the service (or the analysed file)
stops, or the ad's catalog `duration_s` has passed. An ad held on screen longer (the
selector keeps it while nothing else is due) loops, and each loop is a play with its
own audience. The play's `duration_s` is its screen time. Per play, by segment
(records.SEGMENTS, docs/metrics.md):

- viewers (the play's impressions): the people in front of the display's camera who
  count for ad selection (in view for at least selector.min_dwell_s) at some moment
  during the play, each at most once per play, in the segment the audience stage
  gave them last during the play (labels steady as samples accumulate);
- watchers: those viewers whose looking time *during the play* reached
  audience.min_attention_s (what they looked at before the ad came on does not count);
- reach: those viewers who had not yet been a viewer of this ad during their visit
  (on any display following the camera), so summed over plays each visit counts once
  per ad however many plays it saw;
- attention_s and dwell_s: the viewers' looking time and time in view during the play.

Track ids are only held in memory while the play runs or the track lives (for reach);
the finished play holds counts only.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.events import PlayEvent
from edge.pipeline.audience import Person, add_to_segment
from edge.records import AGE_CLASSES, SEGMENT_GENDERS, UNCLASSIFIED, Decision
from edge.timefmt import iso


@dataclass
class _Seen:
    """One person during one play (in memory only)."""

    baseline_attention_s: float  # their looking time before the play began
    attention_s: float  # their looking time, latest
    segment: str
    viewer: bool  # counted for ad selection at some moment of the play
    first_seen: float  # in view during the play from (the play's start at the latest)
    last_seen: float


class Play:
    """The ad on one display now, and the audience it has had so far."""

    def __init__(self, decision: Decision, camera: str, start: float):
        self.decision = decision
        self.camera = camera
        self.start = start
        self._seen: dict[int, _Seen] = {}

    def observe(self, people: dict[int, Person], settings: PlaySettings) -> None:
        """Take in the camera's audience after one frame (only people with a label)."""
        for track_id, person in people.items():
            if person.samples == 0:
                continue
            seen = self._seen.get(track_id)
            if seen is None:
                # Present when the ad came on: only what they look at from now counts.
                baseline = person.attention_s if person.first_seen < self.start else 0.0
                seen = self._seen[track_id] = _Seen(
                    baseline,
                    person.attention_s,
                    UNCLASSIFIED,
                    False,
                    max(person.first_seen, self.start),
                    person.last_seen,
                )
            seen.attention_s = person.attention_s
            seen.last_seen = max(seen.last_seen, person.last_seen)
            seen.segment = person.segment(settings.min_confidence, settings.gender_margin)
            seen.viewer = seen.viewer or person.dwell_s >= settings.min_dwell_s

    def finish(self, end: float, min_attention_s: float, reached: set[int]) -> PlayEvent:
        """The finished play as an event (counts only). `reached`: the tracks that were
        viewers of this ad before (this play's viewers are added to it)."""
        segments: dict[str, dict] = {}
        for track_id, seen in self._seen.items():
            if not seen.viewer:
                continue
            looked = max(0.0, seen.attention_s - seen.baseline_attention_s)
            add_to_segment(
                segments,
                seen.segment,
                impressions=1,
                reach=int(track_id not in reached),
                watchers=int(looked >= min_attention_s),
                attention_s=looked,
                dwell_s=max(0.0, min(seen.last_seen, end) - seen.first_seen),
            )
            reached.add(track_id)
        d = self.decision
        start = iso(self.start)
        return PlayEvent(
            f"{d.display}/{start}",
            d.display,
            self.camera,
            d.ad,
            d.title,
            d.rule,
            start,
            iso(end),
            duration_s=round(max(0.0, end - self.start), 3),
            viewers=by_age_and_gender(segments, "impressions"),
            watchers=by_age_and_gender(segments, "watchers"),
            unclassified=segments.get(UNCLASSIFIED, {}).get("impressions", 0),
            attention_s=round(sum(f["attention_s"] for f in segments.values()), 3),
            segments=segments,
            campaign=d.campaign,
            advertiser=d.advertiser,
        )


def by_age_and_gender(segments: dict, metric: str) -> dict:
    """One metric of a segment table as {age class: {female, male, unknown}}."""
    return {
        c: {g: segments.get(f"{c}_{g}", {}).get(metric, 0) for g in SEGMENT_GENDERS}
        for c in AGE_CLASSES
    }


@dataclass(frozen=True)
class PlaySettings:
    min_dwell_s: float  # selector.min_dwell_s: who counts as a viewer
    min_attention_s: float
    min_confidence: float
    gender_margin: float


class PlayLog:
    """The running plays of the displays that follow one camera, and the totals per ad
    (for the offline summary)."""

    def __init__(self, camera: str, settings: PlaySettings):
        self.camera = camera
        self.settings = settings
        self._running: dict[str, Play] = {}
        self._reached: dict[str, set[int]] = {}  # per ad: tracks that were its viewers
        self._present: set[int] = set()
        self.per_ad: dict[str, dict] = {}

    def observe(self, people: dict[int, Person], now: float) -> list[PlayEvent]:
        """Take in the camera's audience after one frame at `now`; first end the plays
        whose ad has been on screen for its duration_s (it loops: the next play of the
        same ad starts where that one ended). Returns the plays that ended."""
        ended = []
        for display, play in list(self._running.items()):
            length = play.decision.duration_s
            while length > 0 and now >= play.start + length:
                loop_end = play.start + length
                ended += [e for e in [self._end(display, loop_end)] if e is not None]
                play = self._running[display] = Play(play.decision, self.camera, loop_end)
        self._present = set(people)
        for play in self._running.values():
            play.observe(people, self.settings)
        return ended

    def switch(self, decision: Decision, now: float) -> PlayEvent | None:
        """A new ad on a display: the play it ends (None for the display's first)."""
        ended = self._end(decision.display, now)
        self._running[decision.display] = Play(decision, self.camera, now)
        return ended

    def finish_all(self, now: float) -> list[PlayEvent]:
        """End every running play (the service or the file stops)."""
        return [e for e in (self._end(d, now) for d in list(self._running)) if e is not None]

    def _end(self, display: str, now: float) -> PlayEvent | None:
        play = self._running.pop(display, None)
        if play is None or now <= play.start:  # none, or a loop that had not begun
            return None
        reached = self._reached.setdefault(play.decision.ad, set())
        event = play.finish(now, self.settings.min_attention_s, reached)
        # A track that left never comes back (ids are per visit): forget it, keep the rest.
        running = {t for p in self._running.values() for t in p._seen}
        for tracks in self._reached.values():
            tracks &= self._present | running
        totals = self.per_ad.setdefault(
            event.ad, {"plays": 0, "viewers": 0, "watchers": 0, "duration_s": 0.0}
        )
        totals["plays"] += 1
        totals["viewers"] += count(event.viewers)
        totals["watchers"] += count(event.watchers)
        totals["duration_s"] = round(totals["duration_s"] + event.duration_s, 3)
        return event


def count(counts: dict) -> int:
    """People in an age class x gender table."""
    return sum(n for by_gender in counts.values() for n in by_gender.values())
