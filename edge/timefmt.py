"""Time in the service: one clock for durations, the wall clock only for labels.

Frame times, gaps, dwell, pacing and ages are differences of `now()`: the monotonic
clock on the wall clock's scale as of the process start, so a step of the wall clock
(NTP correcting a box that booted with a wrong time, an operator's `date -s`) cannot
freeze the pipeline, stretch an interval or count a person twice. Labels are the
wall clock's: `iso(t)` writes a time of `now()` as the wall clock reads it; when
`Clock.check()` sees the wall clock step, it logs one line and labels written from
then on follow the new wall clock (both ends of an interval are written at once, so
an interval's labels always span the real time it lasted).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STEP_S = 1.0  # a difference between the clocks this large is a step, not drift


class Clock:
    """Monotonic time on the wall clock's scale, and how labels map to the wall clock.
    `wall` and `mono` are injected by tests; the process has one (CLOCK)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ):
        self._wall, self._mono = wall, mono
        self._base = wall() - mono()  # fixed for the process: now() never jumps
        self.shift = 0.0  # wall clock minus now(), as of the last step seen

    def now(self) -> float:
        return self._mono() + self._base

    def wall(self, t: float) -> float:
        """The wall-clock time (epoch seconds) of a time of now()."""
        return t + self.shift

    def check(self) -> float | None:
        """The size of a step of the wall clock since the last check (None: no step);
        labels follow the wall clock from then on."""
        shift = self._wall() - self.now()
        step = shift - self.shift
        if abs(step) < STEP_S:
            return None
        self.shift = shift
        log.warning(
            "the wall clock stepped by %+.1f s; event times follow it from now on "
            "(durations, dwell and pacing use the monotonic clock and are unaffected)",
            step,
        )
        return step


CLOCK = Clock()


def now() -> float:
    """The service's time: seconds, monotonic, on the wall clock's scale (see above)."""
    return CLOCK.now()


def iso(timestamp: float) -> str:
    """A time of now() as the wall clock reads it: ISO 8601, local time, with its zone.
    (In a process whose wall clock never stepped, any epoch time.)"""
    return (
        dt.datetime.fromtimestamp(CLOCK.wall(timestamp), dt.UTC)
        .astimezone()
        .isoformat(timespec="milliseconds")
    )


def local(timestamp: float) -> dt.datetime:
    """A time of now() as the box's local wall-clock time (naive), for schedules."""
    return dt.datetime.fromtimestamp(CLOCK.wall(timestamp))


def zone_name() -> str:
    """The box's time zone as the head office stores it (`stats` payloads' `timezone`):
    its IANA name (TZ, /etc/timezone or the /etc/localtime link), else the UTC offset
    now ('+01:00'). The offsets in event times alone cannot tell Europe/Berlin from
    Africa/Lagos, nor when the next daylight-saving change comes."""
    import os
    from pathlib import Path

    tz = os.environ.get("TZ", "").removeprefix(":")
    if tz and "/" in tz and not tz.startswith("/"):
        return tz  # Europe/Berlin; a POSIX rule (CET-1CEST) or a path says no name
    if tz.startswith("/") and "zoneinfo/" in tz:
        return tz.split("zoneinfo/", 1)[1]
    if not tz:
        try:
            name = Path("/etc/timezone").read_text().strip()
            if name:
                return name
        except OSError:
            pass
        try:
            target = os.readlink("/etc/localtime")
            if "zoneinfo/" in target:
                return target.split("zoneinfo/", 1)[1]
        except OSError:
            pass
    offset = dt.datetime.now().astimezone().utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
