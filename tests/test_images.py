"""Unbounded images (issue 12 item 10): a small file that declares a huge or absurdly thin
picture is refused by its header, before it is decoded, with the file named; memory
stays bounded; `edge analyze` and image cameras (`edge run`) judge every file alike."""

import json
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from edge.pipeline import detect, images
from edge.pipeline.analyze import read_image
from edge.pipeline.capture import open_source

from conftest import ROOT


def png(path, width, height, *, bit_depth=1, color_type=0):
    """A valid PNG of zeros written row by row: a decompression bomb costs no memory here."""

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    channels = 3 if color_type == 2 else 1
    row = b"\0" * (1 + (width * bit_depth * channels + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture()
def files(tmp_path, group_photo):
    """One file per case: what analyze and an image camera must both make of it."""
    photo = group_photo.read_bytes()
    (tmp_path / "photo.jpg").write_bytes(photo)
    (tmp_path / "truncated.jpg").write_bytes(photo[: len(photo) * 2 // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    png(tmp_path / "bomb.png", 20000, 20000)  # 48 kB, 1.2 GB decoded
    png(tmp_path / "thin.png", 1, 20000, bit_depth=8, color_type=2)  # 157 bytes
    ok, tall = cv2.imencode(".jpg", np.zeros((3000, 100, 3), np.uint8))
    (tmp_path / "tall.jpg").write_bytes(tall.tobytes())
    return {p.stem: p for p in tmp_path.iterdir()}


EXPECTED = {
    "photo": None,
    "truncated": "truncated JPEG (no end-of-image marker)",
    "empty": "empty file (0 bytes)",
    "garbage": "not a readable image (PNG header damaged)",
    "bomb": "image is 20000x20000 pixels, more than the 64 megapixels allowed",
    "thin": "image is 1x20000 pixels, too narrow to analyse",
    "tall": "image is 100x3000 pixels, too narrow to analyse",
}


def test_analyze_and_image_cameras_judge_every_file_alike(files):
    """One decoder for both: the same file is accepted by both or refused by both, with
    the same words (cv2.imread accepted a truncated JPEG that cv2.imdecode refused)."""
    for name, needle in EXPECTED.items():
        path = files[name]
        try:
            analysed, analyze_error = read_image(path), None
        except InputError as exc:
            analysed, analyze_error = None, str(exc)
        try:
            camera, camera_error = open_source(str(path), False, 1.0).read(), None
        except OSError as exc:
            camera, camera_error = None, str(exc)
        assert analyze_error == camera_error, name
        if needle is None:
            assert analyze_error is None and np.array_equal(analysed, camera)
        else:
            assert analyze_error.startswith(f"{path}: ") and needle in analyze_error, analyze_error


def test_header_sizes_are_read_without_decoding(tmp_path):
    image = np.zeros((30, 50, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".webp"):
        ok, data = cv2.imencode(ext, image)
        assert images.header_size(data.tobytes()) == (50, 30), ext
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert images.header_size(data.tobytes()) == (50, 30)
    assert not images.jpeg_truncated(data.tobytes())
    assert images.jpeg_truncated(data.tobytes()[:-40])
    assert not images.jpeg_truncated(data.tobytes() + b"trailing bytes some cameras add")


def test_detector_canvas_is_bounded_for_any_frame_shape():
    for w, h in [(1, 20000), (20000, 1), (640, 100000), (1280, 720), (1080, 1920)]:
        cw, ch = detect.input_size(w, h, 640)
        assert cw % 32 == 0 and ch % 32 == 0 and cw * ch <= 640 * 1280, (w, h)
    assert detect.input_size(1280, 720, 640) == (640, 384)  # the usual shape is unchanged


def peak_rss_mb(*args) -> tuple[float, subprocess.CompletedProcess]:
    """Peak memory of one `edge` process, measured by a parent of its own (RUSAGE_CHILDREN
    of this test process would include every earlier test's children)."""
    probe = (
        "import resource, subprocess, sys, json\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=240)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " r.returncode, r.stdout, r.stderr]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "edge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    kb, code, stdout, stderr = json.loads(out.stdout)
    return kb / 1024, subprocess.CompletedProcess(args, code, stdout, stderr)


@pytest.mark.slow
def test_bombs_keep_memory_bounded(files):
    """Figures: before the fix the bomb took 2.3 GB and the thin PNG 4.3 GB (issue 12);
    now both stay within a little of analysing an ordinary photo."""
    config = ["--config", str(ROOT / "config.yaml")]
    baseline, ok = peak_rss_mb(*config, "analyze", str(files["photo"]))
    assert ok.returncode == 0, ok.stderr
    bombs, result = peak_rss_mb(
        *config, "analyze", str(files["bomb"]), str(files["thin"]), str(files["photo"])
    )
    print(f"peak RSS: photo {baseline:.0f} MB, bombs + photo {bombs:.0f} MB")
    assert result.returncode == 65
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(files[n]) for n in ("bomb", "thin", "photo")]
    assert "more than the 64 megapixels" in lines[0]["error"]
    assert "too narrow" in lines[1]["error"]
    assert len(lines[2]["faces"]) == 6  # the good file after them is still analysed
    assert bombs < baseline + 150, (baseline, bombs)
    run_peak, run = peak_rss_mb(
        *config, "run", "--source", str(files["bomb"]), "--jsonl", "--duration", "3"
    )
    print(f"peak RSS: edge run on the bomb {run_peak:.0f} MB")
    assert "more than the 64 megapixels" in run.stderr
    assert run_peak < baseline + 150, (baseline, run_peak)


@pytest.mark.slow
def test_run_and_analyze_agree_on_a_truncated_jpeg(files):
    config = ["--config", str(ROOT / "config.yaml")]
    _, analyzed = peak_rss_mb(*config, "analyze", str(files["truncated"]))
    _, ran = peak_rss_mb(
        *config, "run", "--source", str(files["truncated"]), "--jsonl", "--duration", "3"
    )
    message = f"{files['truncated']}: truncated JPEG"
    assert analyzed.returncode == 65 and message in analyzed.stdout
    assert message in ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    assert not any(e["type"] == "audience" for e in events)  # nothing was seen in it
    assert "Premature end of JPEG" not in ran.stderr + analyzed.stderr
