"""Stream URLs without their passwords, for everything a person or the broker sees:
log lines, `edge check`/`preview`/`bench` output, JSON lines and MQTT status.

Cameras' web pages accept any character in a password, and FFmpeg passes a raw
`@`, `/` or `:` in one through, so `rtsp://admin:p@ss/w:rd@10.0.0.5/stream` is a
working source. urllib.parse (and a regex stopping at the first `@` or `/`) would
take `p` for the password and `ss/w:rd@10.0.0.5` for the path, and print the rest.
Here the credentials end at the *last* `@` that is followed by something shaped like
a host, and everything after the user name's `:` is masked, whatever it contains
(%-escapes included). Query parameters that carry secrets (`?pwd=...`, common on
snapshot URLs) are masked too. Passwords seen once are also remembered, so a line
that quotes one outside its URL (a decoder's error message) is masked as well.
"""

from __future__ import annotations

import re
import threading
import urllib.parse

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# What follows the credentials' '@': host (name, IPv4 or [IPv6]), optional port, then
# the end, a path, a query or a fragment.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(:\d*)?(?=[/?#\s'\"<>;,)]|$)")
_SECRET_PARAM = re.compile(r"(?i)(pass|pwd|secret|token|key|auth|sig|cred)")
# A URL in a line of text runs to the next space: a password may hold quotes too.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")

_known: set[str] = set()  # passwords seen, in the forms they may be printed in
_known_lock = threading.Lock()


def split_credentials(url: str) -> tuple[str, str, str] | None:
    """(scheme://, user:password, host and the rest) where the URL carries a password
    (an '@' in a path, as in snap@2x.jpg, has no ':' before it and is left alone)."""
    scheme = _SCHEME.match(url)
    if not scheme:
        return None
    rest = url[scheme.end() :]
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) >= 0:
        if ":" in rest[:at] and _HOST.match(rest, at + 1):
            return scheme.group(0), rest[:at], rest[at + 1 :]
    return None


def without_credentials(url: str) -> str:
    """The URL with its user name and password left out (to find its host and port)."""
    parts = split_credentials(url)
    return url if parts is None else parts[0] + parts[2]


def password(url: str) -> str | None:
    """The password a URL carries (None when it has none), as written in it."""
    parts = split_credentials(url)
    return None if parts is None else parts[1].partition(":")[2]


def redact_url(url: str) -> str:
    """The URL with its password (and secret query values) replaced by ***; the user
    name, host and path stay, so the operator still sees which camera it is."""
    parts = split_credentials(url)
    if parts is not None:
        scheme, userinfo, rest = parts
        user, _, secret = userinfo.partition(":")
        remember(secret)
        url = f"{scheme}{user}:{MASK}@{rest}"
    base, question, query = url.partition("?")
    if question:
        query = re.sub(
            r"([^&=;]+)=([^&;#]*)",
            lambda m: f"{m.group(1)}={MASK}" if _SECRET_PARAM.search(m.group(1)) else m.group(0),
            query,
        )
        url = f"{base}?{query}"
    return url


def redact(text: str) -> str:
    """Any text with every URL's password masked, and every password seen before."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


def remember(secret: str) -> None:
    """Mask this password wherever it appears from now on, raw or %-escaped either way.
    Very short ones are left to the URL parsing: masking every 'ab' would garble lines."""
    forms = {
        secret,
        urllib.parse.unquote(secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(urllib.parse.unquote(secret), safe=""),
    }
    with _known_lock:
        if len(_known) < 1000:  # a handful of cameras; never grows without bound
            _known.update(f for f in forms if len(f) >= 4)


def safe_name(source: str) -> str:
    """A camera id for a source given on the command line (`--source`): a file's name,
    or a URL's last path segment; never a URL's user, password or host."""
    match = _SCHEME.match(source)
    if match:
        parts = split_credentials(source)
        after_host = parts[2] if parts else source[match.end() :]
        path = after_host.partition("?")[0].partition("#")[0]
        stem = path.rstrip("/").rpartition("/")[2] if "/" in path else ""
        stem = stem.rpartition(".")[0] or stem
    else:
        stem = re.split(r"[\\/]", source.rstrip("/\\"))[-1]
        stem = stem.rpartition(".")[0] or stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", urllib.parse.unquote(stem))[:64].strip("-") or "cam1"
