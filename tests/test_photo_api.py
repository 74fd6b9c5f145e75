"""The photo check API (`edge serve`) end to end: the real command on a free loopback
port, real HTTP clients (http.client, requests, schemathesis, headless Chromium), the
real models. Good photos give what `edge analyze` gives; every bad input gets its own
JSON error and the service goes on serving; nothing is written to disk."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
import requests
from test_images import png

from edge.errors import EX_CONFIG
from edge.photo_server import ERRORS, openapi

from conftest import ROOT, edge_process, run_edge
from test_display import browser  # noqa: F401  (a fixture)

DEADLINE_S = 3
MAX_BODY_MB = 2
MAX_REQUESTS = 2


class Service:
    """`edge serve` running: its port, its log lines so far, its folders."""

    def __init__(self, proc: subprocess.Popen, folder: Path):
        self.proc = proc
        self.folder = folder
        self.lines: list[str] = []
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_ready(self, timeout: float = 120) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self.lines:
                if match := re.search(r"photo check API: http://127\.0\.0\.1:(\d+)/", line):
                    self.port = int(match[1])
                    return self
            time.sleep(0.1)
        raise AssertionError(f"edge serve did not start: {''.join(self.lines)}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request_lines(self, since: int, count: int, timeout: float = 10) -> list[str]:
        """The request log lines after line `since`, once there are `count` of them (a
        line is written just after its answer is sent)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines[since:] if "photo check API:" in line]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def settled(self, quiet: float = 0.5, timeout: float = 10) -> int:
        """The log's length once no line came for `quiet` seconds: a request's line is
        written just after its answer, so an earlier test's last line may still be on
        its way when the next test starts."""
        deadline = time.monotonic() + timeout
        length, since = len(self.lines), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.05)
            if len(self.lines) != length:
                length, since = len(self.lines), time.monotonic()
        return length

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self._reader.join(timeout=5)


def start(folder: Path, env: dict | None = None, **serve) -> Service:
    """`edge serve --port 0` with a config of its own; TMPDIR and the state folder in
    `folder`, so that anything the service writes would show there."""
    (folder / "tmp").mkdir(parents=True)
    (folder / "state").mkdir()
    config = folder / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "models": {"dir": str(ROOT / "models")},
                "state_dir": str(folder / "state"),
                "serve": {
                    "deadline_s": DEADLINE_S,
                    "max_body_mb": MAX_BODY_MB,
                    "max_requests": MAX_REQUESTS,
                    **serve,
                },
            }
        )
    )
    environment = {**os.environ, "TMPDIR": str(folder / "tmp"), **(env or {})}
    proc = edge_process("--config", str(config), "serve", "--port", "0", env=environment)
    return Service(proc, folder).wait_ready()


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = start(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def photos(group_photo) -> dict[str, bytes]:
    """The group photo (six adults: three women, three men), its far-left woman alone
    as a profile photo (as in test_cli), and the same as PNG and WebP."""
    group = group_photo.read_bytes()
    woman = cv2.imread(str(group_photo))[180:480, 0:260]
    return {
        "group": group,
        "woman": cv2.imencode(".jpg", woman)[1].tobytes(),
        "woman_png": cv2.imencode(".png", woman)[1].tobytes(),
        "woman_webp": cv2.imencode(".webp", woman)[1].tobytes(),
    }


def post(
    service: Service,
    body: bytes,
    content_type: str | None = "image/jpeg",
    query: str = "",
    headers: dict | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict, dict]:
    """POST /api/v1/analyze: (status, headers, JSON answer)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        sent = {"Content-Type": content_type} if content_type else {}
        conn.request(
            "POST", "/api/v1/analyze" + query, body=body, headers={**sent, **(headers or {})}
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        return response.status, dict(response.getheaders()), answer
    finally:
        if own:
            conn.close()


def faces_by_segment(result: dict) -> dict:
    counts: dict = {}
    for face in result["faces"]:
        key = (face["age_class"], face["gender"])
        counts[key] = counts.get(key, 0) + 1
    return counts


# -- good photos -------------------------------------------------------------------------


@pytest.mark.slow
def test_group_photo_gives_six_adults_three_women_three_men(service, photos, group_photo):
    status, _, answer = post(service, photos["group"])
    assert status == 200, answer
    [result] = answer["results"]
    assert faces_by_segment(result) == {("adult", "female"): 3, ("adult", "male"): 3}
    assert "claim" not in result
    # the same JSON as `edge analyze` prints, but for the image's name
    printed = json.loads(run_edge("analyze", str(group_photo)).stdout)
    assert result["faces"] == printed["faces"]


@pytest.mark.slow
def test_claims_consistent_and_mismatch(service, photos):
    status, _, answer = post(
        service, photos["woman"], query="?claimed_age=30&claimed_gender=female"
    )
    assert status == 200, answer
    claim = answer["results"][0]["claim"]
    assert claim == {"consistent": True, "mismatch": False, "reasons": [], "uncertain": []}

    status, _, answer = post(service, photos["woman"], query="?claimed_age=72&claimed_gender=male")
    claim = answer["results"][0]["claim"]
    assert claim["mismatch"] and not claim["consistent"]
    reasons = " ".join(claim["reasons"])
    assert "claimed age 72 (old)" in reasons and "looks adult" in reasons
    assert "claimed gender male but the face looks female" in reasons


@pytest.mark.slow
def test_a_batch_of_three_photos_gives_three_results(service, photos):
    """Multipart from a real client (requests), three formats, claims as form fields."""
    files = [
        ("photo", ("group.jpg", photos["group"], "image/jpeg")),
        ("photo", ("woman.png", photos["woman_png"], "image/png")),
        ("photo", ("woman.webp", photos["woman_webp"], "image/webp")),
    ]
    response = requests.post(
        f"{service.url}/api/v1/analyze",
        files=files,
        data={"claimed_gender": "female"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image"] for r in results] == [
        "photo 1 (group.jpg)",
        "photo 2 (woman.png)",
        "photo 3 (woman.webp)",
    ]
    assert [len(r["faces"]) for r in results] == [6, 1, 1]
    assert results[0]["claim"]["mismatch"] and "6 faces found" in results[0]["claim"]["reasons"][0]
    assert results[1]["claim"]["consistent"] and results[2]["claim"]["consistent"]
    assert results[1]["faces"][0]["gender"] == results[2]["faces"][0]["gender"] == "female"


def test_a_batch_is_detected_together_and_classified_in_one_call(analyzer, photos, monkeypatch):
    """FaceAnalyzer.many, which the API calls once per request: one classifier call for
    the faces of every photo, with the results of photo-by-photo analysis."""
    from edge.pipeline.images import decode_image

    frames = [decode_image(photos[k], k) for k in ("group", "woman", "woman_png")]
    one_by_one = [analyzer(frame) for frame in frames]
    calls = []
    classify = analyzer.classifier.classify_chips
    monkeypatch.setattr(
        analyzer.classifier,
        "classify_chips",
        lambda *chips: calls.append(1) or classify(*chips),
    )
    together = analyzer.many(frames)
    assert len(calls) == 1
    assert [len(faces) for faces, _ in together] == [6, 1, 1]
    for (faces, demo), (faces1, demo1) in zip(together, one_by_one, strict=True):
        assert (faces.boxes == faces1.boxes).all()
        assert abs(demo.ages - demo1.ages).max() < 0.05
        assert list(demo.genders) == list(demo1.genders)


# -- bad input ---------------------------------------------------------------------------

BAD = {  # name: (content type, query, expected status, code, words in the message)
    "empty body": ("image/jpeg", "", 400, "empty_body", "no body"),
    "not an image": ("image/jpeg", "", 422, "not_an_image", "photo 1: not a JPEG, PNG or WebP"),
    "truncated JPEG": ("image/jpeg", "", 422, "truncated_image", "truncated JPEG"),
    "decompression bomb": (
        "image/png",
        "",
        422,
        "image_too_large",
        "image is 20000x20000 pixels, more than the 64 megapixels",
    ),
    "too narrow": ("image/png", "", 422, "image_too_narrow", "1x20000 pixels, too narrow"),
    "wrong content type": ("text/plain", "", 415, "unsupported_media_type", "'text/plain'"),
    "no content type": (None, "", 415, "unsupported_media_type", "Content-Type 'none'"),
    "bad claimed age": ("image/jpeg", "?claimed_age=abc", 400, "invalid_claimed_age", "'abc'"),
    "negative claimed age": ("image/jpeg", "?claimed_age=-4", 400, "invalid_claimed_age", "'-4'"),
    "bad claimed gender": (
        "image/jpeg",
        "?claimed_gender=robot",
        400,
        "invalid_claimed_gender",
        "'robot' is not female or male",
    ),
    "unknown field": ("image/jpeg", "?claimedage=30", 400, "unknown_field", "'claimedage'"),
    "claim given twice": (
        "image/jpeg",
        "?claimed_age=30&claimed_age=31",
        400,
        "duplicate_field",
        "claimed_age is given more than once",
    ),
}


@pytest.fixture(scope="module")
def bad_bodies(photos, tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("bad")
    return {
        "empty body": b"",
        "not an image": b"hello, this is text\n",
        "truncated JPEG": photos["group"][: len(photos["group"]) // 2],
        "decompression bomb": png(folder / "bomb.png", 20000, 20000).read_bytes(),  # 48 kB
        "too narrow": png(folder / "thin.png", 1, 20000, bit_depth=8, color_type=2).read_bytes(),
        **{name: photos["woman"] for name in BAD if "claim" in name or "content" in name},
        "unknown field": photos["woman"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_error_and_the_next_request_is_served(service, photos, bad_bodies, case):
    """On one keep-alive connection: the bad request, then a good one."""
    content_type, query, expected, code, words = BAD[case]
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        status, headers, answer = post(service, bad_bodies[case], content_type, query, conn=conn)
        assert (status, answer["error"]["code"]) == (expected, code), answer
        assert ERRORS[code][0] == expected
        assert words in answer["error"]["message"], answer
        assert headers["Content-Type"] == "application/json"
        status, _, answer = post(service, photos["woman"], conn=conn)
        assert status == 200 and len(answer["results"][0]["faces"]) == 1
    finally:
        conn.close()
    assert not any("Traceback" in line for line in service.lines)


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, dict]:
    """Sends a request head (and `body`) on a plain socket; the status and JSON answer.
    For what http.client would not send: a body that never comes, a huge length."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_part, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_part.split()[1])
    return status, json.loads(payload) if payload else {}


@pytest.mark.slow
def test_an_oversized_body_is_refused_before_it_is_read(service, photos):
    lines_before = service.settled()
    huge = MAX_BODY_MB * 1_000_000 + 1
    head = (
        "POST /api/v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {huge}\r\n\r\n"
    )
    status, answer = raw_request(service.port, head)  # no body sent: none is read
    assert status == 413 and answer["error"]["code"] == "body_too_large"
    assert f"{huge:,} bytes, more than the {MAX_BODY_MB} MB allowed" in answer["error"]["message"]
    # A client that asks first (Expect: 100-continue) is told before it sends anything.
    status, answer = raw_request(
        service.port, head.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n")
    )
    assert status == 413
    # A client that sends it all anyway still reads the answer rather than a reset.
    response = requests.post(
        f"{service.url}/api/v1/analyze",
        data=b"\xff" * huge,
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert post(service, photos["woman"])[0] == 200
    logged = service.request_lines(lines_before, 4)
    assert [line.split("API: ")[1].split(",")[0] for line in logged] == [
        "body_too_large",
        "body_too_large",
        "body_too_large",
        "ok",
    ]


@pytest.mark.slow
def test_a_body_that_does_not_arrive_in_time_and_a_full_house(service, photos):
    """A body that stops coming gets 408 at the deadline; while MAX_REQUESTS of them are
    pending, one more request gets 503 with Retry-After; then all is well again."""
    head = (
        "POST /api/v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(photos['woman'])}\r\n\r\n"
    )
    slow: list[socket.socket] = []
    for _ in range(MAX_REQUESTS):
        s = socket.create_connection(("127.0.0.1", service.port), timeout=DEADLINE_S + 10)
        s.sendall(head.encode() + photos["woman"][:100])  # and no more
        slow.append(s)
    started = time.monotonic()
    time.sleep(1.0)  # both are reading their bodies now (a busy machine starts threads late)
    status, headers, answer = post(service, photos["woman"])
    assert status == 503 and answer["error"]["code"] == "busy"
    assert headers["Retry-After"] == "2" and "serve.max_requests" in answer["error"]["message"]
    for s in slow:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 408 "), data[:100]
        assert b'"request_timeout"' in data
    assert DEADLINE_S - 0.5 < time.monotonic() - started < DEADLINE_S + 3
    assert post(service, photos["woman"])[0] == 200


@pytest.mark.slow
def test_unknown_paths_and_methods_are_json_errors(service):
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("GET", "/api/v1/analyze")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    assert json.loads(response.read())["error"]["code"] == "method_not_allowed"
    conn.request("GET", "/nothing/here")
    response = conn.getresponse()
    assert response.status == 404
    assert json.loads(response.read())["error"]["code"] == "not_found"
    conn.request("TRACE", "/api/v1/analyze")  # not the stock 501 page
    response = conn.getresponse()
    assert response.status == 405 and json.loads(response.read())["error"]["code"]
    conn.request("HEAD", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and int(response.getheader("Content-Length")) > 10
    assert response.read() == b""
    conn.request("GET", "/healthz")  # the connection is still in step
    response = conn.getresponse()
    assert json.loads(response.read())["status"] == "ok"
    conn.close()


@pytest.mark.slow
def test_a_client_that_leaves_mid_body_is_logged_and_the_rest_served(service, photos):
    lines_before = service.settled()
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 50000\r\n\r\n" + photos["woman"][:1000]
        )
    [line] = service.request_lines(lines_before, 1)
    assert "client_gone, 50000 bytes" in line
    assert post(service, photos["woman"])[0] == 200
    assert not any("Traceback" in line for line in service.lines)


# -- privacy -----------------------------------------------------------------------------


def tmp_entries() -> set[str]:
    return set(os.listdir("/tmp"))


def holds(path: Path, pieces: list[bytes]) -> bool:
    """Whether a file (or any file in a folder) holds one of `pieces`."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:  # another user's, or gone already
            continue
        if any(piece in data for piece in pieces):
            return True
    return False


@pytest.mark.slow
def test_requests_write_no_file_and_log_one_line_without_names(service, photos, bad_bodies):
    """Nothing in the service's state folder or TMPDIR, no new file in /tmp holding a
    photo's bytes (other developers' tests write to /tmp at the same time, so new files
    there are judged by their content), and one log line per request with its size,
    faces and time only."""
    before_tmp = tmp_entries()
    before = files_in(service.folder)
    lines_before = service.settled()
    secret_name = "Jane-Doe-profile-0042.jpg"
    # The group photo with a comment of random bytes: no other file anywhere holds them.
    marker = os.urandom(32)
    group = photos["group"][:2] + b"\xff\xfe\x00\x22" + marker + photos["group"][2:]
    response = requests.post(
        f"{service.url}/api/v1/analyze",
        files=[
            ("photo", (secret_name, group, "image/jpeg")),
            ("photo", ("b.png", photos["woman_png"], "image/png")),
        ],
        data={"claimed_age": "41.5", "claimed_gender": "female"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["faces"]) == 6
    assert post(service, bad_bodies["decompression bomb"], "image/png")[0] == 422
    assert post(service, bad_bodies["truncated JPEG"])[0] == 422
    request_lines = service.request_lines(lines_before, 3)  # all three done with
    assert files_in(service.folder) == before, files_in(service.folder)
    assert files_in(service.folder / "state") == []
    # ONNX Runtime 1.31 writes its telemetry library's session file (.ses: a launch time
    # and a random id) into TMPDIR when it is imported, before any request: nothing else.
    assert set(files_in(service.folder / "tmp")) <= {".ses"}
    new = [Path("/tmp", name) for name in tmp_entries() - before_tmp]
    assert not [p for p in new if holds(p, [marker])], new
    logged = service.lines[lines_before:]
    assert len(request_lines) == 3, logged
    # An answer of 200 leaves before its line is written (the line's time includes the
    # send), so under load the next request's line can come first: match by content.
    ok, too_large, truncated = (
        [line for line in request_lines if f"photo check API: {code}, " in line]
        for code in ("ok", "image_too_large", "truncated_image")
    )
    assert len(ok) == len(too_large) == len(truncated) == 1, logged
    assert re.search(r"ok, \d+ bytes, 2 photo\(s\), 7 face\(s\), \d+ ms$", ok[0]), logged
    text = "".join(logged)
    for private in (secret_name, "Jane", "41.5", "female", "127.0.0.1", "claimed"):
        assert private not in text, private


# -- access ------------------------------------------------------------------------------


def test_off_loopback_without_a_key_does_not_start(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"serve": {"listen": "0.0.0.0"}}))
    env = {
        k: v for k, v in os.environ.items() if k not in ("EDGE_API_KEY", "CREDENTIALS_DIRECTORY")
    }
    result = run_edge("--config", str(config), "serve", "--port", "0", timeout=60, env=env)
    assert result.returncode == EX_CONFIG
    assert "off the loopback interface" in result.stderr and "EDGE_API_KEY" in result.stderr


@pytest.mark.slow
def test_a_key_from_systemd_credentials_is_required(tmp_path, photos):
    """The key as systemd's LoadCredential= hands it over; wrong or missing: 401."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "photo-api-key").write_text("s3cret-key-0123456789\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "EDGE_API_KEY": ""}
    service = start(tmp_path / "keyed", env=env)
    try:
        status, headers, answer = post(service, photos["woman"])
        assert status == 401 and answer["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert post(service, photos["woman"], headers={"X-API-Key": "wrong"})[0] == 401
        assert (
            post(service, photos["woman"], headers={"X-API-Key": "s3cret-key-0123456789"})[0] == 200
        )
        bearer = {"Authorization": "Bearer s3cret-key-0123456789"}
        assert post(service, photos["woman"], headers=bearer)[0] == 200
    finally:
        service.stop()
    assert "s3cret" not in "".join(service.lines)


# -- OpenAPI -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_served_spec_is_the_code_s_and_lists_every_error(service):
    from edge import config as config_mod

    with requests.get(f"{service.url}/api/v1/openapi.json", timeout=10) as response:
        spec = response.json()
    config = config_mod.load(service.folder / "config.yaml")
    assert spec == json.loads(json.dumps(openapi(config)))
    operation = spec["paths"]["/api/v1/analyze"]["post"]
    listed = " ".join(r["description"] for r in operation["responses"].values())
    for code, (status, _) in ERRORS.items():
        if status not in (404, 405):  # those answer paths and methods the spec has not
            assert f"{code}:" in listed and str(status) in operation["responses"], code
    multipart = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["properties"]["photo"]["maxItems"] == 8
    # every code the image rules give is one the API knows
    source = (ROOT / "edge" / "pipeline" / "images.py").read_text()
    for code in re.findall(r'^\s+"([a-z_]+)",\n\s+\)', source, re.M):
        assert code in ERRORS, code


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(service, tmp_path):
    """Schemathesis generates requests from the served spec (valid and invalid ones) and
    checks each answer: no 5xx, status codes, content types, headers and bodies as the
    spec says, invalid input refused, the key's absence noticed, unknown methods
    refused. Bounded: a fixed seed and 30 examples per phase (about 10 s)."""
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(cli),
            "run",
            f"{service.url}/api/v1/openapi.json",
            # Every check but one: a body that fits the schema (any bytes, for an
            # image/jpeg body) is not always a photo, and is rightly refused with 422.
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "30",
            "--seed",
            "28",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # its report folder, if any, goes there
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
    assert not any("Traceback" in line for line in service.lines)


# -- the page ----------------------------------------------------------------------------


def fits(driver) -> bool:
    """Nothing wider than the window (no sideways scrolling)."""
    return driver.execute_script("return document.documentElement.scrollWidth <= innerWidth")


@pytest.mark.slow
def test_the_check_page_in_chromium(browser, service, group_photo, tmp_path):  # noqa: F811
    browser.get(f"{service.url}/check")
    picker = browser.find_element("id", "photo-camera")
    assert picker.get_attribute("accept") == "image/*" and picker.get_attribute("capture") == "user"
    assert browser.find_element("id", "check").get_attribute("disabled")
    browser.find_element("id", "photo-file").send_keys(str(group_photo))
    browser.find_element("id", "claimed-age").send_keys("30")
    browser.find_element("id", "check").click()
    deadline = time.monotonic() + 60
    while (
        browser.execute_script("return document.getElementById('result').dataset.state") != "done"
    ):
        assert time.monotonic() < deadline, browser.find_element("id", "status").text
        time.sleep(0.1)
    faces = browser.execute_script(
        "return [...document.querySelectorAll('#faces li.face')]"
        ".map(li => [li.dataset.ageClass, li.dataset.gender])"
    )
    # the page lists what the API answers for the photo (six adults)
    [answer] = post(service, group_photo.read_bytes())[2]["results"]
    assert sorted(map(tuple, faces)) == sorted(
        (f["age_class"], f["gender"]) for f in answer["faces"]
    )
    assert {age for age, _ in faces} == {"adult"} and len(faces) == 6
    assert browser.find_element("id", "status").text == "6 faces found."
    assert "6 faces found; a profile photo" in browser.find_element("id", "claim").text
    # the photo is drawn at its own size, boxes on it
    width = browser.execute_script("return document.getElementById('canvas').width")
    assert width == cv2.imread(str(group_photo)).shape[1]
    assert fits(browser)
    shot = tmp_path / "check-page.png"
    browser.save_screenshot(str(shot))
    try:  # and on a phone's width
        browser.set_window_size(390, 844)
        assert fits(browser)
        browser.save_screenshot(str(tmp_path / "check-page-phone.png"))
    finally:
        browser.set_window_size(1280, 720)
    print(f"screenshots: {shot} and {tmp_path / 'check-page-phone.png'}")
    assert shot.stat().st_size > 10_000
    # nothing fetched from elsewhere: the page works offline
    page = browser.page_source
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


@pytest.mark.slow
def test_a_page_elsewhere_cannot_use_the_api_through_a_rebound_name(service, photos):
    """DNS rebinding: a page on another site whose name now points at 127.0.0.1 sends its
    own name as Host and gets 421, as the box's other servers answer (edge/outputs/web.py)."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    connection.request(
        "POST",
        "/api/v1/analyze",
        body=photos["woman"],
        headers={"Host": "attacker.example", "Content-Type": "image/jpeg"},
    )
    assert connection.getresponse().status == 421
    connection.close()
    assert post(service, photos["woman"])[0] == 200
