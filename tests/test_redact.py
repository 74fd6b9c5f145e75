"""Camera passwords never leave the box (issue 12 item 3): not in logs, command output,
JSON lines, MQTT topics or payloads, whatever characters the password holds."""

import time
import urllib.parse

import pytest
import yaml

from edge.redact import redact, redact_url, safe_name, without_credentials

from broker import Subscriber, free_port
from conftest import ROOT, run_edge, run_service

# Every character that means something in a URL, between two markers: any fragment of
# the password that gets through (raw, %-encoded, cut at a special character) carries
# one of the markers.
SPECIAL = "@:/?#[]!$&'()*+,;=%"
PASSWORD = f"Zq7{SPECIAL}Kx9"
MARKERS = ("Zq7", "Kx9")
ENCODED = urllib.parse.quote(PASSWORD, safe="")


def sources(port: int) -> list[str]:
    """A password written raw, %-encoded, without a user name, and in a query string."""
    host = f"127.0.0.1:{port}"
    return [
        f"rtsp://cam:{PASSWORD}@{host}/stream",
        f"rtsp://:{ENCODED}@{host}/live",
        f"http://admin:{ENCODED}@{host}/video.mjpg",
        f"http://{host}/snapshot.cgi?user=admin&pwd={ENCODED}",
    ]


def assert_no_password(text: str, where: str) -> None:
    for marker in MARKERS:
        assert marker not in text, f"password fragment {marker!r} in {where}:\n{text}"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("rtsp://admin:p@ss/w:rd@10.0.0.5/stream", "rtsp://admin:***@10.0.0.5/stream"),
        ("rtsp://:secret@cam.local:554/h264", "rtsp://:***@cam.local:554/h264"),
        ("rtsp://u:a%40b%2Fc@[fe80::1]:554/x", "rtsp://u:***@[fe80::1]:554/x"),
        ("rtsp://u:pw@host", "rtsp://u:***@host"),
        ("http://cam/cgi?user=a&password=x&ch=1", "http://cam/cgi?user=a&password=***&ch=1"),
        ("http://cam/snap@2x.jpg", "http://cam/snap@2x.jpg"),  # an '@' in a path only
        ("rtsp://user@cam/stream", "rtsp://user@cam/stream"),  # no password
        ("/dev/video0", "/dev/video0"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert (
        redact(f"camera x: cannot open {url}; retrying")
        == f"camera x: cannot open {shown}; retrying"
    )


def test_every_source_form_is_masked_and_named_safely():
    for source in sources(554):
        assert_no_password(redact(source), source)
        assert_no_password(redact(f"'{source}': no frame"), source)
        name = safe_name(source)
        assert_no_password(name, "the camera id")
        assert "127" not in name and "admin" not in name and "cam" != name
        assert without_credentials(source).startswith(
            ("rtsp://127.0.0.1:554/", "http://127.0.0.1:554/")
        )
    assert safe_name("rtsp://user:pw@10.0.0.5") == "cam1"  # no path: nothing safe to use
    assert safe_name("/media/entrance.mp4") == "entrance"


@pytest.mark.cpu
def test_no_command_or_topic_shows_a_password(tmp_path, broker):
    """Every command, with cameras whose URLs carry a password made of every URL-special
    character, and every message on the broker: no fragment of it anywhere."""
    port = free_port()  # nothing listens: every camera fails, and says why
    urls = sources(port)
    store = "leaktest"
    common = {
        "models": {"dir": str(ROOT / "models")},
        "stats": {"interval_s": 1},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "store_id": store},
        "player": {"port": 0},
        "state_dir": str(tmp_path / "state"),
    }
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {**common, "cameras": [{"id": f"c{i}", "source": url} for i, url in enumerate(urls)]}
        )
    )
    bare = tmp_path / "bare.yaml"  # no cameras: --source names the camera
    bare.write_text(yaml.safe_dump(common))
    sub = Subscriber(broker.port, f"edge/{store}/#")
    outputs = {}
    try:

        def service(name, *args, seconds=5.0):
            out, err, _ = run_service(*args, seconds=seconds)
            outputs[name] = out + err

        service("run", "--config", str(config), "run")
        service("run --jsonl", "--config", str(config), "run", "--jsonl", seconds=3)
        for i, url in enumerate(urls[:2]):
            service(
                f"run --source {i} --realtime",
                "--config",
                str(bare),
                "run",
                "--source",
                url,
                "--realtime",
                seconds=3,
            )
            service(
                f"run --source {i} --jsonl",
                "--config",
                str(bare),
                "run",
                "--source",
                url,
                "--jsonl",
                seconds=3,
            )
        for name, args in [
            ("check", ["check", "--config", str(config)]),
            (
                "preview",
                [
                    "--config",
                    str(config),
                    "preview",
                    "--camera",
                    "c0",
                    "--out",
                    str(tmp_path / "p.jpg"),
                    "--seconds",
                    "1",
                ],
            ),
            ("bench", ["--config", str(config), "bench", "--source", urls[0], "--seconds", "1"]),
            ("analyze", ["--config", str(config), "analyze", urls[0], urls[1]]),
        ]:
            result = run_edge(*args)
            outputs[name] = result.stdout + result.stderr
        time.sleep(1)
    finally:
        sub.close()
    assert "FAIL  camera c0: rtsp://cam:***@127.0.0.1" in outputs["check"]
    assert "camera c1 offline" in outputs["run"] or "camera c1" in outputs["run"]
    topics = [t for t, _, _ in sub.seen]
    assert any(t.endswith("/cameras/c0/status") for t in topics), topics
    assert any("/cameras/stream/" in t for t in topics), topics  # named from the path
    for name, text in outputs.items():
        assert_no_password(text, f"the output of edge {name}")
    for topic, payload, _ in sub.seen:
        assert_no_password(topic, "a topic")
        assert_no_password(payload.decode(errors="replace"), f"a message on {topic}")
    assert_no_password(
        "\n".join(
            p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()
        ),
        "the state folder",
    )
