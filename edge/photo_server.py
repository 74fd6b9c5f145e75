"""The photo check API (`edge serve`): POST a photo, get its faces' age class and gender
and, with a claimed age and gender, the profile-photo check, as `edge analyze` prints
them (edge/pipeline/analyze.py does the work). Also the page /check for trying it from
a browser or a phone, the OpenAPI description /api/v1/openapi.json and /healthz.

An app's back end is a different deployment from a store box: its own port and limits
and, off the loopback interface, an API key. So it is a server of its own rather than
a route of the display player's.

Limits, in the order a request meets them: the request head within 10 s
(edge/outputs/web.py); the key; serve.max_requests requests at once (one more
gets 503 and Retry-After); the body at most serve.max_body_mb (413 before reading
it), of a JPEG, PNG or WebP type or multipart/form-data (415), arriving within
serve.deadline_s (408); at most serve.max_photos photos, each checked by
edge/pipeline/images.py's rules (size in the header, pixels, sides, truncation) before
it is decoded, all of them together at most images.MAX_PIXELS; then the models,
which analyse one request at a time (they use every core for it), free within the
deadline or 503. Every refusal is JSON {"error": {"code", "message"}}; ERRORS lists
them, and the OpenAPI description is built from it.

Privacy: photos are read into memory, decoded there and dropped with the request;
nothing is written to disk, and the one log line per request holds its status, size,
photos, faces found and time only (no file name, claim, address or image).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from importlib import resources
from urllib.parse import parse_qsl, urlsplit

from edge import __version__
from edge.config import Config
from edge.errors import ConfigError
from edge.outputs.access import HostCheck, authorized, is_loopback, load_secret
from edge.outputs.web import SEND_TIMEOUT_S, Handler, HttpServer, bind, close, serve, url
from edge.pipeline import images
from edge.pipeline.analyze import Claim, FaceAnalyzer, photo_result
from edge.records import AGE_CLASSES

log = logging.getLogger(__name__)

API = "/api/v1"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
GENDERS = ("female", "male")
MAX_CLAIMED_AGE = 130
RETRY_AFTER_S = 2  # told to a client turned away while busy
DISCARD_CHUNK = 1 << 16

# Every error the API answers with: code -> (HTTP status, when). The handler takes the
# status from here and the OpenAPI description lists them, so neither can drift.
ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request or its multipart body is malformed"),
    "empty_body": (400, "the request has no body"),
    "no_photo": (400, "a multipart body without a `photo` part"),
    "too_many_photos": (400, "more photos than serve.max_photos"),
    "unknown_field": (400, "a query parameter or form field the API does not know"),
    "duplicate_field": (400, "a claim given twice (query and form, or two fields)"),
    "invalid_claimed_age": (400, "claimed_age is not a number of years from 0 to 130"),
    "invalid_claimed_gender": (400, "claimed_gender is not female or male"),
    "unauthorized": (401, "the API key is missing or wrong"),
    "not_found": (404, "no such path"),
    "method_not_allowed": (405, "a method the path does not take"),
    "request_timeout": (408, "the body did not arrive within serve.deadline_s"),
    "length_required": (411, "a chunked body (send Content-Length instead)"),
    "body_too_large": (413, "the body is larger than serve.max_body_mb"),
    "unsupported_media_type": (415, "the body is not image/jpeg, image/png, image/webp "
                               "or multipart/form-data"),
    "not_an_image": (422, "a photo is not a readable JPEG, PNG or WebP image"),
    "empty_image": (422, "a photo part is empty"),
    "truncated_image": (422, "a JPEG stops before its end (a partial upload)"),
    "image_too_large": (422, "a photo, or the request's photos together, have more "
                        f"than {images.MAX_PIXELS / 1e6:g} megapixels"),
    "image_too_narrow": (422, f"a photo's sides differ by more than {images.MAX_ASPECT:g}:1"),
    "busy": (503, "serve.max_requests requests are being handled, or the models were not "
             "free within serve.deadline_s; retry after Retry-After seconds"),
    "internal_error": (500, "a fault of the service (logged); the request may be retried"),
}  # fmt: skip


class ApiError(Exception):
    """A refusal: its code (a key of ERRORS) and a message naming what was wrong."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.status = ERRORS[code][0]


# -- access ------------------------------------------------------------------------
# The key's sources and checks are the box's (edge/outputs/access.py); the API adds an
# operator's key file (serve.api_key_file) and the X-API-Key header apps often send.

KEY_ENV = "EDGE_API_KEY"
KEY_CREDENTIAL = "photo-api-key"  # systemd: LoadCredential=photo-api-key:/etc/edge/...


def load_key(config: Config) -> str | None:
    """The API key: EDGE_API_KEY or the credential systemd put in $CREDENTIALS_DIRECTORY,
    else serve.api_key_file; None when none is set. A file named but unreadable or
    empty is a ConfigError, not a silently open API."""
    if key := load_secret(KEY_ENV, KEY_CREDENTIAL):
        return key
    if not config.serve.api_key_file:
        return None
    path = config.resolve(config.serve.api_key_file)
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"serve.api_key_file: cannot read {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"serve.api_key_file: {path} is empty")
    return key


def require_key_off_loopback(listen: str, key: str | None) -> None:
    """Refuse to serve photos to a network without a key."""
    if key is None and not is_loopback(listen):
        raise ConfigError(
            f"serve.listen is {listen!r}, off the loopback interface: the photo check "
            f"API needs an API key there; set {KEY_ENV}, serve.api_key_file, or the "
            f"systemd credential {KEY_CREDENTIAL}"
        )


def key_accepted(expected: str | None, headers) -> bool:
    """True without a configured key; else `Authorization: Bearer KEY` (or Basic) or
    `X-API-Key: KEY`, compared in constant time."""
    if expected is None:
        return True
    if authorized(headers.get("Authorization"), expected):
        return True
    given = headers.get("X-API-Key", "").strip().encode("utf-8", "replace")
    return hmac.compare_digest(given, expected.encode("utf-8"))


# -- the request's content -----------------------------------------------------------


@dataclass
class Photo:
    name: str  # "photo 1", with the part's file name when it has one: for the caller only
    data: bytes


def parse_claim(fields: list[tuple[str, str]]) -> Claim | None:
    """claimed_age and claimed_gender from query and form fields; ApiError for anything
    else, a repeat, or a bad value."""
    given: dict[str, str] = {}
    for name, value in fields:
        if name not in ("claimed_age", "claimed_gender"):
            raise ApiError(
                "unknown_field",
                f"unknown field {name[:40]!r}; the API takes claimed_age, claimed_gender and photo",
            )
        if name in given:
            raise ApiError("duplicate_field", f"{name} is given more than once")
        given[name] = value
    if not given:
        return None
    age = None
    if "claimed_age" in given:
        text = given["claimed_age"].strip()
        try:
            age = float(text)
        except ValueError:
            age = math.nan
        if not (math.isfinite(age) and 0 <= age <= MAX_CLAIMED_AGE):
            raise ApiError(
                "invalid_claimed_age",
                f"claimed_age {text[:40]!r} is not a number of years from 0 to {MAX_CLAIMED_AGE}",
            )
    gender = given.get("claimed_gender")
    if gender is not None and gender not in GENDERS:
        raise ApiError(
            "invalid_claimed_gender", f"claimed_gender {gender[:40]!r} is not female or male"
        )
    return Claim(age, gender)


def split_multipart(body: bytes, boundary: str) -> list[tuple[Message, bytes]]:
    """The parts of a multipart/form-data body (RFC 7578): (headers, content) each.
    A plain split on the boundary, since the standard library's email parser takes
    about 40 ms per MB of photo."""
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    if pos < 0 or (pos > 0 and body[pos - 2 : pos] != b"\r\n"):
        raise ApiError("bad_request", "multipart body without its boundary")
    pos += len(delimiter)
    parser = BytesHeaderParser(policy=policy.HTTP)
    parts: list[tuple[Message, bytes]] = []
    while body[pos : pos + 2] != b"--":
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise ApiError("bad_request", "multipart body: boundary line malformed")
        end = body.find(b"\r\n" + delimiter, line_end)
        if end < 0:
            raise ApiError("bad_request", "multipart body ends before its closing boundary")
        part = body[line_end + 2 : end]
        if part.startswith(b"\r\n"):  # a part without headers
            head, content = b"", part[2:]
        else:
            head, sep, content = part.partition(b"\r\n\r\n")
            if not sep:
                raise ApiError(
                    "bad_request", "multipart part without a blank line after its headers"
                )
        parts.append((parser.parsebytes(head + b"\r\n\r\n"), content))
        pos = end + 2 + len(delimiter)
    return parts


def form_content(body: bytes, boundary: str) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Photos (the `photo` parts) and the other fields of a multipart body."""
    photos: list[Photo] = []
    fields: list[tuple[str, str]] = []
    for headers, content in split_multipart(body, boundary):
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ApiError("bad_request", "a multipart part has no form field name")
        if name == "photo":
            filename = headers.get_filename()
            label = f"photo {len(photos) + 1}"
            photos.append(Photo(f"{label} ({filename[:100]})" if filename else label, content))
        else:
            try:
                fields.append((name, content.decode()))
            except UnicodeDecodeError:
                raise ApiError("bad_request", f"form field {name[:40]!r} is not UTF-8") from None
    return photos, fields


def sniff(data: bytes) -> str | None:
    """The image type the bytes themselves show (JPEG, PNG or WebP); None for others."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def media_type(header: str) -> tuple[str, dict]:
    """'multipart/form-data; boundary=x' -> ('multipart/form-data', {'boundary': 'x'})."""
    message = Message()
    message["Content-Type"] = header
    params = dict(message.get_params() or [])
    params.pop(message.get_content_type(), None)
    return message.get_content_type(), params


# -- the service ---------------------------------------------------------------------


class PhotoService:
    """The models (one FaceAnalyzer, one request at a time on it) and the HTTP server.
    `port` overrides serve.port (0: a free port, for tests)."""

    def __init__(
        self,
        config: Config,
        analyzer: FaceAnalyzer,
        *,
        port: int | None = None,
        key: str | None = None,
    ):
        self.config = config
        self.analyzer = analyzer
        self.key = key
        self.limits = config.serve
        self.max_body = int(config.serve.max_body_mb * 1_000_000)
        self._listen = (config.serve.listen, config.serve.port if port is None else port)
        require_key_off_loopback(self._listen[0], key)
        self._slots = threading.BoundedSemaphore(config.serve.max_requests)
        self._models = threading.Lock()
        self._http: _HttpServer | None = None
        self.page = resources.files("edge.outputs").joinpath("player/check.html").read_bytes()
        self.spec = json.dumps(openapi(config), indent=1).encode()
        self.port = 0

    @property
    def url(self) -> str:
        return url(self._listen[0], self.port)

    def start(self) -> PhotoService:
        self._http = bind(
            _HttpServer,
            self._listen,
            _Handler,
            "serve.listen and serve.port",
            hosts=HostCheck(self.config.host_names),
        )
        self._http.app = self
        self.port = serve(self._http, "photo-http")
        return self

    def stop(self) -> None:
        if self._http is not None:
            close(self._http)
            self._http = None

    def take_slot(self) -> bool:
        return self._slots.acquire(blocking=False)

    def free_slot(self) -> None:
        self._slots.release()

    def analyze(self, photos: list[Photo], claim: Claim | None, deadline: float) -> list[dict]:
        """Checks every photo's header, then decodes them all, then runs the models once
        for all of them (when they are free before `deadline`)."""
        total = 0
        for photo in photos:
            if photo.data and not sniff(photo.data):
                raise ApiError("not_an_image", f"{photo.name}: not a JPEG, PNG or WebP image")
            size = images.check_header(photo.data, photo.name)
            if size is None:
                raise ApiError("not_an_image", f"{photo.name}: image header unreadable")
            total += size[0] * size[1]
        if total > images.MAX_PIXELS:
            raise ApiError(
                "image_too_large",
                f"the {len(photos)} photos have {total / 1e6:.1f} megapixels together, more "
                f"than the {images.MAX_PIXELS / 1e6:g} allowed per request; send fewer",
            )
        frames = [images.decode_image(photo.data, photo.name) for photo in photos]
        if not self._models.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ApiError(
                "busy",
                f"the models were not free within {self.limits.deadline_s:g} s "
                f"(serve.deadline_s); retry",
            )
        try:
            found = self.analyzer.many(frames)
        finally:
            self._models.release()
        return [
            {"image": photo.name, **photo_result(faces, demo, claim, self.config)}
            for photo, (faces, demo) in zip(photos, found, strict=True)
        ]


class _HttpServer(HttpServer):
    app: PhotoService
    name = "photo check API"


class _Handler(Handler):
    server: _HttpServer
    server_version = "edge-photo"
    protocol_version = "HTTP/1.1"  # keep-alive: an app sends photo after photo

    # -- routes --------------------------------------------------------------------

    def __getattr__(self, name: str):
        """Every method goes through _route (do_GET, do_POST, but also TRACE or a made-up
        one), which answers 405 or 404 in JSON rather than the stock 501 page."""
        if name.startswith("do_"):
            return lambda: self._route(name[3:])
        raise AttributeError(name)

    ROUTES = {
        f"{API}/analyze": "POST",
        f"{API}/openapi.json": "GET",
        "/check": "GET",
        "/healthz": "GET",
        "/": "GET",
    }

    def _route(self, method: str) -> None:
        app = self.server.app
        self._started = time.monotonic()
        # A body not read yet, and what a refusal does with it: drain it, or close at once.
        has_body = (
            self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        )
        self._unread: str | None = "drain" if has_body else None
        path = urlsplit(self.path).path
        allowed = self.ROUTES.get(path)
        try:
            if allowed is None:
                raise ApiError(
                    "not_found", f"no such path {path[:100]!r}; the API is {API}/analyze"
                )
            if method != allowed and not (method == "HEAD" and allowed == "GET"):
                raise ApiError("method_not_allowed", f"{path} takes {allowed}, not {method[:20]}")
            if path == f"{API}/analyze":
                self._analyze()
            elif path == f"{API}/openapi.json":
                self._send(200, app.spec, "application/json")
            elif path == "/check":
                self._send(200, app.page, "text/html; charset=utf-8", cache="no-cache")
            elif path == "/healthz":
                body = {"status": "ok", "version": __version__, "key_required": bool(app.key)}
                self._send(200, json.dumps(body).encode(), "application/json")
            else:
                self.send_response(302)
                self.send_header("Location", "/check")
                self.send_header("Content-Length", "0")
                self.end_headers()
        except ApiError as exc:
            self._error(exc)
        except (ConnectionError, TimeoutError):
            raise  # the client is gone, or stopped reading: nobody to answer
        except Exception:
            log.exception("photo check API: %s failed", path if path in self.ROUTES else "?")
            self._error(ApiError("internal_error", "the service failed on this request; retry"))

    def _analyze(self) -> None:
        app = self.server.app
        counts, code = {"size": 0, "photos": 0, "faces": 0}, "ok"
        try:
            if not key_accepted(app.key, self.headers):
                raise ApiError(
                    "unauthorized",
                    "missing or wrong API key: send it as Authorization: Bearer KEY "
                    "or X-API-Key: KEY",
                )
            if not app.take_slot():
                raise ApiError(
                    "busy",
                    f"{app.limits.max_requests} requests are being handled "
                    f"(serve.max_requests); retry in {RETRY_AFTER_S} s",
                )
            try:
                self._analyze_body(counts)
            finally:
                app.free_slot()
        except ApiError as exc:
            code = exc.code
            raise
        except (ConnectionError, TimeoutError):
            code = "client_gone"  # closed, or stopped reading the answer
            raise
        except Exception:
            code = "internal_error"
            raise
        finally:
            self._log(code, **counts)

    def _log(self, code: str, size: int = 0, photos: int = 0, faces: int = 0) -> None:
        """The request's one log line: no name, claim, address or image."""
        log.info(
            "photo check API: %s, %d bytes, %d photo(s), %d face(s), %.0f ms",
            code,
            size,
            photos,
            faces,
            (time.monotonic() - self._started) * 1000,
        )

    def _analyze_body(self, counts: dict[str, int]) -> None:
        """Reads, checks and analyses the photos and answers; notes the body's size and
        the photos and faces in `counts`."""
        app = self.server.app
        content_type, params = self._check_head()
        counts["size"] = int(self.headers.get("Content-Length", "0"))
        body = self._read_body(counts["size"], self._started + app.limits.deadline_s)
        query = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
        if content_type == "multipart/form-data":
            if not params.get("boundary"):
                raise ApiError("bad_request", "multipart/form-data without a boundary")
            photos, fields = form_content(body, params["boundary"])
            if not photos:
                raise ApiError("no_photo", "the multipart body has no part named photo")
        else:
            photos, fields = [Photo("photo 1", body)], []
        counts["photos"] = len(photos)
        if len(photos) > app.limits.max_photos:
            raise ApiError(
                "too_many_photos",
                f"{len(photos)} photos; at most {app.limits.max_photos} per request "
                f"(serve.max_photos)",
            )
        claim = parse_claim(query + fields)
        try:
            results = app.analyze(photos, claim, self._started + app.limits.deadline_s)
        except images.ImageError as exc:
            raise ApiError(exc.code if exc.code in ERRORS else "not_an_image", str(exc)) from None
        counts["faces"] = sum(len(r["faces"]) for r in results)
        self._send(200, json.dumps({"results": results}).encode(), "application/json")

    def _check_head(self) -> tuple[str, dict]:
        """What the headers alone tell: a body of a length we take, of a type we read."""
        app = self.server.app
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError("length_required", "chunked bodies are not taken; send Content-Length")
        length = self.headers.get("Content-Length", "0")  # none: no body (RFC 9112 6.3)
        if not length.isdigit():
            raise ApiError("bad_request", f"Content-Length {length[:20]!r} is not a number")
        if int(length) == 0:
            raise ApiError("empty_body", "the request has no body: send a photo")
        if int(length) > app.max_body:
            raise ApiError(
                "body_too_large",
                f"the body is {int(length):,} bytes, more than the "
                f"{app.limits.max_body_mb:g} MB allowed (serve.max_body_mb)",
            )
        content_type, params = media_type(self.headers.get("Content-Type", ""))
        if content_type not in (*IMAGE_TYPES, "multipart/form-data"):
            given = self.headers.get("Content-Type") or "none"
            raise ApiError(
                "unsupported_media_type",
                f"Content-Type {given[:60]!r}: send image/jpeg, image/png, image/webp or "
                f"multipart/form-data with photo parts",
            )
        return content_type, params

    def handle_expect_100(self) -> bool:
        """A client that asks first (curl, for bodies over 1 MB) is refused before it
        sends the body."""
        self._started, self._unread = time.monotonic(), "drain"
        if urlsplit(self.path).path == f"{API}/analyze" and self.command == "POST":
            try:
                if not key_accepted(self.server.app.key, self.headers):
                    raise ApiError("unauthorized", "missing or wrong API key")
                self._check_head()
            except ApiError as exc:
                self._error(exc)
                self._log(exc.code)
                return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """Requests refused before routing (a malformed request line or header) get
        JSON too."""
        self._unread = "drain"
        error = ApiError("bad_request", message or "malformed request")
        error.status = code
        self._error(error)

    # -- bodies and answers ----------------------------------------------------------

    def _read_body(self, size: int, deadline: float) -> bytes:
        self._reader.deadline = deadline
        try:
            body = self.rfile.read(size)
        except TimeoutError:
            self._unread = "close"  # the rest may never come: no drain
            raise ApiError(
                "request_timeout",
                f"the body did not arrive within {self.server.app.limits.deadline_s:g} s "
                f"(serve.deadline_s)",
            ) from None
        finally:
            self._reader.deadline = None
            # the reads shortened the socket's timeout to what was left of the deadline
            self.connection.settimeout(SEND_TIMEOUT_S)
        self._unread = None
        if len(body) < size:
            raise ConnectionError("the client closed before sending its body")
        return body

    def _error(self, exc: ApiError) -> None:
        body = json.dumps({"error": {"code": exc.code, "message": str(exc)}}).encode()
        self.send_response(exc.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if exc.code == "busy":
            self.send_header("Retry-After", str(RETRY_AFTER_S))
        if exc.code == "method_not_allowed":
            allowed = self.ROUTES[urlsplit(self.path).path]
            self.send_header("Allow", allowed + (", HEAD" if allowed == "GET" else ""))
        if exc.code == "unauthorized":
            self.send_header("WWW-Authenticate", 'Bearer realm="photo check API"')
        if self._unread:
            # A body we did not read would be taken for the next request: the
            # connection ends with this answer (after a short drain, so the client
            # reads the answer instead of a reset).
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self._unread == "drain":
            self._drain()

    def _drain(self) -> None:
        """Read and drop what the client still sends, for at most a second or one
        serve.max_body_mb: closing a socket with unread data resets it, and the client
        may lose the answer."""
        try:
            self.wfile.flush()
            self.connection.shutdown(1)  # SHUT_WR: the answer is complete
            self.connection.settimeout(0.2)
            stop, left = time.monotonic() + 1.0, self.server.app.max_body
            while left > 0 and time.monotonic() < stop:
                chunk = self.connection.recv(min(DISCARD_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:
        """Silent: the request line holds the claim; _analyze logs one line of its own."""


# -- OpenAPI -------------------------------------------------------------------------


def openapi(config: Config) -> dict:
    """The API's OpenAPI 3.0 description, from the code's own tables and limits."""
    limits = config.serve
    error = {"$ref": "#/components/schemas/Error"}

    def answer(codes: list[str]) -> dict:
        return {
            "description": "; ".join(f"{c}: {ERRORS[c][1]}" for c in codes),
            "content": {"application/json": {"schema": error}},
        }

    by_status: dict[int, list[str]] = {}
    for code, (status, _) in ERRORS.items():
        if code not in ("not_found", "method_not_allowed"):
            by_status.setdefault(status, []).append(code)
    responses: dict[str, dict] = {
        "200": {
            "description": "one result per photo, in the order sent",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Analysis"}}},
        }
    }
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = answer(codes)
    responses["503"]["headers"] = {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
    }
    age = {"type": "number", "minimum": 0, "maximum": MAX_CLAIMED_AGE}
    gender = {"type": "string", "enum": list(GENDERS)}
    binary = {"type": "string", "format": "binary"}
    number = {"type": "number"}
    probs = {
        "type": "object",
        "properties": {c: number for c in AGE_CLASSES},
        "required": list(AGE_CLASSES),
    }
    face = {
        "type": "object",
        "properties": {
            "box": {"type": "array", "items": number, "minItems": 4, "maxItems": 4},
            "score": number,
            "landmarks": {
                "type": "array",
                "items": {"type": "array", "items": number, "minItems": 2, "maxItems": 2},
            },
            "age": number,
            "age_class": {"type": "string", "enum": list(AGE_CLASSES)},
            "age_class_probs": probs,
            "gender": {"type": "string", "enum": list(GENDERS)},
            "gender_prob": number,
        },
        "required": ["box", "score", "age", "age_class", "age_class_probs", "gender"],
    }
    strings = {"type": "array", "items": {"type": "string"}}
    claim = {
        "type": "object",
        "properties": {
            "consistent": {"type": "boolean"},
            "mismatch": {"type": "boolean"},
            "reasons": strings,
            "uncertain": strings,
        },
        "required": ["consistent", "mismatch", "reasons", "uncertain"],
    }
    result = {
        "type": "object",
        "properties": {
            "image": {"type": "string"},
            "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}},
            "claim": {"$ref": "#/components/schemas/Claim"},
        },
        "required": ["image", "faces"],
    }
    security: list[dict[str, list]] = [{"bearer": []}, {"apiKey": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "edge photo check API",
            "version": __version__,
            "description": (
                "Age class (child/adult/old) and gender of every face in a photo, and "
                "whether the photo fits a claimed age and gender. A mismatch is flagged "
                "only when the model is confident (P >= 0.8); otherwise the doubt is "
                "listed under `uncertain`. Photos are analysed in memory and never "
                "stored. An API key is required when the service listens off the "
                "loopback interface."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": {
            f"{API}/analyze": {
                "post": {
                    "operationId": "analyze",
                    "summary": "analyse one photo (the body) or several (multipart photo parts)",
                    "security": [*security, {}],
                    "parameters": [
                        {"name": "claimed_age", "in": "query", "schema": age},
                        {"name": "claimed_gender", "in": "query", "schema": gender},
                    ],
                    "requestBody": {
                        "required": True,
                        "description": (
                            f"at most {limits.max_body_mb:g} MB; JPEG, PNG or WebP, "
                            f"{images.MAX_PIXELS / 1e6:g} megapixels per request"
                        ),
                        "content": {
                            **{t: {"schema": binary} for t in IMAGE_TYPES},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "photo": {
                                            "type": "array",
                                            "items": binary,
                                            "minItems": 1,
                                            "maxItems": limits.max_photos,
                                        },
                                        "claimed_age": age,
                                        "claimed_gender": gender,
                                    },
                                    "required": ["photo"],
                                }
                            },
                        },
                    },
                    "responses": responses,
                }
            }
        },
        "components": {
            "schemas": {
                "Analysis": {
                    "type": "object",
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Result"},
                        }
                    },
                    "required": ["results"],
                },
                "Result": result,
                "Face": face,
                "Claim": claim,
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string", "enum": list(ERRORS)},
                                "message": {"type": "string"},
                            },
                            "required": ["code", "message"],
                        }
                    },
                    "required": ["error"],
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
