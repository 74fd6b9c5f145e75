"""`edge bench`: how fast is the pipeline on this machine, and what does batching buy?

Three measurements on the same frames, in one run:
  full           the service's own loop (Service.tick): detect, track, classify
                 only the faces the audience stage asks for, in one batch;
  detector_only  the detector alone: the floor the pipeline cannot beat;
  naive          detect, then classify every face of every frame one at a time.
Frames are decoded and resized before timing starts, so the figures are the
pipeline's, not the video decoder's. Latency is per frame, from the moment the
frame is handed over to the moment its decision is made.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from edge import __version__
from edge.config import CameraConfig
from edge.errors import InputError
from edge.service import Service


def load_frames(source: str, size: tuple[int, int] | None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(source)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) if size else frame)
    cap.release()
    if not frames:
        raise InputError(f"{source}: no frames could be read")
    return frames


class MemorySource:
    """Pre-decoded frames as a looping camera for CameraReader."""

    def __init__(self, frames: list[np.ndarray], fps: float):
        self.frames, self.fps, self._i = frames, fps, 0

    def read(self) -> np.ndarray:
        frame = self.frames[self._i % len(self.frames)]
        self._i += 1
        return frame

    def release(self) -> None:
        pass


def timed(fn, frames, seconds: float) -> dict:
    """Call fn(frame) over the frames (looping) for `seconds`; frames/s and latency."""
    latencies, i = [], 0
    fn(frames[0])  # warm-up: first-run allocations are not the steady state
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(frames[i % len(frames)])
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    return summary(latencies, time.perf_counter() - start)


def summary(latencies_ms: list[float], elapsed_s: float) -> dict:
    lat = np.array(latencies_ms)
    return {"fps": round(len(lat) / elapsed_s, 2), "frames": len(lat),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2)}


def bench_full(config, frames: list[np.ndarray], seconds: float, fps: float) -> dict:
    config.cameras = [CameraConfig(id="bench", source="memory", fps=fps, loop=True)]
    service = Service(config, sinks=[], offline=True,
                      opener=lambda *_: MemorySource(frames, fps))
    for cam in service.cameras.values():
        cam.reader.start()
    try:
        service.tick()  # warm-up
        latencies, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            if service.tick():
                latencies.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - start
    finally:
        for cam in service.cameras.values():
            cam.reader.stop()
    result = summary(latencies, elapsed)
    result["classifier_calls"] = service.classifier_calls
    result["mean_batch"] = service.stats()["classifier_batch"] or 0
    return result, service.analyzer


def run(config, source: str, size: tuple[int, int] | None, seconds: float) -> dict:
    frames = load_frames(source, size)
    fps = cv2.VideoCapture(source).get(cv2.CAP_PROP_FPS) or 15.0
    full, analyzer = bench_full(config, frames, seconds, fps)
    detector, classifier = analyzer.detector, analyzer.classifier
    detector_only = timed(detector, frames, seconds)

    def naive(frame):
        faces = detector(frame)
        for i in range(len(faces)):
            classifier(frame, faces[i])

    naive_result = timed(naive, frames, seconds)
    faces_per_frame = float(np.mean([len(detector(f)) for f in frames]))
    return {
        "full": full,
        "detector_only": detector_only,
        "naive": naive_result,
        "ratios": {"full_over_naive": round(full["fps"] / naive_result["fps"], 2),
                   "full_over_detector_only": round(full["fps"] / detector_only["fps"], 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "settings": {
            "source": source, "frames": len(frames),
            "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
            "detector": config.detector.backend, "detector_input_width": config.detector.input_width,
            "classifier": config.classifier.backend, "flip_tta": config.classifier.flip_tta,
            "faces_per_frame": round(faces_per_frame, 2), "seconds_per_measure": seconds,
            "provider": detector.provider,
        },
        "machine": machine(),
    }


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__, "edge": __version__, "platform": platform.platform()}


def table(result: dict) -> str:
    rows = [f"{'measure':15s} {'frames/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s}"]
    for key in ("full", "detector_only", "naive"):
        r = result[key]
        rows.append(f"{key:15s} {r['fps']:9.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f}")
    ratios = result["ratios"]
    rows.append(f"full / naive = {ratios['full_over_naive']:.2f}   "
                f"full / detector only = {ratios['full_over_detector_only']:.2f}   "
                f"peak RSS {result['peak_rss_mb']:.0f} MB")
    s = result["settings"]
    rows.append(f"{s['frame_size']} frames, detection at {s['detector_input_width']} px wide, "
                f"{s['faces_per_frame']} faces/frame, {s['provider']}, "
                f"{result['machine']['cores']} cores ({result['machine']['cpu']})")
    return "\n".join(rows)


def main(config, source: str, size: str | None, seconds: float, json_path: str | None) -> int:
    wh = None
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
            wh = (w, h)
        except ValueError:
            raise InputError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    result = run(config, source, wh, seconds)
    print(table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0
