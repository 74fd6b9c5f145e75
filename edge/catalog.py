"""The ad catalog (ads/catalog.yaml): its records, and the loader that validates it
at start-up. Data, not a stage: the selector (pipeline/select.py) chooses from it and
the display player (outputs/player_*.py) serves its creatives, so it sits below both.

The catalog is edited by marketing people, so every mistake is reported with the
catalog file, the ad and the field, and all of them at once rather than one per
restart.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edge.config import read_yaml
from edge.errors import ConfigError
from edge.records import AGE_CLASSES, GENDERS

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
AD_KEYS = {
    "id",
    "title",
    "creative",
    "duration_s",
    "targeting",
    "weight",
    "schedule",
    "priority",
    "campaign",
    "advertiser",
}
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
AD_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TITLE_MAX_CHARS = 200  # a title names the ad in logs, messages and reports, it is no text body
URL_MAX_CHARS = 2048
# What a creative file may be: what the player page can show (an image, a video, an HTML
# page in a sandboxed frame), with the Content-Type the player serves it as.
CREATIVE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".ogg": "video/ogg",
    ".ogv": "video/ogg",
}


@dataclass(frozen=True)
class Schedule:
    days: tuple[str, ...] = DAYS
    start: dt.time = dt.time(0, 0)
    end: dt.time | None = None  # None: until midnight

    def allows(self, when: dt.datetime) -> bool:
        if DAYS[when.weekday()] not in self.days:
            return False
        now = when.time()
        return self.start <= now and (self.end is None or now < self.end)


@dataclass(frozen=True)
class Ad:
    id: str
    title: str
    creative: str  # absolute file path, or an http(s) URL
    duration_s: float
    age_classes: tuple[str, ...] = ()  # empty: anyone
    genders: tuple[str, ...] = ()
    weight: float = 1.0
    schedule: Schedule = Schedule()
    priority: int = 0
    campaign: str = ""  # optional: reports group plays by them (`edge report --by campaign`)
    advertiser: str = ""

    def targets(self, age_class: str, gender: str) -> bool:
        return (not self.age_classes or age_class in self.age_classes) and (
            not self.genders or gender in self.genders
        )


@dataclass(frozen=True)
class Catalog:
    ads: dict[str, Ad]
    default: str
    family_safe: str
    path: Path

    def creative_ref(self, ad: Ad) -> str:
        """How messages name an ad's creative: its path relative to the catalog's folder
        (what the display player serves), or the http(s) URL as given."""
        if ad.creative.startswith(("http://", "https://")):
            return ad.creative
        return Path(os.path.relpath(ad.creative, self.path.parent.resolve())).as_posix()

    def local_creatives(self) -> dict[str, Path]:
        """The files the display player serves: creative_ref -> file, nothing else."""
        return {
            self.creative_ref(ad): Path(ad.creative)
            for ad in self.ads.values()
            if not is_url(ad.creative)
        }


def creative_file(folder: Path, creative: str) -> tuple[Path | None, str | None]:
    """(the file, None) for a creative the display player can serve, else (None, why).

    The one rule for local creatives: load_catalog applies it to every ad, and the
    player (edge/outputs/player_server.py) again to every file it is asked for, so a creative that
    passes `edge check` is one the kiosk can show. folder is the catalog's folder;
    creative is relative to it (or absolute, but inside it).
    """
    try:
        creative.encode("utf-8")
        folder = folder.resolve()
        file = (folder / creative).resolve()  # symlinks followed: they must stay inside too
    except (OSError, ValueError, RuntimeError):  # a NUL byte, undecodable bytes, a loop
        return None, f"{creative!r} is not a usable file name"
    if not file.is_relative_to(folder):
        return None, (
            f"file {file} is outside the catalog's folder {folder}; the display "
            f"player serves only files in that folder"
        )
    relative = file.relative_to(folder)
    if any(part.startswith(".") for part in relative.parts):
        return None, (
            f"file {file}: hidden files and folders (a name starting with '.') are not served"
        )
    if not file.exists():
        return None, f"file {file} does not exist"
    if not file.is_file():
        return None, f"{file} is not a file"
    if file.suffix.lower() not in CREATIVE_TYPES:
        return None, (
            f"file {file}: the player shows {', '.join(CREATIVE_TYPES)} files, "
            f"not '{file.suffix or file.name}'"
        )
    try:
        with file.open("rb") as f:
            if not f.read(1):
                return None, f"file {file} is empty"
    except OSError as exc:
        return None, f"file {file} cannot be read: {exc.strerror or exc}"
    return file, None


def is_url(creative: str) -> bool:
    return creative.startswith(("http://", "https://"))


def url_problem(url: str) -> str | None:
    """Why a creative given as a URL cannot be shown by the player, or None."""
    if len(url) > URL_MAX_CHARS:
        return f"the URL is longer than {URL_MAX_CHARS} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "the URL has spaces or control characters; percent-encode them"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"the URL cannot be parsed ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "give an http:// or https:// URL with a host"
    return None


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    data = read_yaml(path, "ad catalog", ConfigError)
    if not isinstance(data, dict) or not isinstance(data.get("ads"), list) or not data["ads"]:
        raise ConfigError(f"{path}: the catalog needs a non-empty list under 'ads'")
    unknown = set(data) - {"schema_version", "default", "family_safe", "ads"}
    problems = [f"unknown key '{k}'" for k in sorted(unknown, key=str)]
    ads: dict[str, Ad] = {}
    for i, entry in enumerate(data["ads"]):
        ad, errors = _parse_ad(entry, i, path.parent)
        label = (
            f"ad '{entry.get('id')}'"
            if isinstance(entry, dict) and entry.get("id")
            else f"ads[{i}]"
        )
        problems += [f"{label}: {e}" for e in errors]
        if ad is not None:
            if ad.id in ads:
                problems.append(f"{label}: id '{ad.id}' is used by another ad too")
            ads[ad.id] = ad
    for key in ("default", "family_safe"):
        value = data.get(key)
        if value is None or not isinstance(value, str):
            problems.append(
                f"'{key}' must name the ad to show "
                + (
                    "when nobody is in view"
                    if key == "default"
                    else "when children dominate the audience"
                )
                + ("" if value is None else f", got {value!r}")
            )
        elif value not in ads:
            problems.append(f"'{key}' names ad '{value}', which is not in the catalog")
        elif ads[value].age_classes or ads[value].genders:
            problems.append(f"'{key}' ad '{value}' must not be targeted (it is shown to anyone)")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return Catalog(ads, data["default"], data["family_safe"], path)


def _parse_ad(  # noqa: C901 (one branch per field, each its own message)
    entry, index: int, base: Path
) -> tuple[Ad | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"must be a mapping, got {type(entry).__name__}"]
    errors = [f"unknown field '{k}'" for k in sorted(set(entry) - AD_KEYS, key=str)]
    ad_id = entry.get("id")
    if not isinstance(ad_id, str) or not AD_ID.fullmatch(ad_id):
        errors.append(f"field 'id' is {ad_id!r}; use letters, digits, '.', '-' and '_'")
    title = entry.get("title")
    if not isinstance(title, str) or not title.strip():
        errors.append("field 'title' is missing")
    elif len(title.strip()) > TITLE_MAX_CHARS:
        errors.append(f"field 'title' is longer than {TITLE_MAX_CHARS} characters")
    creative = entry.get("creative")
    if not isinstance(creative, str) or not creative:
        errors.append("field 'creative' is missing")
    elif creative.startswith(("http://", "https://")):
        if problem := url_problem(creative):
            errors.append(f"field 'creative': {problem}")
    else:
        file, problem = creative_file(base, creative)
        if problem:
            errors.append(f"field 'creative': {problem}")
        creative = str(file)
    duration = entry.get("duration_s")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0:
        errors.append(f"field 'duration_s' is {duration!r}; give seconds, more than 0")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        errors.append(f"field 'weight' is {weight!r}; give a number more than 0")
    priority = entry.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(f"field 'priority' is {priority!r}; give a whole number")
    names = {}
    for key in ("campaign", "advertiser"):
        value = entry.get(key, "")
        if not isinstance(value, str) or len(value.strip()) > TITLE_MAX_CHARS:
            errors.append(
                f"field '{key}' is {value!r}; give a name of at most {TITLE_MAX_CHARS} characters"
            )
        else:
            names[key] = value.strip()
    classes, genders = _parse_targeting(entry.get("targeting") or {}, errors)
    schedule = _parse_schedule(entry.get("schedule") or {}, errors)
    if errors:
        return None, errors
    # No errors: every check above passed, so these hold.
    assert isinstance(ad_id, str) and isinstance(title, str) and isinstance(creative, str)
    assert isinstance(duration, (int, float))
    return Ad(
        ad_id,
        title.strip(),
        creative,
        float(duration),
        classes,
        genders,
        float(weight),
        schedule,
        priority,
        **names,
    ), []


def _parse_targeting(targeting, errors: list[str]) -> tuple[tuple, tuple]:
    if not isinstance(targeting, dict):
        errors.append("field 'targeting' must be a mapping with age_classes and genders")
        return (), ()
    for key in sorted(set(targeting) - {"age_classes", "genders"}, key=str):
        errors.append(f"field 'targeting.{key}' is unknown; use age_classes and genders")
    result = []
    for key, allowed in (("age_classes", AGE_CLASSES), ("genders", GENDERS)):
        values = _names(targeting.get(key), f"targeting.{key}", allowed, errors)
        bad = [v for v in values if v not in allowed]
        if bad:
            errors.append(
                f"field 'targeting.{key}' has {', '.join(map(repr, bad))}; "
                f"choose from {', '.join(allowed)}"
            )
        result.append(tuple(v for v in values if v in allowed))
    return result[0], result[1]


def _names(value, field: str, allowed: tuple[str, ...], errors: list[str]) -> list[str]:
    """A name or list of names as given (empty for none); anything else is an error."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    errors.append(f"field '{field}' is {value!r}; give a list of names from {', '.join(allowed)}")
    return []


def _parse_schedule(schedule, errors: list[str]) -> Schedule:
    if not isinstance(schedule, dict):
        errors.append("field 'schedule' must be a mapping with days and hours")
        return Schedule()
    for key in sorted(set(schedule) - {"days", "hours"}, key=str):
        errors.append(f"field 'schedule.{key}' is unknown; use days and hours")
    days = _names(schedule.get("days"), "schedule.days", DAYS, errors) or list(DAYS)
    bad = [d for d in days if d not in DAYS]
    if bad:
        errors.append(
            f"field 'schedule.days' has {', '.join(map(repr, bad))}; use {', '.join(DAYS)}"
        )
    hours = schedule.get("hours", "00:00-24:00")
    match = _HOURS.match(str(hours))
    start = end = None
    if match:
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 < 24 and m1 < 60 and m2 < 60 and (h2 < 24 or (h2 == 24 and m2 == 0)):
            start = dt.time(h1, m1)
            end = None if h2 == 24 else dt.time(h2, m2)
            if end is not None and end <= start:
                errors.append(f"field 'schedule.hours' {hours!r} ends before it starts")
    if start is None:
        errors.append(f"field 'schedule.hours' is {hours!r}; write HH:MM-HH:MM, e.g. 08:00-20:00")
        return Schedule()
    return Schedule(tuple(d for d in days if d in DAYS), start, end)
