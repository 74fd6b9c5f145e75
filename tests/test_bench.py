"""`edge bench` prints its table and writes the JSON the issue specifies.

Only the shape is tested here; the figures are for people to read (README
"Performance", docs/benchmarks.md), not for a timed unit test to judge.
"""

import json

import numpy as np
import pytest

from edge.inference import runtime

from conftest import need, run_edge


def bench(tmp_path, *extra: str) -> tuple[dict, str]:
    """`edge bench` on the walking clip, two cameras at 640x360 for 1 s: its JSON and
    what it printed."""
    clip = need("media/face-demographics-walking-and-pause.gif")
    out = tmp_path / "bench.json"
    result = run_edge(
        "--config", "config.yaml", "bench", "--source", str(clip), "--size", "640x360",
        "--seconds", "1", "--cameras", "2", *extra, "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
@pytest.mark.cpu
def test_bench_reports_every_measure_per_camera(tmp_path):
    data, printed = bench(tmp_path)
    for key in ("full", "detector_only", "naive"):
        assert set(data[key]) >= {"fps", "p50_ms", "p95_ms"} and data[key]["fps"] > 0
        assert data[key]["cpu_ms"] > 0
        assert data[key]["p50_ms"] <= data[key]["p95_ms"] <= data[key]["p99_ms"]
        assert data[key]["p99_ms"] <= data[key]["max_ms"]  # the slowest step, a display waits
    assert set(data["ratios"]) == {"full_over_naive", "full_over_detector_only"}
    assert data["peak_rss_mb"] > 50
    settings = data["settings"]
    assert settings["frame_size"] == "640x360" and settings["cameras"] == 2
    assert settings["faces_per_frame"] == 3.0
    assert set(settings["providers"]) == {"detector", "classifier"}
    assert data["machine"]["cores"] >= 1 and data["machine"]["onnxruntime"]
    assert data["full"]["classifier_calls"] >= 1  # people were classified (fewer steps
    # per second with two cameras: on a loaded machine a 1 s run may see only one batch)
    assert 0 < data["full"]["detected_share"] <= 1
    assert settings["gating"] is True and settings["idle_share"] == 0
    assert set(data["full"]["per_camera_fps"]) == {"bench0", "bench1"}
    assert all(fps > 0 for fps in data["full"]["per_camera_fps"].values())
    assert list(data["classifier"]) == ["1", "8", "32", "128"]
    assert all(r["faces_per_s"] > 0 for r in data["classifier"].values())
    if data["machine"]["gpu"] is None:
        assert data["gpu_memory_used_mib"] is None
    for line in (
        "p99 ms",
        "max ms",
        "full",
        "detector_only",
        "naive",
        "full / naive",
        "2 cameras, frames/s each",
        "classifier alone, faces/s: batch 1",
    ):
        assert line in printed


@pytest.mark.skipif(not runtime.unusable("cuda"), reason="CUDA runs here")
def test_bench_gpu_without_cuda_fails_in_one_line():
    clip = need("media/face-demographics-walking-and-pause.gif")
    result = run_edge("bench", "--source", str(clip), "--gpu")
    assert result.returncode == 69
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bench --gpu: CUDA cannot run here" in lines[0]
    assert "Traceback" not in result.stderr


def test_bench_rejects_a_bad_size():
    clip = need("media/face-demographics-walking-and-pause.gif")
    result = run_edge("bench", "--source", str(clip), "--size", "big")
    assert result.returncode == 65 and "expected WIDTHxHEIGHT" in result.stderr


@pytest.mark.slow
@pytest.mark.cpu
def test_bench_idle_share_mixes_in_an_empty_scene_and_no_gating_detects_every_frame(tmp_path):
    data, printed = bench(tmp_path, "--idle-share", "0.7", "--no-gating")
    settings = data["settings"]
    assert settings["idle_share"] == 0.7 and settings["gating"] is False
    assert settings["frames"] == 41 + round(41 * 0.7 / 0.3)  # the clip, then the empty scene
    assert settings["faces_per_frame"] == 3.0  # counted on the clip's own frames
    assert data["full"]["detected_share"] == 1.0
    assert (
        "detector ran on 100% of the full pipeline's frames (gating off, nobody present "
        "70% of the time)" in printed
    )


@pytest.mark.slow
def test_bench_with_idle_share_empty_scene_has_no_face(analyzer):
    from edge.commands.bench import load_frames, with_idle_share

    clip = load_frames(str(need("media/face-demographics-walking-and-pause.gif")), (1280, 720))
    frames = with_idle_share(clip, 0.5)
    assert len(frames) == 2 * len(clip) and frames[: len(clip)] == clip
    idle = frames[len(clip) :]
    assert not np.array_equal(idle[0], idle[1])  # sensor noise: never the same bytes
    assert all(len(analyzer.detector(f)) == 0 for f in idle[:8])


@pytest.mark.parametrize("share", ["1", "-0.1"])
def test_bench_rejects_a_bad_idle_share(share):
    clip = need("media/face-demographics-walking-and-pause.gif")
    result = run_edge("bench", "--source", str(clip), "--idle-share", share)
    assert result.returncode == 65 and "--idle-share" in result.stderr


def test_bench_needs_a_source_or_a_crowd():
    result = run_edge("bench", "--seconds", "1")
    assert result.returncode == 65
    assert "give --source FILE (or --crowd N" in result.stderr
    result = run_edge("bench", "--crowd", "0")
    assert result.returncode == 65 and "--crowd 0: expected 1 or more" in result.stderr
