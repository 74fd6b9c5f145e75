"""`edge bench` prints its table and writes the JSON the issue specifies.

Only the shape is tested here; the figures are for people to read (README
"Performance", docs/benchmarks.md), not for a timed unit test to judge.
"""

import json

import pytest

from edge import runtime

from conftest import need, run_edge


def test_bench_reports_every_measure_per_camera(tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    out = tmp_path / "bench.json"
    result = run_edge("--config", "config.yaml", "bench", "--source", str(clip),
                      "--size", "640x360", "--seconds", "1", "--cameras", "2",
                      "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    for key in ("full", "detector_only", "naive"):
        assert set(data[key]) >= {"fps", "p50_ms", "p95_ms"} and data[key]["fps"] > 0
        assert data[key]["p50_ms"] <= data[key]["p95_ms"]
    assert set(data["ratios"]) == {"full_over_naive", "full_over_detector_only"}
    assert data["peak_rss_mb"] > 50
    settings = data["settings"]
    assert settings["frame_size"] == "640x360" and settings["cameras"] == 2
    assert settings["faces_per_frame"] == 3.0
    assert set(settings["providers"]) == {"detector", "classifier"}
    assert data["machine"]["cores"] >= 1 and data["machine"]["onnxruntime"]
    assert data["full"]["classifier_calls"] >= 1  # people were classified (fewer steps
    # per second with two cameras: on a loaded machine a 1 s run may see only one batch)
    assert set(data["full"]["per_camera_fps"]) == {"bench0", "bench1"}
    assert all(fps > 0 for fps in data["full"]["per_camera_fps"].values())
    assert list(data["classifier"]) == ["1", "8", "32", "128"]
    assert all(r["faces_per_s"] > 0 for r in data["classifier"].values())
    if data["machine"]["gpu"] is None:
        assert data["gpu_memory_used_mib"] is None
    for line in ("full", "detector_only", "naive", "full / naive", "2 cameras, frames/s each",
                 "classifier alone, faces/s: batch 1"):
        assert line in result.stdout


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
