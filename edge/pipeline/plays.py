"""Plays: who was in front of a display while each ad was on it (proof of play).

A play runs from the decision that put an ad on a display until the next decision
for that display, or until the service (or the analysed file) stops. Per play:

- viewers, by age class x gender: the people in front of the display's camera who
  count for ad selection (in view for at least selector.min_dwell_s) at some moment
  during the play, each at most once per play, labelled as the audience stage last
  labelled them during the play (labels steady as samples accumulate);
- watchers: those viewers whose looking time *during the play* reached
  audience.min_attention_s (what they looked at before the ad came on does not count);
- attention_s: the looking time of everyone in front of the camera during the play.

Viewers whose age class never reached audience.min_confidence are counted as
`unclassified`, as in the interval counts. Track ids are only held in memory while
the play runs; the finished play holds counts only.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.events import PlayEvent
from edge.pipeline.audience import Person, empty_counts
from edge.records import Decision
from edge.timefmt import iso


@dataclass
class _Seen:
    """One person during one play (in memory only)."""

    baseline_attention_s: float  # their looking time before the play began
    attention_s: float  # their looking time, latest
    age_class: str
    gender: str
    confident: bool
    viewer: bool  # counted for ad selection at some moment of the play


class Play:
    """The ad on one display now, and the audience it has had so far."""

    def __init__(self, decision: Decision, camera: str, start: float):
        self.decision = decision
        self.camera = camera
        self.start = start
        self._seen: dict[int, _Seen] = {}

    def observe(self, people: dict[int, Person], min_dwell_s: float, min_confidence: float) -> None:
        """Take in the camera's audience after one frame (only people with a label)."""
        for track_id, person in people.items():
            if person.samples == 0:
                continue
            seen = self._seen.get(track_id)
            if seen is None:
                # Present when the ad came on: only what they look at from now counts.
                baseline = person.attention_s if person.first_seen < self.start else 0.0
                seen = self._seen[track_id] = _Seen(
                    baseline, person.attention_s, person.age_class, person.gender, False, False
                )
            seen.attention_s = person.attention_s
            seen.age_class, seen.gender = person.age_class, person.gender
            seen.confident = person.confident(min_confidence)
            seen.viewer = seen.viewer or person.dwell_s >= min_dwell_s

    def finish(self, end: float, min_attention_s: float) -> PlayEvent:
        """The finished play as an event (counts only)."""
        viewers, watchers = empty_counts(), empty_counts()
        unclassified = 0
        attention = 0.0
        for seen in self._seen.values():
            looked = max(0.0, seen.attention_s - seen.baseline_attention_s)
            attention += looked
            if not seen.viewer:
                continue
            if not seen.confident:
                unclassified += 1
                continue
            viewers[seen.age_class][seen.gender] += 1
            if looked >= min_attention_s:
                watchers[seen.age_class][seen.gender] += 1
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
            viewers=viewers,
            watchers=watchers,
            unclassified=unclassified,
            attention_s=round(attention, 3),
        )


class PlayLog:
    """The running plays of the displays that follow one camera, and the totals per ad
    (for the offline summary)."""

    def __init__(
        self, camera: str, min_dwell_s: float, min_attention_s: float, min_confidence: float
    ):
        self.camera = camera
        self.min_dwell_s = min_dwell_s
        self.min_attention_s = min_attention_s
        self.min_confidence = min_confidence
        self._running: dict[str, Play] = {}
        self.per_ad: dict[str, dict] = {}

    def observe(self, people: dict[int, Person]) -> None:
        for play in self._running.values():
            play.observe(people, self.min_dwell_s, self.min_confidence)

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
        if play is None:
            return None
        event = play.finish(now, self.min_attention_s)
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
