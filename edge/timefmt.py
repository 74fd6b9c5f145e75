"""Timestamps as every output writes them: ISO 8601, local time, with its zone."""

from __future__ import annotations

import datetime as dt


def iso(timestamp: float) -> str:
    return (
        dt.datetime.fromtimestamp(timestamp, dt.UTC).astimezone().isoformat(timespec="milliseconds")
    )
