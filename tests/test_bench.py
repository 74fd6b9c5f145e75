"""`edge bench` prints its table and writes the JSON the issue specifies.

Only the shape is tested here; the figures are for people to read (README
"Performance"), not for a timed unit test to judge.
"""

import json

from conftest import need, run_edge


def test_bench_reports_all_three_measures(tmp_path):
    clip = need("media/face-demographics-walking-and-pause.gif")
    out = tmp_path / "bench.json"
    result = run_edge("--config", "config.yaml", "bench", "--source", str(clip),
                      "--size", "640x360", "--seconds", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    for key in ("full", "detector_only", "naive"):
        assert set(data[key]) >= {"fps", "p50_ms", "p95_ms"} and data[key]["fps"] > 0
        assert data[key]["p50_ms"] <= data[key]["p95_ms"]
    assert set(data["ratios"]) == {"full_over_naive", "full_over_detector_only"}
    assert data["peak_rss_mb"] > 50
    assert data["settings"]["frame_size"] == "640x360"
    assert data["settings"]["faces_per_frame"] == 3.0
    assert data["machine"]["cores"] >= 1 and data["machine"]["onnxruntime"]
    assert data["full"]["classifier_calls"] >= 3  # the three people were classified
    for line in ("full", "detector_only", "naive", "full / naive"):
        assert line in result.stdout


def test_bench_rejects_a_bad_size():
    clip = need("media/face-demographics-walking-and-pause.gif")
    result = run_edge("bench", "--source", str(clip), "--size", "big")
    assert result.returncode == 65 and "expected WIDTHxHEIGHT" in result.stderr
